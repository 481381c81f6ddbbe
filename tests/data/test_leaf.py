"""LEAF readers (FEMNIST, Shakespeare) on tiny generated shards: natural partition, selection,
validation of every malformed case, and the two scenarios end to end."""

import json

import numpy as np
import pytest
import torch
from leaf_data import SHARDS, USERS, write_leaf_tree

from fedpress.data import DatasetFormatError, get_scenario
from fedpress.data.leaf import (
    SHAKESPEARE_VOCAB,
    LeafFilesNotFound,
    load_leaf,
    read_leaf_split,
    write_leaf_json,
)
from fedpress.sim.experiment import RunConfig, run_experiment

SORTED = sorted(USERS)


def _encode_text(strings):
    return np.array([[SHAKESPEARE_VOCAB.index(c) for c in s] for s in strings], dtype=np.float32)


def _expected(dataset, x, y):
    """What the loader should produce from the lists written to JSON."""
    if dataset == "femnist":
        return np.asarray(x, np.float32).reshape(-1, 1, 28, 28), np.asarray(y, np.int64)
    return _encode_text(x), np.array([SHAKESPEARE_VOCAB.index(c) for c in y], np.int64)


def test_vocabulary_is_leafs_80_symbols():
    assert len(SHAKESPEARE_VOCAB) == len(set(SHAKESPEARE_VOCAB)) == 80
    assert SHAKESPEARE_VOCAB[0] == "\n" and SHAKESPEARE_VOCAB[-1] == "}"


@pytest.mark.parametrize("dataset", ["femnist", "shakespeare"])
def test_natural_partition_counts_shapes_and_values(tmp_path, dataset):
    written = write_leaf_tree(tmp_path, dataset)
    d = get_scenario(dataset).load(data_root=str(tmp_path))
    shape, n_classes = ((1, 28, 28), 62) if dataset == "femnist" else ((80,), 80)
    assert d.input_shape == shape and d.n_classes == n_classes
    assert d.x_train.dtype == d.x_test.dtype == torch.float32
    assert d.y_train.dtype == d.y_test.dtype == torch.int64
    assert int(d.y_train.min()) >= 0 and int(d.y_train.max()) < n_classes
    # Client i is the i-th user in sorted order and holds exactly that user's samples, in order.
    assert np.bincount(d.groups).tolist() == [USERS[u][0] for u in SORTED]
    for i, user in enumerate(SORTED):
        x, y = _expected(dataset, *written["train"][user])
        mask = d.groups == i
        np.testing.assert_array_equal(d.x_train[mask].numpy(), x)
        np.testing.assert_array_equal(d.y_train[mask].numpy(), y)
    # Test set: every user's test split, users in sorted order.
    x_te = np.concatenate([_expected(dataset, *written["test"][u])[0] for u in SORTED])
    np.testing.assert_array_equal(d.x_test.numpy(), x_te)
    assert d.n_test == sum(t for _, t in USERS.values())


def test_max_clients_first_and_seeded_random(tmp_path):
    write_leaf_tree(tmp_path, "femnist")
    d = load_leaf("femnist", data_root=tmp_path, max_clients=2)
    # u0 and u1 live in different shards: the cut is over all shards, by sorted user id.
    assert np.bincount(d.groups).tolist() == [USERS["u0"][0], USERS["u1"][0]]
    assert d.n_test == USERS["u0"][1] + USERS["u1"][1]  # only the chosen users' test samples
    picks = {}
    for seed in range(6):
        s = read_leaf_split(
            tmp_path / "femnist/data/train", "femnist", max_users=3, select="random", seed=seed
        )
        again = read_leaf_split(
            tmp_path / "femnist/data/train", "femnist", max_users=3, select="random", seed=seed
        )
        assert s.users == again.users == sorted(s.users) and len(s.users) == 3
        assert s.counts.tolist() == [USERS[u][0] for u in s.users]
        assert s.all_users == SORTED
        picks[seed] = tuple(s.users)
    assert len(set(picks.values())) > 1  # the seed matters
    d = load_leaf("femnist", data_root=tmp_path, max_test=3, seed=1)
    assert d.n_test == 3
    with pytest.raises(ValueError, match="max_users"):
        read_leaf_split(tmp_path / "femnist/data/train", "femnist", max_users=0)


def test_user_split_keeps_held_out_test_users(tmp_path):
    # LEAF's "-t user" split: test users are disjoint from train users, and all of them are kept.
    rng = np.random.default_rng(0)
    px = lambda n: (rng.random((n, 784)).tolist(), rng.integers(0, 62, n).tolist())  # noqa: E731
    write_leaf_json(tmp_path / "femnist/data/train/a.json", {"a": px(3), "b": px(2)})
    write_leaf_json(tmp_path / "femnist/data/test/a.json", {"c": px(4), "d": px(1)})
    d = load_leaf("femnist", data_root=tmp_path, max_clients=1)
    assert d.n_train == 3 and d.n_test == 5


def test_zero_sample_users_are_not_clients_and_layouts_are_found(tmp_path):
    rng = np.random.default_rng(0)
    x = ["".join(rng.choice(list(SHAKESPEARE_VOCAB), 80)) for _ in range(2)]
    # <root> pointing straight at the folder with train/ and test/ also works.
    write_leaf_json(tmp_path / "train/s.json", {"A": (x, ["a", "b"]), "B": ([], [])})
    write_leaf_json(tmp_path / "test/s.json", {"A": (x[:1], ["c"]), "B": ([], [])})
    d = load_leaf("shakespeare", data_root=tmp_path)
    assert d.n_train == 2 and d.groups.tolist() == [0, 0] and d.n_test == 1
    assert d.y_test.tolist() == [SHAKESPEARE_VOCAB.index("c")]


