"""Level and sign codecs: QSGD (``qsgd``), signSGD/EF-sign (``sign``) and TernGrad (``ternary``).

They are one family: each stores one scale per block (the L2 norm, mean |g| or max |g|) and maps
every value to a few levels of it (2s+1 for QSGD, two for sign, three for TernGrad); QSGD and
TernGrad pick the level by an unbiased stochastic draw (E[g'] = g), sign is biased (use ``ef``).

Codes are written with the helpers of :mod:`fedpress.codecs.quantize`, and what its docstring says
of the compiled kernels, the random draws and the device path (``sign`` has one) holds here too.
"""

from __future__ import annotations

from typing import ClassVar

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


# ----------------------------------------------------------------------------- shared frame
def _block_len(n: int, block: int) -> int:
    """Values per block of n > 0 values (the whole tensor for ``block=0`` or ``block >= n``)."""
    return block_shape(n, block)[1]


def _per_value(scale: np.ndarray, bsz: int, n: int) -> np.ndarray:
    """Each block's scale repeated over its values: value i gets ``scale[i // bsz]``."""
    return np.repeat(scale, bsz)[:n]


class _BlockScaled(Stage):
    """The frame the three codecs share (the module doc's family). Every tensor is two fields: one
    float32 scale per block, then the packed codes, each code a level of its block's scale.

    Subclasses write both fields for non-empty input in :meth:`_encode`, and decode with
    :meth:`_kernel_decode` (compiled kernels on) or :meth:`_unpack` then :meth:`_dequant` (numpy);
    :meth:`_recon_np` gives the numpy encode path the same values decode will return.
    """

    block: int  # every codec here has the parameter: values per scale block (0 = whole tensor)
    #: The scale field's name in WireError messages, e.g. "sign scales".
    scale_field: ClassVar[str]
    recon_optional = True
    checks_finite = True

    def encode(self, x, ctx, rest):
        flat = x.ravel()
        if flat.size == 0:
            # Still both fields (empty), so decode reads the same two for every tensor; there is
            # nothing to check or draw, and the (empty) input is its own reconstruction.
            ctx.write(b"")
            ctx.write(b"")
            return x.copy()
        return self._encode(flat, x.shape, ctx)

    def decode(self, shape, ctx, rest):
        n = numel(shape)
        scale = ctx.read_f32(n_blocks(n, self.block), self.scale_field)
        k = kernels.cpu()
        if k is not None:
            return self._kernel_decode(k, ctx, n, scale).reshape(shape)
        codes = self._unpack(ctx, n)  # read (and checked) even when empty: the field is there
        if n == 0:
            return np.zeros(shape, np.float32)
        return self._dequant(codes, scale, _block_len(n, self.block)).reshape(shape)

    def _recon_np(self, ctx, codes, scale, shape):
        """The numpy encode path's reconstruction of its n > 0 flat ``codes`` (None unless
        ``ctx.recon``): the values :meth:`decode` will return for them."""
        if not ctx.recon:
            return None
        return self._dequant(codes, scale, _block_len(codes.size, self.block)).reshape(shape)

    # The codec's own parts.
    def _encode(self, flat, shape, ctx):  # pragma: no cover
        raise NotImplementedError

    def _kernel_decode(self, k, ctx, n, scale):  # pragma: no cover
        raise NotImplementedError

    def _unpack(self, ctx, n):  # pragma: no cover
        raise NotImplementedError

    def _dequant(self, codes, scale, bsz):  # pragma: no cover
        raise NotImplementedError


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
class QSGD(_BlockScaled):
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

    scale_field = "qsgd norms"

    @property
    def unbiased(self):
        return True

    needs_seed = unbiased

    @property
    def bits(self) -> int:
        return int(np.ceil(np.log2(2 * self.levels + 1)))

    def _dequant(self, codes, norm, bsz):
        s = np.float32(self.levels)
        return (codes.astype(np.float32) - s) * _per_value(norm / s, bsz, codes.size)

    def _check_levels(self, top: int) -> None:
        if top > 2 * self.levels:
            raise WireError("qsgd code out of range")

    def _encode(self, flat, shape, ctx):
        n = flat.size
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
            return _recon(rec, shape)
        x2, _ = blocks_of(flat, self.block)
        s = np.float32(self.levels)
        # |g|/‖g‖ ≤ 1, then ·s: never s/‖g‖, which overflows to inf for tiny norms (and 0·inf = NaN
        # gave zeros a negative code).
        mag = np.abs(x2) / np.where(norm > 0, norm, np.float32(1))[:, None] * s
        lev = np.minimum(np.floor(mag + u), s)
        codes = (np.where(x2 < 0, -lev, lev) + s).astype(np.uint8).ravel()[:n]  # less the padding
        _write_codes(codes, self.bits, ctx)
        return self._recon_np(ctx, codes, norm, shape)

    def _kernel_decode(self, k, ctx, n, norm):
        sb = _store_bits(self.bits, ctx)
        out, top = k.qsgd_decode(ctx.read(packed_len(n, sb), "qsgd codes"), n, self.block, sb,
                                 norm, self.levels)
        _check_top(top, self.bits, sb, "qsgd codes")
        self._check_levels(top)
        return out

    def _unpack(self, ctx, n):
        codes = _read_codes(n, self.bits, ctx, "qsgd codes")
        self._check_levels(int(codes.max()) if codes.size else 0)
        return codes


