"""Measured bits per coordinate against the targets of the codec issue, on a model-like update.

    python benchmarks/targets.py [--size 1000000] [--seed 0]

Every number is 8·len(blob)/n for a real blob. PowerSGD is compared, matrix by matrix and in total,
with the formula (m+n)·r·32/(m·n) (pass-through tensors at 32 bits). Exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import fedpress
from fedpress.bench import model_like_state_dict
from fedpress.codecs.lowrank import matrix_shape

TARGETS = [  # spec, max bits per coordinate
    ("fp16", 16.2),
    ("q:bits=8", 8.3),
    ("q:bits=4", 4.3),
    ("sign", 1.1),
    ("topk:ratio=0.01", 0.5),
    ("topk:ratio=0.01+q:bits=8", 0.3),
    ("randk:ratio=0.01", 0.33),
    ("qsgd:levels=16+zstd", 5.0),
]


def rel_l2(sd, out) -> float:
    num = sum(float(np.sum((out[k].double() - v.double()).numpy() ** 2)) for k, v in sd.items())
    den = sum(float(np.sum(v.double().numpy() ** 2)) for v in sd.values())
    return (num / den) ** 0.5


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    sd = model_like_state_dict(a.size, a.seed)
    n = sum(t.numel() for t in sd.values())
    print(f"state_dict: {len(sd)} tensors, {n:,} float32 values: "
          + ", ".join(f"{k} {tuple(v.shape)}" for k, v in sd.items() if k.endswith("weight")))
    ok = True
    print(f"\n{'codec':28} {'bytes':>10} {'bits/coord':>11} {'target':>7}  rel L2")
    for spec, target in TARGETS:
        blob = fedpress.compress(sd, spec, seed=a.seed)
        bpc = 8 * len(blob) / n
        err = rel_l2(sd, fedpress.decompress(blob))
        hit = bpc <= target
        ok &= hit
        print(f"{spec:28} {len(blob):>10,} {bpc:>11.4f} {target:>7}  {err:.4%}  {'ok' if hit else 'MISSED'}")
    err8 = rel_l2(sd, fedpress.decompress(fedpress.compress(sd, "q:bits=8")))
    ok &= err8 <= 0.01
    print(f"\nq:bits=8 relative L2 error: {err8:.4%} (target <= 1%) {'ok' if err8 <= 0.01 else 'MISSED'}")

    r, spec = 4, "powersgd:rank=4"
    print(f"\n{spec}: per matrix, payload bits per coordinate vs (m+n)·r·32/(m·n)")
    formula_bits = 0.0
    for k, v in sd.items():
        mnr = matrix_shape(tuple(v.shape), r, 4096)
        if mnr is None:
            formula_bits += 32 * v.numel()
            continue
        m, nn, rr = mnr
        f = (m + nn) * rr * 32 / (m * nn)
        formula_bits += f * m * nn
        e = fedpress.codec(spec).encode_ex(v, seed=a.seed)
        meas = 8 * (e.nbytes - e.header_bytes) / v.numel()
        meas_all = 8 * e.nbytes / v.numel()
        dev = meas_all / f - 1
        ok &= abs(dev) <= 0.05
        print(f"  {k:14} ({m}x{nn}, r={rr}): formula {f:.4f}, payload {meas:.4f}, "
              f"whole blob {meas_all:.4f} ({dev:+.2%})")
    blob = fedpress.compress(sd, spec, seed=a.seed)
    total, pred = 8 * len(blob) / n, formula_bits / n
    dev = total / pred - 1
    ok &= abs(dev) <= 0.05
    print(f"  whole state_dict: measured {total:.4f} bits/coord, formula {pred:.4f} "
          f"(pass-through tensors at 32 bits): {dev:+.2%} {'ok' if abs(dev) <= 0.05 else 'MISSED'}")
    print("\nall targets met" if ok else "\nSOME TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
