"""Random rotation before quantising: the randomized Hadamard transform (``rht``).

A low-bit quantiser stores a few levels of one scale per block (min/max, mean |g|, the L2 norm), so
a single outlier or a heavy tail inflates the scale and wastes the levels on everyone else. The
rotation ``y = H·D·g`` (D: diagonal of random ±1 drawn from the blob's seed, H: the orthonormal
Walsh-Hadamard matrix) spreads every coordinate's energy over its whole chunk: the rotated values
are close to Gaussian with the same L2 norm, whatever ``g`` looked like, and the scale fits them
(Suresh et al. 2017, "Distributed mean estimation with limited communication"; DRIVE, Vargaftik
et al. 2021; EDEN, Vargaftik et al. 2022; TensorFlow Federated's Hadamard encoders).

>>> import fedpress, numpy as np
>>> g = np.random.default_rng(0).standard_t(2, size=5000).astype(np.float32)  # heavy tails
>>> def rel_err(spec):
...     y = fedpress.decompress(fedpress.compress(g, spec, seed=1))
...     return float(np.linalg.norm(y - g) / np.linalg.norm(g))
>>> rel_err("rht+q:bits=2") < 0.5 * rel_err("q:bits=2"), rel_err("rht+sign") < 0.75 * rel_err("sign")
(True, True)
>>> len(fedpress.compress(g, "rht+q:bits=2")) - len(fedpress.compress(g, "q:bits=2"))  # "rht+"
4

Why it is safe to put in front of any quantiser:

* H and D are orthogonal, so the decoder's inverse ``g' = D·Hᵀ·y'`` (H is symmetric) turns the
  quantiser's error ``y − y'`` into an error of exactly the same L2 norm: ``‖g − g'‖₂ = ‖y − y'‖₂``.
* Given the seed, the rotation is a fixed linear map, so an unbiased quantiser stays unbiased:
  E[g'] = D·Hᵀ·E[y'] = D·Hᵀ·H·D·g = g. ``rht+qsgd`` and ``rht+ternary`` are unbiased codecs.
* Nothing travels: D is regenerated from the blob's seed (like random-k's positions) and H has no
  parameters, and the rotation keeps the tensor's shape and size (no padding, see below), so the
  payload is exactly as long as without it; the blob grows by the four characters ``rht+`` of
  its spec (none with ``spec_ref=True``) and, for a deterministic quantiser, the seed's varint.

When it does not help (measured, ``tests/codecs/test_rotate.py``): on Gaussian-like updates the
rotated values look like the input, so the error is unchanged and the rotation only costs time;
when a few huge outliers carry most of the L2 norm, a block-scaled quantiser already stores them
exactly (they are its scale) and rotating spreads them over their chunk, so ``q`` gets worse; and
QSGD's variance grows with ‖g‖₁·‖g‖₂, smallest for sparse-looking vectors and largest for the
dense ones a rotation produces, so ``rht+qsgd`` is unbiased but noisier than ``qsgd`` on heavy
tails. It pays off for dense heavy tails (Student-t) and for outliers that spoil every block's
scale without dominating the norm, with ``sign``, ``q:bits=1..4`` and ``ternary``.

Chunks. H needs a power-of-two length, and padding a tensor to one would cost up to 2x the codes.
Instead the flat tensor of n values is cut into chunks of ``block`` (a power of two) and the
remainder n mod block into its binary decomposition, largest first (1000 = 512+256+128+64+32+8),
each chunk rotated on its own. The next stage sees exactly n values; small tail chunks mix less
(a chunk of 1 is only sign-flipped), which costs nothing but a little of the benefit on the tail.

Same bytes on every path. The rotated values are what the next stage quantises, so a difference in
their last bit can change the blob. They are defined by the NumPy code here: float32 butterflies
``(a + b, a − b)`` with half-width h = 1, 2, 4, ... in that order, then one float32 multiplication
by the chunk's scale ``float32(1/√m)``; sign flips are exact. The numba kernel
(:mod:`fedpress.kernels._rht`, when :func:`fedpress.kernels.cpu` is on) repeats exactly these
operations, faster. Not a BLAS matmul: its summation order (and FMAs) vary by library and thread.

Cost: about 2 ms per million values each way with the kernel (~25 ms on the NumPy path), a few
times the quantiser it precedes (``fedpress bench codecs --codec rht+q:bits=2``).
"""

