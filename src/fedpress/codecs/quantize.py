"""Quantisers on a grid: fixed-point on an agreed range (``fixed``) and dynamic per-block (``q``).

Codes are bit-packed: n-bit codes really take n bits (plus per-block scales). When a lossless
entropy stage follows, odd widths (3, 5, 6, 7 bits) are stored one per byte instead so zstd sees
whole symbols. The helpers that read and write codes (and those for the device path) live here
and are shared with the level/sign codecs of :mod:`fedpress.codecs.levels`.

The NumPy code here is the definition of each codec. When :func:`fedpress.kernels.cpu` returns the
compiled kernels, encode and decode hand the per-value loops to them instead; they produce the same
bytes and the same reconstruction (``tests/kernels``). Random draws are made here either way and
passed in, so the seed means the same thing on both paths.

``encode_device``/``decode_device`` (q) are the Triton path for torch tensors that
:func:`fedpress.kernels.routes` sends there (CUDA tensors): the tensor stays on its device and only
the fields of the blob travel to the host; same bytes again.
"""

from __future__ import annotations

import numpy as np

from fedpress import kernels
from fedpress.codecs._bits import pack_codes, packed_len, unpack_codes
from fedpress.codecs._reduce import block_shape
from fedpress.codecs.base import (
    Ctx,
    Param,
    Stage,
    blocks_of,
    f32_field,
    n_blocks,
    numel,
    require_finite,
)
from fedpress.codecs.spec import register
from fedpress.wire.errors import WireError


def _store_bits(bits: int, ctx: Ctx) -> int:
    return 8 if ctx.entropy_follows and bits in (3, 5, 6, 7) else bits


def _write_codes(codes: np.ndarray, bits: int, ctx: Ctx) -> None:
    ctx.write(pack_codes(codes, _store_bits(bits, ctx)))


def _read_codes(n: int, bits: int, ctx: Ctx, what: str) -> np.ndarray:
    sb = _store_bits(bits, ctx)
    codes = unpack_codes(ctx.read(packed_len(n, sb), what), n, sb)
    _check_top(int(codes.max()) if codes.size else 0, bits, sb, what)
    return codes


def _check_top(top: int, bits: int, sb: int, what: str) -> None:
    if sb != bits and top >= (1 << bits):
        raise WireError(f"{what}: code out of range for {bits} bits")


def _recon(rec, shape):
    return None if rec is None else rec.reshape(shape)


def _host(t) -> np.ndarray:
    """A device tensor's values as a host ndarray (for a field of the blob)."""
    return t.cpu().numpy()


def _device_f32(a, device):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(device)


def _all_finite(*arrays) -> bool:
    return all(bool(np.isfinite(a).all()) for a in arrays)


# ----------------------------------------------------------------------------- fixed
def fixed_quantize(g, bits: int, lo: float, hi: float, rounding: str = "floor", u=None):
    """The fixed-point formula ``g' = ⌊(g−a)/(b−a)·2ⁿ⌋·(b−a)/2ⁿ + a`` on [a, b] = [lo, hi].

    Values are clamped to [a, b]. ``g = b`` lands on level 2ⁿ, which does not fit in n bits, so it
    is stored as the top level 2ⁿ−1. Returns ``(levels, reconstruction)``.

    The worked example: g = 0.75 in [0, 1] with 8 bits gives level ⌊0.75·256⌋ = 192 and
    g' = 192/256 = 0.75 exactly (it is sometimes misquoted as 191/256 ≈ 0.746):

    >>> levels, g2 = fixed_quantize(np.array([0.75, 1.0, 0.3]), bits=8, lo=0.0, hi=1.0)
    >>> levels.tolist(), g2.tolist()
    ([192, 255, 76], [0.75, 0.99609375, 0.296875])
    >>> fixed_quantize(np.array([0.3]), 8, 0.0, 1.0, rounding="nearest")[1].tolist()
    [0.30078125]
    """
    a, b = np.float64(lo), np.float64(hi)
    top = (1 << bits) - 1
    v = (np.clip(np.asarray(g, np.float64), a, b) - a) / (b - a) * float(1 << bits)
    if rounding == "floor":
        lev = np.floor(v)
    elif rounding == "nearest":
        lev = np.rint(v)
    elif rounding == "stochastic":
        lev = np.floor(v + u)
    else:
        raise ValueError(f"unknown rounding {rounding!r}")
    lev = np.minimum(lev, top).astype(np.uint8 if bits <= 8 else np.uint16)
    return lev, fixed_dequantize(lev, bits, lo, hi)


