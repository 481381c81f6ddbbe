"""What not trusting the server costs: central vs distributed DP under secure aggregation.

    .venv/bin/python benchmarks/distributed_dp.py --seeds 3

Every run uses secure aggregation of ``q:bits=8`` codes on a shared range (and ``rht+q:bits=8``:
the same after a random rotation shared by the round, which lets the DP range shrink from C to
4C/√d and with it the rounding share of the sensitivity) (the server only ever
unmasks a sum). *Central*: the server adds Gaussian noise to that sum after unmasking (it sees the
exact sum first; its ε is amplified by Poisson sampling, which assumes the server keeps the sample
secret). *Distributed*: each client adds discrete Gaussian noise to its codes before masking
(``--dp-mode distributed``; no amplification: the server knows who took part). For each target ε,
the noise multiplier the accountant needs, the final metric (median over seeds), the ε reached, and
the uplink bytes (masked codes on the modulus + key agreement and shares; distributed DP needs a
wider modulus for the noise). A run without DP gives the ceiling. ``--json FILE`` keeps every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
from concurrent.futures import ProcessPoolExecutor

from fedpress.sim.experiment import RunConfig, run_experiment


def _one(cfg: RunConfig) -> dict:
    import torch

    torch.set_num_threads(1)
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's convergence chatter
    res, _ = run_experiment(cfg, None)
    s, last = res.summary, res.history[-1]
    return {"codec": cfg.codec, "mode": cfg.dp_mode if cfg.dp_clip else "none", "target_epsilon": cfg.target_epsilon,
            "seed": cfg.seed, "final": s["final_metric"], "best": s["best_metric"],
            "epsilon": s.get("epsilon"), "z": s.get("dp_noise_multiplier"), "uplink": s["total_uplink_bytes"],
            "modulus_bits": last.get("secagg_modulus_bits"),
            "noise_std_mean": last.get("dp_noise_std_mean")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="digits")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--per-round", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--codec", action="append", help="repeatable; default q:bits=8 and rht+q:bits=8 (a rotation "
                    "shared by the round lets the range shrink from C to 4C/sqrt(d))")
    ap.add_argument("--epsilon", type=float, action="append", help="repeatable target ε; default 10 and 50")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--json", help="write every run here")
    a = ap.parse_args()
    codecs = a.codec or ["q:bits=8", "rht+q:bits=8"]
    base = RunConfig(scenario=a.scenario, clients=a.clients, per_round=a.per_round, rounds=a.rounds, secagg=True)
    jobs = [dataclasses.replace(base, codec=codecs[0], seed=s) for s in range(a.seeds)]
    for codec in codecs:
        for eps in a.epsilon or [10.0, 50.0]:
            for mode in ("central", "distributed"):
                jobs += [dataclasses.replace(base, codec=codec, seed=s, dp_clip=a.clip, target_epsilon=eps,
                                             dp_mode=mode) for s in range(a.seeds)]
    with ProcessPoolExecutor(a.jobs) as ex:
        runs = list(ex.map(_one, jobs))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(runs, f, indent=1)
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["codec"], r["target_epsilon"], r["mode"]), []).append(r)
    print(f"{a.scenario}, {a.clients} clients, {a.per_round}/round, {a.rounds} rounds, under secure aggregation, "
          f"clip {a.clip:g}, median of {a.seeds} seeds")
    print(f"{'codec':>14} {'target ε':>9} {'DP':>12} {'z':>7} {'ε reached':>10} {'final':>7} {'best':>7} {'noise/coord':>12} "
          f"{'mod bits':>8} {'uplink MB':>10}")
    for (codec, eps, mode), rs in groups.items():
        def med(k, rs=rs):
            vals = [r[k] for r in rs if r[k] is not None]
            return statistics.median(vals) if vals else float("nan")

        print(f"{codec:>14} {eps if eps else '—':>9} {mode:>12} {med('z'):>7.3f} {med('epsilon'):>10.2f} {med('final'):>7.4f} "
              f"{med('best'):>7.4f} {med('noise_std_mean'):>12.4g} {med('modulus_bits'):>8.0f} "
              f"{med('uplink') / 1e6:>10.2f}")


if __name__ == "__main__":
    main()
