"""ClientApp: plain Flower training code; ``fedpress_mod`` compresses what it sends back."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedpress.integrations.flower import fedpress_mod
from fedpress_flower import task

# The mod turns the returned model into one compressed update (an Array with
# stype "fedpress/1") and keeps the codec's error-feedback state in context.state.
app = ClientApp(mods=[fedpress_mod])


def _partition(context: Context):
    cfg = context.run_config
    pid = int(context.node_config["partition-id"])
    n = int(context.node_config["num-partitions"])
    return pid, task.client_data(pid, n, int(cfg["seed"]), float(cfg["alpha"]))


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = context.run_config
    pid, (x, y) = _partition(context)
    params = msg.content["arrays"].to_torch_state_dict()
    train_cfg = msg.content["config"]
    new, loss = task.train(
        params, x, y, seed=int(cfg["seed"]), server_round=int(train_cfg["server-round"]),
        partition_id=pid, epochs=int(cfg["local-epochs"]), lr=float(cfg["lr"]),
        batch_size=int(cfg["batch-size"]), prox_mu=float(train_cfg.get("proximal-mu", 0.0)),
    )
    metrics = MetricRecord({"train_loss": float(loss), "num-examples": int(x.shape[0])})
    return Message(RecordDict({"arrays": ArrayRecord(new), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    _pid, (x, y) = _partition(context)
    params = msg.content["arrays"].to_torch_state_dict()
    acc, loss = task.evaluate(params, x, y, int(context.run_config["seed"]))
    metrics = MetricRecord({"eval_acc": acc, "eval_loss": loss, "num-examples": int(x.shape[0])})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