def fixed_dequantize(levels, bits: int, lo: float, hi: float) -> np.ndarray:
    a, b = np.float64(lo), np.float64(hi)
    return (levels.astype(np.float64) * ((b - a) / float(1 << bits)) + a).astype(np.float32)


@register
class Fixed(Stage):
    """Fixed-point quantisation on an agreed range [lo, hi] (no per-tensor scales travel).

    Error bound, with step = (hi−lo)/2ⁿ and values outside [lo, hi] clamped first: floor gives
    0 ≤ g − g' < step, and g = hi gives g' = hi − step; nearest gives |g − g'| ≤ step/2, except in
    the top step (g > hi − step) where level 2ⁿ is stored as 2ⁿ−1 and the error is ≤ step;
    stochastic gives |g − g'| < step and is unbiased for g in [lo, hi − step] (above that it can
    only round down). A shared range is what secure aggregation needs.
    """

    name = "fixed"
    help = "fixed-point n bits on an agreed range [lo,hi]: bits, lo, hi, rounding=floor|nearest|stochastic"
    params = {
        "bits": Param(int, 8, "bits per value", lo=1, hi=8),
        "lo": Param(float, -1.0, "range start"),
        "hi": Param(float, 1.0, "range end"),
        "rounding": Param(str, "floor", "floor (the formula), nearest or stochastic",
                          choices=("floor", "nearest", "stochastic")),
    }

    def validate(self):
        if not self.lo < self.hi:
            raise ValueError(f"needs lo < hi, got lo={self.lo}, hi={self.hi}")

    @property
    def unbiased(self):
        return self.rounding == "stochastic"

    needs_seed = unbiased

    recon_optional = True

    def encode(self, x, ctx, rest):
        u = ctx.rng().random(x.size) if self.rounding == "stochastic" else None
        k = kernels.cpu()
        if k is not None:
            packed, rec = k.fixed_encode(x.ravel(), self.bits, self.lo, self.hi, self.rounding,
                                         _store_bits(self.bits, ctx), u, ctx.recon)
            ctx.write(packed)
            return _recon(rec, x.shape)
        lev, rec = fixed_quantize(x.ravel(), self.bits, self.lo, self.hi, self.rounding, u)
        _write_codes(lev, self.bits, ctx)
        return rec.reshape(x.shape)

    def decode(self, shape, ctx, rest):
        k = kernels.cpu()
        if k is not None:
            n, sb = numel(shape), _store_bits(self.bits, ctx)
            buf = ctx.read(packed_len(n, sb), "fixed codes")
            out, top = k.fixed_decode(buf, n, self.bits, sb, self.lo, self.hi)
            _check_top(top, self.bits, sb, "fixed codes")
            return out.reshape(shape)
        lev = _read_codes(numel(shape), self.bits, ctx, "fixed codes")
        return fixed_dequantize(lev, self.bits, self.lo, self.hi).reshape(shape)


