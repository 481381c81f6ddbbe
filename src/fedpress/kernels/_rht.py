"""The numba kernel of the ``rht`` stage (randomized Hadamard rotation), in a file of its own.

Imported only by :mod:`fedpress.codecs.rotate` when :func:`fedpress.kernels.cpu` is on (numba
imports). Everything the kernel calls lives here, for the reason :mod:`fedpress.kernels._jit`
gives (numba's on-disk cache only notices changes to the defining file).

The kernel repeats the NumPy reference of :mod:`fedpress.codecs.rotate` operation for operation,
so the rotated values, hence the blob, are the same bits on both paths: per chunk, the same
float32 butterflies ``(a + b, a - b)`` in the same pass order (half-width h = 1, 2, 4, ...), then
one float32 multiplication by the chunk's scale (passed in, computed once in Python), and sign
flips, which are exact. numba without fastmath keeps float32 in float32 and never contracts into
an FMA. Only the loop structure differs: a whole chunk is transformed in cache (a 4096-value chunk
is 16 KB) instead of one pass over the whole tensor at a time, and passes are grouped (see
:func:`_fwht`).

Chunks are disjoint, so :func:`rotate` splits them over the CPU kernels' thread pool.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fedpress.kernels._cpu import _out, _ro, _split

JIT = {"cache": True, "fastmath": False, "nogil": True}


@njit(**JIT)
def _fwht(o, m):
    """In-place unnormalised Walsh-Hadamard transform of o[:m] (m a power of two).

    The reference does one pass per half-width h = 1, 2, 4, ... over the whole tensor. Every pass
    maps each pair (a, b), h apart, to (a + b, a - b) independently of the other pairs, so passes
    may be grouped as long as each value sees the same additions in the same order: here the
    first three passes run on groups of 8 in registers, the rest two at a time (radix 4).
    """
    h = 1
    if m >= 8:
        for j in range(0, m, 8):
            g = o[j : j + 8]
            a0, a1, a2, a3, a4, a5, a6, a7 = g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]
            b0, b1, b2, b3 = a0 + a1, a0 - a1, a2 + a3, a2 - a3  # h = 1
            b4, b5, b6, b7 = a4 + a5, a4 - a5, a6 + a7, a6 - a7
            c0, c1, c2, c3 = b0 + b2, b1 + b3, b0 - b2, b1 - b3  # h = 2
            c4, c5, c6, c7 = b4 + b6, b5 + b7, b4 - b6, b5 - b7
            g[0], g[1], g[2], g[3] = c0 + c4, c1 + c5, c2 + c6, c3 + c7  # h = 4
            g[4], g[5], g[6], g[7] = c0 - c4, c1 - c5, c2 - c6, c3 - c7
        h = 8
    while 4 * h <= m:  # passes h and 2h together
        for j in range(0, m, 4 * h):
            q0 = o[j : j + h]
            q1 = o[j + h : j + 2 * h]
            q2 = o[j + 2 * h : j + 3 * h]
            q3 = o[j + 3 * h : j + 4 * h]
            for i in range(h):  # slices indexed from 0: no wraparound guards, vectorised
                a, b, c, d = q0[i], q1[i], q2[i], q3[i]
                s0, s1, s2, s3 = a + b, a - b, c + d, c - d
                q0[i], q1[i], q2[i], q3[i] = s0 + s2, s1 + s3, s0 - s2, s1 - s3
        h *= 4
    while h < m:  # the last pass alone, or every pass of a chunk of 2 or 4
        for j in range(0, m, 2 * h):
            lo = o[j : j + h]
            hi = o[j + h : j + 2 * h]
            for i in range(h):
                a, b = lo[i], hi[i]
                lo[i], hi[i] = a + b, a - b
        h *= 2


@njit(**JIT)
def _flip(src, dst, signs, off, m):
    """dst[i] = src[i] with its sign bit flipped where bit off+i of ``signs`` is set (uint32
    views: exact, like the reference's negation, and branch-free)."""
    one = np.uint32(1)
    top = np.uint32(31)
    if off % 8 == 0 and m % 8 == 0:  # every chunk but the tail's last few: a byte per 8 values
        sb = signs[off >> 3 : (off + m) >> 3]
        for j in range(m >> 3):
            bits = np.uint32(sb[j])
            s8 = src[8 * j : 8 * j + 8]
            d8 = dst[8 * j : 8 * j + 8]
            for t in range(8):
                d8[t] = s8[t] ^ (((bits >> np.uint32(t)) & one) << top)
    else:
        for i in range(m):
            k = off + i
            dst[i] = src[i] ^ ((np.uint32(signs[k >> 3] >> (k & 7)) & one) << top)


@njit(**JIT)
def rotate_chunks(c0, c1, x, signs, out, offs, sizes, scales, forward):
    """Chunks c0..c1-1: forward ``out = scale·H(D·x)``, inverse ``out = D·(scale·H x)``.

    ``signs`` holds one bit per value, LSB first (bit set: negate).
    """
    xu = x.view(np.uint32)
    ou = out.view(np.uint32)
    for c in range(c0, c1):
        off = offs[c]
        m = sizes[c]
        sc = scales[c]
        o = out[off : off + m]
        if forward:
            _flip(xu[off : off + m], ou[off : off + m], signs, off, m)
        else:
            xs = x[off : off + m]
            for i in range(m):
                o[i] = xs[i]
        _fwht(o, m)
        for i in range(m):
            o[i] = o[i] * sc
        if not forward:
            _flip(ou[off : off + m], ou[off : off + m], signs, off, m)


def rotate(flat: np.ndarray, signs: np.ndarray, offs: np.ndarray, sizes: np.ndarray,
           scales: np.ndarray, forward: bool) -> np.ndarray:
    """Same bits as :func:`fedpress.codecs.rotate.rotate_reference` (flat float32 in and out)."""
    x = _ro(np.ascontiguousarray(flat, np.float32).reshape(-1))
    out = _out(x.size)
    if sizes.size:
        _split(x.size, sizes.size, rotate_chunks, x, _ro(signs), out, _ro(offs), _ro(sizes),
               _ro(scales), bool(forward))
    return out
