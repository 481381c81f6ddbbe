import numpy as np
import pytest
import torch

from fedpress.privacy.dp import Accountant
from fedpress.sim.runner import Simulation

SPEC = "fixed:bits=8,lo=-0.5,hi=0.5,rounding=stochastic"


def _acc(probs, y):
    return float((probs.argmax(1) == y).mean())


def _setup(n_clients=8):
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 10, generator=g) * 2

    def make(m):
        y = torch.randint(0, 3, (m,), generator=g)
        return centers[y] + torch.randn(m, 10, generator=g), y

    return [make(60) for _ in range(n_clients)], make(300)


def _model():
    return torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def _run(**kw):
    clients, test = _setup()
    args = {"rounds": 5, "per_round": 6, "lr": 0.1, "metric": _acc, "codec": SPEC}
    args.update(kw)
    return Simulation(_model, clients, test, **args).run()


def test_secagg_trains_and_counts_overhead():
    plain = _run()
    sec = _run(secagg=True)
    assert sec.history[-1]["metric"] > 0.8
    assert sec.summary["secagg_overhead_bytes"] > 0
    assert all(h["secagg_overhead_bytes"] > 0 for h in sec.history if h["clients_kept"] >= 2)
    # keys, shares and a wider modulus cost bytes on top of the plain codes
    assert sec.summary["total_uplink_bytes"] > plain.summary["total_uplink_bytes"]


def test_secagg_survives_dropout_after_upload():
    res = _run(secagg=True, dropout=0.3, rounds=6)
    assert sum(h["clients_vanished"] for h in res.history) > 0
    assert res.history[-1]["metric"] > 0.7


def test_secagg_refuses_per_client_indices():
    clients, test = _setup()
    with pytest.raises(ValueError, match="secure aggregation"):
        Simulation(_model, clients, test, codec="ef+topk:ratio=0.1", secagg=True)


def test_dp_epsilon_reported_and_matches_accountant():
    res = _run(codec="q:bits=8", dp_clip=1.0, dp_noise=1.0, rounds=4)
    eps = [h["dp_epsilon"] for h in res.history]
    assert all(a < b for a, b in zip(eps, eps[1:], strict=False))
    acc = Accountant(1.0, 6 / 8, 1e-5)
    acc.step(4)
    assert res.summary["epsilon"] == pytest.approx(acc.epsilon())
    assert res.summary["delta"] == 1e-5


def test_target_epsilon_sizes_the_noise():
    res = _run(codec="q:bits=8", dp_clip=1.0, target_epsilon=8.0, rounds=4)
    assert res.summary["epsilon"] <= 8.0 * 1.02
    assert res.summary["dp_noise_multiplier"] > 0


def test_dp_with_secagg():
    res = _run(secagg=True, dp_clip=1.0, dp_noise=0.5, rounds=3)
    assert "dp_epsilon" in res.history[-1] and res.summary["epsilon"] > 0


def test_dp_needs_a_clip():
    clients, test = _setup()
    with pytest.raises(ValueError, match="dp_clip"):
        Simulation(_model, clients, test, dp_noise=1.0)


def test_secagg_with_q_on_a_shared_scale():
    res = _run(codec="q:bits=8", secagg=True, rounds=6)
    assert res.history[-1]["metric"] > 0.8
    ranges = [h["secagg_range"] for h in res.history]
    assert ranges[0] == 1.0 and ranges[-1] != 1.0  # adapted from the aggregates


def test_dp_samples_clients_poisson_by_default_and_accounts_fixed_size_when_asked():
    res = _run(rounds=8, dp_clip=1.0, dp_noise=0.5)
    assert res.summary["sampling"] == "poisson"
    sizes = [h["clients_sampled"] for h in res.history]
    assert len(set(sizes)) > 1  # independent inclusion: the round size varies around 6 of 8
    fixed = _run(rounds=8, dp_clip=1.0, dp_noise=0.5, sampling="fixed")
    assert fixed.summary["sampling"] == "fixed"
    assert {h["clients_sampled"] for h in fixed.history} == {6}
    acc = Accountant(0.5, 6 / 8, 1e-5, sampling="fixed", population=8)
    acc.step(8)
    assert fixed.history[-1]["dp_epsilon"] == pytest.approx(acc.epsilon())
    assert fixed.history[-1]["dp_epsilon"] > res.history[-1]["dp_epsilon"]
    assert _run(rounds=2).summary["sampling"] == "fixed"  # without DP: exactly per_round
    with pytest.raises(ValueError, match="sampling must be"):
        _run(sampling="bernoulli")