# ----------------------------------------------------------------------------- q (dynamic)
def q_params(mn: np.ndarray, mx: np.ndarray, bits: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-block (lo, scale) of q from the blocks' min and max.

    >>> lo, scale = q_params(np.float32([-1.0]), np.float32([3.0]), 2, "minmax")
    >>> lo.tolist(), scale.tolist()
    ([-1.0], [1.3333333730697632])
    """
    if mode == "minmax":
        # + 0.0 turns -0.0 into +0.0: which zero min()/max() return for a block holding both is
        # unspecified, and it would show in the stored bits of lo (and of scale). A span that
        # overflows gives an inf scale, which the encoder rejects (require_span).
        lo = np.asarray(mn, np.float32) + np.float32(0.0)
        with np.errstate(over="ignore", invalid="ignore"):
            scale = ((np.asarray(mx, np.float32) + np.float32(0.0)) - lo) / np.float32((1 << bits) - 1)
    else:  # absmax: symmetric grid, zero exactly representable
        half = np.float32((1 << (bits - 1)) - 1)
        absmax = np.maximum(np.abs(np.asarray(mn, np.float32)), np.abs(np.asarray(mx, np.float32)))
        scale = (absmax / half).astype(np.float32)
        # Only the scale travels: use the decoder's own lo (-scale·half, which can differ from
        # -absmax in the last bit) so the reconstruction is exactly what decode returns and the
        # middle code decodes to exactly 0.
        lo = -scale * half
    return lo.astype(np.float32), scale.astype(np.float32)


def require_span(scale, bits: int, mode: str, ctx) -> None:
    """Raise one clear ValueError when decoding could overflow float32: the decoder computes
    ``code·scale + lo``, and ``top·scale`` (about max − min, or 2·max|x| for absmax) is inf for
    blocks holding values of both signs near ±3.4e38; their codes would decode to NaN or inf."""
    if not _span_ok(scale, bits, mode):
        raise ValueError(f"tensor {ctx.name or '(top level)'!r}: a q block spans more than float32 "
                         "can hold (values near ±3.4e38); scale the values down")


def _span_ok(scale, bits: int, mode: str) -> bool:
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.asarray(scale, np.float32) * np.float32(_q_top(bits, mode))).all())


def _norm(v: np.ndarray) -> float:
    """L2 norm of a float32 vector that cannot overflow: for values near float32's limit the sum
    of squares is inf, and every error would then pass ``err <= target·norm`` at 1 bit."""
    with np.errstate(over="ignore", invalid="ignore"):
        m = np.float32(np.abs(v).max()) if v.size else np.float32(0)
    if not np.isfinite(m):
        return float("inf")
    return float(np.linalg.norm(v / m)) * float(m) if m > 0 else 0.0


def _q_top(bits: int, mode: str) -> int:
    return (1 << bits) - 1 if mode == "minmax" else 2 * ((1 << (bits - 1)) - 1)


def _q_encode(x2: np.ndarray, bits: int, mode: str, u, params=None):
    """Per-block quantisation of an (nb, B) float32 array → (codes, lo, scale); ``params`` are
    this width's (lo, scale) when the caller already has them."""
    lo, scale = params if params is not None else q_params(x2.min(axis=1), x2.max(axis=1), bits, mode)
    # Divide rather than multiply by 1/scale: for tiny (subnormal) scales 1/scale overflows to inf
    # in float32 and the codes became garbage. A zero scale means a constant block (all codes 0).
    v = (x2 - lo[:, None]) / np.where(scale > 0, scale, np.float32(1))[:, None]
    v = np.floor(v + u.reshape(v.shape)) if u is not None else np.rint(v)
    # fmax, not clip: a NaN (inf/inf from a range that overflows float32) becomes code 0 by
    # definition instead of by an undefined float→int cast.
    codes = np.minimum(np.fmax(v, np.float32(0)), np.float32(_q_top(bits, mode))).astype(np.uint8)
    return codes, lo, scale


def _q_decode(codes2: np.ndarray, lo: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return codes2.astype(np.float32) * scale[:, None] + lo[:, None]


@register
class Q(Stage):
    """Dynamic quantisation: each block of ``block`` values gets its own range (min/max, or a
    symmetric absmax grid) and n-bit codes; ``stochastic=1`` makes it unbiased.

    ``target=e`` chooses, per tensor, the fewest bits (≤ ``bits``) whose relative L2 error is ≤ e.

    Error bound: |g − g'| ≤ scale/2 per block, < scale when stochastic; scale = (max−min)/(2ⁿ−1)
    (minmax) or max|g|/(2ⁿ⁻¹−1) (absmax).

    >>> import fedpress, numpy as np
    >>> x = np.random.default_rng(0).normal(size=4096).astype(np.float32)
    >>> y = fedpress.decompress(fedpress.compress(x, "q:bits=8"))
    >>> bool(np.linalg.norm(y - x) / np.linalg.norm(x) < 0.01)
    True
    """

    name = "q"
    help = "per-block dynamic quantisation: bits=1..8, block=256, mode=minmax|absmax, stochastic, target"
    params = {
        "bits": Param(int, 8, "bits per value (the maximum when target is set)", lo=1, hi=8),
        "block": Param(int, 256, "values per range block (0 = whole tensor)", lo=0, hi=1 << 24),
        "mode": Param(str, "minmax", "minmax (asymmetric) or absmax (symmetric)", choices=("minmax", "absmax")),
        "stochastic": Param(bool, False, "stochastic rounding (unbiased)"),
        "target": Param(float, 0.0, "relative L2 error target per tensor (0 = off)", lo=0.0, hi=1.0),
    }

    def validate(self):
        if self.mode == "absmax" and self.bits < 2:
            raise ValueError("mode=absmax needs bits >= 2")

    @property
    def unbiased(self):
        return self.stochastic

    needs_seed = unbiased
    recon_optional = True
    checks_finite = True

    def _encode_bits(self, x2, bits, ctx, params=None):
        u = ctx.rng(bits).random(x2.shape, dtype=np.float32) if self.stochastic else None
        return _q_encode(x2, bits, self.mode, u, params)

    def encode(self, x, ctx, rest):
        k = kernels.cpu()
        if k is not None and self.target == 0:
            return self._encode_kernel(k, x, ctx)
        # The target search (several widths, each with its error) stays on the reference path.
        x2, n = blocks_of(x.ravel(), self.block)
        bits = self.bits
        params = None
        # min/max are NaN or ±inf exactly when the block holds such a value
        stats = (x2.min(axis=1), x2.max(axis=1))
        require_finite(_all_finite(*stats), ctx)
        if self.target == 0:
            params = q_params(*stats, bits, self.mode)
            require_span(params[1], bits, self.mode, ctx)
        if self.target > 0 and n:
            norm = _norm(x.ravel())
            lo_bits = 2 if self.mode == "absmax" else 1
            for b in range(lo_bits, self.bits + 1):
                params = q_params(*stats, b, self.mode)
                # top·scale equals the span only up to rounding, which differs per width: a block
                # within an ulp of float32's limit can overflow at one width and not another. Such
                # a width is skipped (its codes would decode to inf); only the widest one raises.
                if b < self.bits and not _span_ok(params[1], b, self.mode):
                    continue
                require_span(params[1], b, self.mode, ctx)
                codes, lo, scale = self._encode_bits(x2, b, ctx, params)
                err = _norm((_q_decode(codes, lo, scale) - x2).ravel()[:n])
                if err <= self.target * norm or b == self.bits:
                    bits = b
                    break
            ctx.write(bytes([bits]))
        elif self.target > 0:
            ctx.write(bytes([bits]))
            codes, lo, scale = self._encode_bits(x2, bits, ctx)
        else:
            codes, lo, scale = self._encode_bits(x2, bits, ctx, params)
        if self.mode == "minmax":
            ctx.write(f32_field(lo))
        ctx.write(f32_field(scale))
        _write_codes(codes.ravel()[:n], bits, ctx)
        if not ctx.recon:
            return None
        return _q_decode(codes, lo, scale).ravel()[:n].reshape(x.shape)

    def _encode_kernel(self, k, x, ctx):
        flat = x.ravel()
        bits = self.bits
        u = None
        if self.stochastic:  # the reference's draws: same generator, same (blocks, block) shape
            u = ctx.rng(bits).random(block_shape(flat.size, self.block), dtype=np.float32)
        mn, mx = k.block_minmax(flat, self.block)
        require_finite(_all_finite(mn, mx), ctx)
        lo, scale = q_params(mn, mx, bits, self.mode)
        require_span(scale, bits, self.mode, ctx)
        packed, rec = k.q_encode(flat, self.block, lo, scale, _q_top(bits, self.mode),
                                 _store_bits(bits, ctx), u, ctx.recon)
        if self.mode == "minmax":
            ctx.write(lo)
        ctx.write(scale)
        ctx.write(packed)
        return _recon(rec, x.shape)

    def encode_device(self, x, ctx, rest):
        g = kernels.gpu()
        if g is None or self.target > 0:  # the target search stays on the reference path
            return self.encode(x.cpu().numpy(), ctx, rest)
        flat = x.reshape(-1)
        n, bits = flat.numel(), self.bits
        u = None
        if self.stochastic:  # the reference's draws, made on the host and copied over
            u = ctx.rng(bits).random(block_shape(n, self.block), dtype=np.float32)
        # one fused launch where the blocks tile (range + quantise + pack), else two passes
        mn, mx, lo, scale, packed, rec = g.q_encode_blocks(
            flat, self.block, bits, self.mode, _q_top(bits, self.mode), _store_bits(bits, ctx), u,
            ctx.recon)
        require_finite(g.finite(mn, mx), ctx)
        require_span(_host(scale), bits, self.mode, ctx)
        if self.mode == "minmax":
            ctx.write(_host(lo))
        ctx.write(_host(scale))
        ctx.write(_host(packed))
        return _recon(rec, x.shape)

    def _read_range(self, n: int, bits: int, ctx):
        """The blocks' (lo, scale) fields; absmax stores only the scale (lo = -scale·half)."""
        nb = n_blocks(n, self.block)
        if self.mode == "minmax":
            lo = ctx.read_f32(nb, "q block minima")
            scale = ctx.read_f32(nb, "q block scales")
        else:
            scale = ctx.read_f32(nb, "q block scales")
            lo = -scale * np.float32((1 << (bits - 1)) - 1)
        return nb, lo, scale

    def _check_codes(self, top: int, bits: int, sb: int) -> None:
        """The largest code a kernel saw must fit the width, and absmax's symmetric grid."""
        _check_top(top, bits, sb, "q codes")
        if self.mode == "absmax" and top > 2 * ((1 << (bits - 1)) - 1):
            raise WireError("q codes out of range")

    def decode_device(self, shape, ctx, rest, device):
        g = kernels.gpu()
        if g is None or self.target > 0:
            return self.decode(shape, ctx, rest)
        n, bits = numel(shape), self.bits
        _, lo, scale = self._read_range(n, bits, ctx)
        sb = _store_bits(bits, ctx)
        buf = ctx.read(packed_len(n, sb), "q codes")
        out, top = g.q_decode(buf, n, self.block, sb, _device_f32(lo, device),
                              _device_f32(scale, device))
        self._check_codes(top, bits, sb)
        return out.reshape(shape)

    def decode(self, shape, ctx, rest):
        n = numel(shape)
        bits = self.bits
        if self.target > 0:
            bits = ctx.read(1, "q bit width")[0]
            if not (2 if self.mode == "absmax" else 1) <= bits <= self.bits:
                raise WireError(f"q bit width {bits} outside 1..{self.bits}")
        nb, lo, scale = self._read_range(n, bits, ctx)
        k = kernels.cpu()
        if k is not None:
            sb = _store_bits(bits, ctx)
            out, top = k.q_decode(ctx.read(packed_len(n, sb), "q codes"), n, self.block, sb, lo, scale)
            self._check_codes(top, bits, sb)
            return out.reshape(shape)
        codes = _read_codes(n, bits, ctx, "q codes")
        if self.mode == "absmax" and codes.size and codes.max() > 2 * ((1 << (bits - 1)) - 1):
            raise WireError("q codes out of range")
        if nb == 0:
            return np.zeros(shape, np.float32)
        bsz = n if nb == 1 else self.block
        pad = np.zeros(nb * bsz, np.uint8)
        pad[:n] = codes
        return _q_decode(pad.reshape(nb, bsz), lo, scale).ravel()[:n].reshape(shape)
