"""Compression under Byzantine clients: which aggregation rule survives which attack, per codec.

    .venv/bin/python benchmarks/robust_attacks.py --scenario digits --rounds 30 --seeds 3

For each codec, aggregation rule and attack (``--attack``: a seeded fraction of the clients send a
corrupted update, encoded by the same codec as everyone's), the final test metric and the best one,
median over seeds, and the uplink bytes of the run (len() of every blob). ``majority`` (signSGD's
vote) is run only with sign codecs, where it is defined. ``--json FILE`` keeps every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
from concurrent.futures import ProcessPoolExecutor

from fedpress.sim.experiment import RunConfig, run_experiment


def _one(cfg: RunConfig) -> dict:
    import torch

    torch.set_num_threads(1)
    res, _ = run_experiment(cfg, None)
    s = res.summary
    return {"codec": cfg.codec, "aggregate": cfg.aggregate, "attack": cfg.attack, "seed": cfg.seed,
            "final": s["final_metric"], "best": s["best_metric"], "uplink": s["total_uplink_bytes"],
            "attackers": s["attackers"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="digits")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--codec", action="append", help="repeatable; default q:bits=8, ef+topk:ratio=0.05+q:bits=8, "
                    "ef+sign")
    ap.add_argument("--aggregate", action="append",
                    help="repeatable; default mean, median, trimmed_mean:beta=0.2, norm_clip "
                    "(+ majority for sign codecs); e.g. sparse_median for top-k")
    ap.add_argument("--attack", action="append", help="repeatable; default none, signflip:scale=4, noise:std=1")
    ap.add_argument("--fraction", type=float, default=0.2, help="share of Byzantine clients")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--json", help="write every run here")
    a = ap.parse_args()
    codecs = a.codec or ["q:bits=8", "ef+topk:ratio=0.05+q:bits=8", "ef+sign"]
    aggs = a.aggregate or ["mean", "median", "trimmed_mean:beta=0.2", "norm_clip"]
    attacks = a.attack or ["none", "signflip:scale=4", "noise:std=1"]
    base = RunConfig(scenario=a.scenario, rounds=a.rounds)
    jobs = []
    for codec in codecs:
        rules = aggs + (["majority"] if "sign" in codec and "majority" not in aggs and not a.aggregate else [])
        for rule in rules:
            for attack in attacks:
                spec = None if attack == "none" else f"{attack}{',' if ':' in attack else ':'}fraction={a.fraction:g}"
                jobs += [dataclasses.replace(base, codec=codec, aggregate=rule, attack=spec, seed=s)
                         for s in range(a.seeds)]
    with ProcessPoolExecutor(a.jobs) as ex:
        runs = list(ex.map(_one, jobs))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(runs, f, indent=1)
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["codec"], r["aggregate"], r["attack"] or "none"), []).append(r)
    print(f"{a.scenario}, {a.rounds} rounds, {a.fraction:g} of clients Byzantine, median over seeds "
          f"0..{a.seeds - 1} (final / best metric, uplink bytes)")
    print("| codec | aggregate | " + " | ".join(attacks) + " |")
    print("|---" * (2 + len(attacks)) + "|")
    for codec in codecs:
        for rule in sorted({k[1] for k in groups if k[0] == codec}, key=lambda r: (r != "mean", r)):
            cells = []
            for attack in attacks:
                key = next((k for k in groups if k[:2] == (codec, rule) and k[2].split(",fraction")[0] == attack),
                           None)
                rs = groups.get(key, [])
                if not rs:
                    cells.append("—")
                    continue
                cells.append(f"{statistics.median(r['final'] for r in rs):.3f} / "
                             f"{statistics.median(r['best'] for r in rs):.3f} / "
                             f"{statistics.median(r['uplink'] for r in rs) / 1e6:.2f} MB")
            print(f"| `{codec}` | {rule} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
