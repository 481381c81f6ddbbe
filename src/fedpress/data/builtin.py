"""Scenarios built from datasets that ship inside scikit-learn (no download, loads in ms)."""

from __future__ import annotations

import numpy as np

from fedpress.data.base import ScenarioData, standardize, to_data

__all__ = ["HOSPITALS", "hospital_groups", "load_digits", "load_healthcare"]

HOSPITALS = 6


def _split(x: np.ndarray, y: np.ndarray, seed: int, test_size: float):
    # Imported lazily: sklearn costs ~1 s to import and `import fedpress` should stay cheap.
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=test_size, stratify=y, random_state=seed)


def load_digits(seed: int = 0, data_root: str | None = None) -> ScenarioData:
    """sklearn's 8×8 handwritten digits (1,797 images, 10 classes) as ``(N, 1, 8, 8)`` in [0, 1].

    Stratified 75/25 train/test split by ``seed``; ``data_root`` is ignored.

    >>> d = load_digits(seed=0)
    >>> d.input_shape, d.n_train, d.n_test, d.n_classes
    ((1, 8, 8), 1347, 450, 10)
    """
    from sklearn.datasets import load_digits as sk_digits

    x, y = sk_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 1, 8, 8)  # pixel intensities are 0..16 in this dataset
    x_tr, x_te, y_tr, y_te = _split(x, y, seed, 0.25)
    return to_data(
        x_tr,
        y_tr,
        x_te,
        y_te,
        n_classes=10,
        description="sklearn load_digits: 8x8 grey images of handwritten digits, scaled to [0,1]",
    )


def hospital_groups(
    y: np.ndarray, n_hospitals: int = HOSPITALS, seed: int = 0, min_per_class: int = 3
) -> np.ndarray:
    """Assign binary-labelled samples to hospitals with quantity *and* label skew.

    Each hospital ``h`` gets a size weight ``w_h ~ Dir(1.5)`` (a few large centres, several small
    ones) and a malignancy prevalence ``p_h ~ U(0.1, 0.75)`` (referral centres see more cancer
    than screening clinics). After dealing ``min_per_class`` samples of each class to every
    hospital — so each can compute a meaningful local AUROC — a sample of class ``c`` goes to
    hospital ``h`` with probability ``∝ w_h · P(c | h)``. Deterministic given ``seed``.

    >>> y = np.array([0] * 60 + [1] * 40)
    >>> g = hospital_groups(y, n_hospitals=4, seed=1)
    >>> g.shape, sorted(set(g.tolist()))
    ((100,), [0, 1, 2, 3])
    >>> bool((g == hospital_groups(y, n_hospitals=4, seed=1)).all())
    True
    """
    y = np.asarray(y)
    rng = np.random.default_rng([seed, 0x405])  # own stream: independent of the split's seed use
    w = rng.dirichlet(np.full(n_hospitals, 1.5))
    p_pos = rng.uniform(0.1, 0.75, size=n_hospitals)
    groups = np.full(len(y), -1, dtype=np.int64)
    for cls, p_cls in ((0, 1.0 - p_pos), (1, p_pos)):
        idx = rng.permutation(np.flatnonzero(y == cls))
        if len(idx) < n_hospitals * min_per_class:
            raise ValueError(
                f"hospital_groups: class {cls} has {len(idx)} samples, fewer than "
                f"{n_hospitals} hospitals x min_per_class={min_per_class}"
            )
        head, rest = idx[: n_hospitals * min_per_class], idx[n_hospitals * min_per_class :]
        groups[head] = np.repeat(np.arange(n_hospitals), min_per_class)
        prob = w * p_cls
        groups[rest] = rng.choice(n_hospitals, size=len(rest), p=prob / prob.sum())
    return groups


def load_healthcare(seed: int = 0, data_root: str | None = None) -> ScenarioData:
    """Breast-cancer diagnosis across hospitals (sklearn's Wisconsin diagnostic data, 569 cases).

    Label 1 = malignant (sklearn codes malignant as 0; we flip it so the positive class is the
    disease, as AUROC/AUPRC conventions expect). 30 features, standardised with training
    statistics only. Stratified 75/25 split by ``seed``; training samples carry ``groups`` =
    hospital id from :func:`hospital_groups` (quantity + label skew).

    >>> d = load_healthcare(seed=0)
    >>> d.input_shape, d.n_classes, int(d.groups.max()) + 1
    ((30,), 2, 6)
    """
    from sklearn.datasets import load_breast_cancer

    x, target = load_breast_cancer(return_X_y=True)
    y = 1 - target
    x_tr, x_te, y_tr, y_te = _split(x, y, seed, 0.25)
    x_tr, x_te = standardize(x_tr, x_te)
    return to_data(
        x_tr,
        y_tr,
        x_te,
        y_te,
        n_classes=2,
        groups=hospital_groups(y_tr, seed=seed),
        description=(
            f"Wisconsin diagnostic breast cancer (sklearn), label 1 = malignant; training cases "
            f"split over {HOSPITALS} hospitals with quantity and prevalence skew"
        ),
    )
