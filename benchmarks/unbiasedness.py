"""Statistical unbiasedness of the unbiased codecs over many seeds.

    python benchmarks/unbiasedness.py [--seeds 2000] [--n 256] [--codec SPEC ...]

For a fixed update x, decode each codec's blob for seeds 0..S-1 and compare the mean with x:
per coordinate z = |mean − x| / (sd/√S), and for the sum of all coordinates. An unbiased codec gives
max|z| around 3–4 over a few hundred coordinates and |z_sum| ~ 1; a biased one gives huge values
(the biased controls at the end show what that looks like).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

import fedpress

UNBIASED = ["qsgd:levels=16", "qsgd:levels=2,block=64", "randk:ratio=0.01,unbiased=1",
            "randk:ratio=0.1,unbiased=1", "ternary", "q:bits=4,stochastic=1",
            "fixed:bits=4,lo=-3,hi=3,rounding=stochastic", "randk:ratio=0.25,unbiased=1+qsgd:levels=8"]
BIASED_CONTROLS = ["randk:ratio=0.1", "q:bits=4", "topk:ratio=0.1"]


def z_stats(spec: str, x: np.ndarray, seeds: int) -> tuple[float, float, float]:
    """(max per-coordinate |z|, |z_sum|, |mean bias|/|x|).

    A coordinate whose estimate never varied over the seeds (x a hair away from a quantisation
    level, so the other outcome is rare) is judged by the rule of three: its bias may be at most
    ln(1/α)/S times the largest deviation seen (α = 1e-4); beyond that its z is inf.
    """
    c = fedpress.codec(spec)
    s1 = np.zeros(x.size)
    s2 = np.zeros(x.size)
    dmax = 0.0
    for s in range(seeds):
        d = fedpress.decompress(c.encode_ex(x, seed=s).blob).astype(np.float64) - x
        s1 += d
        s2 += d * d
        dmax = max(dmax, float(np.abs(d).max()))
    mean = s1 / seeds
    var = np.maximum(s2 / seeds - mean**2, 0) * seeds / (seeds - 1)
    se = np.sqrt(var / seeds)
    allowed = math.log(1e4) / seeds * dmax + 1e-6 * np.abs(x).max()
    z = np.where(se > 0, np.abs(mean) / np.where(se > 0, se, 1), np.where(np.abs(mean) <= allowed, 0.0, np.inf))
    z_sum = abs(mean.sum()) / max(math.sqrt(var.sum() / seeds), 1e-300)
    return float(z.max()), z_sum, float(np.linalg.norm(mean) / np.linalg.norm(x))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2000)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--codec", action="append", help="spec to test (repeatable; default: the list above)")
    a = ap.parse_args()
    r = np.random.default_rng(0)
    # magnitudes in [0.2, 2.5]: no coordinate so small that its rare outcome never shows up
    x = (r.uniform(0.2, 2.5, a.n) * np.where(r.random(a.n) < 0.5, -1, 1)).astype(np.float32)
    x[:2] = 0.0
    print(f"{a.n} coordinates, {a.seeds} seeds; bound for 'unbiased': max|z| < 5 and |z_sum| < 5")
    print(f"{'codec':46} {'max|z|':>8} {'|z_sum|':>8} {'|mean err|/|x|':>15}  verdict  time")
    for spec in a.codec or UNBIASED + BIASED_CONTROLS:
        t = time.perf_counter()
        zmax, zsum, rb = z_stats(spec, x, a.seeds)
        verdict = "unbiased" if zmax < 5 and zsum < 5 else "BIASED"
        tag = " (control)" if spec in BIASED_CONTROLS else ""
        print(f"{spec + tag:46} {zmax:8.2f} {min(zsum, 1e9):8.3g} {rb:15.2e}  {verdict:8} {time.perf_counter() - t:.1f}s")


if __name__ == "__main__":
    main()
