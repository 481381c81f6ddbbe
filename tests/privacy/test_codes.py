import numpy as np
import pytest
import torch

import fedpress
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


# ----------------------------------------------------------------------------- count sketch


def _sketch_updates(n_clients, d=6000, seed=0, shared=(11, 222, 3333, 4444, 5555)):
    """Clients whose updates share a few heavy coordinates (with client-specific sizes) over a
    small dense tail and one heavy coordinate of their own: the sum's heavy hitters are the shared
    ones."""
    rng = np.random.default_rng(seed)
    ups = []
    for _ in range(n_clients):
        x = rng.normal(0, 0.002, d)
        x[list(shared)] = rng.uniform(0.3, 0.5, len(shared)) * np.array([1, -1, 1, -1, 1])[: len(shared)]
        x[rng.integers(d)] += 0.2
        ups.append({"a": torch.from_numpy(x[:5000].astype(np.float32)).reshape(50, 100),
                    "b": torch.from_numpy(x[5000:].astype(np.float32))})
    return ups, np.array(shared)


@pytest.mark.parametrize("spec", ["sketch:cols=200,k=20+q:bits=8", "ef+sketch:ratio=0.01,rows=3+q:bits=4",
                                  "sketch:cols=50+fixed:bits=8,lo=-1,hi=1,rounding=stochastic"])
def test_sketch_specs_are_compatible(spec):
    ok, why = secagg_compatible(spec)
    assert ok and "count sketch" in why and "shared per round" in why, why


@pytest.mark.parametrize("spec, reason", [
    ("sketch:cols=100", "use [ef+]sketch"),
    ("randk:ratio=0.5+sketch:cols=100+q:bits=8", "without randk or rht"),
    ("sketch:cols=100+rht+q:bits=8", "without randk or rht"),
    ("sketch:cols=100+qsgd:levels=8", "norms"),
    ("sketch:cols=100+q:bits=8+zstd", "do not compress"),
    ("topk:ratio=0.1+sketch:cols=100+q:bits=8", "different positions"),
])
def test_sketch_specs_refused_say_why(spec, reason):
    ok, why = secagg_compatible(spec)
    assert not ok and reason in why, why
    with pytest.raises(ValueError, match="secure aggregation"):
        SharedRangeCodec(spec)


def test_sketch_vector_len_is_rows_by_cols_of_the_whole_update():
    c = SharedRangeCodec("sketch:cols=200,rows=3+q:bits=8")
    assert c.vector_len({"a": (50, 100), "b": (1000,)}) == 600
    assert c.vector_len({"a": (500, 1000)}) == 600  # whatever the model's size
    assert c.vector_len({"a": (20, 10), "b": (300,)}) == 500  # d <= R·C: the values themselves
    assert SharedRangeCodec("sketch:ratio=0.01+q:bits=8").vector_len({"a": (50, 100), "b": (1000,)}) == 5 * 60


def test_summed_sketch_codes_unsketch_to_the_sum_of_sketches():
    """5 clients: Σ codes decodes to unsketch(Σ sketches) within quantisation, and with k the
    sum's heavy hitters come back (each client's own top-k would not line up)."""
    ups, shared = _sketch_updates(5)
    for spec in ("sketch:cols=300,rows=5+q:bits=8", "sketch:cols=300,rows=5,k=5+q:bits=8"):
        codec = SharedRangeCodec(spec)
        codec.set_range(1.0)
        codes = [codec.encode(u, round_seed=3, client_seed=i)[0] for i, u in enumerate(ups)]
        assert all(c.shape == (1500,) for c in codes)
        total = sum(c.astype(np.int64) for c in codes)
        got = codec.decode_sum(total, 5, ups[0], round_seed=3)
        got = np.concatenate([got[k].double().numpy().ravel() for k in ("a", "b")])
        # the same from the float sketches: linear, so Σ sketch(x_i) = sketch(Σ x_i)
        vecs = [np.concatenate([u[k].double().numpy().ravel() for k in ("a", "b")]) for u in ups]
        sketches = sum(codec._sketch(v, 3) for v in vecs)
        np.testing.assert_allclose(sketches, codec._sketch(sum(vecs), 3), atol=1e-9)
        summed = codec.code_space_sum(total, 5, ups[0])
        assert np.abs(summed - sketches).max() <= 5 * codec.error_bound() + 1e-9  # quantisation only
        want = codec._unsketch(sketches, 6000, 3)
        assert np.abs(got - want).max() <= 5 * codec.error_bound() + 1e-6
        truth = sum(vecs)
        if codec.sketch.k:
            np.testing.assert_array_equal(np.flatnonzero(got), np.sort(shared))
            assert np.abs(got[shared] - truth[shared]).max() < 0.05
        # another round's hashes do not decode these codes
        other = codec.decode_sum(total, 5, ups[0], round_seed=4)
        assert not np.allclose(np.concatenate([other[k].numpy().ravel() for k in ("a", "b")]), got, atol=1e-2)