def _first_user_shard(root, dataset):
    return root / dataset / "data" / "train" / "shard_0.json"


def _edit(path, fn):
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def _set(key, value, dataset_user="u3"):
    def fn(doc):
        doc["user_data"][dataset_user][key] = value

    return fn


BAD_FEMNIST = [
    (lambda p: p.write_text(p.read_text()[:-40]), "not a valid LEAF JSON"),  # truncated
    (lambda p: p.write_text("[]"), "expected an object"),
    (lambda p: _edit(p, lambda d: d["num_samples"].__setitem__(0, 9)), "num_samples says 9"),
    (lambda p: _edit(p, lambda d: d["num_samples"].pop()), "one count per user"),
    (lambda p: _edit(p, lambda d: d["user_data"].pop("u0")), "exactly the users"),
    (lambda p: _edit(p, lambda d: d["user_data"]["u3"]["x"][1].pop()), "sample 1.*784 floats"),
    (lambda p: _edit(p, lambda d: d["user_data"]["u3"]["y"].__setitem__(2, 62)), "label 62"),
    (lambda p: _edit(p, lambda d: d["user_data"]["u3"]["y"].__setitem__(0, -1)), "label -1"),
    (lambda p: _edit(p, lambda d: d["user_data"]["u3"]["y"].__setitem__(0, 1.5)), "integer"),
    (lambda p: _edit(p, lambda d: d["user_data"]["u3"]["x"][0].__setitem__(0, 255)), r"\[0, 1\]"),
    (lambda p: _edit(p, lambda d: d["users"].__setitem__(1, "u3")), "listed twice"),
]


@pytest.mark.parametrize(("mutate", "match"), BAD_FEMNIST)
def test_malformed_femnist_names_file_and_user(tmp_path, mutate, match):
    write_leaf_tree(tmp_path, "femnist")
    path = _first_user_shard(tmp_path, "femnist")
    mutate(path)
    with pytest.raises(DatasetFormatError, match=match) as e:
        get_scenario("femnist").load(data_root=str(tmp_path))
    assert str(path) in str(e.value)
    if "sample" in match or "label" in match or "num_samples says" in match:
        assert "'u3'" in str(e.value)


BAD_SHAKESPEARE = [
    (_set("x", ["a" * 79] * 5), "sample 0: x must be an 80-character string, got 79"),
    (_set("y", ["ab"] * 5), "y must be one character, got 2"),
    (_set("y", [1] * 5), "y must be one character, got int"),
    (_set("x", ["a" * 79 + "$"] * 5), r"character '\$'.*vocabulary"),
    (_set("x", ["a" * 79 + "é"] * 5), "character 'é'"),
    (_set("y", ["a", "b", "c", "d", "{"]), r"sample 4: y has character '\{'"),
]


@pytest.mark.parametrize(("mutate", "match"), BAD_SHAKESPEARE)
def test_malformed_shakespeare_names_file_and_user(tmp_path, mutate, match):
    write_leaf_tree(tmp_path, "shakespeare")
    path = _first_user_shard(tmp_path, "shakespeare")
    _edit(path, mutate)
    with pytest.raises(DatasetFormatError, match=match) as e:
        get_scenario("shakespeare").load(data_root=str(tmp_path))
    assert str(path) in str(e.value) and "'u3'" in str(e.value)


def test_missing_and_duplicate_files(tmp_path):
    with pytest.raises(LeafFilesNotFound) as e:
        get_scenario("femnist").load(data_root=str(tmp_path))
    msg = str(e.value)
    assert isinstance(e.value, DatasetFormatError) and isinstance(e.value, FileNotFoundError)
    assert str(tmp_path / "femnist" / "data" / "train") in msg and "never downloads" in msg
    assert "preprocess.sh" in msg

    write_leaf_tree(tmp_path, "femnist")
    test_dir = tmp_path / "femnist/data/test"
    for p in test_dir.iterdir():
        p.unlink()
    with pytest.raises(LeafFilesNotFound, match="no LEAF \\*.json shards") as e:
        get_scenario("femnist").load(data_root=str(tmp_path))
    assert str(test_dir) in str(e.value)
    test_dir.rmdir()
    with pytest.raises(LeafFilesNotFound, match="test: missing"):
        get_scenario("femnist").load(data_root=str(tmp_path))

    write_leaf_tree(tmp_path / "dup", "femnist")
    second = tmp_path / "dup/femnist/data/train/shard_1.json"
    _edit(
        second,
        lambda d: (
            d["users"].__setitem__(0, "u0"),
            d["user_data"].__setitem__("u0", d["user_data"].pop(SHARDS[1][0])),
        ),
    )
    with pytest.raises(DatasetFormatError, match="user 'u0' is also in .*shard_0.json") as e:
        get_scenario("femnist").load(data_root=str(tmp_path / "dup"))
    assert str(second) in str(e.value)


@pytest.mark.parametrize("dataset", ["femnist", "shakespeare"])
def test_scenario_runs_end_to_end(tmp_path, dataset, one_thread):
    write_leaf_tree(tmp_path / "data", dataset)
    cfg = RunConfig(
        scenario=dataset,
        data_root=str(tmp_path / "data"),
        rounds=2,
        per_round=3,
        codec="ef+topk:ratio=0.1+q:bits=8",
        local_epochs=1,
    )
    res, part = run_experiment(cfg, None)
    assert res.summary["rounds"] == 2 and res.summary["metric_name"] == "accuracy"
    assert 0.0 <= res.summary["final_metric"] <= 1.0
    assert res.summary["total_uplink_bytes"] > 0
    assert part["scheme"] == "natural" and part["sizes"] == [USERS[u][0] for u in SORTED]
