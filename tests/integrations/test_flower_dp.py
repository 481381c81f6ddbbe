"""fedpress with Flower's central differential privacy, in-process (``flower_plumbing``).

Each aggregate is checked against the one computed by hand from the blobs the nodes actually sent:
decode, clip to ``C``, average, (noise). The DP wrappers are Flower's own; the client side is a real
``ClientApp`` with its mods in the order Flower runs them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

flwr = pytest.importorskip("flwr")

from flower_plumbing import context, restart, run_app, run_round, train_message  # noqa: E402
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.clientapp.mod import (  # noqa: E402
    LocalDpMod,
    adaptiveclipping_mod,
    fixedclipping_mod,
)
from flwr.common.constant import ErrorCode  # noqa: E402
from flwr.serverapp.strategy import (  # noqa: E402
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
)

import fedpress  # noqa: E402
from fedpress.integrations.flower import (  # noqa: E402
    STATE_CODEC,
    FedpressStrategy,
    fedpress_mod,
    update_seed,
)
from fedpress.wire import Structure  # noqa: E402


# ----------------------------------------------------------------------------- helpers
def float_model(seed: int = 0) -> ArrayRecord:
    """Float tensors only: Flower's DP clipping scales every array in place, which numpy refuses
    for an integer buffer (UFuncTypeError) whenever the clip bites."""
    g = torch.Generator().manual_seed(seed)
    return ArrayRecord({"fc.weight": Array((0.1 * torch.randn(32, 64, generator=g)).numpy()),
                        "fc.bias": Array(torch.zeros(32).numpy())})


def scaled_trainer(scales: dict[int, float]):
    """'Training' adds the node's scale times (a node's own direction + a smaller round-dependent
    part): consecutive updates are correlated, as real ones are, which is what lets an error-feedback
    residual grow along the update. Every node reports the same number of examples, as Flower's DP
    (uniform weights) assumes."""

    def train(msg: Message, ctx: Context) -> Message:
        params = msg.content["arrays"].to_torch_state_dict()
        rnd = int(msg.content["config"]["server-round"])
        g_node = torch.Generator().manual_seed(ctx.node_id)
        g = torch.Generator().manual_seed(1000 * ctx.node_id + rnd)
        new = {k: v + scales[ctx.node_id] * (torch.randn(v.shape, generator=g_node)
                                             + 0.3 * torch.randn(v.shape, generator=g))
               for k, v in params.items()}
        return Message(RecordDict({
            "arrays": ArrayRecord({k: Array(v.numpy()) for k, v in new.items()}),
            "metrics": MetricRecord({"num-examples": 10, "train_loss": 1.0})}), reply_to=msg)

    return train


def client_app(train, *, outer=(), inner=()) -> ClientApp:
    """A ClientApp that runs ``outer`` mods, then fedpress_mod, then ``inner`` mods, then train."""
    app = ClientApp(mods=[*outer, fedpress_mod])
    app.train(mods=list(inner))(train)
    return app


def norm(d) -> float:
    return math.sqrt(sum(float((v.double() ** 2).sum()) for v in d.values()))


def clipped(u: dict[str, torch.Tensor], c: float) -> dict[str, torch.Tensor]:
    n = norm(u)
    return {k: v.double() * min(1.0, c / n) for k, v in u.items()}


def decode(blobs: dict[int, bytes], G: dict[str, torch.Tensor], spec: str) -> dict[int, dict]:
    """The updates the server decodes from the blobs the nodes sent."""
    st = Structure.of({k: v for k, v in G.items() if v.is_floating_point()})
    return {n: fedpress.decompress(b, structures=[st], specs=[spec]) for n, b in blobs.items()}


def by_hand(G, ups: dict[int, dict], c: float) -> dict[str, torch.Tensor]:
    """FedAvg (equal weights) of global + update, each update clipped to c: noise-free DP-FedAvg."""
    cl = [clipped(u, c) for u in ups.values()]
    return {k: G[k].double() + sum(u[k] for u in cl) / len(cl) for k in G}


def assert_model(out: ArrayRecord, want: dict[str, torch.Tensor]) -> None:
    got = out.to_torch_state_dict()
    for k, v in want.items():
        torch.testing.assert_close(got[k].double(), v, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- server-side clipping
SPEC = "ef+topk:ratio=0.25+q:bits=8"


def test_server_side_fixed_clipping_clips_the_decoded_updates():
    """noise 0: the aggregate is exactly global + mean of the clipped decoded updates, and a huge
    update moves the model by C/n, not by its size."""
    C, nodes = 1.0, {1: context(1), 2: context(2), 3: context(3)}
    dp = DifferentialPrivacyServerSideFixedClipping(FedAvg(), noise_multiplier=0.0, clipping_norm=C,
                                                    num_sampled_clients=3)
    strategy = FedpressStrategy(dp, codec=SPEC, seed=2)
    train = scaled_trainer({1: 0.003, 2: 0.05, 3: 1000.0})  # norms ~0.14, ~2.4, ~4.8e4
    arrays = float_model()
    for rnd in (1, 2):  # round 2: the EF residuals are part of what the nodes send
        G = arrays.to_torch_state_dict()
        _m, blobs, agg, _metrics, _r = run_round(strategy, arrays, rnd, nodes, train)
        ups = decode(blobs, G, SPEC)
        norms = {n: norm(u) for n, u in ups.items()}
        assert norms[1] < C < norms[2] and norms[3] > 1e4, norms
        assert_model(agg, by_hand(G, ups, C))
        # The huge update's share of the step is exactly C / n.
        out = agg.to_torch_state_dict()
        rest = {k: (clipped(ups[1], C)[k] + clipped(ups[2], C)[k]) / 3 for k in G}
        share = {k: out[k].double() - G[k].double() - rest[k] for k in G}
        assert norm(share) == pytest.approx(C / 3, rel=1e-4)
        # Server-side DP clips on its own: fedpress adds no clip of its own.
        assert "dp" not in strategy.history[-1]
        arrays = agg


def test_server_side_fixed_clipping_noise_has_the_promised_std():
    z, C, n = 2.0, 0.5, 3
    nodes = {i: context(i) for i in (1, 2, 3)}
    dp = DifferentialPrivacyServerSideFixedClipping(FedAvg(), noise_multiplier=z, clipping_norm=C,
                                                    num_sampled_clients=n)
    strategy = FedpressStrategy(dp, codec="q:bits=4")
    arrays = float_model()
    G = arrays.to_torch_state_dict()
    np.random.seed(0)  # Flower draws its noise from numpy's global generator
    _m, blobs, agg, _metrics, _r = run_round(strategy, arrays, 1, nodes,
                                             scaled_trainer({1: 0.1, 2: 0.2, 3: 0.3}))
    want = by_hand(G, decode(blobs, G, "q:bits=4"), C)
    out = agg.to_torch_state_dict()
    dev = torch.cat([(out[k].double() - want[k]).ravel() for k in G])
    sigma = z * C / n
    # 2080 draws: the sample std is within ~1.6 % of sigma (one standard error); allow 4.
    assert float(dev.std()) == pytest.approx(sigma, rel=0.065)
    assert abs(float(dev.mean())) < 4 * sigma / math.sqrt(dev.numel())


def test_server_side_adaptive_clipping_composes_the_same_way():
    C0, q, lr = 1.0, 0.5, 0.2
    nodes = {i: context(i) for i in (1, 2, 3)}
    dp = DifferentialPrivacyServerSideAdaptiveClipping(
        FedAvg(), noise_multiplier=0.0, num_sampled_clients=3, initial_clipping_norm=C0,
        target_clipped_quantile=q, clip_norm_lr=lr)
    strategy = FedpressStrategy(dp, codec=SPEC)
    arrays = float_model()
    G = arrays.to_torch_state_dict()
    _m, blobs, agg, _metrics, _r = run_round(strategy, arrays, 1, nodes,
                                             scaled_trainer({1: 0.003, 2: 0.05, 3: 10.0}))
    ups = decode(blobs, G, SPEC)
    assert_model(agg, by_hand(G, ups, C0))
    # The wrapper adapts its clip from how many *decoded* updates it had to clip (2 of 3).
    frac = sum(norm(u) > C0 for u in ups.values()) / 3
    assert frac == pytest.approx(2 / 3)
    assert dp.clipping_norm == pytest.approx(C0 * math.exp(-lr * (frac - q)))


def test_dp_wrapper_outside_fedpress_strategy_fails_loudly():
    """Server-side DP must be wrapped *by* FedpressStrategy: outside it, it would read blobs."""
    nodes = {1: context(1), 2: context(2)}
    dp = DifferentialPrivacyServerSideFixedClipping(FedpressStrategy(FedAvg(), codec="q:bits=8"),
                                                    noise_multiplier=0.0, clipping_norm=1.0,
                                                    num_sampled_clients=2)
    with pytest.raises(TypeError, match="fedpress/1"):
        run_round(dp, float_model(), 1, nodes, scaled_trainer({1: 0.1, 2: 0.1}))


# ----------------------------------------------------------------------------- client-side clipping
@pytest.mark.parametrize("flower_clip", [True, False], ids=["with-fixedclipping_mod", "fedpress_mod-only"])
@pytest.mark.parametrize("nesting", ["fedpress-outside", "dp-outside"])
@pytest.mark.parametrize("spec", ["q:bits=2", "ef+q:bits=2", "ef+topk:ratio=0.1+q:bits=2"])
def test_client_side_clipping_bounds_what_is_aggregated(spec, nesting, flower_clip):
    """The nodes clip before compressing, and compression lengthens a clipped update past C again
    (2-bit rounding; the EF residual added back), checked from the blobs. The aggregate is still
    global + mean of updates of norm <= C."""
    C, n = 1.0, 3
    nodes = {i: context(i) for i in (1, 2, 3)}
    if nesting == "fedpress-outside":
        dp = DifferentialPrivacyClientSideFixedClipping(FedAvg(), noise_multiplier=0.0,
                                                        clipping_norm=C, num_sampled_clients=n)
        strategy = fedpress_strategy = FedpressStrategy(dp, codec=spec, seed=5)
    else:
        fedpress_strategy = FedpressStrategy(FedAvg(), codec=spec, seed=5)
        strategy = DifferentialPrivacyClientSideFixedClipping(
            fedpress_strategy, noise_multiplier=0.0, clipping_norm=C, num_sampled_clients=n)
    app = client_app(scaled_trainer({1: 0.1, 2: 0.5, 3: 0.02}),  # norms ~4.8, ~24, ~0.95
                     inner=[fixedclipping_mod] if flower_clip else [])
    arrays = float_model()
    longest = 0.0
    for rnd in (1, 2, 3):
        G = arrays.to_torch_state_dict()
        msgs, blobs, agg, _metrics, _r = run_round(strategy, arrays, rnd, nodes, app=app)
        assert all(m.content["config"]["clipping_norm"] == C for m in msgs)
        assert None not in blobs.values(), "a node answered with an error"
        ups = decode(blobs, G, spec)
        norms = {k: norm(u) for k, u in ups.items()}
        longest = max(longest, *norms.values())
        assert_model(agg, by_hand(G, ups, C))
        # Every node's contribution to the step is at most C / n.
        out = agg.to_torch_state_dict()
        step = {k: out[k].double() - G[k].double() for k in G}
        assert norm(step) <= C * (1 + 1e-5)
        dp_row = fedpress_strategy.history[-1]["dp"]
        assert dp_row["clipping_norm"] == dict.fromkeys(nodes, C)
        assert dp_row["update_norms"] == pytest.approx(norms, rel=1e-9)
        assert dp_row["reclipped"] == sorted(k for k, v in norms.items() if v > C)
        arrays = agg
    # Without the server's clip the sensitivity would have been this, not the C the noise is sized
    # for: the DP guarantee would not hold.
    assert longest > 1.05 * C, longest
    assert (STATE_CODEC in nodes[1].state) == fedpress.codec(spec).error_feedback


def unclipped_node(train) -> ClientApp:
    """A node that does not clip at all (an old fedpress_mod, a modified client): the clip is
    hidden from fedpress_mod, and no Flower clipping mod runs."""

    def hide(msg, ctx, call_next):
        del msg.content["config"]["clipping_norm"]
        return call_next(msg, ctx)

    return client_app(train, outer=[hide])


def test_the_server_clip_does_not_rely_on_the_nodes():
    C, spec = 1.0, "ef+topk:ratio=0.1+q:bits=2"
    nodes = {i: context(i) for i in (1, 2)}
    dp = DifferentialPrivacyClientSideFixedClipping(FedAvg(), noise_multiplier=0.0, clipping_norm=C,
                                                    num_sampled_clients=2)
    strategy = FedpressStrategy(dp, codec=spec)
    app = unclipped_node(scaled_trainer({1: 0.1, 2: 0.3}))
    arrays = float_model()
    for rnd in (1, 2):
        G = arrays.to_torch_state_dict()
        _m, blobs, agg, _metrics, _r = run_round(strategy, arrays, rnd, nodes, app=app)
        ups = decode(blobs, G, spec)
        assert min(norm(u) for u in ups.values()) > 2 * C
        assert_model(agg, by_hand(G, ups, C))
        out = agg.to_torch_state_dict()
        assert norm({k: out[k].double() - G[k].double() for k in G}) <= C * (1 + 1e-5)
        assert strategy.history[-1]["dp"]["reclipped"] == [1, 2]
        arrays = agg


def test_client_side_clipping_with_a_compressed_downlink():
    """With downlink deltas the nodes train from the broadcast model, which fedpress_mod rebuilds
    before fixedclipping_mod (inside it) records it as the base of the update it clips."""
    C, spec = 1.0, "ef+topk:ratio=0.1+q:bits=2"
    nodes = {1: context(1), 2: context(2)}
    dp = DifferentialPrivacyClientSideFixedClipping(FedAvg(), noise_multiplier=0.0, clipping_norm=C,
                                                    num_sampled_clients=2)
    strategy = FedpressStrategy(dp, codec=spec, down_codec="ef+q:bits=8")
    app = client_app(scaled_trainer({1: 0.1, 2: 0.3}), inner=[fixedclipping_mod])
    arrays = float_model()
    for rnd in (1, 2, 3):
        G = arrays.to_torch_state_dict()
        msgs, blobs, agg, _metrics, _r = run_round(strategy, arrays, rnd, nodes, app=app)
        modes = {m.content["config"]["fedpress-down"] for m in msgs}
        assert modes == ({"full"} if rnd == 1 else {"delta"})
        assert None not in blobs.values()
        assert_model(agg, by_hand(G, decode(blobs, G, spec), C))
        out = agg.to_torch_state_dict()
        assert norm({k: out[k].double() - G[k].double() for k in G}) <= C * (1 + 1e-5)
        arrays = agg


def test_mod_clips_the_update_and_feeds_the_server_clip_back():
    """fedpress_mod alone, three rounds: it encodes the update clipped to C (with the codec's EF
    residual added, as without DP), and the residual it keeps is (clipped update + old residual)
    minus what the server will average, its clip of the decoded update; all recomputed here."""
    spec, C, node, seed = "ef+topk:ratio=0.1+q:bits=2", 1.0, 4, 9
    codec = fedpress.codec(spec)
    base = float_model()
    G = base.to_torch_state_dict()
    train = scaled_trainer({node: 0.1})
    ctx, residual, scales = context(node), {}, []
    for rnd in (1, 2, 3):
        cfg = {"fedpress-codec": spec, "fedpress-seed": seed, "fedpress-round": rnd,
               "server-round": rnd, "clipping_norm": C}
        ctx = restart(ctx)
        out = fedpress_mod(train_message(base, cfg, node=node), ctx, train)
        assert not out.has_error()
        trained = train(train_message(base, cfg, node=node), ctx).content["arrays"].to_torch_state_dict()
        u = {k: trained[k] - G[k] for k in G}  # float32, scaled in float32 as the node does
        assert norm(u) > C
        sent = {k: v * (C / norm(u)) for k, v in u.items()}
        want = codec.encode_ex(sent, {f"ef/{k}": v for k, v in residual.items()},
                               seed=update_seed(seed, rnd, node), structure="fingerprint", spec_ref=True)
        assert out.content["arrays"]["fedpress"].data == want.blob
        d = want.recon
        s = min(1.0, C / norm(d))
        scales.append(s)
        kept = {k[3:]: a.numpy() for k, a in ctx.state[STATE_CODEC].items()}
        for k in G:
            target = sent[k].double() + (torch.from_numpy(residual[k]).double() if k in residual else 0)
            np.testing.assert_allclose(kept[k], (target - s * d[k].double()).numpy(), atol=2e-6)
        residual = kept
    # Round 1 sends top-k of a vector of norm C; then the residual makes the decoded update longer
    # than C, and what the server's clip takes off stays in the residual.
    assert scales[0] == 1.0 and scales[-1] < 1.0, scales


@pytest.mark.parametrize("outer", [fixedclipping_mod, adaptiveclipping_mod,
                                   LocalDpMod(clipping_norm=1.0, sensitivity=1.0, epsilon=1.0, delta=1e-5)],
                         ids=["fixedclipping_mod", "adaptiveclipping_mod", "LocalDpMod"])
def test_a_clipping_mod_outside_fedpress_mod_is_one_clear_error_before_training(outer):
    trained = []

    def train(msg, ctx):
        trained.append(ctx.node_id)
        return scaled_trainer({3: 0.1})(msg, ctx)

    app = client_app(train, outer=[outer])
    msg = train_message(float_model(), {"fedpress-codec": "q:bits=8", "fedpress-round": 1,
                                        "server-round": 1, "clipping_norm": 1.0}, node=3)
    reply = run_app(app, msg, context(3))
    name = getattr(outer, "__name__", type(outer).__name__)
    assert reply.has_error() and reply.error.code == ErrorCode.MOD_FAILED_PRECONDITION
    assert f"inside {name}" in reply.error.reason
    assert f"mods=[fedpress_mod, {name}]" in reply.error.reason
    assert trained == []
    # The right order trains and compresses.
    ok = run_app(client_app(train, inner=[outer]), msg, context(3))
    assert not ok.has_error() and list(ok.content["arrays"]) == ["fedpress"] and trained == [3]


def test_privacy_accounting_composes_with_fedpress_strategy_outside():
    """Flower's accountant needs its DP wrapper to wrap FedAvg itself: FedpressStrategy goes outside
    (the other nesting is refused by Flower when the wrapper is built)."""
    pytest.importorskip("dp_accounting")  # flwr[dp]
    from flwr.supercore import privacy_accounting as accounting
    from flwr.supercore.privacy_accounting import rdp_accountant as rdp

    def accountant():
        return rdp.RdpAccountant(accounting.PrivacyConfig(
            target_delta=1e-5, population_size=2,
            neighboring_relation=accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=accounting.SamplingMethod.NO_AMPLIFICATION))

    nodes = {1: context(1), 2: context(2)}
    dp = DifferentialPrivacyClientSideFixedClipping(FedAvg(), noise_multiplier=1.0, clipping_norm=1.0,
                                                    num_sampled_clients=2, accountant=accountant())
    strategy = FedpressStrategy(dp, codec="ef+topk:ratio=0.1+q:bits=2")
    arrays = float_model()
    for rnd in (1, 2):
        _m, blobs, arrays, _metrics, _r = run_round(strategy, arrays, rnd, nodes,
                                                    app=client_app(scaled_trainer({1: 0.1, 2: 0.3})))
        assert arrays is not None and None not in blobs.values()
    spent = dp.privacy_spent()
    assert spent.num_releases == 2 and 0 < spent.epsilon < math.inf
    with pytest.raises(ValueError, match="FedAvg.aggregate_train"):
        DifferentialPrivacyClientSideFixedClipping(FedpressStrategy(FedAvg(), codec="q:bits=2"),
                                                   noise_multiplier=1.0, clipping_norm=1.0,
                                                   num_sampled_clients=2, accountant=accountant())


def test_client_side_adaptive_clipping_follows_the_clip_of_each_round():
    nodes = {1: context(1), 2: context(2)}
    dp = DifferentialPrivacyClientSideAdaptiveClipping(FedAvg(), noise_multiplier=0.0,
                                                       num_sampled_clients=2, initial_clipping_norm=1.0)
    strategy = FedpressStrategy(dp, codec="q:bits=2")
    # adaptiveclipping_mod reports the norm bit the wrapper adapts its clip from.
    app = client_app(scaled_trainer({1: 0.1, 2: 0.2}), inner=[adaptiveclipping_mod])
    arrays = float_model()
    for rnd in (1, 2):
        C = dp.clipping_norm  # what configure_train will send this round
        G = arrays.to_torch_state_dict()
        _m, blobs, agg, metrics, _r = run_round(strategy, arrays, rnd, nodes, app=app)
        assert strategy.history[-1]["dp"]["clipping_norm"] == {1: C, 2: C}
        assert_model(agg, by_hand(G, decode(blobs, G, "q:bits=2"), C))
        assert metrics["norm_bit"] == 1.0  # both updates were longer than the clip
        arrays = agg
    assert dp.clipping_norm < 1.0  # every update clipped: the clip shrinks