def test_sketch_through_masked_secure_aggregation_with_a_dropout():
    ups, shared = _sketch_updates(6, seed=1)
    codec = SharedRangeCodec("sketch:cols=300,k=5+fixed:bits=8,lo=-2,hi=2,rounding=stochastic")
    n = codec.vector_len(ups[0])
    rnd = SecAggRound(list(range(6)), threshold=4, bits=codec.bits, vector_len=n, seed=2)
    sent = {c: rnd.mask(c, codec.encode(ups[c], round_seed=8, client_seed=c)[0]) for c in range(6)}
    received = {c: b for c, b in sent.items() if c != 4}
    total, _ = rnd.unmask_sum(received, dropped={4})
    mean = codec.decode_mean(total, 5, ups[0], round_seed=8)
    flat = np.concatenate([mean[k].double().numpy().ravel() for k in ("a", "b")])
    np.testing.assert_array_equal(np.flatnonzero(flat), np.sort(shared))
    truth = sum(np.concatenate([ups[c][k].double().numpy().ravel() for k in ("a", "b")]) for c in received) / 5
    assert np.abs(flat[shared] - truth[shared]).max() < 0.03


def test_ef_sketch_is_server_side_the_client_keeps_no_residual():
    ups, _ = _sketch_updates(1, seed=2)
    ef, plain = SharedRangeCodec("ef+sketch:cols=300,k=10+q:bits=8"), SharedRangeCodec("sketch:cols=300,k=10+q:bits=8")
    assert ef.server_ef and not ef.ef and not plain.server_ef
    ok, why = secagg_compatible("ef+sketch:cols=300,k=10+q:bits=8")
    assert ok and "server-side error feedback" in why and "no residual" in why and "caution" not in why
    for c in (ef, plain):
        c.set_range(1.0)
    codes, st = ef.encode(ups[0], round_seed=5, client_seed=1)
    assert st == {}
    np.testing.assert_array_equal(codes, plain.encode(ups[0], round_seed=5, client_seed=1)[0])
    with pytest.raises(ValueError, match="server-side"):
        plain.accumulate(np.zeros(1500), None, ups[0], sketch_seed=1)


def _flat_of(d):
    return np.concatenate([v.double().numpy().ravel() for v in d.values()])


def test_server_error_sketch_follows_fetchsgd_recursion():
    """Over a few rounds, S_e ← S_e + mean; Δ = top-k(unsketch(S_e)); the buckets of Δ's
    coordinates zeroed in S_e (every row), recomputed by hand with the stage's own functions."""
    from fedpress.codecs.sketch import hash_tables, sketch_of, unsketch

    codec = SharedRangeCodec("ef+sketch:cols=40,rows=3,k=6+q:bits=8")
    template = {"w": (30, 10), "b": (50,)}  # d = 350 > R·C = 120
    rng = np.random.default_rng(0)
    tables = hash_tables(np.random.default_rng([9, 0x5C7]), 3)
    np.testing.assert_array_equal(tables, codec._tables(9))  # the run's hashes, as the codec draws them
    err, mine = None, np.zeros((3, 40))
    for _ in range(4):
        x = rng.normal(0, 0.01, 350)
        x[rng.choice(350, 4, replace=False)] += rng.choice([-1.0, 1.0], 4)
        mean = sketch_of(x, tables, 40)  # a round's mean sketch (the codec's own map, float64)
        delta, err, vel = codec.accumulate(mean.ravel(), err, template, sketch_seed=9)
        assert vel is None  # no momentum
        # by hand
        mine = mine + mean
        want = unsketch(mine, 350, tables, "median", 6).astype(np.float32)
        got = _flat_of(delta)
        np.testing.assert_array_equal(got, want)
        assert np.count_nonzero(got) == 6 and delta["w"].shape == (30, 10) and delta["w"].dtype == torch.float32
        hit = np.zeros((3, 40), bool)
        for j in np.flatnonzero(want):  # each applied coordinate's bucket in every row: its unit sketch
            e = np.zeros(350)
            e[j] = 1.0
            hit |= sketch_of(e, tables, 40) != 0
        assert hit.any(axis=1).all()
        # the applied step's sketch is gone from the error (every bucket where S(Δ) is nonzero is zero),
        # the rest is carried over untouched
        assert not err.reshape(3, 40)[sketch_of(want.astype(np.float64), tables, 40) != 0].any()
        mine[hit] = 0.0
        np.testing.assert_array_equal(err.reshape(3, 40), mine)
        # nothing applied is applied again: the error unsketches to 0 on Δ's coordinates
        assert not unsketch(mine, 350, tables)[np.flatnonzero(want)].any()


