"""Synthetic runs shaped like `fedpress run` output (summary.json + metrics.jsonl rows)."""

from __future__ import annotations

import math
from typing import Any

import pytest


def _make_run(
    codec: str,
    per_round_uplink: int,
    metrics: list[float],
    *,
    scenario: str = "digits",
    down_codec: str | None = None,
    metric_name: str = "accuracy",
    seed: int = 0,
    seconds_per_round: float = 2.0,
    **summary_extra: Any,
) -> dict[str, Any]:
    history = []
    cum_up = cum_down = 0
    t = 0.0
    for r, m in enumerate(metrics, start=1):
        cum_up += per_round_uplink
        cum_down += 1000
        t += seconds_per_round
        history.append(
            {
                "round": r,
                "metric": m,
                "loss": 1.0 - m if m == m else None,
                "uplink_bytes": per_round_uplink,
                "downlink_bytes": 1000,
                "cum_uplink_bytes": cum_up,
                "cum_downlink_bytes": cum_down,
                "sim_seconds": t,
                "clients": 5,
            }
        )
    finite = [m for m in metrics if not math.isnan(m)]
    summary = {
        "scenario": scenario,
        "codec": codec,
        "final_metric": metrics[-1],
        "best_metric": max(finite),
        "metric_name": metric_name,
        "total_uplink_bytes": cum_up,
        "total_downlink_bytes": cum_down,
        "rounds": len(metrics),
        "sim_seconds": t,
        "wall_seconds": 1.5,
        "seed": seed,
        **summary_extra,
    }
    if down_codec is not None:
        summary["down_codec"] = down_codec
    return {"summary": summary, "history": history}


@pytest.fixture
def make_run():
    """Factory: ``make_run(codec, per_round_uplink, metrics, **summary_fields)``."""
    return _make_run


@pytest.fixture
def runs() -> list[dict[str, Any]]:
    """A baseline and three compressed runs; known ratios 1, 4, 50 and 8."""
    make_run = _make_run
    return [
        make_run("none", 40_000, [0.3, 0.6, 0.8, 0.9, 0.92]),
        make_run("q:bits=8", 10_000, [0.3, 0.55, 0.79, 0.88, 0.91]),
        make_run("ef+topk:ratio=0.01+q:bits=4+zstd", 800, [0.2, 0.4, 0.6, 0.7, 0.8]),
        make_run("ef+powersgd:rank=4", 5_000, [0.25, 0.5, 0.85, 0.9, 0.9], down_codec="fp16"),
    ]


@pytest.fixture
def partition() -> dict[str, Any]:
    return {
        "method": "dirichlet",
        "alpha": 0.5,
        "label_counts": [[10, 0, 5], [2, 8, 0], [0, 3, 12], [7, 7, 7]],
    }
