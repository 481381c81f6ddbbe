"""Every scenario end to end on a few rounds (image scenarios on tiny files in the real formats)."""

import gzip
import json
import pickle
import struct

import numpy as np
import pytest
from leaf_data import write_leaf_tree

from fedpress.data import SCENARIOS
from fedpress.sim.experiment import ConfigError, RunConfig, load_config, run_experiment


def _idx(path, arr):
    blob = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    path.write_bytes(gzip.compress(blob + arr.tobytes()))


def _image_root(tmp_path):
    rng = np.random.default_rng(0)
    for folder in ("MNIST/raw", "FashionMNIST/raw"):
        d = tmp_path / folder
        d.mkdir(parents=True)
        for split, n in (("train", 80), ("t10k", 30)):
            _idx(d / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
            _idx(d / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n).astype(np.uint8))
    c = tmp_path / "cifar-10-batches-py"
    c.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (16, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, 16).tolist()}
        (c / name).write_bytes(pickle.dumps(batch, protocol=2))
    return tmp_path


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_scenario_runs_end_to_end(name, tmp_path):
    root = _image_root(tmp_path / "data") if name in ("mnist", "fashion-mnist", "cifar10") else None
    if name in ("femnist", "shakespeare"):
        root = tmp_path / "data"
        write_leaf_tree(root, name)
    sc = SCENARIOS[name]
    clients = None if sc.partition == "natural" else 4
    cfg = RunConfig(scenario=name, codec="ef+topk:ratio=0.1+q:bits=8", rounds=2, clients=clients,
                    per_round=2, data_root=str(root) if root else None, local_epochs=1)
    res, part = run_experiment(cfg, tmp_path / "out")
    assert res.summary["rounds"] == 2 and res.summary["metric_name"] == sc.metric
    assert res.summary["total_uplink_bytes"] > 0
    assert sum(part["sizes"]) > 0
    lines = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [1, 2]


def test_config_rejects_unknown_keys_and_bad_types(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("rounds = 3\nfoo = 1\n")
    with pytest.raises(ConfigError, match="foo"):
        load_config(p)
    p.write_text('rounds = 2.5\n')
    with pytest.raises(ConfigError, match="rounds"):
        load_config(p)
    p.write_text('codecs = ["none", "q:bits=8"]\nout = "x"\n')
    assert load_config(p, allow_compare=True)["codecs"] == ["none", "q:bits=8"]
    with pytest.raises(ConfigError, match="secagg"):
        RunConfig(codec="topk:ratio=0.1", secagg=True).check()


@pytest.mark.parametrize("name", ["femnist", "healthcare"])
def test_clients_caps_a_natural_partition(name, tmp_path):
    root = None
    if name == "femnist":
        root = tmp_path / "data"
        write_leaf_tree(root, name)
    full, part_full = run_experiment(RunConfig(scenario=name, rounds=1, per_round=2,
                                               data_root=str(root) if root else None), None)
    assert len(part_full["sizes"]) > 3
    _, part = run_experiment(RunConfig(scenario=name, rounds=1, per_round=2, clients=3,
                                       data_root=str(root) if root else None), None)
    # the first three natural clients, unchanged (not a re-split of the pooled data)
    assert part["sizes"] == part_full["sizes"][:3]


def test_scaffold_controls_are_not_silently_dropped_by_async_runs():
    from fedpress.sim.experiment import build_simulation

    with pytest.raises(ValueError, match="synchronous rounds"):
        build_simulation(RunConfig(scenario="digits", rounds=1, async_buffer=2, scaffold_controls="sent"))
