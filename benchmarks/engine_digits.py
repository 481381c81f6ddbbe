"""Engine figures on sklearn digits (issue 3): compression vs accuracy, sparse models, links,
resume, and where a round's time goes.

    .venv/bin/python benchmarks/engine_digits.py [--out results/engine_digits]

Every number printed is measured in this run (bytes are blob lengths).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from fedpress.sim.experiment import RunConfig, run_experiment


def run(cfg: RunConfig, out: Path | None = None, **kw):
    res, _ = run_experiment(cfg, out, **kw)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="results/engine_digits")
    args = ap.parse_args()
    out = Path(args.out)
    base = RunConfig(scenario="digits", clients=20, alpha=0.5, per_round=10, rounds=40)
    rows = []

    def add(label, cfg, **kw):
        r = run(cfg, **kw)
        m = [h["metric"] for h in r.history]
        rows.append({"run": label, "final": m[-1], "best": max(m), "last5": sum(m[-5:]) / 5,
                     "uplink": r.summary["total_uplink_bytes"], "downlink": r.summary["total_downlink_bytes"],
                     "sim_s": r.summary["sim_seconds"], "sparsity": r.history[-1].get("sparsity"),
                     "timing": r.summary["timing"], "wall_s": r.summary["wall_seconds"]})
        return r

    add("none", base)
    for agg in ("mean", "sparse_mean"):
        add(f"ef+topk1%+q8 [{agg}]", dataclasses.replace(base, codec="ef+topk:ratio=0.01+q:bits=8", aggregate=agg))
        add(f"topk1%+q8 (no ef) [{agg}]", dataclasses.replace(base, codec="topk:ratio=0.01+q:bits=8", aggregate=agg))
    add("dense q8", dataclasses.replace(base, codec="q:bits=8"))
    add("L1 1e-3 + prune 90% (gradual), q8",
        dataclasses.replace(base, codec="q:bits=8", l1=1e-3, prune=0.9, prune_mode="gradual"))
    add("none on wifi", dataclasses.replace(base, network="wifi"))
    add("none on nbiot", dataclasses.replace(base, network="nbiot"))

    # resume: 20 rounds with a checkpoint, then resume to 40, against one uninterrupted run
    rc = dataclasses.replace(base, codec="ef+powersgd:rank=2+q:bits=8", checkpoint_every=10)
    run(rc, out / "full")
    run(dataclasses.replace(rc, rounds=20), out / "part")
    run(rc, out / "part", resume=out / "part")
    same = (out / "full" / "metrics.jsonl").read_bytes() == (out / "part" / "metrics.jsonl").read_bytes()

    none_up = rows[0]["uplink"]
    print(f"{'run':38s} {'final':>6s} {'best':>6s} {'last5':>6s} {'uplink B':>10s} {'ratio':>7s} {'sim s':>8s} sparsity")
    for r in rows:
        sp = "" if r["sparsity"] is None else f"{r['sparsity']:.3f}"
        print(f"{r['run']:38s} {r['final']:6.3f} {r['best']:6.3f} {r['last5']:6.3f} {r['uplink']:10d} "
              f"{none_up / r['uplink']:6.1f}x {r['sim_s']:8.1f} {sp}")
    print(f"resumed run identical to uninterrupted (metrics.jsonl bytes): {same}")
    t = rows[0]["timing"]
    per = {k: v / 40 * 1e3 for k, v in t.items()}
    book = per["total_s"] - per["train_s"] - per["encode_s"] - per["decode_aggregate_s"] - per["eval_s"]
    print("time per round (uncompressed run, ms): " + ", ".join(f"{k}={v:.1f}" for k, v in per.items())
          + f", bookkeeping={book:.1f}")
    t = rows[1]["timing"]
    per = {k: v / 40 * 1e3 for k, v in t.items()}
    print("time per round (ef+topk1%+q8, ms): " + ", ".join(f"{k}={v:.1f}" for k, v in per.items()))
    out.mkdir(parents=True, exist_ok=True)
    (out / "engine_digits.json").write_text(json.dumps({"rows": rows, "resume_identical": same}, indent=2))


if __name__ == "__main__":
    main()
