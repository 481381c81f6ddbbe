import math

import dp_accounting
import numpy as np
import pytest
import torch

import fedpress
from fedpress.fl.aggregators import DecodingFactory, SumFactory
from fedpress.privacy.dp import (
    Accountant,
    DPFactory,
    clip_update,
    local_dp,
    noise_for_target,
    update_norm,
)


def test_clip_update_bounds_the_global_norm():
    rng = np.random.default_rng(0)
    for scale in (0.01, 1.0, 100.0):
        u = {
            "a": torch.tensor(rng.normal(0, scale, (30, 4))),
            "b": torch.tensor(rng.normal(0, scale, 5)),
        }
        c, norm = clip_update(u, 1.5)
        assert norm == pytest.approx(update_norm(u))
        assert update_norm(c) <= 1.5 * (1 + 1e-9)
        if norm <= 1.5:
            assert all(torch.equal(c[k], u[k]) for k in u)
        else:
            assert update_norm(c) == pytest.approx(1.5)
            assert torch.allclose(
                c["a"] / u["a"], torch.full_like(u["a"], 1.5 / norm)
            )  # direction kept
    with pytest.raises(ValueError):
        clip_update(u, 0.0)


def test_server_clip_bounds_each_contribution():
    dp = DPFactory(clip=1.0, noise_multiplier=0.0, expected_clients=3)
    p = dp.create()
    for v in (100.0, -50.0, 0.1):
        p.accept({"w": torch.full((4,), v)})
    mean, meas = p.result()
    want = (torch.full((4,), 0.5) - 0.5 + 0.1) / 3
    assert torch.allclose(mean["w"], want, atol=1e-6)
    assert meas["dp_clipped_fraction"] == pytest.approx(2 / 3)
    assert meas["dp_denominator"] == 3


def test_noise_std_matches_sigma():
    z, C, m = 0.8, 2.5, 4
    dp = DPFactory(clip=C, noise_multiplier=z, seed=1, expected_clients=m)
    p = dp.create()
    for _ in range(m):
        p.accept({"w": torch.zeros(200_000)})
    mean, meas = p.result()
    assert meas["dp_noise_std"] == pytest.approx(z * C)
    assert float(mean["w"].double().std() * m) == pytest.approx(z * C, rel=0.01)
    assert float(mean["w"].double().mean()) == pytest.approx(0.0, abs=0.01)
    # A new round draws new noise; the same seed replays it.
    again = DPFactory(clip=C, noise_multiplier=z, seed=1, expected_clients=m).create()
    again.accept({"w": torch.zeros(200_000)})
    assert torch.equal(again.result()[0]["w"], mean["w"])
    p2 = dp.create()
    p2.accept({"w": torch.zeros(200_000)})
    assert not torch.equal(p2.result()[0]["w"], mean["w"])


def test_dp_stacks_under_decoding_of_compressed_blobs():
    dp = DPFactory(SumFactory(), clip=1.0, noise_multiplier=0.0, expected_clients=2)
    proc = DecodingFactory(dp).create()
    for v in (3.0, 0.1):
        proc.accept(fedpress.compress({"w": torch.full((16,), v)}, "q:bits=8"))
    mean, meas = proc.result()
    assert meas["decoded_bytes"] > 0 and meas["dp_clipped_fraction"] == 0.5
    assert torch.allclose(mean["w"], torch.full((16,), (0.25 + 0.1) / 2), atol=1e-3)


def test_adaptive_clip_tracks_the_target_quantile():
    rng = np.random.default_rng(0)
    dp = DPFactory(
        clip=0.05,
        noise_multiplier=0.0,
        seed=0,
        adaptive=True,
        expected_clients=50,
        target_quantile=0.5,
        clip_learning_rate=0.5,
        clipped_count_stddev=0.5,
    )
    for _ in range(60):
        p = dp.create()
        for norm in rng.uniform(0, 2, 50):
            p.accept({"w": torch.tensor([float(norm)])})
        p.result()
    assert 0.8 < dp.clip < 1.2  # the median of U(0, 2) is 1
    # The privacy budget is split: the update noise grows so the pair costs z.
    ad = DPFactory(clip=1.0, noise_multiplier=1.0, adaptive=True, expected_clients=100)
    assert ad.value_noise_multiplier > 1.0
    assert ad.value_noise_multiplier**-2 + (2 * ad.count_stddev) ** -2 == pytest.approx(1.0)
    with pytest.raises(ValueError, match="too small"):
        DPFactory(clip=1.0, noise_multiplier=1.0, adaptive=True, expected_clients=10)


