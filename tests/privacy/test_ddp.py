import math

import dp_accounting
import numpy as np
import pytest
import torch

from fedpress.privacy.codes import SharedRangeCodec
from fedpress.privacy.ddp import (
    DistributedAccountant,
    DistributedNoise,
    ddg_zcdp,
    ddp_noise_for_target,
    discrete_gaussian,
)
from fedpress.privacy.secagg import SecAggError
from fedpress.sim.privacy_round import SecureRound


@pytest.mark.parametrize("sigma", [0.6, 2.5, 40.0])
def test_discrete_gaussian_matches_its_pmf(sigma):
    n = 200_000
    x = discrete_gaussian(sigma, n, np.random.default_rng(1))
    assert x.dtype == np.int64 and x.shape == (n,)
    support = np.arange(-int(12 * sigma) - 5, int(12 * sigma) + 6)
    pmf = np.exp(-(support.astype(float) ** 2) / (2 * sigma**2))
    pmf /= pmf.sum()
    # mean and variance of the exact distribution (the discrete variance is below sigma^2 for small
    # sigma, which a continuous Gaussian rounded to integers would not give)
    var = float((pmf * support**2).sum())
    assert abs(x.mean()) < 5 * math.sqrt(var / n)
    assert abs(x.var() / var - 1) < 0.02
    # frequencies of the central values within 5 standard errors of the pmf
    for v in range(-2, 3):
        p = pmf[support == v][0]
        assert abs((x == v).mean() - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-4


def test_discrete_gaussian_rejects_bad_sigma():
    with pytest.raises(ValueError, match="sigma"):
        discrete_gaussian(float("nan"), 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="sigma"):
        discrete_gaussian(-1.0, 3, np.random.default_rng(0))


def test_ddg_bound_is_the_gaussian_one_when_tau_vanishes_and_grows_for_small_sigma():
    (r1, x1), (r2, x2), (r3, x3) = ddg_zcdp(l2=20.0, l1=200.0, dim=100, sigma=10.0, n=8)
    assert r1 == pytest.approx(20.0**2 / (2 * 8 * 100.0)) and x1 == pytest.approx(0.0, abs=1e-300)
    assert r2 == pytest.approx(r1) and r3 == pytest.approx(r1)
    # sigma = 0.5 code steps: a sum of discrete Gaussians is visibly not one; tau > 0
    (s1, y1), (s2, _), (s3, _) = ddg_zcdp(l2=1.0, l1=10.0, dim=100, sigma=0.5, n=8)
    assert y1 > 0 and s2 > 1.0 / (2 * 8 * 0.25) and s3 > 1.0 / (2 * 8 * 0.25)
    with pytest.raises(ValueError, match="sigma >= 0.5"):
        ddg_zcdp(l2=1.0, l1=1.0, dim=1, sigma=0.4, n=2)


def test_accountant_composes_rounds_like_dp_accounting():
    acct = DistributedAccountant(1e-6)
    bounds = ddg_zcdp(l2=50.0, l1=500.0, dim=100, sigma=25.0, n=4)  # rho = 0.5 per round
    for _ in range(7):
        acct.step(bounds)
    ref = dp_accounting.rdp.RdpAccountant()
    ref.compose(dp_accounting.dp_event.ZCDpEvent(7 * 0.5, 0.0))
    assert acct.steps == 7
    assert acct.epsilon() == pytest.approx(ref.get_epsilon(1e-6), rel=1e-9)
    more = DistributedAccountant(1e-6)
    for _ in range(8):
        more.step(bounds)
    assert more.epsilon() > acct.epsilon()
    none = DistributedAccountant(1e-6)
    none.step(ddg_zcdp(l2=1.0, l1=1.0, dim=1, sigma=0.0, n=2))
    assert none.epsilon() == math.inf


def test_noise_for_target_meets_the_target():
    z = ddp_noise_for_target(4.0, 1e-5, 30)
    acct = DistributedAccountant(1e-5)
    for _ in range(30):
        acct.step(DistributedNoise(clip=1.0, noise_multiplier=z, min_clients=5, scale=2 / 2**8, lo=-1.0,
                                   dim=1000, bits=8, n=10).zcdp())
    assert 3.9 < acct.epsilon() <= 4.0 + 1e-9


@pytest.mark.parametrize("spec", ["q:bits=6", "fixed:bits=5,lo=-0.31,hi=0.5,rounding=stochastic",
                                  "rht:block=16+q:bits=6"])
def test_sensitivity_bounds_the_codes_distance_from_a_zero_update(spec):
    codec = SharedRangeCodec(spec)
    clip, d = 1.0, 64
    if codec.shared_scale:
        # with rht the DP range (4C/sqrt(d) = 0.5): rotated spikes are clamped, which only shrinks
        codec.set_range(codec.dp_range(clip, d) if codec.rht_block else 0.4)
    dn = DistributedNoise(clip=clip, noise_multiplier=1.0, min_clients=2, scale=codec.scale, lo=codec.lo,
                          dim=d, bits=codec.bits, n=4)
    rng = np.random.default_rng(0)
    zero, _ = codec.encode({"w": torch.zeros(d)}, round_seed=1, client_seed=0)
    worst = 0.0
    for i in range(300):
        # norm-C updates of every shape: spread, spiky (clamped at the range), single-coordinate
        x = rng.standard_normal(d) * (rng.random(d) < rng.random())
        x = x / (np.linalg.norm(x) or 1.0) * clip * 3
        codes, _ = codec.encode({"w": torch.from_numpy(x.astype(np.float32))}, round_seed=1, client_seed=i,
                                clip=clip)
        for z in (zero, np.full(d, round(-codec.lo / codec.scale))):
            worst = max(worst, float(np.linalg.norm(codes.astype(float) - z.astype(float))))
    assert worst <= dn.l2
    assert worst > 0.5 * clip / codec.scale  # the bound is not vacuous


def _round(codec, n=6, dim=40, z=1.0, threshold=None, seed=0):
    online = list(range(n))
    template = {"w": (dim,)}
    sr = SecureRound(codec, online, template, threshold=threshold, neighbors=None, seed=seed, round_seed=7,
                     distributed=(1.0, z))
    return sr, online, template


def test_noisy_sum_is_read_back_exactly_even_when_codes_go_negative():
    codec = SharedRangeCodec("q:bits=2")  # 4 levels: the noise pushes most noisy codes out of [0, 4)
    codec.set_range(1.0)
    sr, online, template = _round(codec, n=5, z=2.0)
    rng = np.random.default_rng(3)
    ups = {c: {"w": torch.from_numpy((rng.standard_normal(40) * 0.1).astype(np.float32))} for c in online}
    received, exact = {}, np.zeros(40, np.int64)
    for c in online:
        received[c], _ = sr.upload(c, ups[c], encode_seed=100 + c, state=None, clip=1.0)
        codes, _ = codec.encode(ups[c], round_seed=7, client_seed=100 + c, clip=1.0)
        noise = sr.noise.noisy(np.zeros_like(codes), np.random.default_rng([100 + c, 0xDD9]))
        # the same draw the upload made: the noise alone is (0 + N) mod 2^w, centred again here
        w = sr.noise.width
        noise = ((noise + (1 << (w - 1))) % (1 << w)) - (1 << (w - 1))
        exact += codes.astype(np.int64) + noise
    assert (exact < 0).any() or (exact > 5 * 3).any()
    total, _ = sr.sa.unmask_sum(received, set())
    assert np.array_equal(sr.noise.centred_sum(total, 5), exact)


def test_distributed_round_adds_the_promised_noise_and_steps_the_accountant():
    codec = SharedRangeCodec("q:bits=8")
    codec.set_range(1.0)
    n, dim = 6, 4000
    rng = np.random.default_rng(5)
    ups = {c: {"w": torch.from_numpy((rng.standard_normal(dim) * 0.005).astype(np.float32))} for c in range(n)}
    true_mean = sum(u["w"].double() for u in ups.values()) / n
    sr, online, template = _round(codec, n=n, dim=dim, z=0.5, threshold=4)
    received = {c: sr.upload(c, ups[c], encode_seed=c, state=None, clip=1.0)[0] for c in online}
    acct = DistributedAccountant(1e-5)
    mean, priv, _, _ = sr.aggregate(received, 0, accountant=acct, clip=1.0, noise=0.5, denominator=n, dp_seed=0)
    assert priv["dp_mode"] == "distributed" and priv["dp_min_clients"] == 4
    assert acct.steps == 1 and priv["dp_epsilon"] == acct.epsilon() < math.inf
    err = (mean["w"].double() - true_mean).numpy()
    # noise of the mean: z * l2 * scale / sqrt(t) * sqrt(n) / n (rounding adds <= scale / sqrt(n))
    expect = 0.5 * sr.noise.l2 * codec.scale / math.sqrt(4) * math.sqrt(n) / n
    assert priv["dp_noise_std_mean"] == pytest.approx(expect)
    assert 0.9 * expect < err.std() < 1.1 * expect + codec.scale
    assert abs(err.mean()) < 5 * expect / math.sqrt(dim)


def test_too_few_survivors_are_never_unmasked():
    codec = SharedRangeCodec("q:bits=8")
    codec.set_range(1.0)
    sr, online, _ = _round(codec, n=6, threshold=5)
    received = {c: sr.upload(c, {"w": torch.zeros(40)}, encode_seed=c, state=None, clip=1.0)[0] for c in online[:4]}
    with pytest.raises(SecAggError, match="threshold"):
        sr.sa.unmask_sum(received, set(online[4:]))
    with pytest.warns(UserWarning, match="secure aggregation failed"):
        mean, priv, _, _ = sr.aggregate(received, 0, accountant=DistributedAccountant(1e-5), clip=1.0,
                                        noise=1.0, denominator=6, dp_seed=0)
    assert mean is None and priv == {"secagg_failed": True}


def test_range_without_zero_is_refused():
    with pytest.raises(ValueError, match="range holding 0"):
        DistributedNoise(clip=1.0, noise_multiplier=1.0, min_clients=2, scale=0.01, lo=0.1, dim=10, bits=8, n=4)


def test_clip_applies_to_update_plus_residual_and_keeps_the_remainder():
    codec = SharedRangeCodec("ef+q:bits=8")
    codec.set_range(1.0)
    up = {"w": torch.full((100,), 0.1)}  # norm 1.0
    state = {"residual": {"w": np.full(100, 0.3)}}  # norm 3.0 carried from earlier rounds
    codes, new = codec.encode(up, round_seed=0, client_seed=0, state=state, clip=1.0)
    dec = codes.astype(float) * codec.scale + codec.lo
    # what is sent is bounded by the clip (+ rounding), not by 1 + 3
    assert np.linalg.norm(dec) <= 1.0 + math.sqrt(100) * codec.scale
    # nothing is lost: what was not sent stays in the residual
    np.testing.assert_allclose(new["residual"]["w"] + dec, 0.4, atol=1e-6)
