"""fp16 and bf16: the compiled casts write the NumPy reference's bytes and reconstruction for every
input, NaN payloads, subnormals, ±0, saturation (fp16) and overflow to inf (bf16) included.

The reference (``fedpress.codecs.cast``) is the definition: ``np.clip(x, -65504, 65504)`` then
NumPy's float16 cast, and :func:`~fedpress.codecs.cast.to_bf16_bits`. (All 2³² float32 bit patterns
were compared once, by hand; these tests take every exponent with the mantissa patterns that decide
rounding, a stride through the whole space, and every one of the 2¹⁶ half and bfloat16 patterns.)
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fedpress
from fedpress import kernels
from fedpress.codecs.base import Ctx
from fedpress.codecs.cast import BF16, FP16, from_bf16_bits, to_bf16_bits
from fedpress.wire.format import read_blob

pytest.importorskip("numba")

CHUNK = 10240  # fedpress.kernels._jit.CHUNK
F16_MAX = np.float32(65504.0)


def _kern():
    with kernels.using(True):
        return kernels.cpu()


def _bits(x) -> np.ndarray:
    return np.asarray(x, np.float32).view(np.uint32)


def _f32(bits) -> np.ndarray:
    return np.asarray(bits, np.uint64).astype(np.uint32).view(np.float32)


def _ref_f16(x):
    with np.errstate(all="ignore"):
        h = np.clip(x, -F16_MAX, F16_MAX).astype("<f2")
    return h.view(np.uint16), h.astype(np.float32)


def _ref_bf16(x):
    b = to_bf16_bits(x)
    return b, from_bf16_bits(b)


def _patterns() -> np.ndarray:
    """Every sign and exponent, with the low 16 bits set to the patterns that decide rounding
    (ties to even, just above/below a tie, all ones) and the 3 bits above them varied; then a stride
    through all 2³² patterns; then the named edge values."""
    hi = np.arange(1 << 16, dtype=np.uint32) << np.uint32(16)
    low = np.array([0, 1, 0x0FFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x3000, 0x7FFF, 0x8000, 0x8001,
                    0xBFFF, 0xC000, 0xE000, 0xFFFF], np.uint32)
    grid = (hi[:, None] | low[None, :]).ravel()
    stride = (np.arange(0, 1 << 32, 65_521, dtype=np.uint64)).astype(np.uint32)
    named = _bits(np.array([
        0.0, -0.0, 1e-45, -1e-45, 1e-40, 1.17549435e-38,               # float32 subnormals, min normal
        2.0**-24, 2.0**-25, -(2.0**-25), 3 * 2.0**-25, 2.0**-25 * 1.0000001,  # half subnormal ties
        2.0**-14, 2.0**-14 * 0.99999994, 6.0975552e-05, 6.1e-5,        # around half's min normal
        1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-8, 1 + 3 * 2.0**-8,  # fp16 / bf16 ties
        65504.0, 65505.0, 65519.99, 65520.0, 65536.0, -65520.0, 1e6, -1e30, 3.4028235e38,
        -3.4028235e38, 3.3961775e38, np.inf, -np.inf,
    ], np.float32))
    nans = np.array([0x7F800001, 0x7F801FFF, 0x7F802000, 0x7FBFFFFF, 0x7FC00000, 0x7FC00001,
                     0x7FFFFFFF, 0xFF800001, 0xFFC00000, 0xFFFFFFFF], np.uint32)
    return np.concatenate([grid, stride, named, nans])


def test_kernel_casts_match_the_reference_on_every_bit_pattern_class():
    k = _kern()
    x = _f32(_patterns())
    for recon in (False, True):
        h, rec = k.f16_encode(x, recon)
        ref_h, ref_rec = _ref_f16(x)
        assert h.dtype == np.uint16 and np.array_equal(h, ref_h)
        if recon:
            assert np.array_equal(_bits(rec), _bits(ref_rec))
        else:
            assert rec is None
        b, rec = k.bf16_encode(x, recon)
        ref_b, ref_rec = _ref_bf16(x)
        assert b.dtype == np.uint16 and np.array_equal(b, ref_b)
        if recon:
            assert np.array_equal(_bits(rec), _bits(ref_rec))


def test_kernel_decoders_match_the_reference_on_all_65536_patterns():
    k = _kern()
    h = np.arange(1 << 16, dtype=np.uint32).astype("<u2")
    buf = h.tobytes()
    assert np.array_equal(_bits(k.f16_decode(buf, h.size)), _bits(h.view("<f2").astype(np.float32)))
    assert np.array_equal(_bits(k.bf16_decode(buf, h.size)), _bits(from_bf16_bits(h)))
    # a field that starts at an odd offset of the blob
    odd = memoryview(b"\x00" + buf)[1:]
    assert np.array_equal(_bits(k.f16_decode(odd, h.size)), _bits(h.view("<f2").astype(np.float32)))
    assert np.array_equal(_bits(k.bf16_decode(odd, h.size)), _bits(from_bf16_bits(h)))


def test_what_the_casts_do_with_edge_values():
    # the behaviour both paths keep (written out, so a change to the reference shows here too)
    x = np.array([np.inf, -np.inf, 1e6, 65520.0, 65519.0, -0.0, 2.0**-25, 3 * 2.0**-25, np.nan,
                  3.4028235e38], np.float32)
    for on in (False, True):
        with kernels.using(on), np.errstate(all="ignore"):
            h, hr = _stage_encode(FP16(), x)
            b, br = _stage_encode(BF16(), x)
        assert h.view("<f2")[:8].tolist() == [65504.0, -65504.0, 65504.0, 65504.0, 65504.0, -0.0,
                                              0.0, 2.0**-23]  # saturation; ties to even
        assert np.signbit(hr[5]) and np.isnan(hr[8]) and hr[9] == 65504.0
        assert b.view("<u2")[8] == 0x7FC0 and br[0] == np.inf and br[9] == np.inf  # bf16 overflows


def _stage_encode(stage, x):
    """A stage's own field and reconstruction, bypassing the pipeline's finite check."""
    fields: list = []
    ctx = Ctx(seed=0, tensor_index=0, name="t", fields=fields)
    rec = stage.encode(x, ctx, None)
    return fields[0], rec


@pytest.mark.parametrize("stage", [FP16(), BF16()], ids=["fp16", "bf16"])
def test_stage_paths_agree_on_nonfinite_input(stage):
    # Inside a pipeline NaN and inf are refused before a cast sees them; called directly, the stage
    # still behaves the same on both paths (NaN payloads included).
    x = _f32(_patterns())
    x = x[: x.size // 7 * 7].reshape(-1, 7)
    out = {}
    for on in (False, True):
        with kernels.using(on), np.errstate(all="ignore"):
            field, rec = _stage_encode(stage, x)
            ctx = Ctx(seed=0, tensor_index=0, name="t", fields=[field])
            dec = stage.decode(x.shape, ctx, None)
        out[on] = (bytes(field), _bits(rec), _bits(dec), rec.shape)
    assert out[False][0] == out[True][0]
    assert np.array_equal(out[False][1], out[True][1]) and out[True][3] == x.shape
    assert np.array_equal(out[False][2], out[True][2])
    assert np.array_equal(out[True][1], out[True][2])  # the reconstruction is what decode returns


SPECS = ["fp16", "bf16", "fp16+zstd", "bf16+zstd", "topk:ratio=0.3+fp16", "randk:ratio=0.2,unbiased=1+bf16",
         "powersgd:rank=1,min_size=0+bf16", "svd:rank=2,min_size=0+fp16", "ef+fp16", "ef+topk:ratio=0.1+bf16"]
SHAPES = [(), (0,), (1,), (7,), (3, 0, 2), (33, 17), (CHUNK - 1,), (CHUNK + 1,), (3 * CHUNK + 5,)]


def _data(shape, seed: int, kind: str) -> np.ndarray:
    r = np.random.default_rng(seed)
    n = int(np.prod(shape, dtype=np.int64))
    if kind == "normal":
        x = r.normal(size=n)
    elif kind == "scales":  # 1e-45 .. 1e38: float32 subnormals, half subnormals, beyond fp16
        x = r.normal(size=n) * 10.0 ** r.integers(-45, 38, size=n)
    else:  # "edge"
        x = r.normal(size=n) * 1e4
        specials = np.array([0.0, -0.0, 1e-45, -1e-45, 2.0**-25, 65504.0, 65520.0, -65520.0, 3e38,
                             -3.4028235e38, 6e-5], np.float64)
        x[: min(n, specials.size)] = specials[: min(n, specials.size)]
    return x.astype(np.float32).reshape(shape)


def _both(spec, x, seed=0):
    out = {}
    for on in (False, True):
        with kernels.using(on), np.errstate(all="ignore"):
            e = fedpress.codec(spec).encode_ex(x, seed=seed)
            out[on] = (e.blob, e.recon, fedpress.decompress(e.blob))
    return out


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return (a.shape == b.shape and a.dtype == b.dtype
            and np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)))


def _assert_same_paths(spec, x, seed=0):
    got = _both(spec, x, seed)
    (b0, r0, d0), (b1, r1, d1) = got[False], got[True]
    assert b0 == b1, f"{spec}: blobs differ (shape {x.shape})"
    assert _same(r0, r1), f"{spec}: reconstructions differ"
    assert _same(d0, d1), f"{spec}: decoded values differ"
    assert _same(d1, r1), f"{spec}: kernel reconstruction is not what decode returns"


@pytest.mark.parametrize("spec", SPECS)
def test_same_bytes_and_values_on_every_shape(spec):
    for i, shape in enumerate(SHAPES):
        for kind in ("normal", "scales", "edge"):
            _assert_same_paths(spec, _data(shape, i, kind), seed=i)


def test_threaded_path_is_identical(monkeypatch):
    monkeypatch.setenv("FEDPRESS_KERNEL_THREADS", "3")
    monkeypatch.setattr(kernels, "SERIAL_BELOW", 1000)
    for spec in ("fp16", "bf16"):
        _assert_same_paths(spec, _data((5 * CHUNK + 77,), 1, "scales"))
    x = _f32(_patterns())
    monkeypatch.setattr(kernels, "SERIAL_BELOW", 1000)
    k = _kern()
    assert np.array_equal(k.f16_encode(x)[0], _ref_f16(x)[0])
    assert np.array_equal(k.bf16_encode(x)[0], _ref_bf16(x)[0])


def test_the_kernels_are_what_runs(monkeypatch):
    # the comparisons above compare two different paths: the kernels run when on, never when off
    k = _kern()
    calls = []
    for name in ("f16_encode", "f16_decode", "bf16_encode", "bf16_decode"):
        real = getattr(k, name)
        monkeypatch.setattr(k, name, lambda *a, _r=real, _n=name: calls.append(_n) or _r(*a))
    x = _data((100,), 0, "normal")
    with kernels.using(False):
        fedpress.decompress(fedpress.compress(x, "fp16"))
        fedpress.decompress(fedpress.compress(x, "bf16"))
    assert calls == []
    with kernels.using(True):
        fedpress.decompress(fedpress.compress(x, "fp16"))
        fedpress.decompress(fedpress.compress(x, "bf16"))
    assert calls == ["f16_encode", "f16_decode", "bf16_encode", "bf16_decode"]


def test_field_is_little_endian_halves():
    x = np.array([1.0, -2.5, 65504.0], np.float32)  # 65504 is exact in fp16, not in bf16
    with kernels.using(True):
        f = bytes(read_blob(fedpress.compress(x, "fp16")).fields[0])
        g = bytes(read_blob(fedpress.compress(x, "bf16")).fields[0])
    assert f == x.astype("<f2").tobytes()
    assert g == np.array([0x3F80, 0xC020, 0x4780], "<u2").tobytes()  # 65504 rounds up to 65536


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=st.sampled_from(["fp16", "bf16", "topk:ratio=0.5+fp16"]),
    x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=40),
                 elements=st.floats(allow_nan=False, allow_infinity=False, width=32)),
)
def test_property_same_bytes(spec, x):
    _assert_same_paths(spec, x)


@settings(max_examples=60, deadline=None)
@given(bits=hnp.arrays(np.uint32, st.integers(0, 300), elements=st.integers(0, 2**32 - 1)))
def test_property_any_bit_pattern(bits):
    k = _kern()
    x = bits.view(np.float32)
    h, rec = k.f16_encode(x, True)
    ref_h, ref_rec = _ref_f16(x)
    assert np.array_equal(h, ref_h) and np.array_equal(_bits(rec), _bits(ref_rec))
    b, rec = k.bf16_encode(x, True)
    ref_b, ref_rec = _ref_bf16(x)
    assert np.array_equal(b, ref_b) and np.array_equal(_bits(rec), _bits(ref_rec))
