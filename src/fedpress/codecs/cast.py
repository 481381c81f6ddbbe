"""Casts: ``none`` (lossless float32), ``fp16`` and ``bf16``.

The NumPy code here is the definition of fp16 and bf16 (``np.clip`` + NumPy's float16 cast, and
:func:`to_bf16_bits`). When :func:`fedpress.kernels.cpu` returns the compiled kernels, encode and
decode use their integer-arithmetic casts instead (one threaded pass, ~10x faster on large tensors):
same blob and same reconstruction for every float32 bit pattern, NaN payloads included
(``tests/kernels/test_casts.py``). Not torch's or F16C's conversions: those quieten signalling
NaNs, which NumPy's cast does not.
"""

from __future__ import annotations

import numpy as np

from fedpress import kernels
from fedpress.codecs.base import Ctx, Rest, Stage, f32_field, numel
from fedpress.codecs.spec import register

_FP16_MAX = np.float32(65504.0)


@register
class NoneStage(Stage):
    """No compression: float32 values as they are (the baseline every ratio is measured against).

    Error bound: exact for float32 input.
    """

    name = "none"
    help = "no compression: raw float32 (the baseline)"
    recon_optional = True

    def encode(self, x, ctx: Ctx, rest: Rest):
        ctx.write(f32_field(x))
        return x

    def decode(self, shape, ctx: Ctx, rest: Rest):
        return ctx.read_f32(numel(shape), "raw values").reshape(shape)


@register
class FP16(Stage):
    """IEEE half precision; values beyond ±65504 saturate instead of becoming inf.

    Error bound: relative error ≤ 2**-11 for |x| in fp16's normal range [6.1e-5, 65504].

    >>> import fedpress, numpy as np
    >>> fedpress.decompress(fedpress.compress(np.array([1/3], np.float32), "fp16")).tolist()
    [0.333251953125]
    """

    name = "fp16"
    help = "IEEE half precision (16 bits per value)"
    recon_optional = True

    def encode(self, x, ctx: Ctx, rest: Rest):
        k = kernels.cpu()
        if k is not None:
            h, rec = k.f16_encode(x.ravel(), ctx.recon)
            ctx.write(h)
            return None if rec is None else rec.reshape(x.shape)
        h = np.clip(x, -_FP16_MAX, _FP16_MAX).astype("<f2")
        ctx.write(h)
        return h.astype(np.float32) if ctx.recon else None

    def decode(self, shape, ctx: Ctx, rest: Rest):
        n = numel(shape)
        buf = ctx.read(2 * n, "fp16 values")
        k = kernels.cpu()
        if k is not None:
            return k.f16_decode(buf, n).reshape(shape)
        return np.frombuffer(buf, "<f2").astype(np.float32).reshape(shape)


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bit patterns with round-to-nearest-even (NaN stays NaN)."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    nan = np.isnan(x)
    if nan.any():
        rounded = np.where(nan, np.uint32(0x7FC0), rounded)
    return rounded.astype("<u2")


def from_bf16_bits(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << np.uint32(16)).view(np.float32)


@register
class BF16(Stage):
    """bfloat16 (8-bit exponent, 7-bit mantissa), rounded to nearest even.

    Error bound: relative error ≤ 2**-8.
    """

    name = "bf16"
    help = "bfloat16: float32's range, 8 bits of precision (16 bits per value)"
    recon_optional = True

    def encode(self, x, ctx: Ctx, rest: Rest):
        k = kernels.cpu()
        if k is not None:
            b, rec = k.bf16_encode(x.ravel(), ctx.recon)
            ctx.write(b)
            return None if rec is None else rec.reshape(x.shape)
        b = to_bf16_bits(x)
        ctx.write(b)
        return from_bf16_bits(b).reshape(x.shape) if ctx.recon else None

    def decode(self, shape, ctx: Ctx, rest: Rest):
        n = numel(shape)
        buf = ctx.read(2 * n, "bf16 values")
        k = kernels.cpu()
        if k is not None:
            return k.bf16_decode(buf, n).reshape(shape)
        return from_bf16_bits(np.frombuffer(buf, "<u2")).reshape(shape)
