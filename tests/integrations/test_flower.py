"""In-process tests of the Flower integration: the client mod and the strategy wrapper.

Messages are built with explicit metadata and passed between a real Flower strategy (FedAvg,
FedAdam, FedProx) and the mod, as the SuperLink would deliver them, without any network
(``flower_plumbing``, shared with test_flower_dp.py).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

flwr = pytest.importorskip("flwr")

from flower_plumbing import (  # noqa: E402
    FakeGrid,
    context,
    deliver,
    reply_with,
    restart,
    run_round,
    train_message,
)
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message  # noqa: E402
from flwr.common.constant import ErrorCode  # noqa: E402
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx  # noqa: E402

import fedpress  # noqa: E402
from fedpress.fl.client import TrainConfig, local_train  # noqa: E402
from fedpress.integrations.flower import (  # noqa: E402
    STATE_CODEC,
    STYPE,
    FedpressReplyError,
    FedpressStrategy,
    fedpress_mod,
    pack_blob,
    unpack_blob,
    update_seed,
)
from fedpress.sim.runner import derive_seed  # noqa: E402
from fedpress.wire import Structure  # noqa: E402


# ----------------------------------------------------------------------------- plumbing
def shift_trainer(shifts: dict[int, float]):
    """A deterministic 'training': each node adds a node- and round-dependent pattern."""

    def train(msg: Message, ctx: Context) -> Message:
        params = msg.content["arrays"].to_torch_state_dict()
        rnd = int(msg.content["config"]["server-round"])
        g = torch.Generator().manual_seed(1000 * ctx.node_id + rnd)
        new = {k: (v + shifts[ctx.node_id] * torch.randn(v.shape, generator=g) if v.is_floating_point()
                   else v + 1) for k, v in params.items()}
        return reply_with(new, msg, n=10 * ctx.node_id)

    return train


def model_record(seed: int = 0) -> ArrayRecord:
    g = torch.Generator().manual_seed(seed)
    return ArrayRecord({
        "fc.weight": Array(torch.randn(16, 32, generator=g).numpy()),
        "fc.bias": Array(torch.zeros(16).numpy()),
        "steps": Array(np.array([3], np.int64)),  # an integer buffer: never part of the update
    })


# ----------------------------------------------------------------------------- wire helpers
def test_pack_unpack_blob_is_byte_exact_and_refuses_other_stypes():
    blob = fedpress.compress(np.linspace(-1, 1, 50, dtype=np.float32), "q:bits=4")
    a = pack_blob(blob)
    assert a.stype == STYPE == "fedpress/1"
    assert a.data == blob and a.shape == (len(blob),)
    assert unpack_blob(a) == blob
    with pytest.raises(FedpressReplyError, match=r"'numpy.ndarray' is not 'fedpress/1'.*fedpress_mod"):
        unpack_blob(Array(np.zeros(3, np.float32)))
    with pytest.raises(FedpressReplyError, match="wire version"):
        unpack_blob(Array(dtype="uint8", shape=(3,), stype="fedpress/99", data=b"abc"))


# ----------------------------------------------------------------------------- client mod
def test_mod_blob_equals_codec_encode_and_state_persists_across_rounds():
    spec, seed, node = "ef+topk:ratio=0.1+q:bits=4+zstd", 11, 5
    codec = fedpress.codec(spec)
    ctx = context(node)
    base = model_record()
    state = codec.init()
    for rnd in (1, 2):
        msg = train_message(base, {"fedpress-codec": spec, "fedpress-seed": seed,
                                   "fedpress-round": rnd, "server-round": rnd}, node=node)
        ctx = restart(ctx)
        out = fedpress_mod(msg, ctx, shift_trainer({node: 0.1}))
        assert not out.has_error()
        (key, rec), = out.content.array_records.items()
        assert key == "arrays" and list(rec) == ["fedpress"]
        blob = unpack_blob(rec["fedpress"])
        # The update exactly as the simulator computes it: trained - received, float tensors only.
        sent = base.to_torch_state_dict()
        trained = shift_trainer({node: 0.1})(train_message(base, {"server-round": rnd}, node=node), ctx)
        trained = trained.content["arrays"].to_torch_state_dict()
        update = {k: trained[k] - sent[k] for k in sent if sent[k].is_floating_point()}
        want = codec.encode_ex(update, state, seed=derive_seed(seed, rnd - 1, node, 3),
                               structure="fingerprint", spec_ref=True)
        assert update_seed(seed, rnd, node) == derive_seed(seed, rnd - 1, node, 3)
        assert blob == want.blob
        stateless = codec.encode_ex(update, None, seed=update_seed(seed, rnd, node),
                                    structure="fingerprint", spec_ref=True).blob
        # Round 1 starts from no state; round 2 encodes update + residual, not the bare update.
        assert (blob == stateless) == (rnd == 1)
        state = want.state
        # The codec state (EF residuals) lives in the node's Context and matches the codec's.
        kept = {k: a.numpy() for k, a in ctx.state[STATE_CODEC].items()}
        assert kept.keys() == state.keys() == {"ef/fc.weight", "ef/fc.bias"}
        for k in kept:
            np.testing.assert_array_equal(kept[k], state[k])
        decoded = fedpress.decompress(blob, structures=[Structure.of(update)], specs=[spec])
        np.testing.assert_allclose(decoded["fc.weight"].numpy(), want.recon["fc.weight"].numpy())


def test_mod_bytes_equal_what_the_simulator_reports():
    """Same data, model, seed and codec: the mod's blob for each client in round 1 has exactly the
    length that fedpress.Simulation reports for that client."""
    spec, seed, lr = "ef+qsgd:levels=4+zstd", 3, 0.1  # seeded: a wrong seed changes the size
    g = torch.Generator().manual_seed(0)
    clients = [(torch.randn(30 + 5 * i, 6, generator=g), torch.randint(0, 3, (30 + 5 * i,), generator=g))
               for i in range(3)]
    test = (torch.randn(20, 6, generator=g), torch.randint(0, 3, (20,), generator=g))

    def model_fn():
        return torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))

    sim = fedpress.Simulation(model_fn, clients, test, codec=spec, rounds=1, per_round=3, lr=lr,
                              seed=seed, batch_size=16)
    reported = sim.run().history[0]["client_uplink_bytes"]

    torch.manual_seed(seed)
    init = {k: v.detach().clone() for k, v in model_fn().state_dict().items()}
    arrays = ArrayRecord({k: Array(v.numpy()) for k, v in init.items()})
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for c, (x, y) in enumerate(clients):
            def train(msg, ctx, x=x, y=y, c=c):
                params = msg.content["arrays"].to_torch_state_dict()
                new, _ = local_train(model_fn(), params, (x, y), TrainConfig(lr=lr, batch_size=16),
                                     seed=derive_seed(seed, 0, c, 2))
                return reply_with(new, msg, n=len(x))

            msg = train_message(arrays, {"fedpress-codec": spec, "fedpress-seed": seed,
                                         "fedpress-round": 1}, node=c)
            out = fedpress_mod(msg, context(c), train)
            assert len(out.content["arrays"]["fedpress"].data) == reported[str(c)]
    finally:
        torch.set_num_threads(old_threads)


def test_mod_leaves_untagged_and_evaluate_messages_alone():
    calls = []

    def app(msg, ctx):
        calls.append(msg.metadata.message_type)
        return reply_with(msg.content["arrays"].to_torch_state_dict(), msg)

    plain = fedpress_mod(train_message(model_record(), {"server-round": 1}), context(7), app)
    assert plain.content["arrays"]["fc.weight"].stype == "numpy.ndarray"
    ev = fedpress_mod(train_message(model_record(), {"fedpress-codec": "q:bits=8", "fedpress-round": 1},
                                    mtype="evaluate"), context(7), app)
    assert ev.content["arrays"]["fc.weight"].stype == "numpy.ndarray"
    assert calls == ["train", "evaluate"]


def test_mod_turns_problems_into_error_replies():
    ctx = context(7)
    bad_spec = fedpress_mod(train_message(model_record(), {"fedpress-codec": "topk:ratio=3",
                                                           "fedpress-round": 1}), ctx,
                            shift_trainer({7: 0.1}))
    assert bad_spec.has_error() and bad_spec.error.code == ErrorCode.MOD_FAILED_PRECONDITION
    assert "ratio" in bad_spec.error.reason

    def renames(msg, _ctx):
        sd = msg.content["arrays"].to_torch_state_dict()
        return reply_with({("w2" if k == "fc.weight" else k): v for k, v in sd.items()}, msg)

    out = fedpress_mod(train_message(model_record(), {"fedpress-codec": "q:bits=8", "fedpress-round": 1}),
                       ctx, renames)
    assert out.has_error() and "differ from the received" in out.error.reason


# ----------------------------------------------------------------------------- strategy wrapper
def test_wrapped_fedavg_two_rounds_bytes_and_aggregate():
    nodes = {3: context(3), 9: context(9)}
    strategy = FedpressStrategy(FedAvg(), codec="ef+topk:ratio=0.25+q:bits=8", seed=4)
    train = shift_trainer({3: 0.05, 9: 0.2})
    arrays = model_record()
    for rnd in (1, 2):
        G = arrays.to_torch_state_dict()
        msgs, blobs, agg, metrics, _got = run_round(strategy, arrays, rnd, nodes, train)
        wire = [len(blobs[3]), len(blobs[9])]
        cfg = msgs[0].content["config"]
        assert cfg["fedpress-codec"] == "ef+topk:ratio=0.25+q:bits=8" and cfg["fedpress-round"] == rnd
        # Bytes: len(Array.data) of each reply, per node in ascending node-id order.
        assert metrics["fedpress-uplink-bytes-per-node"] == wire  # in node-id order
        assert metrics["fedpress-uplink-bytes"] == sum(wire) > 0
        assert metrics["fedpress-clients"] == 2 and metrics["fedpress-rejected"] == 0
        assert metrics["fedpress-downlink-bytes"] == 2 * sum(len(a.data) for a in arrays.values())
        assert "train_loss" in metrics  # the wrapped strategy's own metrics survive
        row = strategy.history[-1]
        assert row["round"] == rnd and row["client_uplink_bytes"] == {3: wire[0], 9: wire[1]}
        # Each node's own train metrics (the wrapped strategy reports only their average).
        assert row["client_metrics"] == {3: {"num-examples": 30, "train_loss": 1.0},
                                         9: {"num-examples": 90, "train_loss": 1.0}}
        # Without a downlink codec the nodes train from the global model itself.
        assert all(torch.equal(strategy.round_model[k], v) for k, v in G.items())
        # Aggregate: G + weighted mean of the decoded updates; integer buffers stay G's.
        st = Structure.of({k: v for k, v in G.items() if v.is_floating_point()})
        ups = [fedpress.decompress(blobs[n], structures=[st], specs=["ef+topk:ratio=0.25+q:bits=8"])
               for n in (3, 9)]
        out = agg.to_torch_state_dict()
        for k in ("fc.weight", "fc.bias"):
            want = G[k] + (30 * ups[0][k] + 90 * ups[1][k]) / 120
            torch.testing.assert_close(out[k], want, rtol=1e-5, atol=1e-6)
        if rnd == 1:  # FedAvg itself turns integer buffers into float64 averages
            assert G["steps"].dtype == torch.int64 and out["steps"].tolist() == [3.0]
        arrays = agg
    assert [r["round"] for r in strategy.history] == [1, 2]
    assert STATE_CODEC in nodes[3].state and STATE_CODEC in nodes[9].state


def test_strategy_refuses_non_fedpress_replies_clearly():
    nodes = {1: context(1), 2: context(2)}
    arrays = model_record()
    for mode in ("raise", "drop"):
        strategy = FedpressStrategy(FedAvg(), codec="q:bits=8", on_bad_reply=mode)
        msgs = list(strategy.configure_train(1, arrays, ConfigRecord(), FakeGrid(nodes)))
        by_node = {m.metadata.dst_node_id: deliver(m) for m in msgs}
        good = fedpress_mod(by_node[1], nodes[1], shift_trainer({1: 0.1}))
        plain = shift_trainer({2: 0.1})(by_node[2], nodes[2])  # this node has no fedpress_mod
        blob = good.content["arrays"]["fedpress"].data
        if mode == "raise":
            with pytest.raises(FedpressReplyError, match=r"node 2.*'numpy.ndarray'.*fedpress_mod"):
                strategy.aggregate_train(1, [good, plain])
        else:
            agg, metrics = strategy.aggregate_train(1, [good, plain])
            assert metrics["fedpress-rejected"] == 1 and metrics["fedpress-clients"] == 1
            assert "numpy.ndarray" in strategy.history[-1]["rejected"][2]
            # Only node 1's update was aggregated.
            up = fedpress.decompress(blob, specs=["q:bits=8"],
                                     structures=[Structure.of({k: v for k, v in arrays.to_torch_state_dict().items()
                                                               if v.is_floating_point()})])
            torch.testing.assert_close(agg.to_torch_state_dict()["fc.weight"],
                                       arrays.to_torch_state_dict()["fc.weight"] + up["fc.weight"])


def test_corrupt_blob_is_dropped_and_stock_fedavg_refuses_fedpress_arrays():
    nodes = {1: context(1), 2: context(2)}
    arrays = model_record()
    strategy = FedpressStrategy(FedAvg(), codec="q:bits=8")
    msgs = list(strategy.configure_train(1, arrays, ConfigRecord(), FakeGrid(nodes)))
    replies = [fedpress_mod(deliver(m), nodes[m.metadata.dst_node_id], shift_trainer({1: 0.1, 2: 0.1}))
               for m in msgs]
    bad = replies[1].content["arrays"]["fedpress"]
    blob = bytearray(bad.data)
    blob[len(blob) // 2] ^= 0xFF
    replies[1].content["arrays"] = ArrayRecord({"fedpress": pack_blob(bytes(blob))})
    # The stype guard: a stock strategy cannot read fedpress arrays.
    with pytest.raises(TypeError, match="fedpress/1"):
        FedAvg().aggregate_train(1, copy.deepcopy(replies))
    _agg, metrics = strategy.aggregate_train(1, replies)
    assert metrics["fedpress-rejected"] == 1
    assert "checksum" in next(iter(strategy.history[-1]["rejected"].values())).lower()


def test_downlink_deltas_resync_and_lost_state():
    nodes = {1: context(1), 2: context(2)}
    spec_down = "ef+q:bits=8"
    inner = FedAvg(min_train_nodes=1, min_available_nodes=1)
    strategy = FedpressStrategy(inner, codec="ef+topk:ratio=0.25+q:bits=8", down_codec=spec_down)
    train = shift_trainer({1: 0.05, 2: 0.05})
    arrays = model_record()

    def down_bytes(msgs):
        return {m.metadata.dst_node_id: sum(len(a.data) for a in m.content["arrays"].values())
                for m in msgs}

    # Round 1: nobody holds a model: everyone gets the full broadcast, exactly.
    msgs, _b, arrays2, metrics, got = run_round(strategy, arrays, 1, nodes, train)
    assert {m.content["config"]["fedpress-down"] for m in msgs} == {"full"}
    for n in nodes:
        for k, v in arrays.to_torch_state_dict().items():
            torch.testing.assert_close(got[n][k], v, rtol=0, atol=0)
    full = down_bytes(msgs)[1]
    assert metrics["fedpress-downlink-bytes"] == sum(down_bytes(msgs).values())

    # Round 2: both are in sync: compressed deltas, and both rebuild the server's broadcast model.
    # FedAvg turned the int64 buffer into float64 in round 1: the nodes cast their copy too.
    msgs, _b, arrays3, metrics, got = run_round(strategy, arrays2, 2, nodes, train)
    assert {m.content["config"]["fedpress-down"] for m in msgs} == {"delta"}
    assert msgs[0].content["config"]["fedpress-down-dtypes"] == ["float32", "float32", "float64"]
    assert max(down_bytes(msgs).values()) < full / 3
    for n in nodes:
        for k, v in strategy._B.items():
            torch.testing.assert_close(got[n][k], v, rtol=0, atol=0)
            torch.testing.assert_close(strategy.round_model[k], v, rtol=0, atol=0)
    err = (got[1]["fc.weight"] - arrays2.to_torch_state_dict()["fc.weight"]).abs().max()
    assert 0 < err < 0.05  # lossy but close to the global model

    # Round 3 without node 2; round 4: node 2 replays the two broadcasts it missed, node 1 gets one.
    _m, _b, arrays4, _metrics, _got = run_round(strategy, arrays3, 3, nodes, train, offline={2})
    msgs, blobs, arrays5, metrics, got = run_round(strategy, arrays4, 4, nodes, train)
    per = {m.metadata.dst_node_id: len(m.content["arrays"]) for m in msgs}
    assert per == {1: 1, 2: 2}
    assert None not in blobs.values() and metrics["fedpress-clients"] == 2
    for n in nodes:
        for k, v in strategy._B.items():
            torch.testing.assert_close(got[n][k], v, rtol=0, atol=0)

    # A node that lost its state (new Context) cannot apply deltas: it answers with an error,
    # the server forgets its version and sends it the full model next round.
    nodes[2] = context(2)
    msgs, blobs, arrays6, metrics, _got = run_round(strategy, arrays5, 5, nodes, train)
    assert blobs[2] is None and blobs[1] is not None and metrics["fedpress-clients"] == 1
    msgs, blobs, arrays7, metrics, _got = run_round(strategy, arrays6, 6, nodes, train)
    modes = {m.metadata.dst_node_id: m.content["config"]["fedpress-down"] for m in msgs}
    assert modes == {1: "delta", 2: "full"} and None not in blobs.values()
    # A node that was sent a message but never answered may or may not hold the broadcast.
    msgs, *_ = run_round(strategy, arrays7, 7, nodes, train, skip={2})
    msgs, *_ = run_round(strategy, arrays7, 8, nodes, train)
    modes = {m.metadata.dst_node_id: m.content["config"]["fedpress-down"] for m in msgs}
    assert modes == {1: "delta", 2: "full"}


@pytest.mark.parametrize("inner", [lambda: FedAdam(eta=0.05), lambda: FedProx(proximal_mu=0.1)],
                         ids=["fedadam", "fedprox"])
def test_wraps_other_flower_strategies(inner):
    nodes = {1: context(1), 2: context(2)}
    spec = "ef+powersgd:rank=2,min_size=16"
    strategy = FedpressStrategy(inner(), codec=spec, seed=1)
    arrays = model_record()
    for rnd in (1, 2):
        msgs, blobs, agg, metrics, _g = run_round(strategy, arrays, rnd, nodes,
                                                  shift_trainer({1: 0.1, 2: 0.1}))
        assert agg is not None and metrics["fedpress-uplink-bytes"] == sum(map(len, blobs.values()))
        assert set(agg.keys()) == set(arrays.keys())
        arrays = agg
    if isinstance(strategy.strategy, FedProx):
        assert msgs[0].content["config"]["proximal-mu"] == 0.1
    # PowerSGD keeps its warm-start factor Q (and EF its residuals) in the node's context.
    state = {k: a.numpy() for k, a in nodes[1].state[STATE_CODEC].items()}
    # ("steps" is float64 after round 1's aggregation, so from round 2 on it is part of the update.)
    assert set(state) == {"ef/fc.weight", "ef/fc.bias", "ef/steps", "fc.weight@"}
    assert state["fc.weight@"].shape == (32, 2)


def test_strategy_argument_checks():
    with pytest.raises(TypeError, match="flwr Strategy"):
        FedpressStrategy(object(), codec="q:bits=8")
    with pytest.raises(ValueError, match="on_bad_reply"):
        FedpressStrategy(FedAvg(), codec="q:bits=8", on_bad_reply="ignore")
    with pytest.raises(fedpress.SpecError, match="bogus"):
        FedpressStrategy(FedAvg(), codec="bogus")
