"""Per-block reductions whose result does not depend on who computes them.

Min and max are exact, so any order gives the same bits. Floating-point *sums* are not: NumPy's
pairwise summation, einsum's SIMD kernels and a multithreaded kernel all round differently, and a
scale that differs in its last bit changes the blob. So the sums that travel (sign's mean |g|,
QSGD's block norm) follow one explicit order, written here in NumPy (the reference) and mirrored by
:mod:`fedpress.kernels`:

* a block is cut into *spans* of ``SUM_SPAN`` values (the last one shorter);
* inside a span, value ``i`` goes to lane ``i % SUM_LANES``; each lane adds its values in float64,
  in index order, starting from 0.0;
* the span's sum is lane 0 + lane 1 + ... + lane 15, left to right;
* the block's sum is span 0 + span 1 + ..., left to right.

Spans are what a kernel thread takes (they make the sum parallel) and lanes are what a SIMD register
holds (they make it fast); everything is nonnegative (|g| or g², both exact in float64), so zero
padding never changes a sum.

>>> x = np.arange(-3, 4, dtype=np.float32)
>>> block_sums(x, 0).tolist(), block_sums(x, 4, square=True).tolist()
([12.0], [14.0, 14.0])
"""

from __future__ import annotations

import numpy as np

SUM_LANES = 16
SUM_SPAN = 4096


def block_shape(n: int, block: int) -> tuple[int, int]:
    """(number of blocks, block size) of n values cut into blocks of ``block`` (0 = one block).

    >>> block_shape(10, 4), block_shape(10, 0), block_shape(0, 4)
    ((3, 4), (1, 10), (0, 1))
    """
    if n == 0:
        return 0, 1
    if block <= 0 or block >= n:
        return 1, n
    return -(-n // block), block


def block_sums(flat: np.ndarray, block: int, square: bool = False) -> np.ndarray:
    """Per-block float64 sums of |x| (or of x² with ``square``) in the order of the module doc.

    The tail block sums its real values only (no padding by repetition, unlike :func:`blocks_of`).
    """
    n = flat.size
    nb, bsz = block_shape(n, block)
    if nb == 0:
        return np.zeros(0)
    nspan = -(-bsz // SUM_SPAN)
    # Rows of lanes actually holding data; trailing all-zero rows would add exact zeros.
    rows = SUM_SPAN // SUM_LANES if nspan > 1 else -(-bsz // SUM_LANES)
    width = nspan * rows * SUM_LANES
    full = n // bsz
    pad = np.zeros((nb, width), np.float32)
    pad[:full, :bsz] = flat[: full * bsz].reshape(full, bsz)
    if full < nb:
        pad[full, : n - full * bsz] = flat[full * bsz :]
    pad = pad.reshape(nb, nspan, rows, SUM_LANES)
    lanes = np.zeros((nb, nspan, SUM_LANES))
    for r in range(rows):  # lane by lane, in index order: one vectorised add per row
        v = pad[:, :, r, :].astype(np.float64)
        lanes += v * v if square else np.abs(v)
    part = np.zeros((nb, nspan))
    for j in range(SUM_LANES):
        part += lanes[:, :, j]
    # accumulate is sequential by definition: r[i] = r[i-1] + a[i]
    return np.add.accumulate(part, axis=1)[:, -1]


def block_counts(n: int, block: int) -> np.ndarray:
    """Values per block (the tail block may be shorter), as float64."""
    nb, bsz = block_shape(n, block)
    c = np.full(nb, bsz, np.float64)
    if nb:
        c[-1] = n - (nb - 1) * bsz
    return c
