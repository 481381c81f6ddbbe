import math

import numpy as np
import pytest
from sklearn import metrics as skm

from fedpress.data import HIGHER_IS_BETTER, METRICS, compute_metric


def random_probs(rng, n, c):
    logits = rng.normal(size=(n, c))
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_metrics_agree_with_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=50)
    p = random_probs(rng, 50, 2)
    p[:, 1] = np.clip(p[:, 1] + 0.3 * y, 0, 1)  # some signal, so scores are not all ~0.5
    p[:, 0] = 1 - p[:, 1]
    pred = p.argmax(1)
    assert compute_metric("accuracy", p, y) == pytest.approx(skm.accuracy_score(y, pred))
    assert compute_metric("auroc", p, y) == pytest.approx(skm.roc_auc_score(y, p[:, 1]))
    assert compute_metric("auprc", p, y) == pytest.approx(skm.average_precision_score(y, p[:, 1]))
    assert compute_metric("f1", p, y) == pytest.approx(skm.f1_score(y, pred))
    # A 1-D positive-class score means the same thing as its two-column form.
    for name in METRICS:
        assert compute_metric(name, p[:, 1], y) == pytest.approx(compute_metric(name, p, y))


@pytest.mark.parametrize("seed", [0, 1])
def test_multiclass_metrics_agree_with_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(5), rng.integers(0, 5, size=55)])  # every class present
    p = random_probs(rng, 60, 5)
    pred = p.argmax(1)
    assert compute_metric("accuracy", p, y) == pytest.approx(skm.accuracy_score(y, pred))
    assert compute_metric("auroc", p, y) == pytest.approx(
        skm.roc_auc_score(y, p, multi_class="ovr", average="macro")
    )
    onehot = np.eye(5)[y]
    assert compute_metric("auprc", p, y) == pytest.approx(
        skm.average_precision_score(onehot, p, average="macro")
    )
    assert compute_metric("f1", p, y) == pytest.approx(skm.f1_score(y, pred, average="macro"))


def test_perfect_and_inverted_scores():
    y = np.array([0, 0, 1, 1])
    good = np.array([0.1, 0.2, 0.8, 0.9])
    assert compute_metric("auroc", good, y) == 1.0
    assert compute_metric("auroc", 1 - good, y) == 0.0
    assert compute_metric("f1", good, y) == 1.0
    assert compute_metric("accuracy", 1 - good, y) == 0.0


def test_degenerate_inputs_give_nan_not_errors():
    p = np.array([[0.7, 0.3], [0.4, 0.6]])
    zeros, ones = np.zeros(2, int), np.ones(2, int)
    assert math.isnan(compute_metric("auroc", p, zeros))
    assert math.isnan(compute_metric("auroc", p, ones))
    assert math.isnan(compute_metric("auprc", p, zeros))
    assert math.isnan(compute_metric("f1", p, zeros))
    assert compute_metric("accuracy", p, zeros) == 0.5  # accuracy is still defined
    assert compute_metric("auprc", p, ones) == 1.0  # every item is positive: precision is 1
    for name in METRICS:
        assert math.isnan(compute_metric(name, np.zeros((0, 2)), np.zeros(0, int)))
        assert math.isnan(compute_metric(name, np.array([[np.nan, 0.5]] * 2), ones))
    # Multiclass with a single class present: AUROC undefined.
    assert math.isnan(compute_metric("auroc", np.full((3, 3), 1 / 3), np.zeros(3, int)))


def test_multiclass_auroc_skips_absent_classes():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, size=40)  # classes 0..2 of 4
    p = random_probs(rng, 40, 4)
    expected = np.mean([skm.roc_auc_score(y == c, p[:, c]) for c in range(3)])
    assert compute_metric("auroc", p, y) == pytest.approx(expected)


def test_input_validation():
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metric("rmse", np.zeros((2, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="shape"):
        compute_metric("accuracy", np.zeros((3, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="1-D"):
        compute_metric("accuracy", np.zeros((2, 2)), np.zeros((2, 1)))
    assert set(HIGHER_IS_BETTER) == set(METRICS) and all(HIGHER_IS_BETTER.values())
