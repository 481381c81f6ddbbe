import numpy as np
import pytest
import torch

from fedpress.privacy.codes import SharedRangeCodec, secagg_compatible
from fedpress.privacy.dp import clip_update, update_norm
from fedpress.privacy.secagg import SecAggRound


@pytest.mark.parametrize(
    "spec",
    [
        "fixed:bits=8,lo=-0.5,hi=0.5,rounding=stochastic",
        "fixed:bits=4,lo=-1,hi=1",
        "randk:ratio=0.1+fixed:bits=8,lo=-1,hi=1,rounding=stochastic",
        "ef+randk:ratio=0.1,unbiased=1+fixed:bits=6,rounding=stochastic",
    ],
)
def test_compatible_specs(spec):
    ok, why = secagg_compatible(spec)
    assert ok, why
    assert "shared range" in why


@pytest.mark.parametrize(
    "spec, reason",
    [
        ("topk:ratio=0.01+q:bits=8", "different positions"),
        ("q:bits=8+zstd", "do not compress"),
        ("qsgd:levels=16", "norms"),
        ("sign", "own mean"),
        ("ternary", "own max"),
        ("threshold:tau=0.1+fixed:bits=8", "different set of positions"),
        ("powersgd:rank=4", "factorisation"),
        ("none", "float values"),
        ("fp16", "float values"),
        ("fixed:bits=8+zstd", "do not compress"),
        ("randk:ratio=0.1", "follow it with fixed"),
        ("fixed:bits=99", "bad codec spec"),
    ],
)
def test_refused_specs_say_why(spec, reason):
    ok, why = secagg_compatible(spec)
    assert not ok
    assert reason in why
    with pytest.raises(ValueError, match="secure aggregation"):
        SharedRangeCodec(spec)


def test_non_stochastic_rounding_is_flagged():
    ok, why = secagg_compatible("fixed:bits=8,rounding=floor")
    assert ok and "biased" in why


def _updates(n_clients, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "w": torch.tensor(rng.normal(0, 0.3, (20, 7)), dtype=torch.float32),
            "b": torch.tensor(rng.normal(0, 0.3, 7), dtype=torch.float32),
        }
        for _ in range(n_clients)
    ]


@pytest.mark.parametrize(
    "spec",
    [
        "fixed:bits=8,lo=-0.5,hi=0.5,rounding=stochastic",
        "randk:ratio=0.3+fixed:bits=6,lo=-0.5,hi=0.5,rounding=stochastic",
    ],
)
def test_end_to_end_float_path_is_within_the_quantisation_bound(spec):
    clients = list(range(9))
    clip, R = 1.0, 0.5
    ups = [clip_update(u, clip)[0] for u in _updates(len(clients))]  # clip before compressing
    assert all(update_norm(u) <= clip * (1 + 1e-6) for u in ups)
    codec = SharedRangeCodec(spec)
    n = codec.vector_len(ups[0])
    rnd = SecAggRound(clients, threshold=5, bits=codec.bits, vector_len=n, seed=4)
    sent = {}
    for c in clients:
        codes, _ = codec.encode(ups[c], round_seed=77, client_seed=1000 + c)
        assert codes.shape == (n,)
        sent[c] = rnd.mask(c, codes)
    dropped = {2, 6}
    received = {c: b for c, b in sent.items() if c not in dropped}
    total, _ = rnd.unmask_sum(received, dropped=dropped)
    mean = codec.decode_mean(total, len(received), ups[0], round_seed=77)
    for k in ups[0]:
        plain = torch.stack([ups[c][k].clamp(-R, R) for c in received]).double().mean(0)
        got = mean[k].double()
        assert got.shape == plain.shape
        if codec.ratio is None:
            assert (got - plain).abs().max() <= codec.error_bound() + 1e-6
        else:
            kept = got != 0
            assert 0.2 < kept.double().mean() < 0.45  # ~ratio of the positions, same for all
            assert (got[kept] - plain[kept]).abs().max() <= codec.error_bound() + 1e-6
    # The bound is not vacuous: it is far below the spread of the values.
    assert codec.error_bound() < 0.05


