"""Count-sketch compression (``sketch``): sparsification that secure aggregation can sum.

Top-k keeps different positions on every client, so top-k updates cannot be added inside a masked
sum. A count sketch (Charikar, Chen & Farach-Colton 2002) can: it is *linear*. FetchSGD
(Rothchild et al., ICML 2020) sends the sketch of each client's update, sums the sketches (the sum
of sketches is the sketch of the sum, so a secure sum works), and recovers the heavy coordinates
of the *sum* from it.

The sketch of a flat tensor x of n values is R rows × C buckets. Row r hashes every coordinate i
to a bucket h_r(i) and a sign s_r(i), and adds s_r(i)·x_i there:

    S[r, b] = Σ_{i : h_r(i) = b} s_r(i)·x_i.

Decoding ("unsketching") estimates every coordinate from each row, s_r(i)·S[r, h_r(i)], which is
x_i plus the signed sum of the coordinates colliding with i in that row, and takes the median over
the rows (``est=median``, the default) or their mean (``est=mean``). With ``k`` only the k
largest-magnitude estimates are kept and the rest are zeroed: FetchSGD's recovery of the heavy
hitters.

>>> import fedpress, numpy as np
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(0, 0.01, 100_000).astype(np.float32)     # a small dense tail ...
>>> heavy = rng.choice(100_000, 10, replace=False)
>>> x[heavy] = rng.choice([-1.0, 1.0], 10) * rng.uniform(2, 4, 10)   # ... and 10 heavy coordinates
>>> blob = fedpress.compress(x, "sketch:rows=7,cols=2000,k=10+q:bits=8", seed=1)
>>> y = fedpress.decompress(blob)
>>> sorted(np.flatnonzero(y)) == sorted(heavy), float(np.abs(y[heavy] - x[heavy]).max()) < 0.2
(True, True)
>>> len(blob) < 7 * 2000 + 600 < x.size              # 7 rows x 2000 one-byte codes, whatever n is
True

Why it works, and when it does not:

* Linearity: given the hashes (from the seed), S is a fixed linear map of x, so clients that share
  the seed can sum their sketches; :class:`~fedpress.privacy.codes.SharedRangeCodec` does exactly
  that under secure aggregation (``[ef+]sketch:...+q|fixed``) with hashes shared by the round.
* Error: a row's estimate of x_i is off by the sum of the ~n/C coordinates colliding with it, with
  random signs: about ‖x_tail‖₂/√C, where x_tail is x without its largest coordinates (a heavy
  coordinate lands in a bucket of its own in most rows, and the median ignores the rows where it
  does not). Coordinates much larger than that are recovered; the rest is noise of that size. So
  the sketch pays off when ‖x‖ is concentrated on a few coordinates, and on dense updates (small
  models, gradients without heavy hitters) the estimates are mostly noise: ``fedpress bench codecs
  --shape flat`` on 1M Gaussian values at 0.17 bits per value gives a relative L2 error of 1.2 to 2
  with ``k`` (top-k and random-k: 0.96 and 0.99). Without ``k`` the dense estimate has an error of
  about √(n/C)·‖x‖₂ in all, far more than ‖x‖₂ when n ≫ C. In training it did better than one
  blob suggests (digits, under "Error feedback" below: ahead of random-k at the same bytes).
* False positives: a coordinate that collides with heavy hitters of one sign in a majority m =
  ⌊R/2⌋+1 of the rows looks heavy itself. With h heavy hitters that happens to about
  n·C(R, m)·(h/C)ᵐ/2ᵐ⁻¹ coordinates: with R = 5, h = 10, C = 2000 and n = 10⁵ about one blob in
  thirty has one (measured: 3 in 40), with R = 7 about one in four thousand (0 in 60). Make C a few
  hundred times the number of heavy hitters, or add rows.
* Bias: with one or two rows, or ``est=mean``, every estimate is unbiased over the seed (the signs
  are pairwise independent, so the collisions average to zero), and the stage is marked unbiased.
  The median of three or more rows is not unbiased (it is robust: one row's collision with a heavy
  coordinate does not spoil the estimate), nor is any ``k`` (dropping the small estimates is
  top-k's bias). Deterministic bound, for every estimate: |x̂_i − x_i| ≤ ‖x‖₁ − |x_i| (each row's
  collisions sum to at most that).

Size. The sketch, R·C values, is handed to the rest of the chain as an (R, C) sub-tensor, so
``sketch:cols=C+q:bits=8`` quantises it and the blob holds R·C codes plus q's scales, whatever the
tensor's size: the bytes depend on R×C, not on n. ``ratio=r`` sets C = ⌈r·n⌉ per tensor instead (the
bytes then follow n). A tensor of n ≤ R·C values travels as it is (its sketch would cost more than
its values and lose accuracy): the rest of the chain sees the n values, and decoding returns them,
top-k'd with ``k``. In a state_dict the biases usually take that route.

Hashing. Each row hashes coordinate i with simple tabulation (four random tables indexed by i's
bytes, XORed; :class:`Hashes`), the tables drawn from the blob's seed: 3-wise independent, more
than the pairwise independence of buckets and signs the estimates need, and nothing about the
hashes travels. It is cheap (one XOR per coordinate and row, see :class:`Hashes`) and gives every
coordinate the same hashes whatever n is.

Same bytes on every path: the sketch is defined as float64 sums of the float32 values, per row in
chunks of max(2¹⁸, 4·C) coordinates (``np.bincount`` within a chunk, in index order; the chunks'
sums added in order), rounded once to float32. The estimates are exact float32 gathers and sign
flips, their median the middle value (the mean of the two middle ones, in float64, for even R),
their mean a float64 mean; top-k breaks ties by index (:func:`~fedpress.codecs.sparsify.topk_indices`).

Cost: about R hash-and-bincount passes over the tensor to encode and R hash-and-gather passes to
decode (tens of ms per million values; ``fedpress bench codecs --codec sketch:cols=...``).

Error feedback. ``ef+sketch`` keeps x minus what the decoder returns, exactly, as for every stage.
But error feedback only converges when the compressor is a contraction (‖x − x̂‖ < ‖x‖), and a
sketch that resolves few coordinates is not: its top-k of noisy estimates puts noise on false
positives, the residual takes that noise back, and it grows round after round. Measured on digits
(a 4810-value MLP) under secure aggregation (``benchmarks/sketch_secagg.py``, 3 seeds):
``sketch:cols=80,rows=3,k=240+q:bits=8`` ends at 0.84 accuracy, with ``ef+`` at 0.15 (the
aggregate grew without bound: the shared range, 4x its peak, went from 1 to 2·10⁵-3·10⁷ in 40
rounds); with this stage's exact error feedback, without secure aggregation,
``ef+sketch:cols=240,rows=1,k=240+q:bits=8`` ended at 0.23 (one seed). Use ``ef`` only with
sketches large enough to resolve what they keep. FetchSGD instead keeps the error accumulator *in
sketch space on the server* (possible because sketches are linear): under secure aggregation
``ef+sketch`` means exactly that (clients keep no residual; the server accumulates the summed
sketches with hashes fixed for the run, applies the top-k and zeroes its buckets:
:meth:`fedpress.privacy.codes.SharedRangeCodec.accumulate`), which no longer diverges there
(digits, 3 seeds: 0.904 ± 0.005 at 900 codes vs 0.888 ± 0.015 without ``ef``; 0.794 ± 0.056 vs
0.838 ± 0.023 at 240). FetchSGD's momentum in sketch space is not implemented.
"""

