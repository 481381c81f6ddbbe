"""Encode and decode time as multiples of a memory copy, NumPy reference path vs compiled kernels,
against the speed targets of the kernels issue (compression must cost less than the bytes it saves).

    python benchmarks/speed_targets.py [--size 10000000] [--repeat 9] [--shape flat]

Both paths are measured in the same run on the same data; the denominator is the best plain copy of
the same float32 values seen during the run. Exits 1 if the kernel path misses a target.
"""

from __future__ import annotations

import argparse
import sys

from fedpress import kernels
from fedpress.bench import bench_codecs

#: spec → (max encode/copy, max decode/copy); None = no target
TARGETS: dict[str, tuple[float | None, float | None]] = {
    "q:bits=8": (3.0, 3.0),
    "q:bits=4": (3.0, 3.0),
    "sign": (3.0, 3.0),
    "topk:ratio=0.01": (4.0, 3.0),
    "qsgd:levels=16": (None, 3.0),
    "ternary": (None, 3.0),
    "randk:ratio=0.01": (None, 3.0),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--shape", default="flat", choices=("flat", "state_dict"))
    a = ap.parse_args()
    rows = bench_codecs(a.size, list(TARGETS), repeat=a.repeat, shape=a.shape, kernels="both")
    print(f"{rows[0]['n']:,} float32 values ({a.shape}), best of {a.repeat}; copy {rows[0]['copy_ms']:.2f} ms; "
          f"kernels: {kernels.describe()}")
    print(f"{'codec':18} {'bits':>6}  {'enc/copy ref':>12} {'kernels':>8} {'target':>6}  "
          f"{'dec/copy ref':>12} {'kernels':>8} {'target':>6}")
    ok = True
    by = {(r["codec"], r["kernels"]): r for r in rows}
    for spec, (te, td) in TARGETS.items():
        ref, ker = by[(spec, "off")], by[(spec, "on")]
        line = f"{spec:18} {ker['bits_per_coord']:6.3f}"
        for key, target in (("encode_over_copy", te), ("decode_over_copy", td)):
            hit = target is None or ker[key] <= target
            ok &= hit
            mark = "-" if target is None else (f"{target:.0f}x" + ("" if hit else " MISSED"))
            line += f"  {ref[key]:11.2f}x {ker[key]:7.2f}x {mark:>6}"
        print(line)
    print("all speed targets met" if ok else "SOME SPEED TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
