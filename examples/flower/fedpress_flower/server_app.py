"""ServerApp: a stock Flower strategy wrapped in ``FedpressStrategy``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx

from fedpress.integrations.flower import FedpressStrategy
from fedpress_flower import task

app = ServerApp()


def make_strategy(cfg) -> FedAvg:
    kw = dict(fraction_train=float(cfg["fraction-train"]), fraction_evaluate=0.0,
              min_train_nodes=int(cfg["min-nodes"]), min_available_nodes=int(cfg["min-nodes"]))
    name = str(cfg["strategy"]).lower()
    if name == "fedavg":
        return FedAvg(**kw)
    if name == "fedavgm":
        return FedAvgM(**kw)
    if name == "fedadam":
        return FedAdam(**kw, eta=0.01)
    if name == "fedprox":
        return FedProx(**kw, proximal_mu=float(cfg["proximal-mu"]))
    raise ValueError(f"unknown strategy {name!r} (fedavg, fedavgm, fedadam, fedprox)")


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    seed = int(cfg["seed"])
    t0 = time.time()
    strategy = FedpressStrategy(
        make_strategy(cfg), codec=str(cfg["codec"]),
        down_codec=str(cfg["down-codec"]) or None, seed=seed,
    )
    x_test, y_test = task.test_split(seed)
    models: dict[str, np.ndarray] = {}  # kept only with models-out set

    def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        params = arrays.to_torch_state_dict()
        if str(cfg["models-out"]):
            # After round r: the model the nodes trained from in round r, and the aggregate.
            if server_round > 0:
                for k, v in strategy.round_model.items():
                    models[f"round{server_round}/base/{k}"] = v.numpy()
            for k, v in params.items():
                models[f"round{server_round}/global/{k}"] = v.numpy()
        acc, loss = task.evaluate(params, x_test, y_test, seed)
        return MetricRecord({"accuracy": acc, "loss": loss})

    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(task.build_model(seed).state_dict()),
        num_rounds=int(cfg["num-server-rounds"]),
        train_config=ConfigRecord(),
        evaluate_fn=central_evaluate,
    )
    rounds = []
    for row in strategy.history:
        ev = result.evaluate_metrics_serverapp.get(row["round"], {})
        rounds.append({**row, "accuracy": ev.get("accuracy"), "loss": ev.get("loss"),
                       "client_uplink_bytes": {str(k): v for k, v in row["client_uplink_bytes"].items()},
                       "client_downlink_bytes": {str(k): v for k, v in row["client_downlink_bytes"].items()},
                       "rejected": {str(k): v for k, v in row["rejected"].items()},
                       "client_metrics": {str(k): v for k, v in row["client_metrics"].items()}})
    initial = result.evaluate_metrics_serverapp.get(0, {})
    summary = {
        "codec": strategy.codec.spec,
        "down_codec": strategy.down_codec.spec if strategy.down_codec else None,
        "strategy": str(cfg["strategy"]),
        "rounds": rounds,
        "total_uplink_bytes": sum(r["uplink_bytes"] for r in rounds),
        "total_downlink_bytes": sum(r["downlink_bytes"] for r in rounds),
        "initial_accuracy": initial.get("accuracy"),
        "initial_loss": initial.get("loss"),
        "final_accuracy": rounds[-1]["accuracy"] if rounds else None,
        "final_loss": rounds[-1]["loss"] if rounds else None,
        "train_metrics": {str(k): dict(v) for k, v in result.train_metrics_clientapp.items()},
        "wall_seconds": time.time() - t0,
        "finished": True,
    }
    print(json.dumps({k: summary[k] for k in ("codec", "total_uplink_bytes", "final_accuracy")}))
    if models:
        np.savez(Path(str(cfg["models-out"])), **models)
    if str(cfg["out"]):
        out = Path(str(cfg["out"]))
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(out)
