"""The CPU kernels' Python face: allocation, splitting work over threads, argument checks.

Imported only through :func:`fedpress.kernels.cpu` (it imports numba). The codecs call these with
the same inputs as their NumPy reference and get the same bytes back; shapes here are flat float32.

Threads are plain Python threads running ``nogil`` kernels on disjoint ranges of chunks, not numba's
``parallel=True``: compiling parfors took ~4x longer (a cold cache costs every fresh checkout), its
default OpenMP layer aborts forked children, and its workqueue layer is not thread-safe. A Python
pool has none of these problems and wakes as fast (~30-50 µs).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fedpress import kernels as _pkg
from fedpress.codecs import _reduce
from fedpress.codecs._reduce import block_shape
from fedpress.kernels import _jit as jit

CHUNK = jit.CHUNK

if (jit.SUM_LANES, jit.SUM_SPAN) != (_reduce.SUM_LANES, _reduce.SUM_SPAN):  # pragma: no cover
    raise RuntimeError("fedpress.kernels._jit and fedpress.codecs._reduce disagree on the summation "
                       "order (SUM_LANES, SUM_SPAN): the kernels would write different bytes")

_EMPTY_F32 = np.zeros(0, np.float32)
_EMPTY_F32.flags.writeable = False
_EMPTY_F64 = np.zeros(0, np.float64)
_EMPTY_F64.flags.writeable = False
_NO_REC = np.zeros(0, np.float32)  # "no reconstruction wanted": an output, so writable


def threads() -> int:
    """Threads a large kernel call uses: FEDPRESS_KERNEL_THREADS, else the CPUs this process may use."""
    env = os.environ.get("FEDPRESS_KERNEL_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


_pool_lock = threading.Lock()
_pool: list = [None, None, 0]  # executor, pid that made it, its size


def _executor(size: int) -> ThreadPoolExecutor:
    with _pool_lock:
        ex, pid, have = _pool
        # A forked child inherits the executor object but not its threads: make a new one.
        if ex is None or pid != os.getpid() or have < size:
            ex = ThreadPoolExecutor(max_workers=size, thread_name_prefix="fedpress-kernel")
            _pool[:] = [ex, os.getpid(), size]
        return ex


def _split(values: int, units: int, fn, *args) -> list:
    """Run ``fn(u0, u1, *args)`` over [0, units) in contiguous ranges, one per thread; the calling
    thread takes the first range. Small inputs (< SERIAL_BELOW values) run inline."""
    t = min(threads() if values >= _pkg.SERIAL_BELOW else 1, units)
    if t <= 1:
        return [fn(0, units, *args)]
    cuts = [units * i // t for i in range(t + 1)]
    futs = [_executor(t - 1).submit(fn, cuts[i], cuts[i + 1], *args) for i in range(1, t)]
    first = fn(cuts[0], cuts[1], *args)
    return [first, *(f.result() for f in futs)]


def _chunks(n: int) -> int:
    return (n + CHUNK - 1) // CHUNK


def _ro(a: np.ndarray) -> np.ndarray:
    # Inputs are always passed read-only: numba compiles (and caches) one version per array type,
    # and "writable or not" is part of the type, so a bytes blob and a bytearray blob (or a user's
    # read-only array) would otherwise each cost a compilation.
    v = a.view()
    v.flags.writeable = False
    return v


def _f32(x: np.ndarray) -> np.ndarray:
    return _ro(np.ascontiguousarray(x, np.float32).reshape(-1))


def _u8(buf) -> np.ndarray:
    return _ro(np.frombuffer(buf, np.uint8))


def _u(u, dtype=np.float32) -> np.ndarray:
    if u is None:
        return _EMPTY_F32 if dtype == np.float32 else _EMPTY_F64
    return _ro(np.ascontiguousarray(u, dtype).reshape(-1))


def _out(n: int, dtype=np.float32) -> np.ndarray:
    """A fresh output array for a threaded kernel, its pages already faulted in by this thread.

    Page faults that several threads take at once on fresh memory serialise badly on some kernels
    (in this project's VMs a 40 MB output written by two threads took 50 ms instead of 5): one byte
    per page from the calling thread first (~the cost of the faults alone), then the threads only
    write. Outputs of single-threaded calls are left to fault lazily.
    """
    a = np.empty(n, dtype)
    if n >= _pkg.SERIAL_BELOW and threads() > 1:
        a.view(np.uint8)[::4096] = 0
    return a


def _rec(n: int, want: bool) -> np.ndarray:
    return _out(n) if want else _NO_REC


def packed_len(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


# ----------------------------------------------------------------------------- reductions
def block_minmax(flat: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-block min and max (float32); which zero a block of ±0 reports is unspecified."""
    x = _f32(flat)
    nb, bsz = block_shape(x.size, block)
    if nb == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    spb, items = jit.n_items(x.size, nb, bsz)
    tlo = np.empty(items, np.float32)
    thi = np.empty(items, np.float32)
    _split(x.size, items, jit.minmax_items, x, bsz, spb, tlo, thi)
    return jit.combine_minmax(tlo, thi, nb, spb)


def block_sums(flat: np.ndarray, block: int, square: bool = False) -> np.ndarray:
    """Same bits as :func:`fedpress.codecs._reduce.block_sums` (the fixed span/lane order)."""
    x = _f32(flat)
    nb, bsz = block_shape(x.size, block)
    if nb == 0:
        return np.zeros(0)
    spb, items = jit.n_items(x.size, nb, bsz)
    parts = np.empty(items)
    _split(x.size, items, jit.sums_items, x, bsz, spb, bool(square), parts)
    return jit.combine_sums(parts, nb, spb)


def all_finite(x: np.ndarray) -> bool:
    """Whether every value of a float32 array is finite (no inf, no NaN)."""
    xi = _f32(x).view(np.int32)
    counts = np.empty(_chunks(xi.size), np.int64)
    _split(xi.size, counts.size, jit.nonfinite_chunks, xi, counts)
    return not counts.any()


# ----------------------------------------------------------------------------- quantisers
def _encode(kernel, x: np.ndarray, nbytes: int, recon: bool, *args):
    """Run ``kernel(x, *args, packed, rec)`` over the chunks of ``x``: ``(packed, rec or None)``."""
    n = x.size
    packed = _out(nbytes, np.uint8)
    rec = _rec(n, recon)
    if n:
        _split(n, _chunks(n), kernel, x, *args, packed, rec)
    return packed, (rec if recon else None)


def _decode(kernel, buf, n: int, *args) -> tuple[np.ndarray, int]:
    """Run ``kernel(buf, *args, out)`` over chunks of n values: ``(values, largest code)`` (the
    caller range-checks the code)."""
    out = _out(n)
    if n == 0:
        return out, 0
    return out, int(max(_split(n, _chunks(n), kernel, _u8(buf), *args, out)))


def q_encode(flat, block, lo, scale, top, sbits, u=None, recon=False):
    """Codes of q (per-block ``lo``/``scale``, codes clipped to 0..top) packed at ``sbits`` bits.

    Returns ``(packed uint8, reconstruction or None)``.
    """
    x = _f32(flat)
    _, bsz = block_shape(x.size, block)
    return _encode(jit.q_enc, x, packed_len(x.size, sbits), recon, bsz, _f32(lo), _f32(scale), top, _u(u), sbits)


def q_decode(buf, n, block, sbits, lo, scale):
    """Unpack + dequantise q codes; returns ``(values, largest code)`` (the caller range-checks)."""
    return _decode(jit.q_dec, buf, n, sbits, block_shape(n, block)[1], _f32(lo), _f32(scale))


_ROUNDING = {"floor": 0, "nearest": 1, "stochastic": 2}


def fixed_encode(flat, bits, lo, hi, rounding, sbits, u=None, recon=False):
    """fixed's levels packed at ``sbits`` bits (float64 arithmetic, as the reference)."""
    x = _f32(flat)
    return _encode(jit.fixed_enc, x, packed_len(x.size, sbits), recon, bits, float(lo), float(hi),
                   _ROUNDING[rounding], _u(u, np.float64), sbits)


def fixed_decode(buf, n, bits, sbits, lo, hi):
    return _decode(jit.fixed_dec, buf, n, sbits, bits, float(lo), float(hi))


def qsgd_encode(flat, block, norm, levels, sbits, u, recon=False):
    x = _f32(flat)
    _, bsz = block_shape(x.size, block)
    return _encode(jit.qsgd_enc, x, packed_len(x.size, sbits), recon, bsz, _f32(norm), levels, _u(u), sbits)


def qsgd_decode(buf, n, block, sbits, norm, levels):
    return _decode(jit.qsgd_dec, buf, n, sbits, block_shape(n, block)[1], _f32(norm), levels)


def sign_encode(flat, block, scale, recon=False):
    x = _f32(flat)
    _, bsz = block_shape(x.size, block)
    return _encode(jit.sign_enc, x, packed_len(x.size, 1), recon, bsz, _f32(scale))


def sign_decode(buf, n, block, scale):
    b = _u8(buf)
    out = _out(n)
    if n:
        _, bsz = block_shape(n, block)
        _split(n, _chunks(n), jit.sign_dec, b, bsz, _f32(scale), out)
    return out


def ternary_encode(flat, block, smax, u, recon=False):
    x = _f32(flat)
    _, bsz = block_shape(x.size, block)
    return _encode(jit.tern_enc, x, -(-x.size // 5), recon, bsz, _f32(smax), _u(u))


def ternary_decode(buf, n, block, smax):
    """Values and the largest byte (>= 243 is not five trits: the caller raises)."""
    b = _u8(buf)
    out = _out(n)
    if n == 0:
        return out, 0
    top = int(jit.max_byte(b))
    if top >= 243:
        return out, top
    _, bsz = block_shape(n, block)
    _split(n, _chunks(n), jit.tern_dec, b, bsz, _f32(smax), out)
    return out, top


# ----------------------------------------------------------------------------- sparsifiers
def indices_ge(flat, t: float) -> np.ndarray:
    """Sorted indices of |x| >= t (t a float32 threshold), like ``np.flatnonzero(abs(x) >= t)``."""
    x = _f32(flat)
    t = np.float32(t)
    counts, _ = _count(x, t)
    idx, _ = _collect(x, t, counts)
    return idx


def _count(x: np.ndarray, t) -> tuple[np.ndarray, bool]:
    counts = np.empty(_chunks(x.size), np.int64)
    bad = np.empty(counts.size, np.int64)
    _split(x.size, counts.size, jit.count_ge, x, np.float32(t), counts, bad)
    return counts, not bad.any()


def _collect(x, t, counts):
    starts = np.zeros(counts.size, np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    total = int(counts.sum())
    idx = np.empty(total, np.int64)
    val = np.empty(total, np.float32)
    _split(x.size, counts.size, jit.collect_ge, x, np.float32(t), starts, idx, val)
    return idx, val


#: Top-k's threshold estimate looks at about this many values (every step-th one).
TOPK_SAMPLE = 1 << 16


def topk_indices(flat, k: int) -> np.ndarray:
    """Sorted indices of the k largest |x|, ties to the lower index: the reference's set."""
    return topk_checked(flat, k)[0]


def topk_checked(flat, k: int) -> tuple[np.ndarray, bool]:
    """:func:`topk_indices`, and whether every value is finite (NaN or inf: the indices are
    meaningless and the caller raises).

    A strided sample gives a threshold a little below the k-th largest |x|; one pass counts (and
    checks finiteness) and a second compacts the (about 1.2k) candidates at or above it; the exact
    k-th largest among them, and the tie rule, pick exactly k. A sample that lands too high (fewer
    than k candidates) is retried with a lower rank, so the result never depends on the sample,
    only the speed does.
    """
    x = _f32(flat)
    n = x.size
    if k >= n or k <= 0:
        return (np.arange(n) if k >= n else np.zeros(0, np.int64)), all_finite(x)
    if n < 4096:  # small: the exact k-th largest directly
        t_lo = np.partition(np.abs(x), n - k)[n - k]
        counts, finite = _count(x, t_lo)
    else:
        sample = np.abs(x[:: max(4, n // TOPK_SAMPLE)])
        if not np.isfinite(sample).all():
            return np.zeros(0, np.int64), False
        ms = sample.size
        expect = k * ms / n
        rank = int(expect + 4 * np.sqrt(expect) + 16)
        while True:
            # rank-th largest sample value; once the rank covers the sample, every value qualifies
            t_lo = jit.kth_smallest(sample, ms - rank) if rank < ms else np.float32(0.0)
            counts, finite = _count(x, t_lo)
            if not finite:
                return np.zeros(0, np.int64), False
            if counts.sum() >= k:
                break
            rank *= 4
    if not finite:
        return np.zeros(0, np.int64), False
    idx, val = _collect(x, t_lo, counts)
    t = jit.kth_smallest(val, val.size - k)  # the k-th largest |x| overall
    return jit.select_k(idx, val, t, k), True


def varint_indices_encode(idx: np.ndarray, n: int):
    """Delta-varint body of sorted indices, or None when an n-bit bitmap would be smaller."""
    idx = _ro(np.ascontiguousarray(idx, np.int64))
    size = int(jit.varint_len(idx))
    if size > (n + 7) // 8:
        return None
    out = np.empty(1 + size, np.uint8)
    out[0] = 0  # mode byte: varints
    jit.varint_write(idx, out, 1)
    return out


def varint_indices_decode(buf, count: int):
    """Indices from ``count`` LEB128 gaps; returns ``(idx, too_long, largest gap)``."""
    b = _u8(buf)
    idx, too_long, big = jit.varint_indices(b, count)
    return idx, bool(too_long), int(big)


# ----------------------------------------------------------------------------- casts
def _cast_encode(kernel, flat, recon):
    x = _f32(flat)
    n = x.size
    out = _out(n, np.uint16)
    rec = _rec(n, recon)
    if n:
        _split(n, _chunks(n), kernel, x, out, rec)
    return out, (rec if recon else None)


def _cast_decode(kernel, buf, n):
    b = _u8(buf)
    out = _out(n)
    if n:
        _split(n, _chunks(n), kernel, b, out)
    return out


def f16_encode(flat, recon=False):
    """``np.clip(x, -65504, 65504).astype("<f2")`` as uint16 bits, and (when wanted) those halves
    as float32: the bits of :class:`fedpress.codecs.cast.FP16` for every input, NaN included."""
    return _cast_encode(jit.f16_enc, flat, recon)


def f16_decode(buf, n):
    """n little-endian float16 values (2n bytes) as float32, exactly as NumPy's cast."""
    return _cast_decode(jit.f16_dec, buf, n)


def bf16_encode(flat, recon=False):
    """bfloat16 bits of :func:`fedpress.codecs.cast.to_bf16_bits` (round to nearest even, every NaN
    0x7fc0), and (when wanted) their float32 values."""
    return _cast_encode(jit.bf16_enc, flat, recon)


def bf16_decode(buf, n):
    """n little-endian bfloat16 values (2n bytes) as float32."""
    return _cast_decode(jit.bf16_dec, buf, n)
