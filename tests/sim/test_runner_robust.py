"""Robust aggregation rules in the simulator: a minority of clients with wild updates."""

import pytest
import torch
from toy_fl import accuracy, blobs, mlp

from fedpress.sim.experiment import ConfigError, RunConfig
from fedpress.sim.network import Link
from fedpress.sim.runner import Simulation

ALWAYS_ON = [Link(up_mbps=20, down_mbps=50, latency_s=0.02)] * 8  # every sampled client takes part


_acc, _data, _model = accuracy, blobs, mlp


def _poisoned(n_bad=2):
    clients, test = _data()
    g = torch.Generator().manual_seed(5)
    for i in range(n_bad):  # wild features and random labels: enormous, meaningless updates
        x, y = clients[i]
        clients[i] = (x * 1000, torch.randint(0, 3, y.shape, generator=g))
    return clients, test


def _run(aggregate, codec="none", **kw):
    clients, test = _poisoned()
    args = {"rounds": 6, "per_round": 8, "lr": 0.1, "metric": _acc, "network": ALWAYS_ON, "codec": codec}
    return Simulation(_model, clients, test, aggregate=aggregate, **{**args, **kw}).run()


@pytest.mark.parametrize("rule", ["median", "trimmed_mean:beta=0.25", "krum:f=2", "krum:f=2,m=4", "norm_clip"])
def test_robust_rules_learn_where_the_mean_is_wrecked(rule):
    mean = _run("mean").history[-1]["metric"]
    robust = _run(rule)
    assert robust.history[-1]["metric"] > 0.8
    assert robust.history[-1]["metric"] > mean + 0.2
    assert robust.summary["aggregate"] == rule


def test_majority_vote_with_sign_uplinks_learns():
    clients, test = _data()
    res = Simulation(_model, clients, test, rounds=8, per_round=8, lr=0.1, metric=_acc, codec="ef+sign",
                     aggregate="majority").run()
    assert res.history[-1]["metric"] > 0.8


def test_bad_aggregate_names_are_one_clear_error():
    clients, test = _data()
    with pytest.raises(ValueError, match="bad aggregate 'medain'"):
        Simulation(_model, clients, test, aggregate="medain")
    with pytest.raises(ValueError, match=r"beta must be in \[0, 0.5\)"):
        Simulation(_model, clients, test, aggregate="trimmed_mean:beta=0.5")
    with pytest.raises(ValueError, match="works neither with DP"):
        Simulation(_model, clients, test, aggregate="median", dp_clip=1.0)
    with pytest.raises(ConfigError, match="bad aggregate"):
        RunConfig(aggregate="bulyan").check()


def _under_attack(codec, rounds):
    """2 of 8 always-online clients send −4·Δ, through ``codec`` like everyone."""
    return {"rounds": rounds, "per_round": 8, "lr": 0.1, "metric": _acc, "network": ALWAYS_ON,
            "codec": codec, "attack": "signflip:scale=4,fraction=0.25"}


def test_attacked_clients_send_real_blobs_and_the_median_holds():
    # 2 of 8 clients send -4·Δ as q:bits=8 blobs: the mean is dragged off, the median is not.
    clients, test = _data()
    kw = _under_attack("q:bits=8", rounds=6)
    mean = Simulation(_model, clients, test, aggregate="mean", **kw).run()
    med = Simulation(_model, clients, test, aggregate="median", **kw).run()
    assert mean.summary["attack"] == "signflip:scale=4,fraction=0.25" and len(mean.summary["attackers"]) == 2
    assert med.history[-1]["metric"] > 0.8 and med.history[-1]["metric"] > mean.history[-1]["metric"] + 0.2
    clean = Simulation(_model, clients, test, aggregate="mean", **{**kw, "attack": None}).run()
    # attackers' blobs are real: same codec, same count of bytes as honest q:bits=8 updates
    assert mean.summary["total_uplink_bytes"] == clean.summary["total_uplink_bytes"]
    with pytest.raises(ConfigError, match="bad attack"):
        RunConfig(attack="flip").check()


def test_norm_clip_defends_sparsified_uplinks():
    # top-k updates: coordinate-wise rules see mostly zeros; bounding norms keeps sparsity.
    clients, test = _data()
    kw = _under_attack("ef+topk:ratio=0.1+q:bits=8", rounds=8)
    res = {rule: Simulation(_model, clients, test, aggregate=rule, **kw).run().history[-1]["metric"]
           for rule in ("sparse_mean", "norm_clip")}
    assert res["norm_clip"] > 0.8 and res["norm_clip"] > res["sparse_mean"] + 0.2, res
