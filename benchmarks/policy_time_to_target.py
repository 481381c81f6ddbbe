"""Adaptive codecs vs fixed ones (issue 8): simulated time to a target metric on a `mixed` network.

    .venv/bin/python benchmarks/policy_time_to_target.py --scenario digits --deadline 10 --target 0.9
    .venv/bin/python benchmarks/policy_time_to_target.py --scenario iot --deadline 10 --target 0.65

Every run of one seed uses the same scenario, partition, network (links drawn once from the preset),
round deadline, clock rule and sampling; only the uplink codec choice differs. Simulated seconds
and bytes are measured by the simulator. Over several seeds the table reports the median time to
target (a seed that never reaches it counts as +inf, so the median is honest about failures), the
mean over the seeds that reached it, how many seeds each run was the fastest in, and in how many
it beat every plain fixed codec. ``--ablate`` adds each fixed codec wrapped in the policy's client
selection (and its lossy whole-model downloads) to show where a policy's gain comes from.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
from concurrent.futures import ProcessPoolExecutor

from fedpress.policy import Deadline
from fedpress.sim.experiment import RunConfig, run_experiment

FIXED = ("none", "q:bits=8", "ef+q:bits=4", "ef+topk:ratio=0.01+q:bits=8")


def _one(args: tuple[str, RunConfig, int]) -> dict:
    label, cfg, smooth = args
    res, _ = run_experiment(cfg, None)
    s, h = res.summary, res.history
    t = rounds = up = None
    if smooth == 1:
        t, rounds, up = (s.get("sim_seconds_to_target"), s.get("rounds_to_target"),
                         s.get("uplink_bytes_to_target"))
    else:
        for i in range(smooth - 1, len(h)):
            if sum(r["metric"] for r in h[i - smooth + 1: i + 1]) / smooth >= cfg.target:
                t, rounds, up = h[i]["sim_seconds"], i + 1, h[i]["cum_uplink_bytes"]
                break
    return {"label": label, "seed": cfg.seed, "t": t, "rounds": rounds, "up": up,
            "final": res.history[-1]["metric"], "best": max(h["metric"] for h in res.history),
            "dropped": sum(h["clients_dropped"] for h in res.history),
            "skipped": sum(h.get("clients_skipped", 0) for h in res.history),
            "curve": [(h["sim_seconds"], h["metric"], h["cum_uplink_bytes"]) for h in res.history]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="digits")
    ap.add_argument("--deadline", type=float, required=True)
    ap.add_argument("--target", type=float, required=True)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--network", default="mixed")
    ap.add_argument("--down-codec", default="ef+q:bits=8")
    ap.add_argument("--jitter", type=float, default=0.2)
    ap.add_argument("--close-early", action="store_true",
                    help="idealised clock: a round ends at its slowest kept client (see round_clock)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    ap.add_argument("--policy", action="append", default=None,
                    help="policy spec(s); default deadline:seconds=<deadline>")
    ap.add_argument("--ablate", action="store_true",
                    help="also run each fixed codec with the policy's client selection (known "
                         "clients that cannot make the deadline sit the round out), and with that "
                         "plus its lossy whole-model downloads (sync=1)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--json", default=None, help="write every run's numbers here")
    ap.add_argument("--smooth", type=int, default=1,
                    help="target reached when the mean of the last N evaluations is >= target "
                         "(for noisy metrics such as iot's F1); 1 = the simulator's own summary")
    a = ap.parse_args()
    base = RunConfig(scenario=a.scenario, network=a.network, deadline=a.deadline, target=a.target,
                     rounds=a.rounds, jitter=a.jitter, down_codec=a.down_codec,
                     wait_full_deadline=not a.close_early)
    policies = a.policy or [f"deadline:seconds={a.deadline:g}"]
    variants = [(spec, {"codec": spec}) for spec in FIXED]
    if a.ablate:
        # The deadline policy with a one-rung ladder: its client selection (and, second, its lossy
        # whole-model downloads) around a fixed uplink codec, i.e. everything but the codec choice.
        variants += [(f"{spec} + skip", {"codec": spec, "policy": Deadline(a.deadline, sync=0, ladder=(spec,))})
                     for spec in FIXED]
        variants += [(f"{spec} + skip + sync", {"codec": spec, "policy": Deadline(a.deadline, sync=1, ladder=(spec,))})
                     for spec in FIXED]
    variants += [(f"policy {p}", {"policy": p}) for p in policies]
    jobs = [(label, dataclasses.replace(base, seed=s, **kw), a.smooth)
            for s in range(a.seeds) for label, kw in variants]
    with ProcessPoolExecutor(a.jobs) as ex:
        rows = list(ex.map(_one, jobs))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)

    fastest: dict[str, int] = {}
    for s in range(a.seeds):
        per = {r["label"]: (r["t"] if r["t"] is not None else math.inf) for r in rows if r["seed"] == s}
        best = min(per.values())
        if math.isfinite(best):
            for label, t in per.items():
                if t == best:
                    fastest[label] = fastest.get(label, 0) + 1
    print(f"{a.scenario} on {a.network}, downlink {a.down_codec}, deadline {a.deadline:g} s, "
          f"target {a.target}{f' (mean of last {a.smooth})' if a.smooth > 1 else ''}, seeds 0..{a.seeds - 1}, clock: "
          f"{'close at slowest kept (idealised)' if a.close_early else 'wait for all or the deadline'}")
    # Seeds in which a run beat every plain fixed codec (the must-show of issue 8).
    beats: dict[str, int] = {}
    for s in range(a.seeds):
        per = {r["label"]: (r["t"] if r["t"] is not None else math.inf) for r in rows if r["seed"] == s}
        best_fixed = min(per[f] for f in FIXED)
        for label, t in per.items():
            beats[label] = beats.get(label, 0) + (t < best_fixed)
    print(f"| {'uplink codec':38s} | median s→target | mean s (reached) | reached | fastest in "
          f"| beats all fixed | median rounds | median uplink B→target | final (mean) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, _ in variants:
        rs = [r for r in rows if r["label"] == label]
        ts = [r["t"] if r["t"] is not None else math.inf for r in rs]
        hit = [t for t in ts if math.isfinite(t)]
        med = statistics.median(ts)
        rounds = statistics.median([r["rounds"] if r["rounds"] else math.inf for r in rs])
        ups = statistics.median([r["up"] if r["up"] else math.inf for r in rs])
        print(f"| {label:38s} | {med:15.1f} | {(statistics.mean(hit) if hit else math.inf):16.1f} "
              f"| {len(hit)}/{len(rs)} | {fastest.get(label, 0):10d} "
              f"| {beats[label] if label not in FIXED else '—':>15} | {rounds:13} "
              f"| {ups:22,.0f} | {statistics.mean(r['final'] for r in rs):.3f} |")


if __name__ == "__main__":
    main()
