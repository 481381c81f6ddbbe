"""Level and sign codecs: QSGD (``qsgd``), signSGD/EF-sign (``sign``) and TernGrad (``ternary``).

They are one family: each stores one scale per block (the L2 norm, mean |g| or max |g|) and maps
every value to a few levels of it (2s+1 for QSGD, two for sign, three for TernGrad); QSGD and
TernGrad pick the level by an unbiased stochastic draw (E[g'] = g), sign is biased (use ``ef``).

Codes are written with the helpers of :mod:`fedpress.codecs.quantize`, and what its docstring says
of the compiled kernels, the random draws and the device path (``sign`` has one) holds here too.
"""

from __future__ import annotations

import numpy as np

from fedpress import kernels
from fedpress.codecs._bits import pack_codes, pack_trits, packed_len, unpack_codes, unpack_trits
from fedpress.codecs._reduce import block_counts, block_shape, block_sums
from fedpress.codecs.base import Param, Stage, blocks_of, n_blocks, numel, require_finite
from fedpress.codecs.quantize import (
    _all_finite,
    _check_top,
    _device_f32,
    _host,
    _read_codes,
    _recon,
    _store_bits,
    _write_codes,
)
from fedpress.codecs.spec import register
from fedpress.wire.errors import WireError

# ----------------------------------------------------------------------------- QSGD
_F32_MAX = np.finfo(np.float32).max


def qsgd_norm_cap(levels: int) -> np.float32:
    """The largest norm QSGD stores for ``levels``: float32's max, or the float just below it for
    the few s whose top level s·(max/s) rounds past it to inf (25, 31, 49, 50, 62, 98, 100, 101,
    124, 127).

    >>> bool(qsgd_norm_cap(16) == np.finfo(np.float32).max), bool(qsgd_norm_cap(25) < qsgd_norm_cap(16))
    (True, True)
    """
    s = np.float32(levels)
    with np.errstate(over="ignore"):
        top = s * (_F32_MAX / s)  # what a code of level s decodes to, as _dequant computes it
    return _F32_MAX if np.isfinite(top) else np.nextafter(_F32_MAX, np.float32(0))


def qsgd_norms(sums: np.ndarray, levels: int) -> np.ndarray:
    """float32 block norms from the float64 sums of squares, capped at :func:`qsgd_norm_cap`.

    Below the cap this is exactly ``np.sqrt(sums).astype(np.float32)``, as it always was. Above it
    (a block's norm beyond float32's range, i.e. values near ±3.4e38: the sums, in float64, never
    overflow) the stored norm N is the cap instead of inf, which made every value of the block
    decode to NaN: codes are still min(⌊s·|g|/N + u⌋, s), every level decodes to a finite value,
    and the bound |g − g'| ≤ N/s ≤ ‖block‖₂/s still holds (a value above N, at most a couple of ulps
    above it, takes the top level).

    >>> qsgd_norms(np.array([25.0, 2.0 * 3e38**2]), 16).tolist() == [5.0, float(np.finfo(np.float32).max)]
    True
    """
    # min in float64, then the cast: the same as casting first (rounding is monotone) without the
    # overflow to inf
    return np.minimum(np.sqrt(sums), np.float64(qsgd_norm_cap(levels))).astype(np.float32)


