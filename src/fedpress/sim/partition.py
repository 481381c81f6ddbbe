"""Non-IID client partitions of a labelled dataset, deterministic by seed.

Four schemes, all returning one sorted ``int64`` index array per client; the arrays are disjoint
and together cover every sample:

- ``"iid"``: a uniform random split into equal sizes (±1).
- ``"dirichlet"``: label skew. For every class, the share each client gets is drawn from
  Dir(alpha·1) (Hsu, Qi & Brown 2019, "Measuring the effects of non-identical data distribution
  for federated visual classification"). Small alpha → few classes per client.
- ``"shards"``: sort by label, cut into ``n_clients * shards_per_client`` shards and deal
  ``shards_per_client`` of them to each client (McMahan et al. 2017, "Communication-efficient
  learning of deep networks from decentralized data"), so each client sees about that many classes.
- ``"quantity"``: labels IID, but client sizes follow Dir(quantity_alpha) (quantity skew).

Labels may be any sortable values (ints, strings); only :func:`label_counts` and
:func:`summarize` need integer class ids in ``[0, n_classes)``.
"""

from __future__ import annotations

import numpy as np

SCHEMES = ("dirichlet", "iid", "quantity", "shards")


def _labels_1d(labels) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    return y


def _sorted_parts(parts: list[np.ndarray]) -> list[np.ndarray]:
    # Sorted indices make a partition canonical (easy to compare, hash and slice); training code
    # shuffles within a client anyway.
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _split_iid(n: int, n_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    return np.array_split(rng.permutation(n), n_clients)


def _split_dirichlet(
    codes: np.ndarray,
    n_clients: int,
    alpha: float,
    min_size: int,
    max_tries: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    by_class = [np.flatnonzero(codes == c) for c in range(int(codes.max()) + 1)]
    smallest = 0
    for _ in range(max_tries):
        buckets: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
        for idx in by_class:
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for k, piece in enumerate(np.split(idx, cuts)):
                buckets[k].append(piece)
        parts = [np.concatenate(b) for b in buckets]
        smallest = min(len(p) for p in parts)
        # Plain re-drawing keeps the result an exact sample of the documented distribution,
        # conditioned on the size constraint (no ad-hoc rebalancing that would bias it).
        if smallest >= min_size:
            return parts
    raise ValueError(
        f"dirichlet partition: no draw gave every one of {n_clients} clients >= min_size="
        f"{min_size} samples in {max_tries} tries (smallest client had {smallest}); "
        f"raise alpha (now {alpha}), lower min_size, or use fewer clients"
    )


def _split_shards(
    codes: np.ndarray, n_clients: int, shards_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    # Shuffle first, then a stable sort by label: samples of one class end up in random order, so
    # which samples of a class land in which shard depends on the seed.
    shuffled = rng.permutation(len(codes))
    order = shuffled[np.argsort(codes[shuffled], kind="stable")]
    shards = np.array_split(order, n_clients * shards_per_client)
    deal = rng.permutation(len(shards)).reshape(n_clients, shards_per_client)
    return [np.concatenate([shards[s] for s in row]) for row in deal]


def _split_quantity(
    n: int, n_clients: int, q_alpha: float, min_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    # Everyone gets min_size up front; only the surplus is shared by Dir(q_alpha) weights. That
    # meets the floor without rejection sampling, which could loop for tiny alphas.
    surplus = n - n_clients * min_size
    p = rng.dirichlet(np.full(n_clients, q_alpha))
    raw = p * surplus
    extra = np.floor(raw).astype(np.int64)
    # Largest-remainder rounding so sizes add up to n exactly.
    short = surplus - int(extra.sum())
    if short:
        extra[np.argsort(-(raw - extra), kind="stable")[:short]] += 1
    sizes = extra + min_size
    return np.split(rng.permutation(n), np.cumsum(sizes)[:-1])


def partition(
    labels: np.ndarray,
    n_clients: int,
    scheme: str = "dirichlet",
    *,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    quantity_alpha: float | None = None,
    seed: int = 0,
    min_size: int = 1,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Split sample indices among ``n_clients`` clients; one sorted int64 array per client.

    The arrays are disjoint and cover ``range(len(labels))``. The same arguments and seed always
    give the same partition. ``alpha`` drives ``"dirichlet"``; ``quantity_alpha`` (default:
    ``alpha``) drives ``"quantity"``; ``shards_per_client`` drives ``"shards"``. Every client gets at
    least ``min_size`` samples, or a ``ValueError`` says why that is impossible. ``"dirichlet"``
    re-draws up to ``max_tries`` times to meet ``min_size``.

    >>> y = np.repeat(np.arange(4), 25)
    >>> parts = partition(y, 4, "shards", shards_per_client=1, seed=0)
    >>> [len(p) for p in parts], sorted(np.unique(y[p]).size for p in parts)
    ([25, 25, 25, 25], [1, 1, 1, 1])
    >>> parts = partition(y, 5, "dirichlet", alpha=0.3, seed=1)
    >>> np.array_equal(np.sort(np.concatenate(parts)), np.arange(100))
    True
    >>> partition(y, 3, "bogus")
    Traceback (most recent call last):
    ...
    ValueError: unknown partition scheme 'bogus'; choose one of dirichlet, iid, quantity, shards
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown partition scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    y = _labels_1d(labels)
    n = len(y)
    if isinstance(n_clients, bool) or not isinstance(n_clients, (int, np.integer)) or n_clients < 1:
        raise ValueError(f"n_clients must be a positive integer, got {n_clients!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise ValueError(f"min_size must be a non-negative integer, got {min_size!r}")
    if n_clients * min_size > n:
        raise ValueError(
            f"cannot give {n_clients} clients >= min_size={min_size} samples each: only {n} samples"
        )
    rng = np.random.default_rng(seed)

    if scheme == "iid":
        parts = _split_iid(n, n_clients, rng)
    elif scheme == "dirichlet":
        if not alpha > 0 or not np.isfinite(alpha):
            raise ValueError(f"dirichlet alpha must be a finite number > 0, got {alpha!r}")
        if max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {max_tries!r}")
        if n == 0:
            return [np.empty(0, np.int64) for _ in range(n_clients)]
        _, codes = np.unique(y, return_inverse=True)
        parts = _split_dirichlet(codes.ravel(), n_clients, float(alpha), min_size, max_tries, rng)
    elif scheme == "shards":
        s = shards_per_client
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
            raise ValueError(f"shards_per_client must be a positive integer, got {s!r}")
        if n < n_clients * s:
            raise ValueError(
                f"shards: {n} samples cannot fill {n_clients} clients x {s} shards_per_client"
            )
        smallest = s * (n // (n_clients * s))
        if smallest < min_size:
            raise ValueError(
                f"shards: smallest client would get {smallest} samples < min_size={min_size}"
            )
        _, codes = np.unique(y, return_inverse=True)
        parts = _split_shards(codes.ravel(), n_clients, int(s), rng)
    else:  # quantity
        q = alpha if quantity_alpha is None else quantity_alpha
        if not q > 0 or not np.isfinite(q):
            raise ValueError(f"quantity_alpha must be a finite number > 0, got {q!r}")
        parts = _split_quantity(n, n_clients, float(q), min_size, rng)
    return _sorted_parts(parts)


def label_counts(labels: np.ndarray, parts: list[np.ndarray], n_classes: int) -> np.ndarray:
    """Per-client class histogram, shape ``(n_clients, n_classes)``, int64.

    >>> label_counts(np.array([0, 1, 1, 2]), [np.array([0, 1]), np.array([2, 3])], 3).tolist()
    [[1, 1, 0], [0, 1, 1]]
    """
    y = _labels_1d(labels)
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes!r}")
    integral = np.issubdtype(y.dtype, np.integer) or (
        np.issubdtype(y.dtype, np.floating) and bool(np.all(y == np.round(y)))
    )
    if y.size and not integral:
        raise ValueError(f"labels must be integer class ids, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got range [{y.min()}, {y.max()}]")
    out = np.zeros((len(parts), n_classes), dtype=np.int64)
    for k, p in enumerate(parts):
        idx = np.asarray(p, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(y)):
            raise ValueError(f"client {k}: index out of range for {len(y)} labels")
        out[k] = np.bincount(y[idx], minlength=n_classes)
    return out


def summarize(labels: np.ndarray, parts: list[np.ndarray], n_classes: int) -> dict:
    """A JSON-serialisable description of how skewed a partition is.

    Keys: ``n_clients``, ``n_samples``, ``n_classes``, ``sizes``, ``label_counts``,
    ``mean_classes_per_client`` (classes with at least one sample), ``size_cv`` (coefficient of
    variation of client sizes: quantity skew) and ``mean_tv_distance``: the mean, over non-empty
    clients, of the total-variation distance ½·Σ|p_client − p_global| between a client's label
    distribution and the global one (0 = IID; near 1 = disjoint label sets).

    >>> y = np.array([0, 0, 1, 1])
    >>> summarize(y, [np.array([0, 2]), np.array([1, 3])], 2)["mean_tv_distance"]
    0.0
    >>> summarize(y, [np.array([0, 1]), np.array([2, 3])], 2)["mean_tv_distance"]
    0.5
    """
    counts = label_counts(labels, parts, n_classes)
    sizes = counts.sum(axis=1)
    total = counts.sum(axis=0)
    n = int(total.sum())
    nonempty = sizes > 0
    if n and nonempty.any():
        p_global = total / n
        p_client = counts[nonempty] / sizes[nonempty, None]
        tv = float(np.mean(0.5 * np.abs(p_client - p_global).sum(axis=1)))
    else:
        tv = 0.0
    mean_size = sizes.mean() if len(sizes) else 0.0
    return {
        "n_clients": len(parts),
        "n_samples": n,
        "n_classes": int(n_classes),
        "sizes": sizes.tolist(),
        "label_counts": counts.tolist(),
        "mean_classes_per_client": float((counts > 0).sum(axis=1).mean()) if len(parts) else 0.0,
        "size_cv": float(sizes.std() / mean_size) if mean_size else 0.0,
        "mean_tv_distance": tv,
    }
