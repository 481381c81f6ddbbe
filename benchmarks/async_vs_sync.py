"""Synchronous FedAvg vs asynchronous FedBuff on slow, mixed links: simulated time and uplink bytes
to a target accuracy.

    .venv/bin/python benchmarks/async_vs_sync.py                 # digits, mixed network, 3 seeds
    .venv/bin/python benchmarks/async_vs_sync.py --seeds 5 --deadline 2 --json out.json

On the ``mixed`` network (30 % wifi, 40 % 4g, 20 % 3g, 10 % NB-IoT clients) a synchronous round
that samples an NB-IoT client waits for it (about 15 simulated seconds on digits, against well
under a second for the rest) or, with a deadline, drops it: the round then lasts the whole deadline
(the server cannot know earlier that it will miss) or, with ``--close-early``, ends at the slowest
kept client (an idealised server that knows in advance). FedBuff keeps M clients in flight and
steps every K arrivals, so a slow client delays nobody; its update arrives late and is weighted
down by 1/sqrt(1 + staleness). For top-k codecs FedBuff also runs with ``aggregate=mean`` (the
automatic choice, sparse_mean, can overshoot when a client's repeated, stale updates are averaged
undiluted).

Every run of one seed uses the same partition and links; all byte counts are len(blob) of real
blobs. Per variant and codec the table gives the median over seeds of the simulated seconds and
the cumulative uplink bytes when the test accuracy first reaches the target (a seed that never
reaches it counts as +inf, so a median of inf means most seeds failed), the client updates the
server aggregated by then, and the median final and best accuracy with the run's total updates.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
from concurrent.futures import ProcessPoolExecutor

from fedpress.codecs import Codec
from fedpress.sim.experiment import RunConfig, run_experiment

CODECS = ("q:bits=8", "ef+topk:ratio=0.01+q:bits=8")


def _one(args: tuple[str, RunConfig]) -> dict:
    label, cfg = args
    res, _ = run_experiment(cfg, None)
    h = res.history
    updates, hit = 0, None
    for row in h:
        updates += row["clients_kept"]
        if hit is None and row["metric"] is not None and row["metric"] >= cfg.target:
            hit = (row["sim_seconds"], row["cum_uplink_bytes"], updates)
    metrics = [row["metric"] for row in h if row["metric"] is not None]
    return {"label": label, "codec": cfg.codec, "seed": cfg.seed,
            "t": hit[0] if hit else None, "up": hit[1] if hit else None, "updates_to_target": hit[2] if hit else None,
            "final": metrics[-1], "best": max(metrics), "updates": updates, "sim_seconds": h[-1]["sim_seconds"],
            "uplink_bytes": h[-1]["cum_uplink_bytes"], "rounds": len(h),
            "staleness_mean": (statistics.fmean(row["staleness_mean"] for row in h)
                               if "staleness_mean" in h[0] else None)}


def _median(xs: list) -> float:
    """Median with a miss (None) counted as +inf."""
    return statistics.median([math.inf if x is None else x for x in xs])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="digits")
    ap.add_argument("--network", default="mixed")
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    ap.add_argument("--deadline", type=float, default=2.0,
                    help="synchronous round deadline in simulated seconds (2 s: drops NB-IoT clients only)")
    ap.add_argument("--rounds", type=int, default=100, help="synchronous rounds (10 sampled per round)")
    ap.add_argument("--buffer", type=int, default=10, help="FedBuff K")
    ap.add_argument("--concurrency", type=int, default=20, help="FedBuff M")
    ap.add_argument("--steps", type=int, default=60, help="FedBuff server steps (K updates each)")
    ap.add_argument("--codec", action="append", default=None, help=f"codec spec(s); default {', '.join(CODECS)}")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--json", default=None, help="write every run's numbers here")
    a = ap.parse_args()

    base = RunConfig(scenario=a.scenario, network=a.network, target=a.target)
    k, m = a.buffer, a.concurrency
    variants = [
        ("sync, no deadline", {"rounds": a.rounds}),
        (f"sync, deadline {a.deadline:g} s", {"rounds": a.rounds, "deadline": a.deadline}),
        (f"sync, deadline {a.deadline:g} s, close early",
         {"rounds": a.rounds, "deadline": a.deadline, "wait_full_deadline": False}),
        (f"FedBuff K={k} M={m}", {"rounds": a.steps, "async_buffer": k, "concurrency": m}),
        (f"FedBuff K={k // 2} M={m // 2}", {"rounds": 2 * a.steps, "async_buffer": k // 2, "concurrency": m // 2}),
    ]
    # For top-k codecs "auto" aggregation is sparse_mean (each coordinate averaged over its
    # senders, undiluted); with stale, repeated updates that can overshoot, so also plain mean.
    sparse = [(f"FedBuff K={k} M={m}, aggregate mean", {"rounds": a.steps, "async_buffer": k, "concurrency": m,
                                                        "aggregate": "mean"})]

    def variants_of(codec: str) -> list:
        return variants + (sparse if Codec(codec).lossy[0].name in ("topk", "threshold") else [])

    jobs = [(label, dataclasses.replace(base, codec=codec, seed=s, **kw))
            for codec in (a.codec or CODECS) for label, kw in variants_of(codec) for s in range(a.seeds)]
    with ProcessPoolExecutor(a.jobs) as pool:
        runs = list(pool.map(_one, jobs))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(runs, f, indent=1)

    print(f"{a.scenario}, network {a.network}, target {a.target:g}, median over {a.seeds} seeds "
          f"(inf: not reached)\n")
    head = ("codec", "variant", "sim s→target", "uplink→target", "updates→target", "reached",
            "final", "best", "updates", "sim s total")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for codec in a.codec or CODECS:
        for label, _ in variants_of(codec):
            rs = [r for r in runs if r["codec"] == codec and r["label"] == label]
            up = _median([r["up"] for r in rs])
            cells = (codec, label, f"{_median([r['t'] for r in rs]):.1f}",
                     "inf" if math.isinf(up) else f"{up / 1024:,.0f} KiB",
                     f"{_median([r['updates_to_target'] for r in rs]):.0f}",
                     f"{sum(r['t'] is not None for r in rs)}/{len(rs)}",
                     f"{statistics.median(r['final'] for r in rs):.4f}",
                     f"{statistics.median(r['best'] for r in rs):.4f}",
                     f"{statistics.median(r['updates'] for r in rs):.0f}",
                     f"{statistics.median(r['sim_seconds'] for r in rs):.1f}")
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
