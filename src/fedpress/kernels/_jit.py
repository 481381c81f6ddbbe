"""The numba kernels, all in one file on purpose.

numba's on-disk cache (``cache=True``) is invalidated only by changes to the file that defines a
function: a kernel in one file that inlines a helper from another keeps the *old* helper after the
helper's file changes, and module-level constants are frozen into the compiled code the same way. A
stale kernel would write different bytes, so everything the kernels call or read lives here, and
``SUM_LANES``/``SUM_SPAN`` are repeated from :mod:`fedpress.codecs._reduce` (``_cpu`` refuses to
load if they disagree).

Kernels are serial ``@njit(nogil=True)`` functions over a *range* of work items (chunks of
:data:`CHUNK` values, or (block, span) items for reductions); :mod:`fedpress.kernels._cpu` runs
disjoint ranges on several threads. Work items never share an output byte, so no locking is needed
and the result does not depend on how the ranges were split.

Each chunk body repeats the float32 (float64 for ``fixed``) operations of the NumPy reference in
``fedpress.codecs`` in the same order, so results match bit for bit: numba without fastmath keeps
float32 arithmetic in float32 and never contracts a*b+c into an FMA. Optional arrays (the uniforms
``u``, the reconstruction ``rec``) are passed as empty arrays when absent.

Inner loops index *slices from 0* (``xs = x[i:e]; xs[j]``), never ``x[k]`` with k starting at an
arbitrary offset: numba guards every signed index against negative wraparound, and only a loop
counter that provably starts at 0 lets LLVM drop the guard and vectorise (8-10x on these loops).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

#: The summation order of fedpress.codecs._reduce (repeated here: see the module docstring).
SUM_LANES = 16
SUM_SPAN = 4096

#: Values per parallel task: a multiple of 8 (a group of n-bit codes fills n whole bytes) and of 5
#: (five trits per byte), so chunks never share an output byte; 40 KB of float32 stays in L2.
CHUNK = 10240

JIT = {"cache": True, "fastmath": False, "nogil": True}


# ----------------------------------------------------------------------------- bit packing
# The layout of ``_bits.pack_codes``: an LSB-first bit stream, code i at bit i*bits. Widths 1, 2, 4
# and 8 divide a byte and get loops over output bytes (LLVM vectorises them); 3, 5, 6 and 7 go by
# groups of 8 codes, which fill exactly ``bits`` bytes.
@njit(inline="always", **JIT)
def _pack_groups(codes, full, o, w):
    # Inlined at call sites with a constant w: shifts by constants are ~6x faster than by a variable.
    for g in range(full):
        acc = np.uint64(0)
        for j in range(8):
            acc |= np.uint64(codes[8 * g + j]) << np.uint64(w * j)
        for t in range(w):
            o[w * g + t] = np.uint8((acc >> np.uint64(8 * t)) & np.uint64(255))


@njit(inline="always", **JIT)
def _unpack_groups(src, full, codes, w):
    mask = np.uint64((1 << w) - 1)
    for g in range(full):
        acc = np.uint64(0)
        for t in range(w):
            acc |= np.uint64(src[w * g + t]) << np.uint64(8 * t)
        for j in range(8):
            codes[8 * g + j] = np.uint8((acc >> np.uint64(w * j)) & mask)


@njit(**JIT)
def pack_into(codes, m, bits, out, off):
    """codes[:m] (each < 2**bits) → out[off:]."""
    o = out[off : off + (m * bits + 7) // 8]
    if bits == 8:
        for i in range(m):
            o[i] = codes[i]
        return
    if bits == 1 or bits == 2 or bits == 4:
        per = 8 // bits
        full = m // per
        if bits == 4:
            for g in range(full):
                o[g] = codes[2 * g] | (codes[2 * g + 1] << 4)
        elif bits == 2:
            for g in range(full):
                o[g] = (codes[4 * g] | (codes[4 * g + 1] << 2) | (codes[4 * g + 2] << 4)
                        | (codes[4 * g + 3] << 6))
        else:
            for g in range(full):
                o[g] = (codes[8 * g] | (codes[8 * g + 1] << 1) | (codes[8 * g + 2] << 2)
                        | (codes[8 * g + 3] << 3) | (codes[8 * g + 4] << 4) | (codes[8 * g + 5] << 5)
                        | (codes[8 * g + 6] << 6) | (codes[8 * g + 7] << 7))
        if full * per < m:
            byte = 0
            for j in range(m - full * per):
                byte |= codes[full * per + j] << (j * bits)
            o[full] = byte
        return
    b = np.uint64(bits)
    full = m // 8
    if bits == 3:
        _pack_groups(codes, full, o, 3)
    elif bits == 5:
        _pack_groups(codes, full, o, 5)
    elif bits == 6:
        _pack_groups(codes, full, o, 6)
    else:
        _pack_groups(codes, full, o, 7)
    rem = m - full * 8
    if rem:
        acc = np.uint64(0)
        for j in range(rem):
            acc |= np.uint64(codes[full * 8 + j]) << (np.uint64(j) * b)
        og = o[full * bits :]
        for t in range(og.size):
            og[t] = np.uint8((acc >> np.uint64(8 * t)) & np.uint64(255))


@njit(**JIT)
def unpack_into(buf, off, m, bits, codes):
    """Inverse of :func:`pack_into`: m codes from buf[off:] into codes[:m]; returns the largest."""
    src = buf[off : off + (m * bits + 7) // 8]
    top = np.uint8(0)
    if bits == 8:
        for i in range(m):
            c = src[i]
            codes[i] = c
            top = max(top, c)
        return top
    mask = (1 << bits) - 1
    if bits == 1 or bits == 2 or bits == 4:
        per = 8 // bits
        full = m // per
        if bits == 4:
            for g in range(full):
                v = src[g]
                codes[2 * g] = v & 15
                codes[2 * g + 1] = v >> 4
        elif bits == 2:
            for g in range(full):
                v = src[g]
                codes[4 * g] = v & 3
                codes[4 * g + 1] = (v >> 2) & 3
                codes[4 * g + 2] = (v >> 4) & 3
                codes[4 * g + 3] = v >> 6
        else:
            for g in range(full):
                v = src[g]
                for j in range(8):
                    codes[8 * g + j] = (v >> j) & 1
        for j in range(m - full * per):
            codes[full * per + j] = (src[full] >> (j * bits)) & mask
        for i in range(m):
            top = max(top, codes[i])
        return top
    b = np.uint64(bits)
    umask = np.uint64(mask)
    full = m // 8
    if bits == 3:
        _unpack_groups(src, full, codes, 3)
    elif bits == 5:
        _unpack_groups(src, full, codes, 5)
    elif bits == 6:
        _unpack_groups(src, full, codes, 6)
    else:
        _unpack_groups(src, full, codes, 7)
    rem = m - full * 8
    if rem:
        sg = src[full * bits :]
        acc = np.uint64(0)
        for t in range(sg.size):
            acc |= np.uint64(sg[t]) << np.uint64(8 * t)
        for j in range(rem):
            codes[full * 8 + j] = np.uint8((acc >> (np.uint64(j) * b)) & umask)
    for i in range(m):
        top = max(top, codes[i])
    return top


# ----------------------------------------------------------------------------- block reductions
# Work items are (block, span) pairs: a block of bsz values is cut into spans of SUM_SPAN values,
# so one huge block (block=0) still spreads over every thread, and tiny blocks are one item each.
@njit(**JIT)
def _item(t, n, bsz, spb):
    b = t // spb
    start = b * bsz + (t - b * spb) * SUM_SPAN
    end = min(min(b * bsz + bsz, n), start + SUM_SPAN)
    return b, start, end


def n_items(n: int, nb: int, bsz: int) -> tuple[int, int]:
    """(items per full block, total items) for n values in nb blocks of bsz."""
    spb = -(-bsz // SUM_SPAN)
    last = n - (nb - 1) * bsz
    return spb, (nb - 1) * spb + -(-last // SUM_SPAN)


@njit(**JIT)
def _span_sum(x, start, end, square, lanes):
    # The order of fedpress.codecs._reduce: lane i % 16 adds in index order, lanes left to right.
    m = end - start
    full = m // SUM_LANES
    rows = x[start : start + full * SUM_LANES].reshape(full, SUM_LANES)
    tail = x[start + full * SUM_LANES : end]
    for j in range(SUM_LANES):
        lanes[j] = 0.0
    if square:
        for r in range(full):
            for j in range(SUM_LANES):
                v = np.float64(rows[r, j])
                lanes[j] += v * v
        for j in range(tail.size):
            v = np.float64(tail[j])
            lanes[j] += v * v
    else:
        for r in range(full):
            for j in range(SUM_LANES):
                lanes[j] += abs(np.float64(rows[r, j]))
        for j in range(tail.size):
            lanes[j] += abs(np.float64(tail[j]))
    part = 0.0
    for j in range(SUM_LANES):
        part += lanes[j]
    return part


@njit(**JIT)
def sums_items(t0, t1, x, bsz, spb, square, parts):
    lanes = np.empty(SUM_LANES)
    for t in range(t0, t1):
        _, start, end = _item(t, x.size, bsz, spb)
        parts[t] = _span_sum(x, start, end, square, lanes)


@njit(**JIT)
def combine_sums(parts, nb, spb):
    out = np.empty(nb)
    for b in range(nb):
        tot = 0.0
        for t in range(b * spb, min(b * spb + spb, parts.size)):
            tot += parts[t]
        out[b] = tot
    return out


@njit(**JIT)
def _key(b):
    # float32 bits → an integer ordered like the float (negative floats have their magnitude bits
    # flipped); applying it twice gives the bits back. Integer min/max vectorise without fastmath,
    # float ones do not, and the order is exact for every non-NaN value (-0.0 sorts below +0.0).
    # NaNs sort outside ±inf (by sign bit), so a block holding one reports it as its min or max:
    # the codecs' finite check relies on that, as NumPy's min/max propagate NaN.
    return b ^ ((b >> np.int32(31)) & np.int32(0x7FFFFFFF))


@njit(**JIT)
def minmax_items(t0, t1, x, bsz, spb, tlo, thi):
    xi = x.view(np.int32)
    klo = tlo.view(np.int32)
    khi = thi.view(np.int32)
    for t in range(t0, t1):
        _, start, end = _item(t, x.size, bsz, spb)
        xs = xi[start:end]
        lo = _key(xs[0])
        hi = lo
        for i in range(1, xs.size):
            k = _key(xs[i])
            lo = min(lo, k)
            hi = max(hi, k)
        klo[t] = _key(lo)
        khi[t] = _key(hi)


@njit(**JIT)
def combine_minmax(tlo, thi, nb, spb):
    # In key space too: float min/max would drop a NaN (every comparison with it is false).
    klo = tlo.view(np.int32)
    khi = thi.view(np.int32)
    lo = np.empty(nb, np.float32)
    hi = np.empty(nb, np.float32)
    olo = lo.view(np.int32)
    ohi = hi.view(np.int32)
    for b in range(nb):
        t0 = b * spb
        a = _key(klo[t0])
        z = _key(khi[t0])
        for t in range(t0 + 1, min(t0 + spb, klo.size)):
            a = min(a, _key(klo[t]))
            z = max(z, _key(khi[t]))
        olo[b] = _key(a)
        ohi[b] = _key(z)
    return lo, hi


@njit(**JIT)
def _bounds(c, n):
    c0 = c * CHUNK
    return c0, min(n, c0 + CHUNK)


@njit(**JIT)
def nonfinite_chunks(c0, c1, xi, counts):
    """counts[c] = values of chunk c (as int32 bits) whose exponent is all ones: inf or NaN.
    An integer test of the bits: exact, and it vectorises without fastmath."""
    for c in range(c0, c1):
        xs = xi[c * CHUNK : c * CHUNK + CHUNK]
        cnt = 0
        for i in range(xs.size):
            cnt += (xs[i] & np.int32(0x7F800000)) == np.int32(0x7F800000)
        counts[c] = cnt


# ----------------------------------------------------------------------------- q (per-block range)
@njit(**JIT)
def _q_codes(xs, us, lb, sb, ftop, cs):
    zero = np.float32(0.0)
    # divide (never multiply by 1/scale: it overflows for subnormal scales); 0 = constant block
    sd = sb if sb > zero else np.float32(1.0)
    if us.size:
        for j in range(xs.size):
            v = np.floor((xs[j] - lb) / sd + us[j])
            if not v > zero:  # also maps NaN to 0, as np.fmax(v, 0) does
                v = zero
            cs[j] = np.uint8(min(v, ftop))
    else:
        for j in range(xs.size):
            v = np.rint((xs[j] - lb) / sd)
            if not v > zero:
                v = zero
            cs[j] = np.uint8(min(v, ftop))


@njit(**JIT)
def _q_dequant(cs, lb, sb, rs):
    for j in range(cs.size):
        rs[j] = np.float32(cs[j]) * sb + lb


@njit(**JIT)
def q_enc(c0_, c1_, x, bsz, lo, scale, top, u, sbits, packed, rec):
    codes = np.empty(CHUNK, np.uint8)
    ftop = np.float32(top)
    for c in range(c0_, c1_):
        c0, c1 = _bounds(c, x.size)
        b = c0 // bsz
        i = c0
        while i < c1:
            e = min(c1, (b + 1) * bsz)
            cs = codes[i - c0 : e - c0]
            _q_codes(x[i:e], u[i:e] if u.size else u, lo[b], scale[b], ftop, cs)
            if rec.size:
                _q_dequant(cs, lo[b], scale[b], rec[i:e])
            i = e
            b += 1
        pack_into(codes, c1 - c0, sbits, packed, c0 * sbits // 8)


@njit(**JIT)
def q_dec(c0_, c1_, buf, sbits, bsz, lo, scale, out):
    codes = np.empty(CHUNK, np.uint8)
    top = np.uint8(0)
    for c in range(c0_, c1_):
        c0, c1 = _bounds(c, out.size)
        top = max(top, unpack_into(buf, c0 * sbits // 8, c1 - c0, sbits, codes))
        b = c0 // bsz
        i = c0
        while i < c1:
            e = min(c1, (b + 1) * bsz)
            _q_dequant(codes[i - c0 : e - c0], lo[b], scale[b], out[i:e])
            i = e
            b += 1
    return top


# ----------------------------------------------------------------------------- fixed (float64)
@njit(**JIT)
def fixed_enc(c0_, c1_, x, bits, a, b, rounding, u, sbits, packed, rec):
    codes = np.empty(CHUNK, np.uint8)
    width = b - a
    levels = float(1 << bits)
    top = float((1 << bits) - 1)
    step = width / levels
    for c in range(c0_, c1_):
        c0, c1 = _bounds(c, x.size)
        xs = x[c0:c1]
        us = u[c0:c1] if u.size else u
        for j in range(xs.size):
            g = min(max(np.float64(xs[j]), a), b)  # np.clip(g, a, b)
            v = (g - a) / width * levels
            if rounding == 0:
                lev = np.floor(v)
            elif rounding == 1:
                lev = np.rint(v)
            else:
                lev = np.floor(v + us[j])
            codes[j] = np.uint8(min(lev, top))
        if rec.size:
            rs = rec[c0:c1]
            for j in range(xs.size):
                rs[j] = np.float32(np.float64(codes[j]) * step + a)
        pack_into(codes, c1 - c0, sbits, packed, c0 * sbits // 8)


@njit(**JIT)
def fixed_dec(c0_, c1_, buf, sbits, bits, a, b, out):
    codes = np.empty(CHUNK, np.uint8)
    top = np.uint8(0)
    step = (b - a) / float(1 << bits)
    for c in range(c0_, c1_):
        c0, c1 = _bounds(c, out.size)
        top = max(top, unpack_into(buf, c0 * sbits // 8, c1 - c0, sbits, codes))
        os_ = out[c0:c1]
        for j in range(os_.size):
            os_[j] = np.float32(np.float64(codes[j]) * step + a)
    return top


# ----------------------------------------------------------------------------- QSGD
@njit(**JIT)
def _qsgd_codes(xs, us, nrm, s, cs):
    zero = np.float32(0.0)
    nd = nrm if nrm > zero else np.float32(1.0)
    for j in range(xs.size):
        v = xs[j]
        lev = min(np.floor(abs(v) / nd * s + us[j]), s)
        if v < zero:
            lev = -lev
        cs[j] = np.uint8(lev + s)


@njit(**JIT)
def _qsgd_dequant(cs, nrm, s, rs):
    f = nrm / s
    for j in range(cs.size):
        rs[j] = (np.float32(cs[j]) - s) * f


@njit(**JIT)
def qsgd_enc(c0_, c1_, x, bsz, norm, levels, u, sbits, packed, rec):
    codes = np.empty(CHUNK, np.uint8)
    s = np.float32(levels)
    for c in range(c0_, c1_):
        c0, c1 = _bounds(c, x.size)
        b = c0 // bsz
        i = c0
        while i < c1:
            e = min(c1, (b + 1) * bsz)
            cs = codes[i - c0 : e - c0]
            _qsgd_codes(x[i:e], u[i:e], norm[b], s, cs)
            if rec.size:
                _qsgd_dequant(cs, norm[b], s, rec[i:e])
            i = e
            b += 1
        pack_into(codes, c1 - c0, sbits, packed, c0 * sbits // 8)


@njit(**JIT)
def qsgd_dec(c0_, c1_, buf, sbits, bsz, norm, levels, out):
    codes = np.empty(CHUNK, np.uint8)
    top = np.uint8(0)
    s = np.float32(levels)
    for c in range(c0_, c1_):
        c0, c1 = _bounds(c, out.size)
        top = max(top, unpack_into(buf, c0 * sbits // 8, c1 - c0, sbits, codes))
        b = c0 // bsz
        i = c0
        while i < c1:
            e = min(c1, (b + 1) * bsz)
            _qsgd_dequant(codes[i - c0 : e - c0], norm[b], s, out[i:e])
            i = e
            b += 1
    return top


# ----------------------------------------------------------------------------- sign
@njit(**JIT)
def sign_enc(c0_, c1_, x, bsz, scale, packed, rec):
    zero = np.float32(0.0)
    for c in range(c0_, c1_):
        c0, c1 = _bounds(c, x.size)
        xs = x[c0:c1]
        ps = packed[c0 // 8 : (c1 + 7) // 8]
        full = xs.size // 8
        for g in range(full):
            byte = 0
            for j in range(8):
                byte |= (xs[g * 8 + j] >= zero) << j  # 0 (and -0) maps to +
            ps[g] = byte
        if full * 8 < xs.size:
            byte = 0
            for j in range(xs.size - full * 8):
                byte |= (xs[full * 8 + j] >= zero) << j
            ps[full] = byte
        if rec.size:
            b = c0 // bsz
            i = c0
            while i < c1:
                e = min(c1, (b + 1) * bsz)
                s = scale[b]
                xb = x[i:e]
                rb = rec[i:e]
                for j in range(xb.size):
                    rb[j] = s if xb[j] >= zero else -s
                i = e
                b += 1


@njit(**JIT)
def sign_dec(c0_, c1_, buf, bsz, scale, out):
    bits = np.empty(CHUNK, np.uint8)
    for c in range(c0_, c1_):
        c0, c1 = _bounds(c, out.size)
        unpack_into(buf, c0 // 8, c1 - c0, 1, bits)
        b = c0 // bsz
        i = c0
        while i < c1:
            e = min(c1, (b + 1) * bsz)
            s = scale[b]
            ob = out[i:e]
            bb = bits[i - c0 : e - c0]
            for j in range(ob.size):
                ob[j] = s if bb[j] else -s
            i = e
            b += 1


# ----------------------------------------------------------------------------- ternary
@njit(**JIT)
def tern_enc(c0_, c1_, x, bsz, smax, u, packed, rec):
    trits = np.empty(CHUNK + 5, np.uint8)
    zero = np.float32(0.0)
    sgn = np.array([0.0, 1.0, -1.0], np.float32)
    for c in range(c0_, c1_):
        c0, c1 = _bounds(c, x.size)
        b = c0 // bsz
        i = c0
        while i < c1:
            e = min(c1, (b + 1) * bsz)
            s = smax[b]
            sd = s if s > zero else np.float32(1.0)
            xb = x[i:e]
            ub = u[i:e]
            tb = trits[i - c0 : e - c0]
            for j in range(xb.size):
                v = xb[j]
                tb[j] = (1 if v > zero else 2) if ub[j] < abs(v) / sd else 0
            if rec.size:
                rb = rec[i:e]
                for j in range(xb.size):
                    rb[j] = s * sgn[tb[j]]
            i = e
            b += 1
        m = c1 - c0
        for j in range(m, m + 5):  # the last group's missing trits are 0, as the reference pads
            trits[j] = 0
        ps = packed[c0 // 5 : (c1 + 4) // 5]
        for g in range(ps.size):
            t = trits[g * 5 : g * 5 + 5]
            ps[g] = t[0] + 3 * t[1] + 9 * t[2] + 27 * t[3] + 81 * t[4]


@njit(**JIT)
def tern_dec(c0_, c1_, buf, bsz, smax, out):
    # one byte → its five trits' signs, so decoding is a row copy per byte
    table = np.empty((243, 5), np.float32)
    for v in range(243):
        q = v
        for j in range(5):
            t = q % 3
            table[v, j] = 0.0 if t == 0 else (1.0 if t == 1 else -1.0)
            q //= 3
    signs = np.empty(CHUNK + 5, np.float32)
    for c in range(c0_, c1_):
        c0, c1 = _bounds(c, out.size)
        bs = buf[c0 // 5 : (c1 + 4) // 5]  # c0 is a multiple of 5: the chunk owns whole bytes
        for g in range(bs.size):
            row = table[bs[g]]
            for j in range(5):
                signs[5 * g + j] = row[j]
        b = c0 // bsz
        i = c0
        while i < c1:
            e = min(c1, (b + 1) * bsz)
            s = smax[b]
            ob = out[i:e]
            sg = signs[i - c0 : e - c0]
            for j in range(ob.size):
                ob[j] = s * sg[j]
            i = e
            b += 1


@njit(**JIT)
def max_byte(buf):
    top = np.uint8(0)
    for i in range(buf.size):
        top = max(top, buf[i])
    return top


# ----------------------------------------------------------------------------- |x| >= t, compacted
@njit(**JIT)
def count_ge(c0, c1, x, t, counts, bad):
    """counts[c] = how many |x| >= t in chunk c, for chunks c0..c1-1, and bad[c] = how many are
    inf or NaN (the same pass proves the tensor finite for the pipeline)."""
    xi = x.view(np.int32)
    for c in range(c0, c1):
        xs = x[c * CHUNK : c * CHUNK + CHUNK]
        bs = xi[c * CHUNK : c * CHUNK + CHUNK]
        cnt = 0
        nf = 0
        for i in range(xs.size):
            cnt += abs(xs[i]) >= t
            nf += (bs[i] & np.int32(0x7F800000)) == np.int32(0x7F800000)
        counts[c] = cnt
        bad[c] = nf


@njit(**JIT)
def collect_ge(c0, c1, x, t, starts, idx, val):
    """Each chunk writes its (index, |x|) pairs with |x| >= t from starts[c] on, in index order."""
    mask = np.empty(CHUNK, np.uint8)
    for c in range(c0, c1):
        base = c * CHUNK
        xs = x[base : base + CHUNK]
        m = xs.size
        # A vectorised compare fills a byte mask; eight mask bytes are then tested as one word, so
        # at top-k's ~1 % density the branchy scalar code runs on a tenth of the chunk only.
        for i in range(m):
            mask[i] = abs(xs[i]) >= t
        nw = m // 8
        words = mask[: nw * 8].view(np.uint64)
        j = starts[c]
        for w in range(nw):
            if words[w]:
                for i in range(w * 8, w * 8 + 8):
                    if mask[i]:
                        idx[j] = base + i
                        val[j] = abs(xs[i])
                        j += 1
        for i in range(nw * 8, m):
            if mask[i]:
                idx[j] = base + i
                val[j] = abs(xs[i])
                j += 1


@njit(**JIT)
def kth_smallest(val, r):
    """val's r-th smallest value (0-based), for nonnegative non-NaN float32 values: equal to
    ``np.partition(val, r)[r]``. Such floats order like their bit patterns, so three radix passes
    (11, 11 and 10 bits, a 2048-bin histogram each) find it in O(n) without moving data."""
    bits = val.view(np.uint32)
    hist = np.empty(2048, np.int64)
    prefix = np.uint32(0)
    for shift, width in ((21, 11), (10, 11), (0, 10)):
        hist[:] = 0
        top = np.uint32(shift + width)
        mask = np.uint32((1 << width) - 1)
        for i in range(bits.size):
            b = bits[i]
            # only values whose higher digits match the prefix found so far (all of them at first)
            if top == 32 or (b >> top) == prefix:
                hist[(b >> np.uint32(shift)) & mask] += 1
        d = 0
        while r >= hist[d]:
            r -= hist[d]
            d += 1
        prefix = (prefix << np.uint32(width)) | np.uint32(d)
    out = np.empty(1, np.uint32)
    out[0] = prefix
    return out.view(np.float32)[0]


@njit(**JIT)
def select_k(idx, val, t, k):
    """The k candidates with val > t, then val == t in index order (idx is increasing)."""
    above = 0
    for i in range(val.size):
        above += val[i] > t
    ties = k - above
    out = np.empty(k, np.int64)
    j = 0
    for i in range(val.size):
        v = val[i]
        if v > t or (v == t and ties > 0):
            if v == t:
                ties -= 1
            out[j] = idx[i]
            j += 1
    return out


# ----------------------------------------------------------------------------- LEB128 of index gaps
@njit(**JIT)
def varint_len(idx):
    """Bytes of the LEB128 gaps (idx[i] - idx[i-1] - 1, from idx[-1] = -1) of sorted indices."""
    total = 0
    prev = -1
    for i in range(idx.size):
        g = idx[i] - prev - 1
        prev = idx[i]
        total += 1
        while g >= 128:
            g >>= 7
            total += 1
    return total


@njit(**JIT)
def varint_write(idx, out, off):
    j = off
    prev = -1
    for i in range(idx.size):
        g = idx[i] - prev - 1
        prev = idx[i]
        while g >= 128:
            out[j] = np.uint8((g & 127) | 128)
            g >>= 7
            j += 1
        out[j] = np.uint8(g)
        j += 1


@njit(**JIT)
def varint_indices(buf, count):
    """Decode ``count`` LEB128 gaps into indices (prefix sums); also (too_long, largest gap).

    The caller has checked that the last byte ends a value and that ``count`` values end in buf.
    """
    idx = np.empty(count, np.int64)
    big = np.uint64(0)
    too_long = False
    pos = 0
    prev = -1
    for i in range(count):
        v = np.uint64(0)
        sh = 0
        while True:
            b = buf[pos]
            pos += 1
            if sh < 63:  # a 10th byte would shift past 64 bits: flagged, never computed
                v |= np.uint64(b & 127) << np.uint64(sh)
            sh += 7
            if b < 128:
                break
        if sh > 63:
            too_long = True
        big = max(big, v)
        prev = prev + np.int64(v) + 1
        idx[i] = prev
    return idx, too_long, big


# ----------------------------------------------------------------------------- casts (fp16, bf16)
# Integer arithmetic on the float bits, branch-free, so LLVM vectorises it; the results are those of
# the NumPy reference in fedpress.codecs.cast for every bit pattern (NaN payloads included), which
# is NumPy's own software conversion (npy_floatbits_to_halfbits / npy_halfbits_to_floatbits), not
# the F16C instructions (those quieten signalling NaNs). The two float operations below (a + 0.5,
# m·2⁻²⁴) are exact or correctly rounded and never see a subnormal result, so FTZ/DAZ cannot change
# them either.
@intrinsic
def _f32_bits(typingctx, v):
    sig = types.uint32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@intrinsic
def _bits_f32(typingctx, v):
    sig = types.float32(types.uint32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@njit(inline="always", **JIT)
def _half_bits(u):
    """float32 bits → float16 bits of ``np.clip(x, -65504, 65504).astype("<f2")``: round to nearest
    even, magnitudes beyond 65504 (inf included) saturate to ±65504, NaN keeps its sign and the top
    10 bits of its payload (0x7c01 when those are 0, so it stays a NaN)."""
    a = u & np.uint32(0x7FFFFFFF)
    sgn = (u >> np.uint32(16)) & np.uint32(0x8000)
    # normal halves: rebias the exponent (127 → 15), then round the 13 dropped bits to even
    a2 = a - np.uint32(0x38000000)
    hn = (a2 + np.uint32(0xFFF) + ((a2 >> np.uint32(13)) & np.uint32(1))) >> np.uint32(13)
    # |x| < 2⁻¹⁴ (subnormal half or zero): 0.5 + |x| rounds |x| to a multiple of 2⁻²⁴ (even on
    # ties), and the low bits of the sum are then the half's bits (0x400 when it rounds up to 2⁻¹⁴)
    hs = _f32_bits(_bits_f32(a) + np.float32(0.5)) - np.uint32(0x3F000000)
    h = hs if a < np.uint32(0x38800000) else hn
    h = np.uint32(0x7BFF) if a > np.uint32(0x477FE000) else h
    hnan = np.uint32(0x7C00) + max((a & np.uint32(0x7FFFFF)) >> np.uint32(13), np.uint32(1))
    h = hnan if a > np.uint32(0x7F800000) else h
    return np.uint16(sgn | h)


@njit(inline="always", **JIT)
def _half_to_f32_bits(h):
    """float16 bits (as uint32) → float32 bits, exactly (NaN payloads shifted up, not quietened)."""
    sgn = (h & np.uint32(0x8000)) << np.uint32(16)
    e = h & np.uint32(0x7C00)
    mb = (h & np.uint32(0x7FFF)) << np.uint32(13)
    f = mb + np.uint32(0x38000000)
    f = mb + np.uint32(0x70000000) if e == np.uint32(0x7C00) else f
    sub = _f32_bits(np.float32(h & np.uint32(0x3FF)) * np.float32(2.0**-24))
    f = sub if e == np.uint32(0) else f
    return sgn | f


@njit(**JIT)
def f16_enc(c0_, c1_, x, out, rec):
    xu = x.view(np.uint32)
    ru = rec.view(np.uint32)
    for c in range(c0_, c1_):
        c0, c1 = _bounds(c, x.size)
        xs = xu[c0:c1]
        os_ = out[c0:c1]
        for j in range(xs.size):
            os_[j] = _half_bits(xs[j])
        if ru.size:
            rs = ru[c0:c1]
            for j in range(os_.size):
                rs[j] = _half_to_f32_bits(np.uint32(os_[j]))


@njit(**JIT)
def f16_dec(c0_, c1_, buf, out):
    ou = out.view(np.uint32)
    for c in range(c0_, c1_):
        c0, c1 = _bounds(c, out.size)
        bs = buf[2 * c0 : 2 * c1]
        os_ = ou[c0:c1]
        for j in range(os_.size):
            h = np.uint32(bs[2 * j]) | (np.uint32(bs[2 * j + 1]) << np.uint32(8))
            os_[j] = _half_to_f32_bits(h)


@njit(**JIT)
def bf16_enc(c0_, c1_, x, out, rec):
    # the reference's round-to-nearest-even in uint32 (wrapping, as NumPy's uint32 add does: only a
    # negative NaN wraps, and every NaN becomes 0x7fc0)
    xu = x.view(np.uint32)
    ru = rec.view(np.uint32)
    for c in range(c0_, c1_):
        c0, c1 = _bounds(c, x.size)
        xs = xu[c0:c1]
        os_ = out[c0:c1]
        for j in range(xs.size):
            u = xs[j]
            r = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
            r = np.uint32(0x7FC0) if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000) else r
            os_[j] = np.uint16(r)
        if ru.size:
            rs = ru[c0:c1]
            for j in range(os_.size):
                rs[j] = np.uint32(os_[j]) << np.uint32(16)


@njit(**JIT)
def bf16_dec(c0_, c1_, buf, out):
    ou = out.view(np.uint32)
    for c in range(c0_, c1_):
        c0, c1 = _bounds(c, out.size)
        bs = buf[2 * c0 : 2 * c1]
        os_ = ou[c0:c1]
        for j in range(os_.size):
            os_[j] = (np.uint32(bs[2 * j]) << np.uint32(16)) | (np.uint32(bs[2 * j + 1]) << np.uint32(24))
