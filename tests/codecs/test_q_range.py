"""q refuses, with one clear error, blocks whose span float32 cannot hold (it used to decode NaN)."""

import numpy as np
import pytest

import fedpress
from fedpress import kernels


@pytest.mark.parametrize("spec", ["q:bits=8", "q:bits=1", "q:bits=4,stochastic=1", "q:bits=8,target=0.1",
                                  "q:bits=8,mode=absmax", "topk:ratio=0.5+q:bits=8"])
@pytest.mark.parametrize("on", [False, True])
def test_q_block_spanning_beyond_float32_is_one_clear_error(spec, on):
    x = {"w": np.float32([3e38, -3e38, 1.0, 2.0])}
    with kernels.using(on), pytest.raises(ValueError, match="'w': a q block spans more than float32"):
        fedpress.compress(x, spec)


@pytest.mark.parametrize("on", [False, True])
def test_q_huge_values_that_fit_decode_finite(on):
    with kernels.using(on):
        for x, spec in [([3e38, 2.9e38, 1e38], "q:bits=8"), ([1.6e38, -1.6e38], "q:bits=8,mode=absmax"),
                        ([3e38, -3e38, 1.0], "q:bits=8,block=1")]:
            y = fedpress.decompress(fedpress.compress(np.float32(x), spec))
            assert np.isfinite(y).all(), (x, spec)
            assert np.allclose(y, x, rtol=0.01), (x, spec, y)
