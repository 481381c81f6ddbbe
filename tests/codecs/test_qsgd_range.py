"""QSGD near float32's limits: finite input always gives a finite, decodable blob.

A block's L2 norm can exceed float32's range although every value is finite (two values of 3e38);
its float64 sum of squares does not overflow, and the stored norm is capped (``qsgd_norms``) instead
of becoming inf (which decoded the whole block to NaN). Below the cap the bytes are what they always
were.
"""

from __future__ import annotations

import numpy as np
import pytest

import fedpress
from fedpress import kernels
from fedpress.codecs._reduce import block_shape, block_sums
from fedpress.codecs.levels import qsgd_norm_cap, qsgd_norms
from fedpress.wire.format import read_blob

F32_MAX = np.finfo(np.float32).max
LEVELS = [1, 2, 3, 16, 25, 31, 100, 127]


def _paths():
    out = [False]
    if kernels.available():
        out.append(True)
    return out


def test_the_cap_is_the_largest_norm_whose_levels_decode_finitely():
    with np.errstate(over="ignore"):
        for levels in range(1, 128):
            s = np.float32(levels)
            cap = qsgd_norm_cap(levels)
            assert cap.dtype == np.float32 and np.isfinite(s * (cap / s))
            above = np.nextafter(cap, np.float32(np.inf))
            assert cap == F32_MAX or not np.isfinite(s * (above / s))
    assert [v for v in range(1, 128) if qsgd_norm_cap(v) < F32_MAX] == [25, 31, 49, 50, 62, 98, 100,
                                                                         101, 124, 127]


def test_norms_below_the_cap_are_the_plain_cast():
    r = np.random.default_rng(0)
    sums = np.concatenate([r.random(1000) * 10.0 ** r.integers(-80, 77, 1000), [0.0, 1.0, 4.0],
                           [float(F32_MAX) ** 2 * (1 - 1e-7)]])
    for levels in LEVELS:
        assert np.array_equal(qsgd_norms(sums, levels), np.sqrt(sums).astype(np.float32))
    with np.errstate(over="ignore"):
        assert np.isinf(np.sqrt(np.array([2 * 3e38**2])).astype(np.float32)).all()  # what it was
    assert qsgd_norms(np.array([2 * 3e38**2, 1e300]), 16).tolist() == [F32_MAX, F32_MAX]


def _cases():
    r = np.random.default_rng(1)
    yield np.array([3e38, -3e38, 1.0], np.float32)  # the norm 4.2e38 overflows float32
    yield np.array([F32_MAX, 0.0], np.float32)  # norm exactly float32's max
    yield np.array([F32_MAX, -F32_MAX, F32_MAX], np.float32)
    yield np.full(1000, -F32_MAX, np.float32)
    yield np.full(1000, 3e38, np.float32)
    yield (r.uniform(-1, 1, 5000) * F32_MAX).astype(np.float32)
    x = r.normal(size=3000).astype(np.float32)  # huge blocks beside ordinary ones
    x[600:700] = 2e38
    x[-1] = -F32_MAX
    yield x


@pytest.mark.parametrize("levels", LEVELS)
@pytest.mark.parametrize("block", [0, 2, 512])
def test_huge_finite_values_encode_and_decode_to_finite_values(levels, block):
    spec = f"qsgd:levels={levels},block={block}"
    for i, x in enumerate(_cases()):
        got = {}
        for on in _paths():
            with kernels.using(on), np.errstate(over="raise", invalid="raise"):  # no overflow, no NaN
                e = fedpress.codec(spec).encode_ex(x, seed=i)
                y = fedpress.decompress(e.blob)
            got[on] = e.blob
            assert np.isfinite(y).all() and np.isfinite(e.recon).all(), (spec, i)
            assert np.array_equal(y, e.recon)
            # stored norms: the true norm in float32, capped (so finite), and the error bound holds
            norm = np.frombuffer(read_blob(e.blob).fields[0], "<f4")
            nb, bsz = block_shape(x.size, block)
            true = np.sqrt(block_sums(x, block, True))
            assert np.isfinite(norm).all()
            assert np.array_equal(norm, np.minimum(true, qsgd_norm_cap(levels)).astype(np.float32))
            assert (norm.astype(np.float64) <= true * (1 + 2.0**-24)).all()
            err = np.abs(y.astype(np.float64) - x)
            per = np.repeat(norm.astype(np.float64) / levels, bsz)[: x.size]
            assert (err <= per * (1 + 1e-6)).all(), (spec, i)
        assert len(set(got.values())) == 1, f"{spec}: the paths disagree on case {i}"


def test_ordinary_blobs_are_unchanged():
    # the norm field is np.sqrt(sums).astype(float32) exactly, as before the cap existed
    x = np.random.default_rng(3).normal(size=20_000).astype(np.float32) * 1e30
    for on in _paths():
        with kernels.using(on):
            blob = fedpress.compress(x, "qsgd:levels=16,block=512")
        norm = np.frombuffer(read_blob(blob).fields[0], "<f4")
        assert np.array_equal(norm, np.sqrt(block_sums(x, 512, True)).astype(np.float32))


def test_nan_and_inf_are_still_refused():
    for on in _paths():
        with kernels.using(on):
            for bad in (np.inf, -np.inf, np.nan):
                x = np.array([3e38, bad, 1.0], np.float32)
                with pytest.raises(ValueError, match="'w' holds NaN or inf"):
                    fedpress.compress({"w": x}, "qsgd:levels=4")
