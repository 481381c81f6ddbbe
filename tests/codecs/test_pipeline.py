"""The encode pipeline's shortcuts change no byte: skipping the reconstruction, the cheap finite
check, zero-copy fields and the fast CRC-32."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch

import fedpress
from fedpress import kernels
from fedpress.codecs._reduce import block_counts, block_shape, block_sums

SPECS = ["none", "fp16", "q:bits=4", "q:bits=8,target=0.05", "sign:block=7", "ternary", "qsgd:levels=3",
         "topk:ratio=0.1+q:bits=8", "randk:ratio=0.2,unbiased=1+fp16", "threshold:tau=0.5+bf16",
         "svd:rank=2,min_size=0+q:bits=8", "powersgd:rank=2,min_size=0+sign", "q:bits=3+zstd",
         "ef+topk:ratio=0.1+q:bits=4"]


@pytest.mark.parametrize("spec", SPECS)
def test_blob_does_not_depend_on_the_reconstruction(spec):
    x = np.random.default_rng(1).normal(size=(30, 40)).astype(np.float32)
    c = fedpress.codec(spec)
    full = c.encode_ex(x, seed=3)
    bare = c.encode_ex(x, seed=3, recon=False)
    assert bare.blob == full.blob == fedpress.compress(x, spec, seed=3)
    # error feedback always needs the reconstruction; otherwise it is skipped when asked
    assert (bare.recon is None) == (not c.error_feedback)
    blob, state = c.encode(x, seed=3)
    assert blob == full.blob and state.keys() == full.state.keys()
    for k in state:
        np.testing.assert_array_equal(state[k], full.state[k])


def test_masks_and_state_dicts_without_reconstruction():
    sd = {"w": torch.randn(20, 10), "b": torch.zeros(20), "n": torch.tensor([1, 2, 3])}
    mask = np.random.default_rng(0).random(200) < 0.5
    for spec in ("q:bits=4", "none", "topk:ratio=0.2"):
        c = fedpress.codec(spec)
        assert c.encode_ex(sd, masks={"w": mask}, recon=False).blob == c.encode_ex(sd, masks={"w": mask}).blob
        assert c.encode_ex(sd, recon=False).recon is None


@pytest.mark.parametrize("spec", ["q:bits=8", "q:bits=3,block=7", "q:bits=4,mode=absmax,block=0",
                                  "q:bits=8,target=0.1", "sign", "sign:block=10", "qsgd:levels=4",
                                  "qsgd:levels=2,block=5", "ternary", "ternary:block=3", "topk:ratio=0.1",
                                  "fixed:bits=4", "ef+q:bits=4", "q:bits=4+zstd", "sign+zstd"])
def test_nan_and_inf_are_refused_on_both_paths(spec):
    # Stages that prove finiteness from their own block statistics (q, sign, qsgd, ternary) must
    # refuse exactly what the pipeline's own check refuses, wherever the bad value sits.
    n = 70_001  # crosses the kernels' chunks and threads, with a short tail block
    for on in (False, True):
        with kernels.using(on):
            for bad in (np.inf, -np.inf, np.nan, -np.nan):
                for pos in (0, 12_345, n - 1):
                    x = np.random.default_rng(pos).normal(size=n).astype(np.float32)
                    x[pos] = bad
                    with pytest.raises(ValueError, match="'w' holds NaN or inf"):
                        fedpress.compress({"w": x}, spec)


def test_finite_check_is_exact():
    # float32 sums of these overflow to inf, yet every value is finite: still accepted
    big = np.full(1000, 3e38, np.float32)
    for spec in ("q:bits=8", "topk:ratio=0.5", "sign", "ternary"):
        assert fedpress.decompress(fedpress.compress(big, spec)).shape == (1000,)
    x = np.full(10, 3e38, np.float32)
    x[3] = -np.inf  # inf among values whose sum overflows anyway
    with pytest.raises(ValueError, match="NaN or inf"):
        fedpress.compress(x, "topk:ratio=0.5")
    # a NaN in a pruned coordinate is still refused (the mask is applied after the check)
    x = np.ones(100, np.float32)
    x[7] = np.nan
    mask = np.ones(100, bool)
    mask[7] = False
    with pytest.raises(ValueError, match="NaN or inf"):
        fedpress.compress(x, "q:bits=8", masks={"": mask})


def test_checksum_is_zlib_crc32():
    blob = fedpress.compress(np.arange(1000, dtype=np.float32), "q:bits=4")
    assert struct.unpack("<I", blob[-4:])[0] == zlib.crc32(blob[:-4])


def test_input_is_not_aliased_by_the_blob():
    t = torch.randn(1000)
    blob = fedpress.compress(t, "none")
    before = fedpress.decompress(blob).clone()
    t.mul_(2)  # the blob holds its own bytes, not a view of the tensor
    assert torch.equal(fedpress.decompress(blob), before)


def test_reference_block_sums():
    x = np.array([1, -2, 3, -4, 5], np.float32)
    assert block_shape(5, 2) == (3, 2) and block_counts(5, 2).tolist() == [2, 2, 1]
    assert block_sums(x, 2).tolist() == [3.0, 7.0, 5.0]
    assert block_sums(x, 0, square=True).tolist() == [55.0]
    assert block_sums(np.zeros(0, np.float32), 3).size == 0


def test_sign_scale_is_the_mean_magnitude_on_both_paths():
    x = np.random.default_rng(2).normal(size=100_003).astype(np.float32)
    for on in (False, True):
        with kernels.using(on):
            y = fedpress.decompress(fedpress.compress(x, "sign:block=1000"))
        np.testing.assert_allclose(np.abs(y[:1000]).mean(), np.abs(x[:1000]).mean(), rtol=1e-6)
        np.testing.assert_allclose(np.abs(y[-3:]), np.abs(x[-3:]).mean(), rtol=1e-6)