def test_distributed_dp_trains_accounts_and_tolerates_dropout():
    from fedpress.privacy.ddp import DistributedAccountant, DistributedNoise

    res = _run(codec="q:bits=8", secagg=True, dp_clip=1.0, dp_noise=0.3, dp_mode="distributed", rounds=6,
               dropout=0.15)
    hist = res.history
    assert res.summary["dp_mode"] == "distributed" and res.summary["sampling"] == "fixed"
    assert sum(h["clients_vanished"] for h in hist) > 0
    assert all(h["dp_mode"] == "distributed" for h in hist)
    # each client's noise covers the worst case of only the threshold surviving: 6 online -> 4
    assert {h["dp_min_clients"] for h in hist} == {4}
    # the accountant composes the released rounds, each as the round's own bound says
    acct = DistributedAccountant(1e-5)
    for h in hist:
        acct.step(DistributedNoise(clip=1.0, noise_multiplier=0.3, min_clients=4, scale=2 / 256, lo=-1.0,
                                   dim=h["ddp_dim"], bits=8, n=6).zcdp())
    assert res.summary["epsilon"] == pytest.approx(acct.epsilon())
    # the noisy codes need a wider modulus than the plain secure sum, and cost those bytes
    plain = _run(codec="q:bits=8", secagg=True, rounds=6, dropout=0.15)
    assert hist[0]["secagg_modulus_bits"] > plain.history[0]["secagg_modulus_bits"] == 8 + 3
    assert res.summary["total_uplink_bytes"] > plain.summary["total_uplink_bytes"]
    assert hist[-1]["metric"] > 0.6


def test_distributed_dp_target_epsilon_and_bad_settings():
    res = _run(codec="q:bits=8", secagg=True, dp_clip=1.0, target_epsilon=20.0, dp_mode="distributed", rounds=4)
    assert 19.0 < res.summary["epsilon"] <= 20.0 * 1.001
    with pytest.raises(ValueError, match="secure aggregation"):
        _run(dp_clip=1.0, dp_noise=1.0, dp_mode="distributed")
    with pytest.raises(ValueError, match="adaptive"):
        _run(secagg=True, dp_clip=1.0, dp_noise=1.0, dp_mode="distributed", dp_adaptive=True)
    with pytest.raises(ValueError, match="dp_mode"):
        _run(secagg=True, dp_clip=1.0, dp_mode="local")


def test_distributed_dp_run_resumes_exactly(tmp_path):
    clients, test = _setup()
    kw = {"rounds": 4, "per_round": 6, "lr": 0.1, "metric": _acc, "codec": "ef+q:bits=8", "secagg": True,
          "dp_clip": 1.0, "dp_noise": 0.3, "dp_mode": "distributed", "checkpoint_every": 2}
    full = Simulation(_model, clients, test, out_dir=tmp_path / "full", **kw).run()
    Simulation(_model, clients, test, out_dir=tmp_path / "part", **{**kw, "rounds": 2}).run()
    resumed = Simulation(_model, clients, test, out_dir=tmp_path / "part", **kw).run(resume=tmp_path / "part")
    assert resumed.history == full.history
    assert resumed.summary["epsilon"] == full.summary["epsilon"] < float("inf")


def test_rotation_under_dp_shrinks_the_range_and_the_sensitivity():
    plain = _run(codec="q:bits=8", secagg=True, dp_clip=1.0, dp_noise=0.3, rounds=2, sampling="fixed")
    rot = _run(codec="rht+q:bits=8", secagg=True, dp_clip=1.0, dp_noise=0.3, rounds=2, sampling="fixed")
    dim = sum(p.numel() for p in _model().parameters())
    assert {h["secagg_range"] for h in plain.history} == {1.0}
    assert [h["secagg_range"] for h in rot.history] == pytest.approx([4.0 / dim**0.5] * 2)
    # C + sqrt(d) * step: the rounding share falls by the range's factor
    assert plain.history[0]["dp_sensitivity"] == pytest.approx(1.0 + dim**0.5 * 2 / 256)
    assert rot.history[0]["dp_sensitivity"] == pytest.approx(1.0 + dim**0.5 * 2 * (4.0 / dim**0.5) / 256)
    dist = _run(codec="rht+q:bits=8", secagg=True, dp_clip=1.0, dp_noise=0.3, rounds=3, dp_mode="distributed")
    assert dist.history[-1]["metric"] > 0.6


