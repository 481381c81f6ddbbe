"""Product quantisation (``pq``): vector quantisation of short sub-vectors against a learned codebook.

Jégou, Douze & Schmid 2011; the compressor FLSim offers for model updates. A tensor is cut into
m = ⌊n/dim⌋ sub-vectors of ``dim`` consecutive values; k-means (scikit-learn, k-means++ seeded from
the blob's seed, fitted on at most ``fit`` of them) learns K ≤ ``centroids`` of them; each
sub-vector travels as the index of its nearest centroid (⌈log₂K⌉ bits), the codebook (K×dim) and
the n − m·dim leftover values go on down the chain as sub-tensors: ``pq+fp16`` or
``pq:dim=4+q:bits=8`` halve or quarter the codebook. With dim=8 and K=256 that is 1 bit per
value plus the codebook, like ``sign`` but with a learned 8-dimensional shape instead of ±scale.

Updates of consecutive rounds look alike, so by default (``warm=1``) each tensor's codebook is kept
in the codec state and the next round's k-means starts from it instead of from k-means++.

The nearest centroid is taken against the *reconstructed* codebook (what the decoder will hold), so
every sub-vector decodes to the closest of the centroids the decoder has. Biased: pair it with ``ef``.
Small tensors (m ≤ K distinct sub-vectors) travel exactly, at more than their raw size: keep them
out with a rule (``ef+pq; numel<4096=none``).

>>> import fedpress, numpy as np
>>> x = np.random.default_rng(0).normal(size=65536).astype(np.float32)
>>> blob = fedpress.compress(x, "pq:dim=4,centroids=16+fp16", seed=1)  # 1 bit per value + codebook
>>> y = fedpress.decompress(blob)
>>> len(np.unique(y.reshape(-1, 4), axis=0)) <= 16, round(len(blob) * 8 / x.size, 2)
(True, 1.02)
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from fedpress.codecs._bits import pack_codes, packed_len, unpack_codes
from fedpress.codecs.base import Ctx, Param, Stage, numel, require_finite
from fedpress.codecs.quantize import _store_bits
from fedpress.codecs.spec import register
from fedpress.wire.errors import WireError

#: Sub-vectors per block of the nearest-centroid search: bounds its distance matrix to
#: 16 384 × K float64 values (32 MiB at K = 256).
_ASSIGN_CHUNK = 16384


def code_bits(k: int) -> int:
    """Bits per code for a codebook of k centroids (0 for one centroid: every code is 0)."""
    return max(0, math.ceil(math.log2(k))) if k > 1 else 0


def _one_thread():
    # scikit-learn's Lloyd iterations sum per-thread partial results, and a BLAS product may block
    # differently with more threads: the rounding, so the codebook and the codes, would depend on
    # the machine's thread count. One thread: same seed, same bytes, everywhere (law 4).
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def nearest(points: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Index of each point's nearest codebook row (squared L2; ties to the lowest index), in float64
    so that a centroid nearer by less than float32 rounding is still the one picked."""
    with _one_thread():
        return _nearest(points, codebook)


