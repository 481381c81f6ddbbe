"""Tests for fedpress.sim.partition: determinism, coverage, skew and input checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedpress.sim.partition import SCHEMES, label_counts, partition, summarize

N_CLASSES = 10


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    # Unequal class sizes, shuffled, so nothing lines up with sample order by accident.
    rng = np.random.default_rng(123)
    y = np.repeat(np.arange(N_CLASSES), np.arange(150, 150 + 20 * N_CLASSES, 20))
    return rng.permutation(y)


def _check_cover(parts, n):
    assert all(p.dtype == np.int64 for p in parts)
    allidx = np.concatenate(parts)
    assert len(allidx) == n  # disjoint: no index twice ...
    assert np.array_equal(np.sort(allidx), np.arange(n))  # ... and covering every sample


@pytest.mark.parametrize("scheme", SCHEMES)
def test_disjoint_cover_and_determinism(labels, scheme):
    parts = partition(labels, 12, scheme, seed=7)
    assert len(parts) == 12
    _check_cover(parts, len(labels))
    again = partition(labels, 12, scheme, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition(labels, 12, scheme, seed=8)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_iid_sizes_equal_and_labels_balanced(labels):
    parts = partition(labels, 7, "iid", seed=1)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    s = summarize(labels, parts, N_CLASSES)
    assert s["mean_tv_distance"] < 0.1
    assert s["mean_classes_per_client"] == N_CLASSES


def test_dirichlet_small_alpha_more_skewed(labels):
    def tv(alpha):
        vals = [
            summarize(labels, partition(labels, 10, alpha=alpha, seed=s), N_CLASSES)
            for s in range(3)
        ]
        return np.mean([v["mean_tv_distance"] for v in vals]), np.mean(
            [v["mean_classes_per_client"] for v in vals]
        )

    tv_small, classes_small = tv(0.1)
    tv_large, classes_large = tv(100.0)
    assert tv_small > tv_large + 0.3
    assert classes_small < classes_large
    assert tv_large < 0.1  # alpha -> inf approaches IID


def test_dirichlet_respects_min_size(labels):
    parts = partition(labels, 20, alpha=0.2, min_size=30, seed=3)
    assert min(len(p) for p in parts) >= 30
    _check_cover(parts, len(labels))


def test_dirichlet_impossible_min_size_raises_clearly(labels):
    with pytest.raises(ValueError, match="min_size=100.*raise alpha"):
        partition(labels, 20, alpha=0.01, min_size=100, seed=0, max_tries=5)


def test_shards_give_about_c_classes(labels):
    for c in (1, 2, 3):
        parts = partition(labels, 10, "shards", shards_per_client=c, seed=0)
        classes = (label_counts(labels, parts, N_CLASSES) > 0).sum(axis=1)
        # A shard may straddle one class boundary, so a client sees between 1 and 2c classes,
        # and on average close to c.
        assert classes.max() <= 2 * c
        assert c <= classes.mean() <= c + 1
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= c


def test_quantity_skew_sizes_vary_labels_do_not(labels):
    parts = partition(labels, 10, "quantity", quantity_alpha=0.3, min_size=5, seed=2)
    sizes = np.array([len(p) for p in parts])
    assert sizes.min() >= 5
    s = summarize(labels, parts, N_CLASSES)
    iid = summarize(labels, partition(labels, 10, "iid", seed=2), N_CLASSES)
    assert s["size_cv"] > 0.5 > iid["size_cv"]
    # quantity_alpha overrides alpha; alpha only matters when quantity_alpha is None.
    a = partition(labels, 10, "quantity", alpha=0.3, seed=2, min_size=5)
    assert all(np.array_equal(x, y) for x, y in zip(a, parts, strict=True))


def test_string_labels_work():
    y = np.array(["cat", "dog", "cat", "emu", "dog", "emu"] * 10)
    parts = partition(y, 3, "shards", shards_per_client=1, seed=0)
    _check_cover(parts, len(y))
    assert all(len(set(y[p])) == 1 for p in parts)


def test_label_counts_and_summary_json(labels):
    parts = partition(labels, 5, alpha=0.5, seed=4)
    counts = label_counts(labels, parts, N_CLASSES)
    assert counts.shape == (5, N_CLASSES) and counts.dtype == np.int64
    assert np.array_equal(counts.sum(axis=0), np.bincount(labels, minlength=N_CLASSES))
    assert counts[2, 3] == np.sum(labels[parts[2]] == 3)
    s = summarize(labels, parts, N_CLASSES)
    assert json.loads(json.dumps(s)) == s
    assert s["sizes"] == [len(p) for p in parts]
    assert s["n_samples"] == len(labels)
    assert 0.0 <= s["mean_tv_distance"] <= 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scheme": "nope"}, "scheme 'nope'.*dirichlet, iid"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"scheme": "shards", "shards_per_client": 0}, "shards_per_client"),
        ({"scheme": "shards", "shards_per_client": 500}, "shards_per_client"),
        ({"scheme": "quantity", "quantity_alpha": -1.0}, "quantity_alpha"),
        ({"n_clients": 0}, "n_clients"),
        ({"n_clients": 2.5}, "n_clients"),
        ({"min_size": 10_000}, "min_size"),
        ({"min_size": -1}, "min_size"),
    ],
)
def test_bad_inputs_raise_value_error(labels, kwargs, match):
    kw = {"n_clients": 5, **kwargs}
    with pytest.raises(ValueError, match=match):
        partition(labels, **kw)


def test_bad_labels_raise():
    with pytest.raises(ValueError, match="1-D"):
        partition(np.zeros((4, 2), int), 2)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        label_counts(np.array([0, 5]), [np.array([0, 1])], 3)
    with pytest.raises(ValueError, match="integer class ids"):
        label_counts(np.array([0.5, 1.0]), [np.array([0, 1])], 3)
    with pytest.raises(ValueError, match="client 0: index out of range"):
        label_counts(np.array([0, 1]), [np.array([0, 2])], 3)
