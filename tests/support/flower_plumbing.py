"""In-process Flower plumbing shared by the Flower integration tests (imported as
``flower_plumbing``; ``conftest.py`` puts this folder on the path and keeps it out of collection).

Messages are built with explicit metadata and passed between a real Flower strategy and the client
side (a bare mod or a real ``ClientApp`` with its mods), through Flower's protobuf serialisation, as
the SuperLink would deliver them, without any network.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import ErrorCode
from flwr.common.serde import (
    context_from_proto,
    context_to_proto,
    recorddict_from_proto,
    recorddict_to_proto,
)

from fedpress.integrations.flower import fedpress_mod

_ids = itertools.count(1)


class FakeGrid:
    """The part of flwr's Grid that strategies use for sampling."""

    def __init__(self, nodes):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return list(self.nodes)


def wire(content: RecordDict) -> RecordDict:
    """The content as the other side sees it: through Flower's protobuf serialisation."""
    return recorddict_from_proto(recorddict_to_proto(content))


def deliver(msg: Message) -> Message:
    """What the node receives: the serialised content, with a message id set."""
    md = msg.metadata
    meta = Metadata(run_id=1, message_id=f"m{next(_ids)}", src_node_id=0, dst_node_id=md.dst_node_id,
                    reply_to_message_id="", group_id=md.group_id, created_at=0.0, ttl=3600.0,
                    message_type=md.message_type)
    return Message(metadata=meta, content=wire(msg.content))


def restart(ctx: Context) -> Context:
    """Each message runs in a fresh ClientApp process; the SuperNode hands it the stored Context."""
    return context_from_proto(context_to_proto(ctx))


def train_message(arrays: ArrayRecord, config: dict, node: int = 7, mtype: str = "train") -> Message:
    meta = Metadata(run_id=1, message_id=f"m{next(_ids)}", src_node_id=0, dst_node_id=node,
                    reply_to_message_id="", group_id="1", created_at=0.0, ttl=3600.0, message_type=mtype)
    return Message(metadata=meta, content=RecordDict({"arrays": arrays, "config": ConfigRecord(config)}))


def context(node: int) -> Context:
    return Context(run_id=1, node_id=node, node_config={}, state=RecordDict(), run_config={})


def reply_with(model: dict[str, torch.Tensor], msg: Message, n: int = 10) -> Message:
    content = RecordDict({"arrays": ArrayRecord({k: Array(v.numpy()) for k, v in model.items()}),
                          "metrics": MetricRecord({"num-examples": n, "train_loss": 1.0})})
    return Message(content, reply_to=msg)


def run_app(app: Callable[[Message, Context], Message], msg: Message, ctx: Context) -> Message:
    """Run a ClientApp as the SuperNode does: an exception becomes an error reply."""
    try:
        return app(msg, ctx)
    except Exception as ex:  # flwr's run_clientapp catches everything too
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                             reason=f"{type(ex)}:<'{ex}'>"), reply_to=msg)


def run_round(strategy, arrays: ArrayRecord, rnd: int, nodes: dict[int, Context], train=None, *,
              skip=(), offline=(), app=None):
    """One Flower round in-process: configure, deliver, run mod + train (or a whole ``ClientApp``
    with its own mods), aggregate. Nodes in ``skip`` get a message but never answer; nodes in
    ``offline`` are not connected (not sampled)."""
    grid = FakeGrid(n for n in nodes if n not in offline)
    msgs = list(strategy.configure_train(rnd, arrays, ConfigRecord(), grid))
    replies, received = [], {}
    for m in msgs:
        node = m.metadata.dst_node_id
        if node in skip:
            continue
        inbox = deliver(m)
        received[node] = inbox

        def seen(msg, ctx, _n=node):  # record what the user's train function got, then train
            received[_n] = msg.content["arrays"].to_torch_state_dict()
            return train(msg, ctx)

        nodes[node] = restart(nodes[node])
        if app is None:
            reply = fedpress_mod(inbox, nodes[node], seen)
        else:
            reply = run_app(app, inbox, nodes[node])
        if not reply.has_error():
            reply = Message(metadata=reply.metadata, content=wire(reply.content))
        replies.append(reply)
    # The wrapper replaces each reply's blob by the decoded model (as Flower's DP wrappers rewrite
    # replies), so keep the blobs as they arrived.
    blobs = {r.metadata.src_node_id: None if r.has_error() else r.content["arrays"]["fedpress"].data
             for r in replies}
    agg, metrics = strategy.aggregate_train(rnd, replies)
    return msgs, blobs, agg, metrics, received