def _nearest(points: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    cb = codebook.astype(np.float64)
    cn = (cb * cb).sum(1)
    out = np.empty(points.shape[0], np.int64)
    for s in range(0, points.shape[0], _ASSIGN_CHUNK):
        p = points[s:s + _ASSIGN_CHUNK].astype(np.float64)
        # ‖p − c‖² = ‖p‖² − 2p·c + ‖c‖²; ‖p‖² is the same for every c, so it is left out.
        out[s:s + _ASSIGN_CHUNK] = np.argmin(cn[None, :] - 2.0 * (p @ cb.T), axis=1)
    return out


def fit_codebook(points: np.ndarray, k: int, iters: int, fit: int, rng: np.random.Generator,
                 start: np.ndarray | None = None) -> np.ndarray:
    """k-means centroids (float32, at most ``k`` rows: no more than the distinct points) fitted on at
    most ``fit`` of ``points`` drawn with ``rng``; Lloyd starts from ``start`` (last round's
    codebook) when it has the right shape, else from k-means++."""
    from sklearn.cluster import KMeans

    if points.shape[0] > fit:
        points = points[np.sort(rng.choice(points.shape[0], fit, replace=False))]
    distinct = np.unique(points, axis=0)
    k = min(k, distinct.shape[0])
    if k == distinct.shape[0]:  # as many centroids as distinct points: the points are the codebook
        return distinct.astype(np.float32)
    seed = int(rng.integers(2**31 - 1))
    warm = start is not None and start.shape == (k, points.shape[1]) and np.isfinite(start).all()
    km = KMeans(n_clusters=k, init=start.astype(points.dtype) if warm else "k-means++", n_init=1,
                max_iter=iters, random_state=seed)
    with warnings.catch_warnings(), _one_thread():
        warnings.simplefilter("ignore")  # a run cut short by max_iter is what was asked for
        km.fit(points)
    return km.cluster_centers_.astype(np.float32)


@register
class PQ(Stage):
    """Product quantisation: ``dim``-value sub-vectors → indices into a k-means codebook.

    Error bound: every sub-vector decodes to the centroid of the decoded codebook nearest to it (the
    leftover n mod dim values are exact before their own compression).
    """

    name = "pq"
    help = ("product quantisation (FLSim): dim-value sub-vectors -> index of the nearest of K "
            "k-means centroids; codebook handed on: dim=8, centroids=256, iters=10, fit=8192, warm=1 "
            "(k-means from last round's codebook); use with ef")
    role = "transform"
    checks_finite = True  # encode's own pass (before fitting) raises the pipeline's error
    params = {
        "dim": Param(int, 8, "values per sub-vector", lo=1, hi=64),
        "centroids": Param(int, 256, "codebook size K (codes of ceil(log2 K) bits)", lo=2, hi=256),
        "iters": Param(int, 10, "k-means (Lloyd) iterations", lo=1, hi=300),
        "fit": Param(int, 8192, "sub-vectors the codebook is fitted on (a seeded sample)", lo=2, hi=1 << 20),
        "warm": Param(bool, True, "start k-means from last round's codebook (codec state)"),
    }

    @property
    def stateful(self) -> bool:  # the codebook of the last round, per tensor (warm=1)
        return self.__dict__["warm"]

    @property
    def needs_seed(self) -> bool:  # the fitting sample and k-means++ draw from the seed
        return True

    def encode(self, x, ctx: Ctx, rest):
        flat = x.ravel()
        require_finite(bool(np.isfinite(flat).all()), ctx)
        m = flat.size // self.dim
        tail = flat[m * self.dim:]
        if m == 0:
            (t,) = rest([tail])
            return t.reshape(x.shape)
        pts = flat[: m * self.dim].reshape(m, self.dim)
        start = ctx.state_in.get(ctx.state_key) if self.warm else None
        cb = fit_codebook(pts, self.centroids, self.iters, self.fit, ctx.rng(), start)
        if self.warm:
            ctx.state_out[ctx.state_key] = cb
        ctx.write(bytes([cb.shape[0] - 1]))
        cb_rec, t = rest([cb, tail])
        codes = nearest(pts, cb_rec)
        b = code_bits(cb.shape[0])
        ctx.write(pack_codes(codes.astype(np.uint8), _store_bits(b, ctx)) if b else b"")
        return np.concatenate([cb_rec[codes].reshape(-1), t]).reshape(x.shape)

    def decode(self, shape, ctx: Ctx, rest):
        n = numel(shape)
        m = n // self.dim
        if m == 0:
            (t,) = rest([(n,)])
            return t.reshape(shape)
        k = ctx.read(1, "codebook size")[0] + 1
        if k > self.centroids or k > m:
            raise WireError(f"tensor {ctx.name!r}: codebook of {k} centroids for {m} sub-vectors "
                            f"(at most {min(self.centroids, m)})")
        cb, t = rest([(k, self.dim), (n - m * self.dim,)])
        b = code_bits(k)
        if b:
            sb = _store_bits(b, ctx)
            codes = unpack_codes(ctx.read(packed_len(m, sb), "pq codes"), m, sb)
            if codes.size and int(codes.max()) >= k:
                raise WireError(f"tensor {ctx.name!r}: pq code {int(codes.max())} beyond its {k} centroids")
        else:
            ctx.read(0, "pq codes")
            codes = np.zeros(m, np.int64)
        return np.concatenate([cb[codes].reshape(-1), t]).reshape(shape)