def test_stochastic_codes_are_unbiased():
    codec = SharedRangeCodec("fixed:bits=2,lo=-1,hi=1,rounding=stochastic")
    x = {"v": torch.full((20_000,), 0.3)}
    codes, _ = codec.encode(x, round_seed=0, client_seed=5)
    est = codec.decode_mean(codes.astype(np.int64), 1, x, round_seed=0)["v"]
    assert abs(float(est.mean()) - 0.3) < 0.01
    floor = SharedRangeCodec("fixed:bits=2,lo=-1,hi=1,rounding=floor")
    c2, _ = floor.encode(x, round_seed=0, client_seed=5)
    assert (
        abs(float(floor.decode_mean(c2.astype(np.int64), 1, x, round_seed=0)["v"].mean()) - 0.3)
        > 0.1
    )


def test_randk_positions_are_shared_and_rounding_noise_is_not():
    codec = SharedRangeCodec("randk:ratio=0.2+fixed:bits=8,lo=-1,hi=1,rounding=stochastic")
    x = {"v": torch.linspace(-0.9, 0.9, 500)}
    a, _ = codec.encode(x, round_seed=3, client_seed=1)
    b, _ = codec.encode(x, round_seed=3, client_seed=2)
    c, _ = codec.encode(x, round_seed=4, client_seed=1)
    assert a.shape == b.shape == (100,)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1 and (a != b).any()  # same positions
    assert np.abs(a.astype(int) - c.astype(int)).max() > 1  # new round, new positions


def test_error_feedback_keeps_the_residual_on_the_client():
    codec = SharedRangeCodec("ef+randk:ratio=0.5+fixed:bits=4,lo=-1,hi=1,rounding=stochastic")
    x = {"v": torch.linspace(-0.5, 0.5, 40)}
    codes, st = codec.encode(x, round_seed=1, client_seed=1)
    rec = codec.decode_sum(codes.astype(np.int64), 1, x, round_seed=1)["v"].double()
    np.testing.assert_allclose(
        st["residual"]["v"] + rec.numpy(), x["v"].double().numpy(), atol=1e-6
    )
    _, st2 = codec.encode(x, round_seed=2, client_seed=1, state=st)
    assert not np.allclose(st2["residual"]["v"], st["residual"]["v"])


def test_dp_on_a_secure_sum_uses_the_quantised_sensitivity():
    from fedpress.privacy.dp import dp_mean_from_sum, secagg_sensitivity

    codec = SharedRangeCodec("fixed:bits=4,lo=-0.5,hi=0.5,rounding=stochastic")
    clip = 1.0
    u = {"w": torch.tensor(np.random.default_rng(1).normal(0, 1, 2000), dtype=torch.float32)}
    cu, _ = clip_update(u, clip)
    codes, _ = codec.encode(cu, round_seed=0, client_seed=0)
    dec = codec.decode_sum(codes.astype(np.int64), 1, cu, round_seed=0)
    sens = secagg_sensitivity(clip, codec.error_bound(), codec.vector_len(cu))
    assert update_norm(dec) > clip  # quantisation pushed the norm past the client's clip ...
    assert update_norm(dec) <= sens  # ... but not past the stated sensitivity
    zero = {"w": torch.zeros(100_000)}
    mean, meas = dp_mean_from_sum(
        zero, sensitivity=sens, noise_multiplier=0.5, denominator=5, seed=1, round=3
    )
    assert float(mean["w"].double().std() * 5) == pytest.approx(0.5 * sens, rel=0.02)
    assert meas["dp_noise_std"] == pytest.approx(0.5 * sens)


def test_q_with_a_shared_scale_sums_exactly_on_the_agreed_range():
    import numpy as np
    import torch

    from fedpress.privacy.codes import SharedRangeCodec

    c = SharedRangeCodec("q:bits=8")
    assert c.shared_scale and c.rounding == "stochastic"
    c.set_range(0.5)
    ups = [{"w": torch.tensor([0.2, -0.4, 0.1])}, {"w": torch.tensor([-0.1, 0.3, 0.45])}]
    codes = [c.encode(u, round_seed=1, client_seed=i)[0] for i, u in enumerate(ups)]
    mean = c.decode_mean(sum(x.astype(np.int64) for x in codes), 2, ups[0], round_seed=1)
    want = (ups[0]["w"] + ups[1]["w"]) / 2
    assert float((mean["w"] - want).abs().max()) <= c.error_bound()
    with pytest.raises(ValueError, match="positive"):
        c.set_range(0.0)
    with pytest.raises(ValueError, match="fixed range"):
        SharedRangeCodec("fixed:bits=8").set_range(1.0)


