"""Stage by stage: what each codec promises about its bytes and its values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fedpress
from fedpress.codecs import registry
from fedpress.codecs.spec import REGISTRY, canonical, parse_spec
from fedpress.wire.format import read_blob


def payload(spec: str, x, **kw) -> int:
    e = fedpress.codec(spec).encode_ex(x, **kw)
    return e.nbytes - e.header_bytes


def fields(spec: str, x, **kw) -> list[bytes]:
    return [bytes(f) for f in read_blob(fedpress.compress(x, spec, **kw)).fields]


RNG = np.random.default_rng(0)
X = RNG.normal(size=10_000).astype(np.float32)


# ----------------------------------------------------------------------------- registry & specs


def test_registry_documents_every_stage():
    reg = registry()
    assert set(reg) == set(REGISTRY) and len(reg) >= 15
    for name, help_ in reg.items():
        cls = REGISTRY[name]
        assert help_ and cls.__doc__, name
        if cls.role in ("transform", "terminal") and name != "none":
            assert "Error bound" in cls.__doc__, f"{name} does not document its error bound"
        for key, p in cls.params.items():
            assert p.help, (name, key)
            p.check(p.default)  # every default is valid


def test_spec_roundtrip_through_str():
    for spec in ["ef+topk:ratio=0.01+q:bits=4+zstd", "q:bits=4,block=16,mode=absmax,stochastic=1",
                 "fixed:bits=8,lo=-1,hi=1", "powersgd:rank=4,min_size=0", "zstd:level=19"]:
        c1 = canonical(parse_spec(spec))
        assert canonical(parse_spec(c1)) == c1
        stages = parse_spec(c1)
        assert [str(s) for s in stages] == c1.split("+")


def test_param_parsing():
    assert parse_spec("q:bits=8.0")[0].bits == 8
    assert parse_spec("q:stochastic=yes")[0].stochastic is True
    assert parse_spec("q:stochastic=off")[0].stochastic is False
    assert parse_spec("randk:unbiased=1")[0].unbiased is True
    assert parse_spec("topk")[0].ratio == REGISTRY["topk"].params["ratio"].default


def test_codec_object():
    c = fedpress.codec("ef+powersgd:rank=2")
    assert repr(c) == "Codec('ef+powersgd:rank=2')"
    assert c.stateful and c.error_feedback and not c.unbiased and c.init() == {}
    assert not fedpress.codec("q:bits=8").stateful
    assert fedpress.codec("none").raw and fedpress.codec("zstd").raw
    assert fedpress.codec("qsgd:levels=2").unbiased


# ----------------------------------------------------------------------------- casts


def test_fp16_saturates_and_bf16_rounds_like_torch():
    x = np.array([1e6, -1e6, 65504, 1 / 3, 1e-8], np.float32)
    y = fedpress.decompress(fedpress.compress(x, "fp16"))
    assert y[0] == 65504 and y[1] == -65504 and y[2] == 65504
    assert y[3] == np.float32(np.float16(1 / 3))
    t = torch.randn(5000) * torch.logspace(-30, 30, 5000)
    yb = fedpress.decompress(fedpress.compress(t, "bf16"))
    assert torch.equal(yb, t.bfloat16().float())  # round to nearest even, as torch does
    assert payload("fp16", X) == payload("bf16", X) == 2 * X.size


# ----------------------------------------------------------------------------- quantisers


@pytest.mark.parametrize("bits", range(1, 9))
def test_q_bits_and_scales(bits):
    n = X.size
    assert payload(f"q:bits={bits}", X) == math.ceil(n * bits / 8) + 8 * math.ceil(n / 256)
    if bits >= 2:
        assert payload(f"q:bits={bits},mode=absmax", X) == math.ceil(n * bits / 8) + 4 * math.ceil(n / 256)
    assert payload(f"q:bits={bits},block=0", X) == math.ceil(n * bits / 8) + 8


def test_q_error_shrinks_with_bits():
    errs = [np.linalg.norm(fedpress.decompress(fedpress.compress(X, f"q:bits={b}")) - X) for b in range(1, 9)]
    assert all(b < a for a, b in zip(errs, errs[1:], strict=False))
    assert errs[-1] / np.linalg.norm(X) < 0.01


def test_q_absmax_represents_zero_exactly():
    x = np.array([-3.0, 0.0, 1.0, 0.0, 2.5], np.float32)
    y = fedpress.decompress(fedpress.compress(x, "q:bits=4,mode=absmax"))
    assert y[1] == 0 and y[3] == 0
    assert abs(y[0] + 3) < 1e-6


def test_q_target_picks_the_fewest_bits():
    x = RNG.normal(size=4096).astype(np.float32)
    nx = np.linalg.norm(x)
    for target in (0.3, 0.1, 0.02, 0.005):
        errs = {b: np.linalg.norm(fedpress.decompress(fedpress.compress(x, f"q:bits={b}")) - x) / nx
                for b in range(1, 9)}
        want = min([b for b, e in errs.items() if e <= target] or [8])
        y = fedpress.decompress(fedpress.compress(x, f"q:bits=8,target={target}"))
        np.testing.assert_array_equal(y, fedpress.decompress(fedpress.compress(x, f"q:bits={want}")))
        assert payload(f"q:bits=8,target={target}", x) == 1 + payload(f"q:bits={want}", x)


def test_odd_widths_before_zstd_travel_one_per_byte_and_decode_identically():
    for spec in ("q:bits=5", "q:bits=3,mode=absmax", "qsgd:levels=16", "fixed:bits=6"):
        plain = fedpress.decompress(fedpress.compress(X, spec, seed=3))
        packed = fedpress.decompress(fedpress.compress(X, spec + "+zstd", seed=3))
        np.testing.assert_array_equal(plain, packed)
    assert len(fedpress.compress(X, "qsgd:levels=16+zstd")) < 0.6 * len(fedpress.compress(X, "qsgd:levels=16"))


@pytest.mark.parametrize("levels, bits", [(1, 2), (2, 3), (3, 3), (4, 4), (16, 6), (127, 8)])
def test_qsgd_bit_width(levels, bits):
    n = X.size
    assert payload(f"qsgd:levels={levels}", X, seed=1) == math.ceil(n * bits / 8) + 4 * math.ceil(n / 512)


def test_sign_and_ternary_sizes():
    n = X.size
    assert payload("sign", X) == 4 + math.ceil(n / 8)
    assert payload("sign:block=100", X) == 4 * 100 + math.ceil(n / 8)
    assert payload("ternary", X, seed=1) == 4 + math.ceil(n / 5)
    y = fedpress.decompress(fedpress.compress(X, "sign"))
    assert set(np.unique(np.abs(y))) == {np.float32(np.abs(X).mean(dtype=np.float64))}


def test_fixed_rounding_modes():
    x = np.array([0.3, 0.49, 0.51], np.float32)
    floor = fedpress.decompress(fedpress.compress(x, "fixed:bits=1,lo=0,hi=1"))
    near = fedpress.decompress(fedpress.compress(x, "fixed:bits=1,lo=0,hi=1,rounding=nearest"))
    assert floor.tolist() == [0.0, 0.0, 0.5] and near.tolist() == [0.5, 0.5, 0.5]
    sto = np.mean([fedpress.decompress(fedpress.compress(np.full(200, 0.3, np.float32),
                                                         "fixed:bits=1,lo=0,hi=1,rounding=stochastic", seed=s))
                   for s in range(20)])
    assert abs(sto - 0.3) < 0.02


# ----------------------------------------------------------------------------- sparsifiers


def test_topk_index_modes():
    f = fields("topk:ratio=0.01", X)
    assert f[0][0] == 0  # sparse: delta varints
    assert 100 <= len(f[0]) - 1 < 1.5 * 100  # 1-2 bytes per gap of ~100
    g = fields("topk:ratio=0.6", X)
    assert g[0][0] == 1 and len(g[0]) == 1 + math.ceil(X.size / 8)  # dense: a bitmap
    assert len(f[1]) == 4 * 100  # the kept values, as float32 when nothing follows


def test_topk_keeps_the_largest():
    x = np.array([0.1, -5.0, 0.2, 3.0, -0.3, 0.0], np.float32)
    y = fedpress.decompress(fedpress.compress(x, "topk:ratio=0.33"))  # ⌈1.98⌉ = 2
    np.testing.assert_array_equal(y, [0, -5, 0, 3, 0, 0])


def test_randk_sends_no_indices():
    for ratio in (0.01, 0.3):
        k = math.ceil(ratio * X.size)
        assert payload(f"randk:ratio={ratio}", X, seed=5) == 4 * k
    a = fedpress.decompress(fedpress.compress(X, "randk:ratio=0.01", seed=5))
    b = fedpress.decompress(fedpress.compress(X, "randk:ratio=0.01", seed=6))
    assert not np.array_equal(a != 0, b != 0)
    u = fedpress.decompress(fedpress.compress(X, "randk:ratio=0.01,unbiased=1", seed=5))
    np.testing.assert_array_equal(u[a != 0], a[a != 0] * np.float32(X.size / 100))


def test_threshold_count_varies():
    x = np.array([0.5, -0.05, 2.0, -0.7, 0.01], np.float32)
    y = fedpress.decompress(fedpress.compress(x, "threshold:tau=0.5"))
    np.testing.assert_array_equal(y, np.array([0.5, 0, 2.0, -0.7, 0], np.float32))
    assert fields("threshold:tau=0.5", x)[0] == b"\x01\x0d"  # bitmap mode: bits 0, 2, 3
    assert fedpress.decompress(fedpress.compress(x, "threshold:tau=10")).tolist() == [0.0] * 5


def test_sparsifier_values_flow_into_the_next_stage():
    assert payload("topk:ratio=0.01+q:bits=8", X) < 0.5 * payload("topk:ratio=0.01", X)
    assert payload("randk:ratio=0.1+fp16", X, seed=1) == 2 * 1000


# ----------------------------------------------------------------------------- low rank


def test_lowrank_pass_through_rule():
    for shape in [(100,), (10, 10), (3, 2000)]:  # 1-D, under min_size, r(m+n) >= mn
        x = RNG.normal(size=shape).astype(np.float32)
        for spec in ("svd:rank=4", "powersgd:rank=4", "svd:rank=4,min_size=0"):
            if spec.endswith("min_size=0") and shape == (10, 10):
                continue
            y = fedpress.decompress(fedpress.compress(x, spec))
            np.testing.assert_array_equal(y, x)
            assert payload(spec, x) == 4 * x.size


@pytest.mark.parametrize("shape", [(40, 30), (200, 300), (16, 8, 3, 3)])
def test_svd_is_the_best_rank_r_approximation(shape):
    x = RNG.normal(size=shape).astype(np.float32)
    x += 3 * np.outer(RNG.normal(size=shape[0]), RNG.normal(size=x[0].size)).reshape(shape).astype(np.float32)
    m = shape[0]
    n = x.size // m
    y = fedpress.decompress(fedpress.compress(x, "svd:rank=3,min_size=0", seed=1))
    sv = np.linalg.svd(x.reshape(m, n).astype(np.float64), compute_uv=False)
    best = math.sqrt(float(np.sum(sv[3:] ** 2)))
    assert np.linalg.norm((y - x).astype(np.float64)) <= 1.02 * best
    assert payload("svd:rank=3,min_size=0", x, seed=1) == 4 * 3 * (m + n)


def test_powersgd_factors():
    x = RNG.normal(size=(50, 80)).astype(np.float32)
    f = fields("powersgd:rank=3,min_size=0", x, seed=2)
    P = np.frombuffer(f[0], "<f4").reshape(50, 3)
    Q = np.frombuffer(f[1], "<f4").reshape(80, 3)
    np.testing.assert_allclose(P.T @ P, np.eye(3), atol=1e-5)  # P is orthonormal
    np.testing.assert_allclose(Q, x.T @ P, rtol=1e-4, atol=1e-4)  # Q = Mᵀ P
    y = fedpress.decompress(fedpress.compress(x, "powersgd:rank=3,min_size=0", seed=2))
    np.testing.assert_allclose(y, P @ Q.T, rtol=1e-5, atol=1e-6)


def test_powersgd_state_is_per_tensor():
    c = fedpress.codec("ef+powersgd:rank=2,min_size=0")
    sd = {"a": RNG.normal(size=(20, 30)).astype(np.float32), "b": RNG.normal(size=(10, 40)).astype(np.float32),
          "bias": np.zeros(5, np.float32)}
    _, st = c.encode(sd, c.init())
    keys = sorted(st)
    assert [k for k in keys if k.startswith("ef/")] == ["ef/a", "ef/b", "ef/bias"]
    q = {k: v.shape for k, v in st.items() if not k.startswith("ef/")}
    assert sorted(q.values()) == [(30, 2), (40, 2)]


# ----------------------------------------------------------------------------- error feedback


def test_ef_state_survives_skipped_tensors_and_rounds():
    c = fedpress.codec("ef+topk:ratio=0.1")
    a, b = RNG.normal(size=50).astype(np.float32), RNG.normal(size=60).astype(np.float32)
    _, st = c.encode({"a": a, "b": b}, c.init())
    _, st2 = c.encode({"a": a}, st)  # b sat this round out
    np.testing.assert_array_equal(st2["ef/b"], st["ef/b"])
    assert not np.array_equal(st2["ef/a"], st["ef/a"])
    # a residual of the wrong shape (a model that changed) is ignored, not broadcast
    _, st3 = c.encode({"a": np.ones(7, np.float32)}, st2)
    assert st3["ef/a"].shape == (7,)


def test_ef_first_round_equals_the_inner_codec():
    x = RNG.normal(size=500).astype(np.float32)
    for inner in ("topk:ratio=0.1+q:bits=4", "sign", "qsgd:levels=4"):
        a = fedpress.decompress(fedpress.compress(x, "ef+" + inner, seed=3))
        b = fedpress.decompress(fedpress.compress(x, inner, seed=3))
        np.testing.assert_array_equal(a, b)
