"""Count sketches under secure aggregation: FetchSGD-style heavy hitters vs random-k at similar bytes.

    .venv/bin/python benchmarks/sketch_secagg.py --seeds 3

Every run uses secure aggregation (the server only unmasks the sum of the clients' codes). Top-k
cannot run there (its positions differ per client); random-k can (positions shared by the round),
and so can a count sketch (``sketch:...+q:bits=8``: hashes shared by the round, the server
unsketches the summed sketch and keeps its top k; ``ef+sketch``: FetchSGD's server-side error
feedback, the server keeps an error sketch across rounds with hashes fixed for the run, see
:class:`fedpress.privacy.codes.SharedRangeCodec`). For each codec: final and best metric (mean ±
sample std over the seeds, the same seeds for every codec), the payload codes per client upload,
the uplink bytes of one run (masked codes + key agreement and shares; mean over the seeds) and
what secure aggregation added in both directions (``secagg_overhead_bytes``).
``--json FILE`` keeps every run. The sizes are picked once, not tuned on these seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
from concurrent.futures import ProcessPoolExecutor

from fedpress.sim.experiment import RunConfig, run_experiment

#: Similar uplink codes per upload on digits' MLP (4810 values): randk 5 % = 242 codes against
#: sketches of 240 (1 x 240, 3 x 80), randk 20 % = 963 against 900 (1 x 900, 3 x 300); k: about
#: the number of codes (240), or 10 % of the model (480). With and without error feedback (client-side
#: for randk, server-side for the sketches).
DEFAULT_CODECS = [
    "q:bits=8",
    "ef+randk:ratio=0.05+q:bits=8",
    "randk:ratio=0.05+q:bits=8",
    "ef+sketch:cols=80,rows=3,k=240+q:bits=8",
    "sketch:cols=80,rows=3,k=240+q:bits=8",
    "sketch:cols=240,rows=1,k=240+q:bits=8",
    "ef+randk:ratio=0.2+q:bits=8",
    "randk:ratio=0.2+q:bits=8",
    "ef+sketch:cols=300,rows=3,k=480+q:bits=8",
    "sketch:cols=300,rows=3,k=480+q:bits=8",
    "sketch:cols=900,rows=1,k=480+q:bits=8",
]


def _codes(codec: str, scenario: str) -> int | None:
    """Codes per client upload on digits' model (64 -> 64 -> 10 MLP), else None."""
    if scenario != "digits":
        return None
    from fedpress.models import make_model
    from fedpress.privacy.codes import SharedRangeCodec

    model = make_model("mlp", in_dim=64, n_classes=10, hidden=(64,))
    return SharedRangeCodec(codec).vector_len({k: tuple(v.shape) for k, v in model.state_dict().items()})


def _one(cfg: RunConfig) -> dict:
    import torch

    torch.set_num_threads(1)
    res, _ = run_experiment(cfg, None)
    s = res.summary
    return {"codec": cfg.codec, "seed": cfg.seed, "final": s["final_metric"], "best": s["best_metric"],
            "uplink": s["total_uplink_bytes"], "overhead": s.get("secagg_overhead_bytes"),
            "codes": _codes(cfg.codec, cfg.scenario)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="digits")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--codec", action="append", help="repeatable; default: q:bits=8, randk and sketches")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--json", help="write every run here")
    a = ap.parse_args()
    codecs = a.codec or DEFAULT_CODECS
    base = RunConfig(scenario=a.scenario, rounds=a.rounds, secagg=True)
    jobs = [dataclasses.replace(base, codec=c, seed=s) for c in codecs for s in range(a.seeds)]
    with ProcessPoolExecutor(a.jobs) as ex:
        runs = list(ex.map(_one, jobs))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(runs, f, indent=1)
    print(f"{a.scenario} under secure aggregation, mean ± std over {a.seeds} seeds (codes per upload: "
          f"for digits' 4810-value MLP)")
    print("| codec | codes/upload | final | best | uplink (KiB) | secagg overhead, up + down (KiB) |")
    print("|---|---|---|---|---|---|")
    for c in codecs:
        rs = [r for r in runs if r["codec"] == c]

        def ms(k, rs=rs):
            v = [r[k] for r in rs]
            return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)

        f, b = ms("final"), ms("best")
        up = statistics.mean(r["uplink"] for r in rs) / 1024
        ov = statistics.mean(r["overhead"] or 0 for r in rs) / 1024
        print(f"| `{c}` | {rs[0]['codes'] or '—'} | {f[0]:.3f} ± {f[1]:.3f} | {b[0]:.3f} ± {b[1]:.3f} | {up:.1f} | {ov:.1f} |")


if __name__ == "__main__":
    main()
