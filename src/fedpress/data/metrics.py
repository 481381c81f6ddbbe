"""Evaluation metrics on class probabilities, robust to the degenerate inputs FL produces.

In federated evaluation a client's (or a small test set's) labels can all be one class, and a
diverging model under aggressive compression can emit NaN probabilities. A metric that raises
there would kill a whole comparison run, so undefined values come back as ``float('nan')``.

>>> import numpy as np
>>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]])
>>> y = np.array([0, 1, 0, 0])
>>> compute_metric("accuracy", probs, y), compute_metric("auroc", probs, y)
(0.75, 1.0)
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["HIGHER_IS_BETTER", "METRICS", "compute_metric"]

# Every metric here is "higher is better"; the table exists so callers (best-round selection,
# plots) never hard-code that assumption if a loss-like metric is added later.
HIGHER_IS_BETTER: dict[str, bool] = {"accuracy": True, "auroc": True, "auprc": True, "f1": True}
METRICS = tuple(HIGHER_IS_BETTER)


def _as_probs(probs, n: int) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 1:  # a binary model's positive-class score
        p = np.column_stack([1.0 - p, p])
    if p.ndim != 2 or p.shape[0] != n:
        raise ValueError(f"probs must have shape (N, C) with N={n}, got {np.shape(probs)}")
    return p


def compute_metric(name: str, probs: np.ndarray, y: np.ndarray) -> float:
    """Score class probabilities ``probs`` (N, C) against integer labels ``y`` (N,).

    - ``accuracy``: share of ``argmax(probs) == y``.
    - ``auroc``: binary → ROC AUC of the positive-class (column 1) score; multiclass → macro
      one-vs-rest AUC over the classes that are present with both outcomes (as sklearn's
      ``roc_auc_score(..., multi_class="ovr")`` when all classes are present).
    - ``auprc``: binary → average precision of the positive class; multiclass → macro
      one-vs-rest average precision.
    - ``f1``: at ``argmax``; binary → F1 of class 1, multiclass → macro F1.

    A 1-D ``probs`` is read as the positive-class probability of a binary model. Returns NaN when
    the metric is undefined: empty input, non-finite probabilities, a single class present
    (auroc), no positives (binary auprc / f1).

    >>> import numpy as np
    >>> compute_metric("f1", np.array([0.2, 0.9, 0.7]), np.array([0, 1, 0]))
    0.6666666666666666
    >>> compute_metric("auroc", np.array([[0.5, 0.5]]), np.array([1]))
    nan
    >>> compute_metric("mse", np.zeros((1, 2)), np.zeros(1))
    Traceback (most recent call last):
    ...
    ValueError: unknown metric 'mse'; choose one of accuracy, auroc, auprc, f1
    """
    if name not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}")
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D, got shape {y.shape}")
    p = _as_probs(probs, len(y))
    if len(y) == 0 or not np.isfinite(p).all():
        return math.nan
    y = y.astype(np.int64)
    n_classes = p.shape[1]
    if name == "accuracy":
        return float(np.mean(p.argmax(axis=1) == y))
    if name == "f1":
        return _f1(p.argmax(axis=1), y, n_classes)
    return _ranking(name, p, y, n_classes)


def _f1(pred: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    from sklearn.metrics import f1_score

    if n_classes == 2:
        if not (y == 1).any():
            return math.nan  # recall undefined: there is nothing to detect
        return float(f1_score(y, pred, pos_label=1, average="binary", zero_division=0))
    return float(f1_score(y, pred, average="macro", zero_division=0))


def _ranking(name: str, p: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    # Lazy import: sklearn.metrics takes a noticeable fraction of a second to import.
    from sklearn.metrics import average_precision_score, roc_auc_score

    score = roc_auc_score if name == "auroc" else average_precision_score
    if n_classes == 2:
        pos = y == 1
        if not pos.any() or (name == "auroc" and pos.all()):
            return math.nan
        return float(score(pos, p[:, 1]))
    # Macro one-vs-rest, skipping classes whose one-vs-rest problem is undefined on this data.
    values = []
    for c in range(n_classes):
        pos = y == c
        if pos.any() and not pos.all():
            values.append(score(pos, p[:, c]))
    return float(np.mean(values)) if values else math.nan