from __future__ import annotations

import numpy as np

from fedpress.codecs.base import Ctx, Param, Stage, numel
from fedpress.codecs.sparsify import keep_count, topk_indices
from fedpress.codecs.spec import register
from fedpress.wire.format import to_numpy

#: Coordinates hashed at a time when decoding (bounds the decoder's working memory at R × this).
_DECODE_CHUNK = 1 << 16
#: Upper limit of C (and k): tensors hold at most 2²⁸ values (:class:`fedpress.Limits`), and the
#: bucket formula ((h >> 32)·C) >> 32 needs C < 2³².
MAX_COLS = 1 << 28


def hash_tables(rng: np.random.Generator, rows: int) -> np.ndarray:
    """(rows, 4, 256) uint64: each row's tabulation tables, from ``rng``'s bytes."""
    return np.frombuffer(rng.bytes(8 * 1024 * rows), "<u8").astype(np.uint64).reshape(rows, 4, 256)


class Hashes:
    """Buckets and signs of coordinates 0..n−1 in every row, by simple tabulation hashing.

    Coordinate i's 64-bit hash in row r is T₀[i₀] ⊕ T₁[i₁] ⊕ T₂[i₂] ⊕ T₃[i₃] (i's four bytes,
    the tables random): 3-wise independent (Pătraşcu & Thorup 2012), so buckets and signs are
    pairwise independent and the estimates unbiased over the seed. The sign is the hash's lowest
    bit, the bucket ((h >> 32)·C) >> 32. Within a run of 2¹⁶ consecutive coordinates the upper
    two bytes are fixed, so the hashes are one table of T₀ ⊕ T₁ (built once per row) XORed with a
    constant: no gathers.

    >>> hs = Hashes(hash_tables(np.random.default_rng(0), 2), 6)
    >>> bkt, low = hs.row(1, 0, 6, 4)
    >>> bool(bkt.min() >= 0 and bkt.max() < 4 and low.max() <= 1), bkt.shape
    (True, (6,))
    """

    def __init__(self, tables: np.ndarray, n: int):
        self.tables = tables
        m = np.arange(min(n, 1 << 16))
        self.low = [t[1][m >> 8] ^ t[0][m & 255] for t in tables]

    def hashes(self, r: int, start: int, stop: int) -> np.ndarray:
        t, low = self.tables[r], self.low[r]
        out = np.empty(stop - start, np.uint64)
        pos = start
        while pos < stop:
            hi, lo = pos >> 16, pos & 0xFFFF
            end = min(stop, (hi + 1) << 16)
            np.bitwise_xor(low[lo : lo + end - pos], t[2][hi & 255] ^ t[3][(hi >> 8) & 255],
                           out=out[pos - start : end - start])
            pos = end
        return out

    def row(self, r: int, start: int, stop: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
        """(bucket in [0, cols), sign bit: 1 = negate, as uint64) of coordinates start..stop−1 in
        row r."""
        h = self.hashes(r, start, stop)
        low = h & np.uint64(1)
        h >>= np.uint64(32)
        h *= np.uint64(cols)  # < 2³² · 2³²: no overflow
        h >>= np.uint64(32)
        return h.astype(np.intp), low


def flip_signs(a: np.ndarray, low: np.ndarray) -> None:
    """Negate a[i] (float32 or float64, in place) where low[i] is 1: an XOR of the sign bit, exact,
    and several times faster than ``np.negative(..., where=)``."""
    if a.dtype == np.float32:
        a.view(np.uint32)[...] ^= (low << np.uint64(31)).astype(np.uint32)
    else:
        a.view(np.uint64)[...] ^= low << np.uint64(63)


def encode_chunk(n: int, cols: int) -> int:
    """Coordinates summed per ``np.bincount`` when sketching (part of the definition of the bytes:
    float sums depend on their order). Large enough that the per-chunk cost O(C) stays small."""
    return max(1 << 18, 4 * cols)


def sketch_of(flat: np.ndarray, tables: np.ndarray, cols: int) -> np.ndarray:
    """The (R, C) count sketch of ``flat`` as float64 sums (see the module doc for their order)."""
    x = np.asarray(flat).reshape(-1)
    n, rows = x.size, tables.shape[0]
    hs = Hashes(tables, n)
    out = np.zeros((rows, cols), np.float64)
    step = encode_chunk(n, cols)
    for start in range(0, n, step):
        stop = min(n, start + step)
        for r in range(rows):
            bkt, low = hs.row(r, start, stop, cols)
            w = x[start:stop].astype(np.float64)
            flip_signs(w, low)
            out[r] += np.bincount(bkt, weights=w, minlength=cols)
    return out


def estimates(sk: np.ndarray, n: int, tables: np.ndarray, est: str = "median") -> np.ndarray:
    """Every coordinate's estimate from sketch ``sk`` (R, C): the median (or mean) over the rows of
    s_r(i)·sk[r, h_r(i)]. Same dtype as ``sk`` (float32 in the stage, float64 under secure
    aggregation)."""
    rows, cols = sk.shape
    hs = Hashes(tables, n)
    out = np.empty(n, sk.dtype)
    for start in range(0, n, _DECODE_CHUNK):
        stop = min(n, start + _DECODE_CHUNK)
        vals = np.empty((rows, stop - start), sk.dtype)
        for r in range(rows):
            bkt, low = hs.row(r, start, stop, cols)
            np.take(sk[r], bkt, out=vals[r])
            flip_signs(vals[r], low)
        out[start:stop] = _combine(vals, est)
    return out


def _combine(vals: np.ndarray, est: str) -> np.ndarray:
    rows = vals.shape[0]
    if rows == 1:
        return vals[0]
    if est == "mean" or rows == 2:  # the median of two values is their mean
        return (vals.sum(axis=0, dtype=np.float64) / rows).astype(vals.dtype)
    _sort_rows(vals)
    mid = rows // 2
    if rows % 2:
        return vals[mid]
    return ((vals[mid - 1].astype(np.float64) + vals[mid]) / 2).astype(vals.dtype)


def _sort_rows(vals: np.ndarray) -> None:
    """Sort each column of ``vals`` (R, m) in place with an odd-even transposition network of
    elementwise min/max: R(R−1)/2 compare-exchanges of whole rows, several times faster than
    ``np.partition`` along the short axis for R ≤ 15."""
    rows = vals.shape[0]
    tmp = np.empty_like(vals[0])
    for p in range(rows):
        for i in range(p % 2, rows - 1, 2):
            a, b = vals[i], vals[i + 1]
            np.minimum(a, b, out=tmp)
            np.maximum(a, b, out=b)
            a[:] = tmp


def keep_top(v: np.ndarray, k: int) -> np.ndarray:
    """``v`` with all but its k largest-magnitude values zeroed (in place; ties: lowest indices).
    NaN (only from a corrupted blob) counts as zero."""
    if k <= 0 or k >= v.size:
        return v
    with np.errstate(invalid="ignore"):
        if not np.isfinite(np.add.reduce(v, dtype=np.float64)):
            v[np.isnan(v)] = 0
    idx = topk_indices(v, k)
    kept = v[idx]
    v[:] = 0
    v[idx] = kept
    return v


def unsketch(sk: np.ndarray, n: int, tables: np.ndarray, est: str = "median", k: int = 0) -> np.ndarray:
    """Estimates of the n coordinates from sketch ``sk``, only the k largest kept when k > 0."""
    return keep_top(estimates(sk, n, tables, est), k)


@register
class Sketch(Stage):
    """Count sketch of R rows × C buckets (hashes from the blob's seed) handed to the rest of the
    chain as an (R, C) sub-tensor; decoding estimates each coordinate as the median over rows of
    s_r(i)·S[r, h_r(i)] and, with ``k``, keeps the k largest estimates (FetchSGD, Rothchild et al.
    2020). Linear, so secure aggregation can sum sketches. Bytes depend on R×C, not on the tensor's
    size; a tensor of n ≤ R·C values travels as it is.

    Unbiased with rows ≤ 2 or ``est=mean`` and no k; biased otherwise (median, top-k).
    Error bound: |x̂_i − x_i| ≤ ‖x‖₁ − |x_i| for every estimate; typically ‖x_tail‖₂/√C.
    """

    name = "sketch"
    help = ("count sketch (FetchSGD): rows x cols buckets, hashes from the seed; decode = median over "
            "rows, k=K keeps the K largest (heavy hitters); linear, so secagg can sum it: cols=C or "
            "ratio=r, rows=5, k=0 (all), est=median|mean, momentum=rho (the server's, ef+sketch under secagg)")
    role = "transform"
    params = {
        "cols": Param(int, 0, "buckets per row C (0: set by ratio)", lo=0, hi=MAX_COLS),
        "ratio": Param(float, 0.0, "C = ceil(ratio*n) per tensor, instead of cols (0: use cols)", lo=0.0,
                       hi=1.0),
        "rows": Param(int, 5, "rows R (independent hashes; odd is best for the median)", lo=1, hi=15),
        "k": Param(int, 0, "keep the k largest-magnitude estimates (0: all)", lo=0, hi=MAX_COLS),
        "est": Param(str, "median", "estimate from the rows: median or mean", choices=("median", "mean")),
        "momentum": Param(float, 0.0, "FetchSGD's momentum rho in sketch space, kept by the server (ef+sketch "
                          "under secure aggregation only)", lo=0.0, hi=0.999),
    }
    recon_optional = True

    @property
    def unbiased(self):
        return self.k == 0 and (self.rows <= 2 or self.est == "mean")

    @property
    def needs_seed(self):  # the hashes come from the seed
        return True

    def validate(self):
        if not self.cols and not self.ratio:
            raise ValueError("give the sketch's size: cols=C (buckets per row) or ratio=r (C = r·n)")
        if self.cols and self.ratio:
            raise ValueError("give cols or ratio, not both")

    def columns(self, n: int) -> int:
        """C for a tensor of n values."""
        return self.cols if self.cols else keep_count(n, self.ratio)

    def sketched(self, n: int) -> bool:
        """Whether a tensor of n values is sketched (n > R·C), or travels as it is."""
        return n > self.rows * self.columns(n)

    def tables(self, ctx: Ctx) -> np.ndarray:
        # From this stage's stream (seed, tensor, chain position), as rht's signs: same seed, same
        # hashes, on both sides.
        return hash_tables(ctx.rng(), self.rows)

    def encode(self, x, ctx, rest):
        if self.momentum:
            # A client never applies it: the server keeps the momentum sketch (SharedRangeCodec.accumulate)
            raise ValueError("sketch momentum is FetchSGD's server-side momentum: it needs ef+sketch under "
                             "secure aggregation (--secagg)")
        flat = np.ascontiguousarray(x, np.float32).reshape(-1)
        n = flat.size
        if not self.sketched(n):
            (r,) = rest([x])
            if r is None or not ctx.recon:
                return None
            return keep_top(np.array(to_numpy(r), np.float32).reshape(-1), self.k).reshape(x.shape)
        tables = self.tables(ctx)
        s64 = sketch_of(flat, tables, self.columns(n))
        with np.errstate(over="ignore"):
            sk = s64.astype(np.float32)
        if not np.isfinite(sk).all():
            # Finite input whose bucket sums exceed float32 (or NaN/inf input): refused, as rht
            # refuses a rotation that overflows, rather than sketching inf.
            raise ValueError(f"tensor {ctx.name or '(top level)'!r} holds NaN or inf, or its sketch "
                             f"overflows float32 (a bucket sum beyond 3.4e38); scale the update down")
        (r,) = rest([sk])
        if r is None or not ctx.recon:
            return None
        return self._unsketch(r, n, tables).reshape(x.shape)

    def decode(self, shape, ctx, rest):
        n = numel(shape)
        if not self.sketched(n):
            (r,) = rest([tuple(shape)])
            return keep_top(np.array(to_numpy(r), np.float32).reshape(-1), self.k).reshape(shape)
        # The rest first: a blob that lies fails there, before anything is hashed. The sketch
        # (R·C < n values) is never larger than the tensor the structure declared.
        (r,) = rest([(self.rows, self.columns(n))])
        return self._unsketch(r, n, self.tables(ctx)).reshape(shape)

    def _unsketch(self, r, n, tables):
        sk = np.ascontiguousarray(to_numpy(r), np.float32).reshape(self.rows, -1)
        return unsketch(sk, n, tables, self.est, self.k)
