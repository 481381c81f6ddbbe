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


def _near_limit_block():
    # -h..h spans 3.4028234e38 < float32 max, yet top·scale rounds past it at 5 and 7 bits only.
    h = np.float32(1.7014117e38)
    x = (np.linspace(-1, 1, 256) * h).astype(np.float32)
    x[0], x[-1] = -h, h
    return x


@pytest.mark.parametrize("target", [0.2, 0.05, 0.02, 0.01])
def test_q_target_never_picks_a_width_whose_span_overflows(target):
    x = _near_limit_block()
    blob = fedpress.compress(x, f"q:bits=8,target={target}")
    y = fedpress.decompress(blob)
    assert np.isfinite(y).all()
    # the error target still holds (computed without overflowing float32)
    rel = np.linalg.norm(y.astype(np.float64) - x) / np.linalg.norm(x.astype(np.float64))
    assert rel <= target


def test_q_target_search_sees_errors_of_huge_values():
    # ||x||² overflows float32 here; the search used to accept 1 bit for any target.
    x = _near_limit_block()
    one_bit = fedpress.decompress(fedpress.compress(x, "q:bits=1"))
    y = fedpress.decompress(fedpress.compress(x, "q:bits=8,target=0.01"))
    err = np.linalg.norm(y.astype(np.float64) - x)
    assert err < np.linalg.norm(one_bit.astype(np.float64) - x) / 10