from __future__ import annotations

import math

import numpy as np

from fedpress import kernels
from fedpress.codecs.base import Ctx, Param, Stage, numel
from fedpress.codecs.spec import register
from fedpress.wire.format import to_numpy


def chunk_sizes(n: int, block: int) -> list[int]:
    """The power-of-two chunks n values are cut into: ⌊n/block⌋ chunks of ``block``, then the
    remainder's binary decomposition, largest first.

    >>> chunk_sizes(10, 4), chunk_sizes(1000, 4096), chunk_sizes(0, 8)
    ([4, 4, 2], [512, 256, 128, 64, 32, 8], [])
    """
    rest = n % block
    tail = [1 << k for k in range(block.bit_length() - 1, -1, -1) if rest >> k & 1]
    return [block] * (n // block) + tail


def chunk_scale(m: int) -> np.float32:
    """The normalisation 1/√m of a chunk of m values, rounded once to float32 (exact when m is a
    power of 4). Both paths use this constant."""
    return np.float32(1.0 / math.sqrt(m))


def _layout(n: int, block: int):
    sizes = np.array(chunk_sizes(n, block), np.int64)
    offs = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if sizes.size else sizes
    scales = np.array([chunk_scale(int(m)) for m in sizes], np.float32)
    return offs, sizes, scales


def fwht(a: np.ndarray) -> np.ndarray:
    """Unnormalised Walsh-Hadamard transform of each row of ``a`` (rows, m), m a power of two, in
    Sylvester order (``scipy.linalg.hadamard``); float32 butterflies, half-width h = 1, 2, 4, ...

    >>> fwht(np.array([[1, 0, 0, 0], [1, 2, 3, 4]], np.float32)).tolist()
    [[1.0, 1.0, 1.0, 1.0], [10.0, -2.0, -4.0, 0.0]]
    """
    rows, m = a.shape
    src = np.ascontiguousarray(a, np.float32)
    if m == 1:
        return src.copy()
    dst = np.empty_like(src)
    h = 1
    while h < m:
        # (rows, m) as (rows, pairs, 2, h): element [.., 0, i] pairs with [.., 1, i], h apart.
        v = src.reshape(rows, m // (2 * h), 2, h)
        o = dst.reshape(rows, m // (2 * h), 2, h)
        np.add(v[:, :, 0], v[:, :, 1], out=o[:, :, 0])
        np.subtract(v[:, :, 0], v[:, :, 1], out=o[:, :, 1])
        # ping-pong (the input is never written: the first pass reads it, later ones their buffers)
        src, dst = dst, (np.empty_like(src) if src is a else src)
        h *= 2
    return src


def rotate_reference(flat: np.ndarray, signs: np.ndarray, block: int, forward: bool) -> np.ndarray:
    """The definition: forward ``scale·H(D·x)`` or inverse ``D·(scale·H x)``, chunk by chunk.

    ``signs`` holds one bit per value (LSB first; set = negate). Full chunks are transformed
    together as the rows of one array; the tail chunks one by one.
    """
    x = np.ascontiguousarray(flat, np.float32).reshape(-1)
    n = x.size
    neg = np.unpackbits(signs, count=n, bitorder="little").view(bool)
    out = x.copy()
    if forward:
        np.negative(out, out=out, where=neg)
    full = n // block
    groups = [(0, full, block)] if full else []
    off = full * block
    for m in chunk_sizes(n - off, block):
        groups.append((off, 1, m))
        off += m
    for start, rows, m in groups:
        seg = out[start : start + rows * m].reshape(rows, m)
        np.multiply(fwht(seg), chunk_scale(m), out=seg)
    if not forward:
        np.negative(out, out=out, where=neg)
    return out


def rotate(flat: np.ndarray, signs: np.ndarray, block: int, forward: bool) -> np.ndarray:
    """:func:`rotate_reference`, through the numba kernel when it is on (same bits)."""
    if kernels.cpu() is not None:
        from fedpress.kernels import _rht

        offs, sizes, scales = _layout(flat.size, block)
        return _rht.rotate(flat, signs, offs, sizes, scales, forward)
    return rotate_reference(flat, signs, block, forward)


def _finite(y: np.ndarray) -> bool:
    # A float32 sum is inf or NaN whenever a value is; only if it overflows on finite values does
    # the exact check run.
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.add.reduce(y)):
            return True
    return bool(np.isfinite(y).all())


@register
class RHT(Stage):
    """Randomized Hadamard rotation ``y = H·D·g`` before the next stage, inverted after it
    (``g' = D·Hᵀ·y'``): D is random ±1 from the blob's seed, H the orthonormal Walsh-Hadamard
    transform of each power-of-two chunk (``block`` values, the tail cut into its binary
    decomposition). Same shape and size: no bytes of its own, no padding.

    Makes heavy-tailed and outlier-dominated updates near-Gaussian, so low-bit quantisers
    (``sign``, ``q:bits=1..4``, ``qsgd``, ``ternary``) lose far less. Linear and fixed given the
    seed: unbiased stages after it stay unbiased.

    Error bound: the rest of the chain's L2 error, unchanged (the rotation is orthogonal), plus
    float32 rounding of about 1e-7·‖g‖₂.
    """

    name = "rht"
    help = ("randomized Hadamard rotation (signs from the seed) before a quantiser, for heavy "
            "tails/outliers; no extra bytes: block=4096 (power of two)")
    role = "transform"
    params = {"block": Param(int, 4096, "chunk length (a power of two)", lo=2, hi=1 << 20)}
    recon_optional = True

    @property
    def unbiased(self):
        return True  # linear and exact (up to float32 rounding): E[g'] = rotation⁻¹(E[y'])

    @property
    def needs_seed(self):  # the signs D come from the seed
        return True

    def validate(self):
        b = self.block
        if b & (b - 1):
            raise ValueError(f"block must be a power of two (2, 4, ..., {1 << 20}), got {b}")

    @staticmethod
    def _signs(n: int, ctx: Ctx) -> np.ndarray:
        # One random bit per value from this stage's stream (seed, tensor, chain position), as
        # random-k draws its positions: same seed, same signs, on both sides.
        return np.frombuffer(ctx.rng().bytes((n + 7) // 8), np.uint8)

    def encode(self, x, ctx, rest):
        flat = np.ascontiguousarray(x, np.float32).reshape(-1)
        with np.errstate(over="ignore", invalid="ignore"):
            y = rotate(flat, self._signs(flat.size, ctx), self.block, forward=True)
        if not _finite(y):
            # Finite input whose chunk norm exceeds float32 (values near ±3.4e38): refused as q
            # refuses a block whose span overflows, rather than quantising inf.
            raise ValueError(f"tensor {ctx.name or '(top level)'!r}: rht's rotation overflows float32 "
                             f"(a chunk's L2 norm is beyond 3.4e38); scale the update down")
        (r,) = rest([y.reshape(x.shape)])
        if r is None or not ctx.recon:  # no reconstruction wanted
            return None
        return self._inverse(r, ctx, x.shape)

    def decode(self, shape, ctx, rest):
        # The rest first: a blob that lies about the shape fails there, before the signs are drawn.
        (r,) = rest([tuple(shape)])
        return self._inverse(r, ctx, shape)

    def _inverse(self, r, ctx, shape):
        # r may be a torch tensor (decompress(..., device=) where the next stage decodes on the
        # device); the rotation runs on the host.
        y = np.ascontiguousarray(to_numpy(r), np.float32).reshape(-1)
        return rotate(y, self._signs(numel(shape), ctx), self.block, forward=False).reshape(shape)
