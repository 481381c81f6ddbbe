"""Test inputs shared by the kernel tests (tests/kernels): every path must agree on them.

On the test path via ``pythonpath`` in pyproject.toml; import as ``from kernel_data import make_data``.
"""

from __future__ import annotations

import numpy as np


def make_data(shape, seed: int, kind: str) -> np.ndarray:
    """float32 values of ``shape``: normal, scales (1e-30..1e30), ties, fit (±0, subnormals and huge
    values whose block spans fit float32), halves (.5 ties) or edge (±3e38 side by side)."""
    r = np.random.default_rng(seed)
    n = int(np.prod(shape, dtype=np.int64))
    if kind == "normal":
        x = r.normal(size=n)
    elif kind == "scales":  # magnitudes from 1e-30 to 1e30 side by side
        x = r.normal(size=n) * 10.0 ** r.integers(-30, 31, size=n)
    elif kind == "ties":  # few distinct values: top-k ties, constant blocks
        x = r.integers(-2, 3, size=n).astype(np.float64)
    elif kind == "fit":  # ±0, subnormals and huge values whose blocks' spans still fit float32
        x = r.normal(size=n)
        x[:6] = [0.0, -0.0, 1e-45, -1e-45, 1e-39, -1.17e-38][: min(n, 6)]
        x[256:260] = [1e38, -1e38, 3e-39, -0.0][: max(0, min(n - 256, 4))]
        x[512:768] = np.where(r.random(max(0, min(n - 512, 256))) < 0.5, 0.0, -0.0)  # a zero block
        x[768:1024] = r.integers(-5, 6, size=max(0, min(n - 768, 256))) * 1e-45  # a subnormal block
        x[1024:1025] = 1.5e38
    elif kind == "halves":  # codes landing exactly on .5 (round half to even) in q:bits=2 blocks
        x = r.integers(0, 7, size=n) * 0.5
        x[::256] = 0.0
        x[1::256] = 3.0
    else:  # "edge": ±0, subnormals, values whose range overflows float32
        x = r.normal(size=n)
        specials = np.array([0.0, -0.0, 1e-45, -1e-45, 3e38, -3e38, 1e-39], np.float64)
        x[: min(n, specials.size)] = specials[: min(n, specials.size)]
    return x.astype(np.float32).reshape(shape)
