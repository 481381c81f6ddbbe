"""Adaptive codecs vs fixed ones (issue 8): time to a target metric on a `mixed` network.

    .venv/bin/python benchmarks/policy_time_to_target.py --scenario digits --deadline 15 --target 0.85
    .venv/bin/python benchmarks/policy_time_to_target.py --scenario iot --deadline 10 --target 0.5

Every run uses the same scenario, seed, network (links drawn once from the preset), round deadline
and clock rule; only the uplink codec choice differs. Simulated seconds and bytes are measured.
"""

from __future__ import annotations

import argparse
import dataclasses

from fedpress.sim.experiment import RunConfig, run_experiment

FIXED = ("none", "q:bits=8", "ef+q:bits=4", "ef+topk:ratio=0.01+q:bits=8")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="digits")
    ap.add_argument("--deadline", type=float, required=True)
    ap.add_argument("--target", type=float, required=True)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--network", default="mixed")
    ap.add_argument("--down-codec", default="ef+q:bits=8")
    ap.add_argument("--jitter", type=float, default=0.2)
    ap.add_argument("--wait-full-deadline", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    base = RunConfig(scenario=a.scenario, network=a.network, deadline=a.deadline, target=a.target,
                     rounds=a.rounds, jitter=a.jitter, down_codec=a.down_codec, wait_full_deadline=a.wait_full_deadline, seed=a.seed)
    runs = [(spec, dataclasses.replace(base, codec=spec)) for spec in FIXED]
    for extra in ("", ",skip=1"):
        pol = f"deadline:seconds={a.deadline:g}{extra}"
        runs.append((f"policy {pol}", dataclasses.replace(base, policy=pol)))
    print(f"{a.scenario} on {a.network}, downlink {a.down_codec}, deadline {a.deadline:g} s, target {a.target}, "
          f"clock: {'wait out the deadline' if a.wait_full_deadline else 'close at slowest kept'}")
    print(f"{'codec':40s} {'final':>6s} {'best':>6s} {'rounds→t':>8s} {'sim s→t':>8s} {'uplink→t':>10s} "
          f"{'uplink total':>12s} {'dropped':>7s} {'sim s':>7s}")
    for label, cfg in runs:
        res, _ = run_experiment(cfg, None)
        s = res.summary
        m = [h["metric"] for h in res.history]
        dropped = sum(h["clients_dropped"] for h in res.history)
        dropped = f"{dropped}+{sum(h.get('clients_skipped', 0) for h in res.history)}s"
        rt = s.get("rounds_to_target")
        st = s.get("sim_seconds_to_target")
        ut = s.get("uplink_bytes_to_target")
        print(f"{label:40s} {m[-1]:6.3f} {max(m):6.3f} {str(rt):>8s} "
              f"{(f'{st:.1f}' if st is not None else '—'):>8s} {(str(ut) if ut else '—'):>10s} "
              f"{s['total_uplink_bytes']:12d} {dropped:>7s} {s['sim_seconds']:7.1f}")


if __name__ == "__main__":
    main()