@register
class QSGD(Stage):
    """QSGD (Alistarh et al. 2017): per block, the L2 norm and, per value, a sign and a level in
    0..s chosen by stochastic rounding of s·|g|/‖g‖, so E[g'] = g (unbiased).

    Error bound: |g − g'| ≤ ‖block‖₂ / s.

    Finite input always encodes and decodes to finite values: a block whose norm is beyond
    float32's range (values near ±3.4e38) stores the largest norm whose levels all decode finitely
    (:func:`qsgd_norms`) instead of inf. That block's rounding is then biased by at most a couple of
    ulps of 3.4e38 for its largest values.
    """

    name = "qsgd"
    help = "QSGD stochastic unbiased quantisation: levels=s (1..127), block=512 (bucket size)"
    params = {
        "levels": Param(int, 16, "quantisation levels s", lo=1, hi=127),
        "block": Param(int, 512, "bucket size (0 = whole tensor)", lo=0, hi=1 << 24),
    }

    @property
    def unbiased(self):
        return True

    needs_seed = unbiased
    recon_optional = True
    checks_finite = True

    @property
    def bits(self) -> int:
        return int(np.ceil(np.log2(2 * self.levels + 1)))

    def _dequant(self, codes2, norm):
        s = np.float32(self.levels)
        return (codes2.astype(np.float32) - s) * (norm / s)[:, None]

    def encode(self, x, ctx, rest):
        flat = x.ravel()
        n = flat.size
        if n == 0:
            ctx.write(b"")
            ctx.write(b"")
            return x.copy()
        k = kernels.cpu()
        # The block L2 norm, summed in the fixed order of codecs._reduce (both paths).
        sums = (k.block_sums if k else block_sums)(flat, self.block, True)
        require_finite(_all_finite(sums), ctx)  # float64 sums of finite float32 never overflow
        norm = qsgd_norms(sums, self.levels)  # capped below float32's max, never inf
        u = ctx.rng().random(block_shape(n, self.block), dtype=np.float32)
        ctx.write(norm)
        if k is not None:
            packed, rec = k.qsgd_encode(flat, self.block, norm, self.levels,
                                        _store_bits(self.bits, ctx), u, ctx.recon)
            ctx.write(packed)
            return _recon(rec, x.shape)
        x2, _ = blocks_of(flat, self.block)
        s = np.float32(self.levels)
        # |g|/‖g‖ ≤ 1, then ·s: never s/‖g‖, which overflows to inf for tiny norms (and 0·inf = NaN
        # gave zeros a negative code).
        mag = np.abs(x2) / np.where(norm > 0, norm, np.float32(1))[:, None] * s
        lev = np.minimum(np.floor(mag + u), s)
        codes = (np.where(x2 < 0, -lev, lev) + s).astype(np.uint8)
        _write_codes(codes.ravel()[:n], self.bits, ctx)
        if not ctx.recon:
            return None
        return self._dequant(codes, norm).ravel()[:n].reshape(x.shape)

    def decode(self, shape, ctx, rest):
        n = numel(shape)
        nb = n_blocks(n, self.block)
        norm = ctx.read_f32(nb, "qsgd norms")
        k = kernels.cpu()
        if k is not None:
            sb = _store_bits(self.bits, ctx)
            out, top = k.qsgd_decode(ctx.read(packed_len(n, sb), "qsgd codes"), n, self.block, sb,
                                     norm, self.levels)
            _check_top(top, self.bits, sb, "qsgd codes")
            if top > 2 * self.levels:
                raise WireError("qsgd code out of range")
            return out.reshape(shape)
        codes = _read_codes(n, self.bits, ctx, "qsgd codes")
        if n == 0:
            return np.zeros(shape, np.float32)
        if codes.max() > 2 * self.levels:
            raise WireError("qsgd code out of range")
        bsz = n if nb == 1 else self.block
        pad = np.full(nb * bsz, self.levels, np.uint8)
        pad[:n] = codes
        return self._dequant(pad.reshape(nb, bsz), norm).ravel()[:n].reshape(shape)


# ----------------------------------------------------------------------------- sign
@register
class Sign(Stage):
    """1-bit sign with a per-block scale (mean |g|), as in signSGD with majority vote / EF-signSGD
    (Bernstein et al. 2018; Karimireddy et al. 2019). Biased: pair it with ``ef``.

    Error bound: |g'| = mean |g| of its block, sign preserved (0 maps to +).
    """

    name = "sign"
    help = "1-bit sign + mean-|g| scale per block (block=0: per tensor); use with ef"
    params = {"block": Param(int, 0, "values per scale block (0 = whole tensor)", lo=0, hi=1 << 24)}
    recon_optional = True
    checks_finite = True

    def encode(self, x, ctx, rest):
        flat = x.ravel()
        n = flat.size
        if n == 0:
            ctx.write(b"")
            ctx.write(b"")
            return x.copy()
        k = kernels.cpu()
        # mean |g| per block, summed in the fixed order of codecs._reduce (both paths)
        sums = (k.block_sums if k else block_sums)(flat, self.block)
        require_finite(_all_finite(sums), ctx)  # float64 sums of finite float32 never overflow
        scale = (sums / block_counts(n, self.block)).astype(np.float32)
        ctx.write(scale)
        if k is not None:
            packed, rec = k.sign_encode(flat, self.block, scale, ctx.recon)
            ctx.write(packed)
            return _recon(rec, x.shape)
        bits = (flat >= 0).astype(np.uint8)
        ctx.write(pack_codes(bits, 1))
        if not ctx.recon:
            return None
        return self._dequant(bits, scale, n, block_shape(n, self.block)[1]).reshape(x.shape)

    @staticmethod
    def _dequant(bits, scale, n, bsz):
        s = np.repeat(scale, bsz)[:n]
        return np.where(bits.astype(bool), s, -s).astype(np.float32)

    def encode_device(self, x, ctx, rest):
        g = kernels.gpu()
        flat = x.reshape(-1)
        n = flat.numel()
        if g is None or n == 0:
            return self.encode(x.cpu().numpy(), ctx, rest)
        sums = g.block_sums(flat, self.block)  # the fixed order of codecs._reduce
        require_finite(g.finite(sums), ctx)
        scale = g.sign_scale(sums, n, self.block)
        ctx.write(_host(scale))
        packed, rec = g.sign_encode(flat, self.block, scale, ctx.recon)
        ctx.write(_host(packed))
        return _recon(rec, x.shape)

    def decode_device(self, shape, ctx, rest, device):
        g = kernels.gpu()
        n = numel(shape)
        if g is None or n == 0:
            return self.decode(shape, ctx, rest)
        scale = ctx.read_f32(n_blocks(n, self.block), "sign scales")
        buf = ctx.read(packed_len(n, 1), "sign bits")
        return g.sign_decode(buf, n, self.block, _device_f32(scale, device)).reshape(shape)

    def decode(self, shape, ctx, rest):
        n = numel(shape)
        nb = n_blocks(n, self.block)
        scale = ctx.read_f32(nb, "sign scales")
        k = kernels.cpu()
        if k is not None:
            return k.sign_decode(ctx.read(packed_len(n, 1), "sign bits"), n, self.block, scale).reshape(shape)
        bits = unpack_codes(ctx.read(packed_len(n, 1), "sign bits"), n, 1)
        if n == 0:
            return np.zeros(shape, np.float32)
        bsz = n if nb == 1 else self.block
        return self._dequant(bits, scale, n, bsz).reshape(shape)