# ----------------------------------------------------------------------------- sign
@register
class Sign(_BlockScaled):
    """1-bit sign with a per-block scale (mean |g|), as in signSGD with majority vote / EF-signSGD
    (Bernstein et al. 2018; Karimireddy et al. 2019). Biased: pair it with ``ef``.

    Error bound: |g'| = mean |g| of its block, sign preserved (0 maps to +).
    """

    name = "sign"
    help = "1-bit sign + mean-|g| scale per block (block=0: per tensor); use with ef"
    params = {"block": Param(int, 0, "values per scale block (0 = whole tensor)", lo=0, hi=1 << 24)}
    scale_field = "sign scales"

    def _encode(self, flat, shape, ctx):
        n = flat.size
        k = kernels.cpu()
        # mean |g| per block, summed in the fixed order of codecs._reduce (both paths)
        sums = (k.block_sums if k else block_sums)(flat, self.block)
        require_finite(_all_finite(sums), ctx)  # float64 sums of finite float32 never overflow
        scale = (sums / block_counts(n, self.block)).astype(np.float32)
        ctx.write(scale)
        if k is not None:
            packed, rec = k.sign_encode(flat, self.block, scale, ctx.recon)
            ctx.write(packed)
            return _recon(rec, shape)
        bits = (flat >= 0).astype(np.uint8)
        ctx.write(pack_codes(bits, 1))
        return self._recon_np(ctx, bits, scale, shape)

    def _dequant(self, bits, scale, bsz):
        s = _per_value(scale, bsz, bits.size)
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
        scale = ctx.read_f32(n_blocks(n, self.block), self.scale_field)
        buf = ctx.read(packed_len(n, 1), "sign bits")
        return g.sign_decode(buf, n, self.block, _device_f32(scale, device)).reshape(shape)

    def _kernel_decode(self, k, ctx, n, scale):
        return k.sign_decode(ctx.read(packed_len(n, 1), "sign bits"), n, self.block, scale)

    def _unpack(self, ctx, n):
        return unpack_codes(ctx.read(packed_len(n, 1), "sign bits"), n, 1)


# ----------------------------------------------------------------------------- ternary
@register
class Ternary(_BlockScaled):
    """TernGrad (Wen et al. 2017): g' = s·sign(g)·b with s = max|g| per block and
    b ~ Bernoulli(|g|/s), so E[g'] = g. Trits are packed five to a byte (1.6 bits per value).

    Error bound: |g − g'| ≤ s.
    """

    name = "ternary"
    help = "TernGrad stochastic ternary {-s,0,s}, unbiased, 1.6 bits/value: block=0 (per tensor)"
    params = {"block": Param(int, 0, "values per scale block (0 = whole tensor)", lo=0, hi=1 << 24)}

    scale_field = "ternary scales"

    @property
    def unbiased(self):
        return True

    needs_seed = unbiased

    def _encode(self, flat, shape, ctx):
        n = flat.size
        k = kernels.cpu()
        if k is not None:
            mn, mx = k.block_minmax(flat, self.block)
            require_finite(_all_finite(mn, mx), ctx)
            s = np.maximum(np.abs(mn), np.abs(mx))  # = max |g|, exactly
            u = ctx.rng().random(n, dtype=np.float32)
            packed, rec = k.ternary_encode(flat, self.block, s, u, ctx.recon)
            ctx.write(s)
            ctx.write(packed)
            return _recon(rec, shape)
        x2, _ = blocks_of(flat, self.block)
        s = np.abs(x2).max(axis=1).astype(np.float32)
        require_finite(_all_finite(s), ctx)  # max propagates NaN and inf
        # |g|/s ≤ 1 by division (1/s overflows to inf for tiny s, which kept every value)
        p = (np.abs(x2) / np.where(s > 0, s, np.float32(1))[:, None]).ravel()[:n]
        keep = ctx.rng().random(n, dtype=np.float32) < p
        trits = np.where(keep, np.where(flat > 0, 1, 2), 0).astype(np.uint8)
        ctx.write(s)
        ctx.write(pack_trits(trits))
        return self._recon_np(ctx, trits, s, shape)

    def _dequant(self, trits, s, bsz):
        sign = np.array([0.0, 1.0, -1.0], np.float32)[trits]
        return (_per_value(s, bsz, trits.size) * sign).astype(np.float32)

    def _kernel_decode(self, k, ctx, n, s):
        buf = ctx.read(None, "ternary trits")
        if len(buf) != -(-n // 5):
            raise WireError(f"trits: expected {-(-n // 5)} bytes for {n} values, got {len(buf)}")
        out, top = k.ternary_decode(buf, n, self.block, s)
        if top >= 243:
            raise WireError("trits: byte out of range")
        return out

    def _unpack(self, ctx, n):
        return unpack_trits(ctx.read(None, "ternary trits"), n)