SKETCH = "sketch:cols=20,rows=3,k=30+q:bits=8"  # 60 codes for the 227-value model: top 30 of the sum


def test_ef_sketch_under_secagg_is_server_side_error_feedback_and_trains():
    """ef+sketch under secure aggregation is FetchSGD's server-side error feedback: it trains as
    well as the sketch without ef (client-side EF collapsed to chance on digits), with and without DP."""
    plain = _run(codec=SKETCH, secagg=True, rounds=10)
    ef = _run(codec="ef+" + SKETCH, secagg=True, rounds=10)
    assert plain.history[-1]["metric"] > 0.9
    assert ef.history[-1]["metric"] > plain.history[-1]["metric"] - 0.05
    assert ef.history != plain.history  # the error sketch changes the steps
    for kw in ({"dp_clip": 1.0, "dp_noise": 0.3}, {"dp_clip": 1.0, "dp_noise": 0.3, "dp_mode": "distributed"}):
        res = _run(codec="ef+" + SKETCH, secagg=True, rounds=10, sampling="fixed", **kw)
        assert res.history[-1]["metric"] > 0.85 and res.summary["epsilon"] > 0


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_ef_sketch_run_resumes_exactly(tmp_path, momentum):
    """The error (and momentum) sketch is run state: it is checkpointed, and a resumed run equals
    the uninterrupted one."""
    from fedpress.sim.results import load_checkpoint

    clients, test = _setup()
    codec = "ef+" + SKETCH.replace("k=30", f"k=30,momentum={momentum}" if momentum else "k=30")
    kw = {"rounds": 6, "per_round": 6, "lr": 0.1, "metric": _acc, "codec": codec, "secagg": True,
          "dp_clip": 1.0, "dp_noise": 0.3, "checkpoint_every": 3}
    full = Simulation(_model, clients, test, out_dir=tmp_path / "full", **kw).run()
    Simulation(_model, clients, test, out_dir=tmp_path / "part", **{**kw, "rounds": 3}).run()
    st = load_checkpoint(tmp_path / "part")
    err = st["sketch_error"]
    assert err.shape == (60,) and np.abs(err).max() > 0
    assert (st["sketch_velocity"] is None) == (not momentum)
    if momentum:
        assert full.history[-1]["metric"] > 0.8
    resumed = Simulation(_model, clients, test, out_dir=tmp_path / "part", **kw).run(resume=tmp_path / "part")
    assert resumed.history == full.history
    torch.testing.assert_close(resumed.params, full.params, rtol=0, atol=0)


def test_central_dp_noise_is_scaled_with_randk_rescaling():
    # randk:unbiased=1 multiplies the kept values by n/k after the sum: the noise must be added
    # before that (in code space), or the released mean's sensitivity is n/k times what the noise
    # was sized for. Zero updates: the decoded mean is pure noise (plus zeros).
    from fedpress.privacy.codes import SharedRangeCodec
    from fedpress.privacy.dp import Accountant
    from fedpress.sim.privacy_round import SecureRound

    codec = SharedRangeCodec("randk:ratio=0.25,unbiased=1+fixed:bits=8,lo=-1,hi=1,rounding=nearest")
    template = {"w": (40_000,)}
    sr = SecureRound(codec, [0, 1, 2], template, threshold=None, neighbors=None, seed=0, round_seed=5)
    received = {c: sr.upload(c, {"w": torch.zeros(40_000)}, encode_seed=c, state=None, clip=1.0)[0] for c in range(3)}
    mean, priv, _, _ = sr.aggregate(received, 0, accountant=Accountant(1.0, 1.0, 1e-5), clip=1.0, noise=1.0,
                                    denominator=3, dp_seed=1)
    kept = mean["w"].double()[mean["w"] != 0]
    assert kept.numel() == 10_000
    # noise std of the mean in code space, times the n/k = 4 rescaling
    assert float(kept.std()) == pytest.approx(4 * priv["dp_noise_std_mean"], rel=0.03)