# ----------------------------------------------------------------------------- ternary
@register
class Ternary(Stage):
    """TernGrad (Wen et al. 2017): g' = s·sign(g)·b with s = max|g| per block and
    b ~ Bernoulli(|g|/s), so E[g'] = g. Trits are packed five to a byte (1.6 bits per value).

    Error bound: |g − g'| ≤ s.
    """

    name = "ternary"
    help = "TernGrad stochastic ternary {-s,0,s}, unbiased, 1.6 bits/value: block=0 (per tensor)"
    params = {"block": Param(int, 0, "values per scale block (0 = whole tensor)", lo=0, hi=1 << 24)}

    @property
    def unbiased(self):
        return True

    needs_seed = unbiased
    recon_optional = True
    checks_finite = True

    def encode(self, x, ctx, rest):
        flat = x.ravel()
        n = flat.size
        if n == 0:
            ctx.write(b"")
            ctx.write(b"")
            return x.copy()
        k = kernels.cpu()
        if k is not None:
            mn, mx = k.block_minmax(flat, self.block)
            require_finite(_all_finite(mn, mx), ctx)
            s = np.maximum(np.abs(mn), np.abs(mx))  # = max |g|, exactly
            u = ctx.rng().random(n, dtype=np.float32)
            packed, rec = k.ternary_encode(flat, self.block, s, u, ctx.recon)
            ctx.write(s)
            ctx.write(packed)
            return _recon(rec, x.shape)
        x2, _ = blocks_of(flat, self.block)
        s = np.abs(x2).max(axis=1).astype(np.float32)
        require_finite(_all_finite(s), ctx)  # max propagates NaN and inf
        # |g|/s ≤ 1 by division (1/s overflows to inf for tiny s, which kept every value)
        p = (np.abs(x2) / np.where(s > 0, s, np.float32(1))[:, None]).ravel()[:n]
        keep = ctx.rng().random(n, dtype=np.float32) < p
        trits = np.where(keep, np.where(flat > 0, 1, 2), 0).astype(np.uint8)
        ctx.write(s)
        ctx.write(pack_trits(trits))
        if not ctx.recon:
            return None
        return self._dequant(trits, s, n, x2.shape[1]).reshape(x.shape)

    @staticmethod
    def _dequant(trits, s, n, bsz):
        sv = np.repeat(s, bsz)[:n]
        sign = np.array([0.0, 1.0, -1.0], np.float32)[trits]
        return (sv * sign).astype(np.float32)

    def decode(self, shape, ctx, rest):
        n = numel(shape)
        nb = n_blocks(n, self.block)
        s = ctx.read_f32(nb, "ternary scales")
        k = kernels.cpu()
        if k is not None:
            buf = ctx.read(None, "ternary trits")
            if len(buf) != -(-n // 5):
                raise WireError(f"trits: expected {-(-n // 5)} bytes for {n} values, got {len(buf)}")
            out, top = k.ternary_decode(buf, n, self.block, s)
            if top >= 243:
                raise WireError("trits: byte out of range")
            return out.reshape(shape)
        trits = unpack_trits(ctx.read(None, "ternary trits"), n)
        if n == 0:
            return np.zeros(shape, np.float32)
        bsz = n if nb == 1 else self.block
        return self._dequant(trits, s, n, bsz).reshape(shape)
