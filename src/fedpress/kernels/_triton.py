"""Triton kernels for the codec hot loops on torch tensors (CUDA, or Triton's CPU interpreter).

Imported only through :func:`fedpress.kernels.gpu` (it imports triton). Every function takes and
returns torch tensors on the input's device; the codecs copy to the host only what goes into the
blob (packed codes, per-block scales, top-k's varint-coded indices) and the result is the same bytes
as the NumPy reference in :mod:`fedpress.codecs`, which stays the definition (``tests/kernels``).

Where no CUDA device exists the kernels are decorated for Triton's interpreter, which runs each
program with NumPy: it checks *semantics* (the bytes), not speed. They are also compiled ahead of
time for sm_90 (H100/H200) on the CPU, where ``tests/kernels/test_triton_ptx.py`` checks their PTX
(the inline division assembles; no FMA, no FTZ, no approximate division). **They have not yet run
on a GPU**; ``benchmarks/gpu_visit.sh`` is the first thing to run on one (it checks the bytes
against the CPU reference, then times them).

Bit-identity with the NumPy reference needs these cares, all taken here:

* no FMA contraction: every launch passes ``enable_fp_fusion=False`` (the reference rounds ``a*b``
  and ``+ c`` separately; Triton 3.9 fuses by default);
* correctly rounded float32 division: Triton lowers fp32 ``/`` to an approximate divide on NVIDIA,
  so :func:`_div` emits PTX ``div.rn.f32`` (no ``.ftz``) on a GPU and ``tl.div_rn`` in the
  interpreter, where division is NumPy's (``FEDPRESS_TRITON_DIV=div_rn`` selects ``tl.div_rn`` on
  a GPU too, should the inline PTX ever fail to build);
* no flush of subnormals in libdevice (``floor``): ``enable_reflect_ftz=False``;
* round-half-to-even without libdevice: :func:`_rint` adds and subtracts 2**23;
* min/max in an integer key space (:func:`_key`), so NaN is never dropped and ±0 order is exact;
* float64 sums in the span/lane order of :mod:`fedpress.codecs._reduce` (each lane adds its values
  one row at a time, lanes are then added left to right, spans left to right on the host);
* top-k's result is a set defined without an order of evaluation (the k largest |x|, ties to the
  lower index), found by a sampled threshold, a count per tile, an exclusive scan, a compaction in
  index order and an exact fix-up (``torch.kthvalue``) on the candidates.

Random draws (stochastic rounding's uniforms) are made on the host by the codec with NumPy, exactly
as on the reference path, and copied to the device: a kernel never owns an RNG.

q's encoder (:func:`q_encode_blocks`, what ``Q.encode_device`` calls) is **one launch** when a
program of :data:`TILE` = 2048 values holds whole blocks (:func:`fused_block`: the effective block
size divides 2048, i.e. ``block`` a power of two ≤ 2048 such as the default 256, or the tensor is a
single block of ≤ 2048 values): each program loads its float32 values once, views them as
(blocks, block), reduces each block's min/max in the integer key space, computes lo/scale with
:func:`_lo_scale` (the same float32 operations as ``q_params``), writes min/max/lo/scale per
block, then quantises (round half to even, or floor with the host's uniforms), packs the codes and
writes the reconstruction when asked, from the same registers. Bytes moved per value: 4 read (+4
for stochastic uniforms), ``bits/8`` written (+16 a block for min/max/lo/scale, +4 when the
reconstruction is asked for), against 8 read for the two-pass path. Other blocks (``block=0`` over
more than 2048 values, blocks over 2048, blocks that do not divide 2048 such as 7 or 13) keep two
passes: :func:`q_params` (min/max per (block, span) item, then lo/scale) and :func:`q_encode`
(quantise + pack). The codec checks min/max (finite) and scale (span) after the launch either way,
with the reference's messages; codes computed for a refused input are dropped.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the optional extra fedpress[gpu]; fedpress.kernels.gpu() checks first
    if "pytest" in sys.modules:  # doctest collection of this module without triton: skip it
        import pytest

        pytest.skip("triton is not installed", allow_module_level=True)
    raise

from fedpress.codecs import _reduce
from fedpress.codecs._reduce import block_shape

#: Kernels run in Triton's interpreter (no CUDA here, or TRITON_INTERPRET=1): semantics, not speed.
INTERPRETED = bool(os.environ.get("TRITON_INTERPRET", "").strip() in ("1", "true", "on")
                   or not torch.cuda.is_available())

if INTERPRETED:
    from triton.runtime.interpreter import InterpretedFunction as _jit
else:  # pragma: no cover - needs a GPU
    _jit = triton.jit

#: 0: tl.div_rn (interpreter: NumPy's division); 1: inline PTX div.rn.f32 (GPU default).
DIV_MODE = 0 if INTERPRETED else (0 if os.environ.get("FEDPRESS_TRITON_DIV") == "div_rn" else 1)

# Reductions and scans through tl.reduce / tl.associative_scan with the standard combine functions,
# not tl.sum/tl.min/tl.cumsum: those are @triton.jit wrappers, which the interpreter can only call
# when TRITON_INTERPRET was set before triton was first imported (this module decides later).
_SUM = tl.standard._sum_combine
_MIN = tl.standard._elementwise_min
_MAX = tl.standard._elementwise_max

#: Launch options for bit-identity (the interpreter ignores them).
_OPTS = {"enable_fp_fusion": False, "enable_reflect_ftz": False}

#: Values per program of the packing kernels: a multiple of 8, so a program owns whole bytes.
TILE = 2048
SUM_LANES = _reduce.SUM_LANES
SUM_SPAN = _reduce.SUM_SPAN
#: Top-k's threshold estimate looks at about this many values (as the CPU kernels).
TOPK_SAMPLE = 1 << 16


def describe() -> str:
    mode = "interpreter (semantics only, no speed)" if INTERPRETED else "compiled"
    return f"triton {triton.__version__}: {mode}"


# ----------------------------------------------------------------------------- device helpers
@_jit
def _div(a, b, DIV: tl.constexpr):
    # Correctly rounded float32 a / b on every path.
    if DIV == 1:
        return tl.inline_asm_elementwise("div.rn.f32 $0, $1, $2;", "=f,f,f", [a, b],
                                         dtype=tl.float32, is_pure=True, pack=1)
    else:
        return tl.div_rn(a, b)


@_jit
def _rint(v):
    # np.rint (half to even) for float32: |v| + 2**23 rounds |v| to an integer (ulp 1 in
    # [2**23, 2**24)); larger values are integers already; NaN and inf pass through.
    a = tl.abs(v)
    r = (a + 8388608.0) - 8388608.0
    r = tl.where(v < 0, -r, r)
    return tl.where(a < 8388608.0, r, v)


@_jit
def _key(b):
    # float32 bits (int32) -> an int32 ordered like the float (NaNs outside ±inf); an involution.
    return b ^ ((b >> 31) & 0x7FFFFFFF)


@_jit
def _pack_store(codes, out_ptr, pid, nbytes, SBITS: tl.constexpr, G: tl.constexpr):
    # codes: (G, 8) int64, each < 2**SBITS; a group of 8 codes fills SBITS bytes, LSB first
    # (the layout of codecs._bits.pack_codes).
    j = tl.arange(0, 8)
    acc = tl.reduce(codes << (j * SBITS)[None, :].to(tl.int64), 1, _SUM)
    byte = (acc[:, None] >> (8 * j)[None, :].to(tl.int64)) & 255
    g = tl.arange(0, G)
    boffs = pid.to(tl.int64) * (G * SBITS) + g[:, None] * SBITS + j[None, :]
    tl.store(out_ptr + boffs, byte.to(tl.uint8), mask=(j < SBITS)[None, :] & (boffs < nbytes))


@_jit
def _unpack_load(buf_ptr, pid, nbytes, SBITS: tl.constexpr, G: tl.constexpr):
    j = tl.arange(0, 8)
    g = tl.arange(0, G)
    boffs = pid.to(tl.int64) * (G * SBITS) + g[:, None] * SBITS + j[None, :]
    byte = tl.load(buf_ptr + boffs, mask=(j < SBITS)[None, :] & (boffs < nbytes), other=0)
    if SBITS == 8:  # a byte is a code: skip the 64-bit regrouping (it spilled registers on sm_90)
        return byte.to(tl.int64)
    acc = tl.reduce(byte.to(tl.int64) << (8 * j)[None, :].to(tl.int64), 1, _SUM)
    return (acc[:, None] >> (j * SBITS)[None, :].to(tl.int64)) & ((1 << SBITS) - 1)


@_jit
def _offsets(pid, G: tl.constexpr):
    g = tl.arange(0, G)
    j = tl.arange(0, 8)
    return pid.to(tl.int64) * (G * 8) + g[:, None] * 8 + j[None, :]


@_jit
def _item_range(t, n, bsz, spb, S: tl.constexpr):
    # item t = (block b, span s): values [start, end) of block b's s-th span of S values.
    b = t // spb
    start = b * bsz + (t - b * spb) * S
    end = tl.minimum(tl.minimum(b * bsz + bsz, n), start + S)
    return start, end


# ----------------------------------------------------------------------------- reductions
@_jit
def _minmax_kernel(xi_ptr, klo_ptr, khi_ptr, n, bsz, spb, items, width,
                   S: tl.constexpr, R: tl.constexpr, C: tl.constexpr):
    t = tl.program_id(0).to(tl.int64) * R + tl.arange(0, R)
    live = t < items
    start, end = _item_range(t, n, bsz, spb, S)
    c = tl.arange(0, C)
    lo = tl.full((R, C), 2147483647, tl.int32)
    hi = tl.full((R, C), -2147483648, tl.int32)
    for c0 in range(0, width, C):
        offs = start[:, None] + c0 + c[None, :]
        m = live[:, None] & (offs < end[:, None])
        k = _key(tl.load(xi_ptr + offs, mask=m, other=0))
        lo = tl.where(m, tl.minimum(lo, k), lo)
        hi = tl.where(m, tl.maximum(hi, k), hi)
    tl.store(klo_ptr + t, tl.reduce(lo, 1, _MIN), mask=live)
    tl.store(khi_ptr + t, tl.reduce(hi, 1, _MAX), mask=live)


@_jit
def _sums_kernel(x_ptr, parts_ptr, n, bsz, spb, items, rows,
                 SQUARE: tl.constexpr, S: tl.constexpr, P: tl.constexpr, L: tl.constexpr):
    # One row of P items per program; lane l of an item adds values l, l+16, ... in index order.
    t = tl.program_id(0).to(tl.int64) * P + tl.arange(0, P)
    live = t < items
    start, end = _item_range(t, n, bsz, spb, S)
    lane = tl.arange(0, L)
    lanes = tl.full((P, L), 0.0, tl.float64)
    for r in range(0, rows):
        offs = start[:, None] + r * L + lane[None, :]
        m = live[:, None] & (offs < end[:, None])
        v = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float64)
        if SQUARE:
            lanes += v * v
        else:
            lanes += tl.abs(v)
    part = tl.full((P,), 0.0, tl.float64)
    for j in tl.static_range(L):  # lane 0 + lane 1 + ... left to right (a sum of one nonzero)
        part += tl.reduce(tl.where(lane[None, :] == j, lanes, 0.0), 1, _SUM)
    tl.store(parts_ptr + t, part, mask=live)


def _items(n: int, block: int) -> tuple[int, int, int, int]:
    nb, bsz = block_shape(n, block)
    spb = -(-bsz // SUM_SPAN)
    last = n - (nb - 1) * bsz
    return nb, bsz, spb, (nb - 1) * spb + -(-last // SUM_SPAN)


def _grid(m: int, per: int) -> tuple[int]:
    return (max(1, -(-m // per)),)


def _np2(v: int) -> int:
    return 1 << max(0, (int(v) - 1).bit_length())


def _pad_blocks(parts: torch.Tensor, nb: int, spb: int, fill) -> torch.Tensor:
    if parts.numel() == nb * spb:
        return parts.view(nb, spb)
    out = torch.full((nb * spb,), fill, dtype=parts.dtype, device=parts.device)
    out[: parts.numel()] = parts
    return out.view(nb, spb)


def block_minmax_keys(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block min and max of flat float32 ``x`` as int32 order keys (exact, NaN-preserving)."""
    n = x.numel()
    nb, bsz, spb, items = _items(n, block)
    if nb == 0:
        e = torch.zeros(0, dtype=torch.int32, device=x.device)
        return e, e
    width = min(bsz, SUM_SPAN)
    C = min(_np2(width), 1024)
    R = max(1, 2048 // C)
    klo = torch.empty(items, dtype=torch.int32, device=x.device)
    khi = torch.empty(items, dtype=torch.int32, device=x.device)
    _minmax_kernel[_grid(items, R)](x.view(torch.int32), klo, khi, n, bsz, spb, items, width,
                                    S=SUM_SPAN, R=R, C=C, **_OPTS)
    if spb > 1:
        klo = _pad_blocks(klo, nb, spb, 2147483647).amin(dim=1)
        khi = _pad_blocks(khi, nb, spb, -2147483648).amax(dim=1)
    return klo, khi


def _unkey(k: torch.Tensor) -> torch.Tensor:
    return (k ^ ((k >> 31) & 0x7FFFFFFF)).view(torch.float32)


def block_minmax(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block float32 min and max (NaN whenever a block holds one, like NumPy's)."""
    klo, khi = block_minmax_keys(x, block)
    return _unkey(klo), _unkey(khi)


def block_sums(x: torch.Tensor, block: int, square: bool = False) -> torch.Tensor:
    """Per-block float64 sums of |x| (or x²), bit for bit :func:`fedpress.codecs._reduce.block_sums`.

    Spans are summed on the device; when a block has several spans, their left-to-right sum is
    taken on the host (one float64 per 4096 values travels) with the reference's own expression.
    """
    n = x.numel()
    nb, bsz, spb, items = _items(n, block)
    if nb == 0:
        return torch.zeros(0, dtype=torch.float64, device=x.device)
    rows = -(-min(bsz, SUM_SPAN) // SUM_LANES)
    P = 8
    parts = torch.empty(items, dtype=torch.float64, device=x.device)
    _sums_kernel[_grid(items, P)](x, parts, n, bsz, spb, items, rows, SQUARE=bool(square),
                                  S=SUM_SPAN, P=P, L=SUM_LANES, **_OPTS)
    if spb == 1:
        return parts
    pad = np.zeros(nb * spb)
    pad[:items] = parts.cpu().numpy()
    return torch.from_numpy(np.add.accumulate(pad.reshape(nb, spb), axis=1)[:, -1]).to(x.device)


def finite(*ts: torch.Tensor) -> bool:
    """Whether every value of the tensors is finite (one device sync)."""
    ok = [torch.isfinite(t).all() for t in ts if t.numel()]
    return bool(torch.stack(ok).all().item()) if ok else True


def all_finite(x: torch.Tensor) -> bool:
    return finite(x)


# ----------------------------------------------------------------------------- q
@_jit
def _lo_scale(mn, mx, top, half, ABSMAX: tl.constexpr, B: tl.constexpr, DIV: tl.constexpr):
    # (lo, scale) of B blocks from their float32 min and max: codecs.quantize.q_params, the same
    # float32 operations in the same order (no FMA: _OPTS; correctly rounded division: _div).
    if ABSMAX:
        amn = tl.abs(mn)
        amx = tl.abs(mx)
        # np.maximum: NaN wins
        a = tl.where((amn != amn) | (amn > amx), amn, amx)
        scale = _div(a, tl.full((B,), 0.0, tl.float32) + half, DIV)
        lo = -scale * half
    else:
        lo = mn + 0.0  # +0.0 where the min is -0.0 (codecs.quantize.q_params)
        scale = _div((mx + 0.0) - lo, tl.full((B,), 0.0, tl.float32) + top, DIV)
    return lo, scale


@_jit
def _qparams_kernel(klo_ptr, khi_ptr, mn_ptr, mx_ptr, lo_ptr, scale_ptr, nb, top, half,
                    ABSMAX: tl.constexpr, B: tl.constexpr, DIV: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * B + tl.arange(0, B)
    m = i < nb
    mn = _key(tl.load(klo_ptr + i, mask=m, other=0)).to(tl.float32, bitcast=True)
    mx = _key(tl.load(khi_ptr + i, mask=m, other=0)).to(tl.float32, bitcast=True)
    lo, scale = _lo_scale(mn, mx, top, half, ABSMAX, B, DIV)
    tl.store(mn_ptr + i, mn, mask=m)
    tl.store(mx_ptr + i, mx, mask=m)
    tl.store(lo_ptr + i, lo, mask=m)
    tl.store(scale_ptr + i, scale, mask=m)


def q_params(x: torch.Tensor, block: int, bits: int, mode: str):
    """Per-block ``(min, max, lo, scale)`` of q, as :func:`fedpress.codecs.quantize.q_params`."""
    klo, khi = block_minmax_keys(x, block)
    nb = klo.numel()
    out = [torch.empty(nb, dtype=torch.float32, device=x.device) for _ in range(4)]
    if nb:
        B = 1024
        _qparams_kernel[_grid(nb, B)](klo, khi, *out, nb, float((1 << bits) - 1),
                                      float((1 << (bits - 1)) - 1), ABSMAX=mode == "absmax", B=B,
                                      DIV=DIV_MODE, **_OPTS)
    return tuple(out)


@_jit
def _quantise(x, lo, sc, u, top, STOCH: tl.constexpr, DIV: tl.constexpr):
    # codes of q as float32 (0..top, NaN -> 0): codecs.quantize._q_encode, value by value.
    sd = tl.where(sc > 0.0, sc, 1.0)  # 0 = a constant block: every code 0
    v = _div(x - lo, sd, DIV)
    if STOCH:
        v = tl.floor(v + u)
    else:
        v = _rint(v)
    v = tl.where(v > 0.0, v, 0.0)  # np.fmax(v, 0): NaN becomes 0
    return tl.where(v < top, v, top)


@_jit
def _q_enc_kernel(x_ptr, lo_ptr, scale_ptr, u_ptr, out_ptr, rec_ptr, n, nbytes, bsz, top,
                  SBITS: tl.constexpr, STOCH: tl.constexpr, REC: tl.constexpr, G: tl.constexpr,
                  DIV: tl.constexpr):
    pid = tl.program_id(0)
    offs = _offsets(pid, G)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0.0)
    b = offs // bsz
    lo = tl.load(lo_ptr + b, mask=m, other=0.0)
    sc = tl.load(scale_ptr + b, mask=m, other=1.0)
    u = x
    if STOCH:
        u = tl.load(u_ptr + offs, mask=m, other=0.0)
    v = _quantise(x, lo, sc, u, top, STOCH, DIV)
    codes = tl.where(m, v.to(tl.int64), 0)
    _pack_store(codes, out_ptr, pid, nbytes, SBITS, G)
    if REC:
        tl.store(rec_ptr + offs, codes.to(tl.float32) * sc + lo, mask=m)


def _packed_len(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


def q_encode(x, block, lo, scale, top, sbits, u=None, recon=False):
    """Codes of q (per-block ``lo``/``scale``, clipped to 0..top) packed at ``sbits`` bits, and the
    reconstruction when asked: ``(packed uint8 tensor, rec or None)``.

    ``u`` (stochastic rounding) is the reference's NumPy draw, any shape with n leading values.
    """
    n = x.numel()
    _, bsz = block_shape(n, block)
    nbytes = _packed_len(n, sbits)
    packed = torch.empty(nbytes, dtype=torch.uint8, device=x.device)
    rec = torch.empty(n if recon else 0, dtype=torch.float32, device=x.device)
    if n:
        ut = _uniforms(u, n, x.device)
        _q_enc_kernel[_grid(n, TILE)](x, lo, scale, ut if ut is not None else x, packed,
                                      rec if recon else x, n, nbytes, bsz, float(top),
                                      SBITS=sbits, STOCH=ut is not None, REC=bool(recon),
                                      G=TILE // 8, DIV=DIV_MODE, **_OPTS)
    return packed, (rec if recon else None)


def _uniforms(u, n: int, device) -> torch.Tensor | None:
    if u is None:
        return None
    a = np.ascontiguousarray(u, np.float32).reshape(-1)[:n]
    return torch.from_numpy(a).to(device)


@_jit
def _q_fused_kernel(x_ptr, u_ptr, mn_ptr, mx_ptr, lo_ptr, scale_ptr, out_ptr, rec_ptr, n, nb,
                    nbytes, qtop, half, top, ABSMAX: tl.constexpr, SBITS: tl.constexpr,
                    STOCH: tl.constexpr, REC: tl.constexpr, BS: tl.constexpr, T: tl.constexpr,
                    DIV: tl.constexpr):
    # One program = T values = T // BS whole blocks of BS values (BS divides T; a lone block of
    # n <= T values has BS = T). The input is read once: the blocks' min/max (integer keys, as
    # _minmax_kernel), their lo/scale (_lo_scale, as _qparams_kernel), then codes and bytes
    # (as _q_enc_kernel) from the same registers.
    NB: tl.constexpr = T // BS
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * T + tl.arange(0, T)
    m = offs < n
    x = tl.reshape(tl.load(x_ptr + offs, mask=m, other=0.0), (NB, BS))
    m2 = tl.reshape(m, (NB, BS))
    k = _key(x.to(tl.int32, bitcast=True))
    klo = tl.reduce(tl.where(m2, k, 2147483647), 1, _MIN)
    khi = tl.reduce(tl.where(m2, k, -2147483648), 1, _MAX)
    mn = _key(klo).to(tl.float32, bitcast=True)
    mx = _key(khi).to(tl.float32, bitcast=True)
    lo, sc = _lo_scale(mn, mx, qtop, half, ABSMAX, NB, DIV)
    b = pid.to(tl.int64) * NB + tl.arange(0, NB)
    bm = b < nb
    tl.store(mn_ptr + b, mn, mask=bm)
    tl.store(mx_ptr + b, mx, mask=bm)
    tl.store(lo_ptr + b, lo, mask=bm)
    tl.store(scale_ptr + b, sc, mask=bm)
    lo2 = tl.broadcast_to(lo[:, None], (NB, BS))
    sc2 = tl.broadcast_to(sc[:, None], (NB, BS))
    u = x
    if STOCH:
        u = tl.reshape(tl.load(u_ptr + offs, mask=m, other=0.0), (NB, BS))
    v = _quantise(x, lo2, sc2, u, top, STOCH, DIV)
    codes = tl.where(m2, v.to(tl.int64), 0)
    _pack_store(tl.reshape(codes, (T // 8, 8)), out_ptr, pid, nbytes, SBITS, T // 8)
    if REC:
        rec = tl.reshape(codes.to(tl.float32) * sc2 + lo2, (T,))
        tl.store(rec_ptr + offs, rec, mask=m)


def fused_block(n: int, block: int) -> int:
    """The block size (a constexpr) of the fused q encoder for n values cut into ``block``-value
    blocks, or 0 when q takes the two-pass path.

    Fused: when a program of :data:`TILE` values holds whole blocks, i.e. the effective block size
    (:func:`~fedpress.codecs._reduce.block_shape`) divides TILE (a power of two ≤ 2048: the default
    256, any ``block=2**k`` ≤ 2048), or the tensor is one block of at most TILE values (``block=0``
    or ``block >= n`` with n ≤ 2048). Two passes otherwise: larger blocks (whole-tensor ``block=0``
    beyond 2048 values, ``block=5000``) and blocks that do not tile (``block=7``).

    >>> fused_block(10_000, 256), fused_block(100, 0), fused_block(3000, 0), fused_block(100, 7)
    (256, 2048, 0, 0)
    """
    if n <= 0:
        return 0
    nb, bsz = block_shape(n, block)
    if TILE % bsz == 0:
        return bsz
    return TILE if nb == 1 and n <= TILE else 0


def q_encode_fused(x, block, bits, mode, top, sbits, u=None, recon=False):
    """q's whole encoder in one launch (see :func:`fused_block` for when it applies):
    ``(min, max, lo, scale, packed, rec or None)``, as :func:`q_params` then :func:`q_encode`.

    Each program reads its 2048 float32 values once (and the uniforms when stochastic), writes their
    codes (``bits/8`` bytes a value), min/max/lo/scale per block (16 bytes a block) and the
    reconstruction when asked.
    """
    n = x.numel()
    bs = fused_block(n, block)
    if not bs:
        raise ValueError(f"q_encode_fused: {n} values in blocks of {block} do not tile")
    nb, _ = block_shape(n, block)
    nbytes = _packed_len(n, sbits)
    stats = [torch.empty(nb, dtype=torch.float32, device=x.device) for _ in range(4)]
    packed = torch.empty(nbytes, dtype=torch.uint8, device=x.device)
    rec = torch.empty(n if recon else 0, dtype=torch.float32, device=x.device)
    ut = _uniforms(u, n, x.device)
    _q_fused_kernel[_grid(n, TILE)](x, ut if ut is not None else x, *stats, packed,
                                    rec if recon else x, n, nb, nbytes, float((1 << bits) - 1),
                                    float((1 << (bits - 1)) - 1), float(top),
                                    ABSMAX=mode == "absmax", SBITS=sbits, STOCH=ut is not None,
                                    REC=bool(recon), BS=bs, T=TILE, DIV=DIV_MODE, **_OPTS)
    return (*stats, packed, rec if recon else None)


def q_encode_blocks(x, block, bits, mode, top, sbits, u=None, recon=False):
    """q's encoder, fused in one pass where :func:`fused_block` allows, else :func:`q_params` +
    :func:`q_encode`: ``(min, max, lo, scale, packed, rec or None)``, the same values either way.

    The codec checks min/max (finite) and scale (span) after the launch; on bad input the codes are
    computed and dropped (NaN quantises to code 0, nothing faults).
    """
    if fused_block(x.numel(), block):
        return q_encode_fused(x, block, bits, mode, top, sbits, u, recon)
    mn, mx, lo, scale = q_params(x, block, bits, mode)
    return (mn, mx, lo, scale, *q_encode(x, block, lo, scale, top, sbits, u, recon))


@_jit
def _dec_kernel(buf_ptr, lo_ptr, scale_ptr, out_ptr, top_ptr, n, nbytes, bsz,
                SBITS: tl.constexpr, SIGN: tl.constexpr, G: tl.constexpr):
    pid = tl.program_id(0)
    offs = _offsets(pid, G)
    m = offs < n
    codes = _unpack_load(buf_ptr, pid, nbytes, SBITS, G)
    codes = tl.where(m, codes, 0)
    b = offs // bsz
    sc = tl.load(scale_ptr + b, mask=m, other=0.0)
    if SIGN:
        v = tl.where(codes != 0, sc, -sc)
    else:
        v = codes.to(tl.float32) * sc + tl.load(lo_ptr + b, mask=m, other=0.0)
    tl.store(out_ptr + offs, v, mask=m)
    tl.store(top_ptr + pid, tl.reduce(tl.reduce(codes, 1, _MAX), 0, _MAX).to(tl.int32))


def _decode(buf, n, block, sbits, lo, scale, sign):
    device = scale.device
    out = torch.empty(n, dtype=torch.float32, device=device)
    if n == 0:
        return out, 0
    _, bsz = block_shape(n, block)
    b = _device_bytes(buf, device)
    grid = _grid(n, TILE)
    tops = torch.empty(grid[0], dtype=torch.int32, device=device)
    _dec_kernel[grid](b, lo if lo is not None else scale, scale, out, tops, n, b.numel(), bsz,
                      SBITS=sbits, SIGN=sign, G=TILE // 8, **_OPTS)
    return out, int(tops.max().item())


def _device_bytes(buf, device) -> torch.Tensor:
    if isinstance(buf, torch.Tensor):
        return buf.to(device)
    a = np.frombuffer(buf, np.uint8)
    return torch.from_numpy(a.copy()).to(device)


def q_decode(buf, n, block, sbits, lo, scale):
    """Unpack + dequantise q codes onto ``scale``'s device: ``(values, largest code)``."""
    return _decode(buf, n, block, sbits, lo, scale, False)


# ----------------------------------------------------------------------------- sign
@_jit
def _sign_enc_kernel(x_ptr, scale_ptr, out_ptr, rec_ptr, n, nbytes, bsz,
                     REC: tl.constexpr, G: tl.constexpr):
    pid = tl.program_id(0)
    offs = _offsets(pid, G)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=-1.0)
    pos = x >= 0.0  # 0 (and -0) maps to +
    _pack_store(tl.where(pos, 1, 0).to(tl.int64), out_ptr, pid, nbytes, 1, G)
    if REC:
        s = tl.load(scale_ptr + offs // bsz, mask=m, other=0.0)
        tl.store(rec_ptr + offs, tl.where(pos, s, -s), mask=m)


def sign_scale(sums: torch.Tensor, n: int, block: int) -> torch.Tensor:
    """mean |g| per block: ``(sums / counts)`` in float64, rounded once to float32."""
    counts = torch.from_numpy(_reduce.block_counts(n, block)).to(sums.device)
    return (sums / counts).to(torch.float32)


def sign_encode(x, block, scale, recon=False):
    n = x.numel()
    _, bsz = block_shape(n, block)
    nbytes = _packed_len(n, 1)
    packed = torch.empty(nbytes, dtype=torch.uint8, device=x.device)
    rec = torch.empty(n if recon else 0, dtype=torch.float32, device=x.device)
    if n:
        _sign_enc_kernel[_grid(n, TILE)](x, scale, packed, rec if recon else x, n, nbytes, bsz,
                                         REC=bool(recon), G=TILE // 8, **_OPTS)
    return packed, (rec if recon else None)


def sign_decode(buf, n, block, scale):
    return _decode(buf, n, block, 1, None, scale, True)[0]


# ----------------------------------------------------------------------------- |x| >= t, compacted
@_jit
def _count_kernel(x_ptr, t_ptr, counts_ptr, bad_ptr, n, T: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * T + tl.arange(0, T)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0.0)
    t = tl.load(t_ptr)
    cnt = tl.reduce(tl.where(m & (tl.abs(x) >= t), 1, 0).to(tl.int64), 0, _SUM)
    bits = x.to(tl.int32, bitcast=True)
    bad = tl.reduce(tl.where(m & ((bits & 0x7F800000) == 0x7F800000), 1, 0).to(tl.int64), 0, _SUM)
    tl.store(counts_ptr + pid, cnt)
    tl.store(bad_ptr + pid, bad)


@_jit
def _collect_kernel(x_ptr, t_ptr, starts_ptr, idx_ptr, val_ptr, n, T: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * T + tl.arange(0, T)
    m = offs < n
    a = tl.abs(tl.load(x_ptr + offs, mask=m, other=0.0))
    keep = m & (a >= tl.load(t_ptr))
    # The in-tile scan in int32 (at most T per tile): in int64 with the int64 offsets beside it, this
    # kernel took all 255 registers of an sm_90 thread and spilled (ptxas -v).
    k = tl.where(keep, 1, 0)
    pos = tl.load(starts_ptr + pid) + (tl.associative_scan(k, 0, _SUM) - k).to(tl.int64)  # index order
    tl.store(idx_ptr + pos, offs, mask=keep)
    tl.store(val_ptr + pos, a, mask=keep)


CTILE = 4096


def _count(x, t) -> tuple[torch.Tensor, bool]:
    n = x.numel()
    grid = _grid(n, CTILE)
    counts = torch.empty(grid[0], dtype=torch.int64, device=x.device)
    bad = torch.empty(grid[0], dtype=torch.int64, device=x.device)
    _count_kernel[grid](x, t, counts, bad, n, T=CTILE, **_OPTS)
    return counts, not bool(bad.any().item())


def _collect(x, t, counts):
    starts = torch.cumsum(counts, 0) - counts  # exclusive scan (exact, integers)
    total = int(counts.sum().item())
    idx = torch.empty(total, dtype=torch.int64, device=x.device)
    val = torch.empty(total, dtype=torch.float32, device=x.device)
    if total:
        _collect_kernel[_grid(x.numel(), CTILE)](x, t, starts, idx, val, x.numel(), T=CTILE, **_OPTS)
    return idx, val


def _t(v, device) -> torch.Tensor:
    return torch.tensor([float(v)], dtype=torch.float32, device=device)


def indices_ge(x: torch.Tensor, t: float) -> torch.Tensor:
    """Sorted indices of |x| >= t (float32 t), like ``np.flatnonzero(abs(x) >= t)``."""
    if x.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=x.device)
    tt = _t(np.float32(t), x.device)
    counts, _ = _count(x, tt)
    return _collect(x, tt, counts)[0]


def _kth_largest(v: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest value (1-based) as a 1-element float32 tensor: exact, any algorithm."""
    return torch.kthvalue(v, v.numel() - k + 1).values.reshape(1).to(torch.float32)


def topk_checked(x: torch.Tensor, k: int) -> tuple[torch.Tensor, bool]:
    """Sorted indices of the k largest |x| (ties to the lower index), and whether x is finite.

    As :func:`fedpress.kernels._cpu.topk_checked`: a threshold from a strided sample (retried
    lower when it lands above the k-th largest), a count pass that also finds NaN/inf, the
    compaction of the candidates in index order, then the exact k-th largest among them and the
    tie rule. The answer never depends on the sample, only the speed does.
    """
    n = x.numel()
    dev = x.device
    if k >= n or k <= 0:
        idx = torch.arange(n, device=dev) if k >= n else torch.zeros(0, dtype=torch.int64, device=dev)
        return idx, finite(x)
    if n < 4096:
        t_lo = _kth_largest(x.abs(), k)
        counts, ok = _count(x, t_lo)
    else:
        sample = x[:: max(4, n // TOPK_SAMPLE)].abs()
        ms = sample.numel()
        expect = k * ms / n
        rank = int(expect + 4 * math.sqrt(expect) + 16)
        while True:
            t_lo = _kth_largest(sample, rank) if rank < ms else _t(0.0, dev)
            counts, ok = _count(x, t_lo)
            if not ok or int(counts.sum().item()) >= k:
                break
            rank *= 4
    if not ok:
        return torch.zeros(0, dtype=torch.int64, device=dev), False
    idx, val = _collect(x, t_lo, counts)
    t = _kth_largest(val, k)[0]
    above = val > t
    ties = val == t
    keep = above | (ties & (torch.cumsum(ties.to(torch.int64), 0) <= k - above.sum()))
    return idx[keep], True


def topk_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    return topk_checked(x, k)[0]


# ----------------------------------------------------------------------------- naive torch (bench)
def naive_q8(x: torch.Tensor, block: int = 256):
    """Blockwise minmax int8 in plain torch ops (what one writes without a kernel): the benchmark's
    "naive torch" baseline for q. Not bit-identical to the codec (torch's own division)."""
    n = x.numel()
    nb = -(-n // block)
    pad = torch.nn.functional.pad(x.reshape(-1), (0, nb * block - n)).view(nb, block)
    lo = pad.amin(1, keepdim=True)
    scale = (pad.amax(1, keepdim=True) - lo) / 255
    codes = torch.round((pad - lo) / torch.where(scale > 0, scale, 1)).clamp_(0, 255).to(torch.uint8)
    return codes, lo, scale


def naive_q8_decode(codes, lo, scale, n: int):
    return (codes.to(torch.float32) * scale + lo).reshape(-1)[:n]


def naive_sign(x: torch.Tensor):
    """1-bit sign + mean |x| in torch ops (bits packed with a multiply-sum)."""
    n = x.numel()
    bits = torch.nn.functional.pad((x.reshape(-1) >= 0).to(torch.uint8), (0, -n % 8)).view(-1, 8)
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=x.device)
    return (bits * weights).sum(1, dtype=torch.uint8), x.abs().mean()


def naive_sign_decode(packed, scale, n: int):
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = ((packed[:, None] >> shifts) & 1).reshape(-1)[:n]
    return torch.where(bits.bool(), scale, -scale)


def naive_topk(x: torch.Tensor, k: int):
    """torch.topk on |x|, then the values: the baseline for top-k."""
    idx = torch.topk(x.reshape(-1).abs(), k, sorted=False).indices
    return idx, x.reshape(-1)[idx]