def test_server_error_feedback_small_model_is_exact_top_k_ef():
    """d ≤ R·C: the values travel as they are and the server's error feedback is exact top-k EF."""
    codec = SharedRangeCodec("ef+sketch:cols=100,rows=3,k=2+q:bits=8")
    template = {"w": (10,)}
    err, acc = None, np.zeros(10)
    for m in (np.arange(10) / 10.0, -np.ones(10) / 4, np.linspace(1, -1, 10)):
        delta, err, _ = codec.accumulate(m, err, template, sketch_seed=1)
        acc += m
        top = np.argsort(-np.abs(acc), kind="stable")[:2]
        want = np.zeros(10)
        want[top] = acc[top]
        np.testing.assert_allclose(delta["w"].numpy(), want, rtol=1e-6)
        acc[top] = 0.0
        np.testing.assert_allclose(err, acc)


def test_server_momentum_sketch_follows_fetchsgd_with_momentum():
    """sketch:...,momentum=ρ: S_u ← ρ·S_u + mean, S_e ← S_e + S_u, Δ = top-k(unsketch(S_e)), and the
    buckets of Δ zeroed in both S_e and S_u, recomputed by hand over 5 rounds."""
    from fedpress.codecs.sketch import sketch_of, unsketch

    codec = SharedRangeCodec("ef+sketch:cols=40,rows=3,k=6,momentum=0.9+q:bits=8")
    template = {"w": (30, 10), "b": (50,)}
    tables = codec._tables(9)
    rng = np.random.default_rng(1)
    err = vel = None
    e_mine, u_mine = np.zeros((3, 40)), np.zeros((3, 40))
    for _ in range(5):
        x = rng.normal(0, 0.01, 350)
        x[rng.choice(350, 4, replace=False)] += rng.choice([-1.0, 1.0], 4)
        mean = sketch_of(x, tables, 40)
        delta, err, vel = codec.accumulate(mean.ravel(), err, template, sketch_seed=9, velocity=vel)
        u_mine = 0.9 * u_mine + mean
        e_mine = e_mine + u_mine
        want = unsketch(e_mine, 350, tables, "median", 6).astype(np.float32)
        np.testing.assert_array_equal(_flat_of(delta), want)
        hit = np.zeros((3, 40), bool)
        for j in np.flatnonzero(want):
            unit = np.zeros(350)
            unit[j] = 1.0
            hit |= sketch_of(unit, tables, 40) != 0
        e_mine[hit] = 0.0
        u_mine[hit] = 0.0
        np.testing.assert_allclose(err.reshape(3, 40), e_mine, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(vel.reshape(3, 40), u_mine, rtol=1e-12, atol=1e-15)


def test_sketch_momentum_belongs_to_the_server():
    ok, why = secagg_compatible("sketch:cols=40,momentum=0.9+q:bits=8")
    assert not ok and "needs the server's error sketch" in why
    with pytest.raises(ValueError, match="server-side momentum"):
        fedpress.compress(np.ones(500, np.float32), "sketch:cols=40,momentum=0.9")
    assert fedpress.codec("sketch:cols=40,momentum=0.5").spec == "sketch:cols=40,momentum=0.5"


def test_secure_round_with_server_side_error_feedback():
    """SecureRound with ef+sketch: hashes from the run's sketch seed (the round seed changes, the
    heavy hitters still decode), the error sketch carried in and out, and under central DP the noise added to the mean
    sketch before it is accumulated (Δ still exactly k nonzeros)."""
    from fedpress.sim.privacy_round import SecureRound

    class _Acct:
        def step(self, *a):
            pass

        def epsilon(self):
            return 1.0

    ups, shared = _sketch_updates(4, seed=4)
    codec = SharedRangeCodec("ef+sketch:cols=300,k=5+q:bits=8")
    template = {k: tuple(v.shape) for k, v in ups[0].items()}
    codec.set_range(1.0)
    with pytest.raises(ValueError, match="sketch_seed"):
        SecureRound(codec, list(range(4)), template, threshold=None, neighbors=None, seed=1, round_seed=2)
    err = None
    for rnd, round_seed in enumerate((2, 3)):
        sr = SecureRound(codec, list(range(4)), template, threshold=None, neighbors=None, seed=rnd,
                         round_seed=round_seed, sketch_seed=77)
        sent = {c: sr.upload(c, ups[c], encode_seed=c, state=None) for c in range(4)}
        assert all(state == {} for _, state in sent.values())  # no client residual
        received = {c: blob for c, (blob, _) in sent.items()}
        mean, priv, _, _ = sr.aggregate(received, rnd, accountant=None, clip=None, noise=None, denominator=4,
                                        dp_seed=0, sketch_error=err)
        flat = _flat_of(mean)
        assert np.count_nonzero(flat) == 5
        np.testing.assert_array_equal(np.flatnonzero(flat), np.sort(shared))
        assert sr.sketch_error.shape == (codec.vector_len(template),)
        assert sr.round_seed == 77  # the codec's seed is the run's, not the round's
        if rnd:  # the same hashes both rounds (the run's seed): the error sketch adds up
            assert not np.array_equal(sr.sketch_error, err)
        err = sr.sketch_error
    # central DP: the noise is in the mean sketch, the accumulation is post-processing of it
    codec.set_range(codec.dp_range(1.0, codec.vector_len(template)))
    sr = SecureRound(codec, list(range(4)), template, threshold=None, neighbors=None, seed=5, round_seed=5,
                     sketch_seed=77)
    received = {c: sr.upload(c, ups[c], encode_seed=c, state=None, clip=1.0)[0] for c in range(4)}
    mean, priv, _, _ = sr.aggregate(received, 2, accountant=_Acct(), clip=1.0, noise=0.05, denominator=4,
                                    dp_seed=0, sketch_error=err)
    assert np.count_nonzero(_flat_of(mean)) == 5 and priv["dp_noise_std"] > 0
    assert not np.array_equal(sr.sketch_error, err)


def test_dp_clip_bounds_the_summed_sketch_not_only_the_update():
    """‖sketch(x)‖ is about √R·‖x‖: a clipped x is not enough. The clip applies to the sketch, what
    is quantised and summed, so the stated sensitivity holds in sketch space."""
    from fedpress.privacy.dp import secagg_sensitivity

    clip = 1.0
    codec = SharedRangeCodec("sketch:cols=500,rows=5+q:bits=8")
    rng = np.random.default_rng(3)
    u = {"w": torch.from_numpy(rng.normal(size=20_000).astype(np.float32))}
    cu, _ = clip_update(u, clip)  # ‖x‖ = C ...
    vec = cu["w"].double().numpy()
    assert np.linalg.norm(codec._sketch(vec, 0)) > 2.0 * clip  # ... but its sketch ≈ √5·C
    dim = codec.vector_len(cu)
    codec.set_range(codec.dp_range(clip, dim))
    assert codec.hi == clip
    codes, _ = codec.encode(cu, round_seed=0, client_seed=0, clip=clip)
    zero, _ = codec.encode({"w": torch.zeros(20_000)}, round_seed=0, client_seed=0, clip=clip)
    sent = codec.code_space_sum(codes.astype(np.int64), 1, cu)
    sens = secagg_sensitivity(clip, codec.error_bound(), dim)
    assert np.linalg.norm(sent) <= sens
    # one client's contribution to the sum moves by at most the sensitivity (replace by zero)
    assert np.linalg.norm(sent - codec.code_space_sum(zero.astype(np.int64), 1, cu)) <= sens
    assert np.linalg.norm(sent) > 0.9 * clip  # and the clip is not vacuous


def test_central_dp_noise_goes_into_sketch_space():
    """Under central DP the noise is added to the summed sketch and the top-k taken after it: the
    noisy mean still has exactly k nonzeros (noise added after unsketching would be dense)."""
    from fedpress.sim.privacy_round import SecureRound

    class _Acct:
        steps = 0

        def step(self, *a):
            self.steps += 1

        def epsilon(self):
            return 1.0

    ups, shared = _sketch_updates(4, seed=4)
    codec = SharedRangeCodec("sketch:cols=300,k=5+q:bits=8")
    template = {k: tuple(v.shape) for k, v in ups[0].items()}
    codec.set_range(codec.dp_range(1.0, codec.vector_len(template)))
    sr = SecureRound(codec, list(range(4)), template, threshold=None, neighbors=None, seed=1, round_seed=2)
    received = {c: sr.upload(c, ups[c], encode_seed=c, state=None, clip=1.0)[0] for c in range(4)}
    acct = _Acct()
    mean, priv, _, _ = sr.aggregate(received, 0, accountant=acct, clip=1.0, noise=0.05, denominator=4, dp_seed=0)
    flat = np.concatenate([mean[k].double().numpy().ravel() for k in ("a", "b")])
    assert np.count_nonzero(flat) == 5 and acct.steps == 1
    assert priv["dp_sensitivity"] > 1.0 and priv["dp_noise_std"] == pytest.approx(0.05 * priv["dp_sensitivity"])
    np.testing.assert_array_equal(np.flatnonzero(flat), np.sort(shared))
