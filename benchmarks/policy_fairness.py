"""What a policy that leaves slow clients out costs *their* data (issue 8).

    .venv/bin/python benchmarks/policy_fairness.py --scenario digits --deadline 10 --seeds 5

Runs a fixed codec, `none` and deadline policies on the `mixed` network with per-client evaluation
and prints the final round's test metric and the mean metric on each client's own data, grouped by
link kind (wifi, 4g, 3g, nbiot), averaged over seeds. The global test metric can hide a group that
a policy keeps leaving out; this table cannot.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
from concurrent.futures import ProcessPoolExecutor

from fedpress.sim.experiment import RunConfig, run_experiment


def _one(args):
    label, cfg = args
    res, _ = run_experiment(cfg, None)
    h = res.history[-1]
    return label, h["metric"], h["client_metric_by_kind"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="digits")
    ap.add_argument("--deadline", type=float, default=10.0)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--codec", default="ef+q:bits=4", help="the fixed codec to compare with")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    a = ap.parse_args()
    base = RunConfig(scenario=a.scenario, network="mixed", deadline=a.deadline, jitter=0.2,
                     down_codec="ef+q:bits=8", per_client_eval=True)
    pol = f"deadline:seconds={a.deadline:g}"
    variants = [(a.codec, {"codec": a.codec}), ("none", {}), (pol, {"policy": pol}),
                (f"{pol},cut=3", {"policy": f"{pol},cut=3"})]
    jobs = [(label, dataclasses.replace(base, seed=s, **kw)) for s in range(a.seeds) for label, kw in variants]
    out: dict[str, list] = {}
    with ProcessPoolExecutor(a.jobs) as ex:
        for label, metric, by in ex.map(_one, jobs):
            out.setdefault(label, []).append((metric, by))
    kinds = sorted({k for rs in out.values() for _, by in rs for k in by})
    print(f"{a.scenario} on mixed, deadline {a.deadline:g} s, final round, mean over seeds 0..{a.seeds - 1}")
    print("| run | test metric | " + " | ".join(f"{k} clients" for k in kinds) + " |")
    print("|---" * (2 + len(kinds)) + "|")
    for label, rs in out.items():
        cells = [f"{statistics.mean(by[k] for _, by in rs if k in by):.3f}" for k in kinds]
        print(f"| {label} | {statistics.mean(m for m, _ in rs):.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