@pytest.mark.parametrize("method", ["rdp", "pld"])
def test_epsilon_equals_dp_accounting(method):
    z, q, delta, rounds = 1.1, 0.05, 1e-5, 60
    acc = Accountant(z, q, delta, method=method)
    for _ in range(rounds):
        acc.step()
    ref = (
        dp_accounting.rdp.RdpAccountant() if method == "rdp" else dp_accounting.pld.PLDAccountant()
    )
    # The library's own composition of the same mechanism, built here independently.
    ref.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds)
    assert acc.epsilon() == pytest.approx(ref.get_epsilon(delta), rel=1e-6)


def test_epsilon_grows_with_rounds_and_shrinks_with_noise():
    acc = Accountant(1.0, 0.1, 1e-5)
    eps = []
    for _ in range(4):
        acc.step(25)
        eps.append(acc.epsilon())
    assert eps == sorted(eps) and eps[0] < eps[-1]
    by_z = []
    for z in (0.7, 1.0, 2.0, 4.0):
        a = Accountant(z, 0.1, 1e-5)
        a.step(100)
        by_z.append(a.epsilon())
    assert by_z == sorted(by_z, reverse=True) and by_z[0] > by_z[-1]
    assert Accountant(1.0, 0.1, 1e-5).epsilon() == 0.0
    no_noise = Accountant(0.0, 0.1, 1e-5)
    no_noise.step()
    assert math.isinf(no_noise.epsilon())


def test_dp_factory_reports_epsilon_per_round():
    acc = Accountant(1.0, 0.1, 1e-5)
    dp = DPFactory(clip=1.0, noise_multiplier=1.0, expected_clients=2, accountant=acc)
    eps = []
    for _ in range(3):
        p = dp.create()
        p.accept({"w": torch.zeros(3)})
        eps.append(p.result()[1]["dp_epsilon"])
    assert eps == sorted(eps) and eps[0] > 0 and acc.steps == 3


def test_noise_for_target_hits_the_target():
    target, delta, q, rounds = 3.0, 1e-5, 0.02, 300
    z = noise_for_target(target, delta, q, rounds)
    a = Accountant(z, q, delta)
    a.step(rounds)
    assert target * 0.98 <= a.epsilon() <= target
    b = Accountant(z * 0.99, q, delta)  # noticeably less noise overshoots
    b.step(rounds)
    assert b.epsilon() > target
    with pytest.raises(ValueError):
        noise_for_target(0.0, delta, q, rounds)


def test_local_dp_adds_noise_of_the_right_size():
    noisy, norm = local_dp(
        {"w": torch.full((100_000,), 10.0)}, clip=1.0, noise_multiplier=2.0, seed=3
    )
    assert norm == pytest.approx(10.0 * math.sqrt(100_000))
    assert float(noisy["w"].double().std()) == pytest.approx(2.0, rel=0.02)


def test_fixed_size_sampling_is_accounted_with_replace_one_sensitivity():
    # Full participation: both are the plain Gaussian mechanism; replace-one doubles the
    # sensitivity, i.e. it is the add/remove accountant at half the noise multiplier.
    a = Accountant(1.2, 1.0, 1e-5, sampling="fixed", population=10)
    b = Accountant(0.6, 1.0, 1e-5)
    a.step(20)
    b.step(20)
    assert a.epsilon() == pytest.approx(b.epsilon(), rel=1e-9)
    # Subsampled: fixed-size sampling costs more ε than the Poisson approximation of it.
    fixed = Accountant(1.0, 0.1, 1e-5, sampling="fixed", population=100)
    pois = Accountant(1.0, 0.1, 1e-5)
    fixed.step(100)
    pois.step(100)
    assert fixed.epsilon() > pois.epsilon() > 0
    z_fixed = noise_for_target(3.0, 1e-5, 0.1, 100, sampling="fixed", population=100)
    assert z_fixed > noise_for_target(3.0, 1e-5, 0.1, 100)
    check = Accountant(z_fixed, 0.1, 1e-5, sampling="fixed", population=100)
    check.step(100)
    assert 2.9 < check.epsilon() <= 3.0
    with pytest.raises(ValueError, match="rdp"):
        Accountant(1.0, 0.1, 1e-5, method="pld", sampling="fixed", population=100)
    with pytest.raises(ValueError, match="population"):
        Accountant(1.0, 0.1, 1e-5, sampling="fixed")
    with pytest.raises(ValueError, match="sampling must be"):
        Accountant(1.0, 0.1, 1e-5, sampling="uniform")