def _heavy_updates(n_clients, seed=0):
    rng = np.random.default_rng(seed)
    # a two-layer "model" whose second layer has 20x larger coordinates, with heavy tails
    return [{"a": torch.from_numpy(rng.standard_t(2, 3000).astype(np.float32) * 0.01),
             "b": torch.from_numpy(rng.standard_t(2, 200).astype(np.float32) * 0.2)} for _ in range(n_clients)]


@pytest.mark.parametrize("spec", ["rht+q:bits=6", "randk:ratio=0.5+rht+q:bits=6",
                                  "ef+rht:block=256+fixed:bits=8,lo=-0.2,hi=0.2,rounding=stochastic"])
def test_a_rotation_shared_by_the_round_sums_exactly(spec):
    codec = SharedRangeCodec(spec)
    assert codec.rht_block is not None
    if codec.shared_scale:
        codec.set_range(codec.dp_range(4.0, codec.vector_len(_heavy_updates(1)[0])))
    ups = [{k: v * 0.1 for k, v in u.items()} for u in _heavy_updates(5)]
    codes = [codec.encode(u, round_seed=3, client_seed=i)[0] for i, u in enumerate(ups)]
    total = sum(c.astype(np.int64) for c in codes)
    got = codec.decode_sum(total, 5, ups[0], round_seed=3)
    # the sum of each client's own decode (the rotation is linear, so decoding the sum = summing)
    one = [codec.decode_sum(c.astype(np.int64), 1, u, round_seed=3) for c, u in zip(codes, ups, strict=True)]
    for k in got:
        np.testing.assert_allclose(got[k].numpy(), sum(o[k] for o in one).numpy(), rtol=1e-4, atol=1e-5)
    # and a different round's rotation does not decode these codes
    other = codec.decode_sum(total, 5, ups[0], round_seed=4)
    assert not np.allclose(other["a"].numpy(), got["a"].numpy(), atol=1e-3)


def test_rotation_shrinks_the_dp_range_and_the_error_of_the_mean():
    ups = _heavy_updates(8)
    clip = 2.0
    errs = {}
    for spec in ("q:bits=4", "rht+q:bits=4"):
        codec = SharedRangeCodec(spec)
        dim = codec.vector_len(ups[0])
        codec.set_range(codec.dp_range(clip, dim))
        codes = [codec.encode(u, round_seed=1, client_seed=i, clip=clip)[0] for i, u in enumerate(ups)]
        clipped = [clip_update(u, clip)[0] for u in ups]
        want = np.concatenate([sum(c[k].double() for c in clipped).numpy() / 8 for k in ("a", "b")])
        got = codec.decode_mean(sum(c.astype(np.int64) for c in codes), 8, ups[0], round_seed=1)
        errs[spec] = np.linalg.norm(np.concatenate([got[k].double().numpy() for k in ("a", "b")]) - want)
        errs[spec, "range"] = codec.hi
    assert errs["rht+q:bits=4", "range"] == pytest.approx(4 * clip / np.sqrt(3200))
    assert errs["q:bits=4", "range"] == clip
    assert errs["rht+q:bits=4"] < 0.25 * errs["q:bits=4"]


def test_error_feedback_through_the_rotation_keeps_what_was_not_sent():
    codec = SharedRangeCodec("ef+randk:ratio=0.5+rht:block=64+q:bits=3")
    codec.set_range(0.05)  # narrow: the rotated values are clamped too, and that stays in the residual
    x = _heavy_updates(1, seed=2)[0]
    codes, st = codec.encode(x, round_seed=9, client_seed=1)
    rec = codec.decode_sum(codes.astype(np.int64), 1, x, round_seed=9)
    for k in x:
        np.testing.assert_allclose(st["residual"][k] + rec[k].double().numpy(), x[k].double().numpy(), atol=1e-5)


def test_rht_must_sit_right_before_the_quantiser():
    ok, why = secagg_compatible("rht+randk:ratio=0.5+q:bits=4")
    assert not ok and "right before" in why
    assert not secagg_compatible("rht+sign")[0]
