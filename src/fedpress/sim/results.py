"""What a :class:`~fedpress.sim.runner.Simulation` keeps on disk and reports: its checkpoint, the
run summary, and ``metrics.jsonl`` / ``summary.json``.

A checkpoint is the run state ``st`` saved whole (``torch.save``), with the link estimator as its
state dict; resuming from it continues exactly where the run stopped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from fedpress.policy.estimator import LinkEstimator

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(st: dict, out_dir: Path) -> None:
    """Write ``st`` to ``out_dir/checkpoint.pt`` (atomically: a partial file never replaces it). The
    synchronous run's link estimator is saved as its state dict; an asynchronous run (``mode``
    "async") has none."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (CHECKPOINT + ".tmp")
    torch.save({**st, "estimator": st["estimator"].state_dict()} if "estimator" in st else st, tmp)
    tmp.replace(out_dir / CHECKPOINT)


def load_checkpoint(resume: str | Path, mode: str = "sync") -> dict:
    """The run state saved at ``resume`` (a checkpoint file, or the folder holding one) by a run of
    ``mode`` ("sync": :class:`~fedpress.sim.runner.Simulation`, "async":
    :class:`~fedpress.sim.fedbuff.AsyncSimulation`); the other kind is refused (ValueError)."""
    path = Path(resume)
    path = path / CHECKPOINT if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    st = torch.load(path, weights_only=False)
    if not isinstance(st, dict) or st.get("mode", "sync") != mode:
        raise ValueError(f"{path} is not an asynchronous (--async-buffer) run's checkpoint" if mode == "async"
                         else f"{path} is not a synchronous run's checkpoint (an asynchronous FedBuff one? "
                         "resume it with the same --async-buffer)")
    if "estimator" in st:
        est = LinkEstimator()
        est.load_state_dict(st["estimator"])
        st["estimator"] = est
    return st


def base_summary(sim, st: dict, wall: float, *, sim_seconds: float) -> dict:
    """What every run's summary holds, synchronous (:func:`summarize`) or FedBuff's: the settings
    both runners share and the run state's totals. The caller adds its own keys, then
    :func:`finish_summary`."""
    metrics = [h["metric"] for h in st["history"] if h["metric"] is not None]
    return {
        "scenario": sim.scenario, "codec": sim.codec.spec,
        "down_codec": sim.down_codec.spec if sim.down_codec else None,
        "final_metric": metrics[-1] if metrics else float("nan"),
        "best_metric": float(np.nanmax(metrics)) if metrics else float("nan"),
        "metric_name": sim.metric_name,
        "total_uplink_bytes": st["cum_up"], "total_downlink_bytes": st["cum_down"],
        "rounds": len(st["history"]), "sim_seconds": sim_seconds, "wall_seconds": wall,
        "seed": sim.seed, "clients": len(sim.clients), "strategy": sim.strategy.name,
        "network": sim.network_name, "aggregate": sim.aggregate,
    }


def finish_summary(sim, st: dict, summary: dict) -> dict:
    """The keys every summary ends with: timings, the caller's extras and, with a target, when the
    run first reached it."""
    summary["timing"] = {k: round(v, 4) for k, v in st["timing"].items()}
    summary.update(sim.extra_summary)
    if sim.target is not None:
        summary.update(target_fields(st["history"], sim.target))
    return summary


def summarize(sim, st: dict, wall: float) -> dict:
    """The run summary of a synchronous run: ``sim``'s settings, the totals of the run state ``st``
    and, with a target, when the run first reached it. ``wall``: the run's wall-clock seconds."""
    summary = base_summary(sim, st, wall, sim_seconds=st["sim_seconds"])
    summary.update({
        "per_round": sim.per_round, "deadline": sim.deadline, "sampling": sim.sampling,
        "policy": (getattr(sim.policy, "spec", None) or sim.policy.name) if sim.policy else "fixed",
        "secagg": sim.secagg, "dropout": sim.dropout,
        "attack": sim.attack.spec if sim.attack else None, "attackers": sorted(sim.attackers),
    })
    if st.get("accountant") is not None:
        summary.update(epsilon=st["accountant"].epsilon(), delta=sim.dp_delta, dp_clip=sim.dp_clip,
                       dp_noise_multiplier=sim.dp_noise, target_epsilon=sim.target_epsilon,
                       dp_mode=sim.dp_mode)
    if sim.secagg:
        summary["secagg_overhead_bytes"] = st["secagg_overhead"]
    if sim.scaffold:
        summary["scaffold_controls"] = sim.scaffold_controls
    if st.get("upload_anatomy"):  # an upload of the last round, per tensor (fedpress.inspect_blob)
        summary["upload_anatomy"] = st["upload_anatomy"]
    return finish_summary(sim, st, summary)


def target_fields(hist: list[dict], target: float) -> dict:
    """When a run first reached ``target`` (rounds, simulated seconds, uplink bytes; None when it
    never did). Rows without a metric (not evaluated that step) are skipped.

    >>> target_fields([{"round": 1, "metric": 0.5, "sim_seconds": 2.0, "cum_uplink_bytes": 10},
    ...                {"round": 2, "metric": 0.9, "sim_seconds": 4.0, "cum_uplink_bytes": 20}], 0.8)
    {'target': 0.8, 'rounds_to_target': 2, 'sim_seconds_to_target': 4.0, 'uplink_bytes_to_target': 20}
    """
    hit = next((h for h in hist if h["metric"] is not None and h["metric"] >= target), None)
    return {"target": target, "rounds_to_target": hit["round"] if hit else None,
            "sim_seconds_to_target": hit["sim_seconds"] if hit else None,
            "uplink_bytes_to_target": hit["cum_uplink_bytes"] if hit else None}


def write_results(out_dir: Path, history: list[dict], summary: dict) -> None:
    """``metrics.jsonl`` (one row a round, keys sorted) and ``summary.json`` in ``out_dir``."""
    with open(out_dir / "metrics.jsonl", "w") as f:
        for h in history:
            f.write(json.dumps(h, sort_keys=True) + "\n")
    with open(out_dir / "summary.json", "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
