import dataclasses

import numpy as np
import pytest
import torch
from toy_fl import random_task

import fedpress
from fedpress.policy import (
    Accordion,
    Budget,
    ClientView,
    Deadline,
    LinkEstimator,
    RoundInfo,
    make_policy,
)
from fedpress.sim.network import Link, transfer_seconds
from fedpress.sim.runner import Simulation

LADDER = {"none": 400_000, "fp16": 200_000, "ef+q:bits=8": 100_000, "ef+topk:ratio=0.01+q:bits=8": 2_000}


def _info(**kw):
    base = {"round": 0, "rounds": 10, "deadline": None, "budget_left": None, "ladder_bytes": LADDER}
    base.update(kw)
    return RoundInfo(**base)


def test_deadline_choice_fits_hand_computed_link():
    # 1 Mbit/s up, 8 Mbit/s down, 50 ms latency, 2 s compute, 100 kB download:
    # none 0.15+2+0.05+3.2 = 5.4 s; fp16 3.8 s; q8 3.0 s; topk 2.216 s
    v = ClientView(client=3, up_mbps=1.0, down_mbps=8.0, up_latency_s=0.05, down_latency_s=0.05,
                   compute_s=2.0, down_bytes=100_000)
    assert v.predict(LADDER["none"]) == pytest.approx(5.4)
    ladder = tuple(LADDER)
    kw = {"safety": 1.0, "slack": float("inf"), "ladder": ladder}  # effective deadline = the deadline
    assert Deadline(6.0, **kw).assign(_info(), [v]) == {3: "none"}
    assert Deadline(4.0, **kw).assign(_info(), [v]) == {3: "fp16"}
    assert Deadline(3.5, **kw).assign(_info(), [v]) == {3: "ef+q:bits=8"}
    # nothing fits: the most aggressive rung with skip=0; by default a known client sits it out
    assert Deadline(1.0, skip=0, **kw).assign(_info(), [v]) == {3: "ef+topk:ratio=0.01+q:bits=8"}
    assert Deadline(1.0, **kw).assign(_info(), [v]) == {3: None}


def test_deadline_does_not_stretch_rounds_beyond_the_unavoidable():
    slow = ClientView(client=0, up_mbps=0.05, down_mbps=0.05, up_latency_s=1.0, down_latency_s=1.0,
                      compute_s=1.0, down_bytes=10_000)  # top-k: 1+1.6+1+1+0.32 = 4.92 s
    mid = ClientView(client=1, up_mbps=1.0, down_mbps=8.0, up_latency_s=0.05, down_latency_s=0.05,
                     compute_s=2.0, down_bytes=100_000)  # none 5.4, fp16 3.8, q8 3.0 s
    p = Deadline(20.0, safety=1.0, slack=0.0, ladder=tuple(LADDER))
    got = p.assign(_info(), [slow, mid])
    # the round cannot end before ~4.92 s, so `mid` gets the mildest codec finishing by then
    assert got == {0: "ef+topk:ratio=0.01+q:bits=8", 1: "fp16"}
    assert Deadline(20.0, safety=1.0, slack=0.2, ladder=tuple(LADDER)).assign(_info(), [slow, mid])[1] == "none"


def test_bandwidth_estimate_converges_on_noisy_link():
    rng = np.random.default_rng(0)
    est = LinkEstimator(window=32)
    true_mbps, lat = 0.5, 0.3
    errs = [abs(est.mbps(7, "up") - true_mbps) / true_mbps]  # the prior: 1 Mbit/s
    for _ in range(60):
        nbytes = int(rng.choice([5_000, 40_000, 200_000]))
        noisy = transfer_seconds(nbytes, true_mbps * rng.lognormal(0, 0.2), lat)
        est.observe(7, "up", nbytes, noisy)
        errs.append(abs(est.mbps(7, "up") - true_mbps) / true_mbps)
    assert errs[0] > 0.5 and np.mean(errs[-10:]) < 0.12
    assert abs(est.latency(7, "up") - lat) < 0.1


def test_estimate_with_one_size_uses_population_latency():
    est = LinkEstimator()
    for b in (1_000, 50_000, 120_000):  # client 0: varied sizes, latency identifiable
        est.observe(0, "up", b, 0.2 + 8 * b / 1e6)
    est.observe(1, "up", 10_000, 0.2 + 8 * 10_000 / 4e6)  # client 1: one size only
    assert est.mbps(1, "up") == pytest.approx(4.0, rel=0.05)


def test_codec_switch_keeps_error_feedback_exact():
    g = torch.Generator().manual_seed(0)
    c1, c2 = fedpress.codec("ef+topk:ratio=0.05+q:bits=8"), fedpress.codec("ef+q:bits=4")
    x1 = {"w": torch.randn(40, 30, generator=g)}
    x2 = {"w": torch.randn(40, 30, generator=g)}
    blob1, st = c1.encode(x1, c1.init(), seed=1)
    r1 = st["ef/w"].copy()
    blob2, st2 = c2.encode(x2, st, seed=2)  # the residual from topk feeds the q4 codec
    want = (x2["w"].numpy() + r1) - fedpress.decompress(blob2)["w"].numpy()
    assert np.array_equal(st2["ef/w"], want.astype(np.float32))


def test_budget_policy_spends_within_budget():
    g = torch.Generator().manual_seed(1)
    clients = [(torch.randn(40, 10, generator=g), torch.randint(0, 3, (40,), generator=g)) for _ in range(6)]
    test = (torch.randn(100, 10, generator=g), torch.randint(0, 3, (100,), generator=g))
    model = lambda: torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))  # noqa: E731
    budget = 12_000
    res = Simulation(model, clients, test, rounds=5, per_round=3, policy=f"budget:bytes={budget}",
                     network="wifi").run()
    assert res.summary["total_uplink_bytes"] <= budget
    used = {s for h in res.history for s in (h.get("client_codecs") or {}).values()}
    unlimited = Simulation(model, clients, test, rounds=5, per_round=3, network="wifi").run()
    assert unlimited.summary["total_uplink_bytes"] > budget
    del used


def test_deadline_policy_in_simulation_records_codecs_and_keeps_slow_clients():
    model, clients, test = random_task(2, n=50, n_test=100)
    fast = Link(up_mbps=20, down_mbps=50, latency_s=0.02)
    slow = Link(up_mbps=0.005, down_mbps=0.5, latency_s=0.5)
    links = [fast, fast, slow, slow]
    kw = {"rounds": 6, "per_round": 4, "network": links, "deadline": 3.0}
    fixed = Simulation(model, clients, test, **kw).run()
    pol = Simulation(model, clients, test, policy="deadline:seconds=3", jitter=0.1, **kw).run()
    assert sum(h["clients_dropped"] for h in fixed.history) >= 2 * 5
    # after the estimator has seen each client once, the slow ones get aggressive codecs and fit
    assert sum(h["clients_dropped"] for h in pol.history[2:]) == 0
    last = pol.history[-1]["client_codecs"]
    assert last["0"] != last["2"]
    assert pol.history[-1]["client_uplink_bytes"]["2"] < pol.history[-1]["client_uplink_bytes"]["0"]


def test_accordion_switches_on_update_norm_change():
    a = Accordion(eta=0.3, interval=1, warmup=2)
    hist = [{"update_norm": 1.0}, {"update_norm": 0.5}]
    assert a.critical(hist)
    hist += [{"update_norm": 0.48}]
    assert not a.critical(hist)
    v = ClientView(0, 1, 1, 0, 0, 0, 0)
    assert a.assign(_info(history=hist), [v]) == {0: a.aggressive}


def test_make_policy_errors():
    assert make_policy("fixed") is None
    assert isinstance(make_policy("budget:bytes=1e6"), Budget)
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("greedy")
    with pytest.raises(ValueError, match="seconds must be > 0"):
        make_policy("deadline:seconds=0")
    with pytest.raises(ValueError, match="must be a number"):
        make_policy("deadline:seconds=abc")


def test_unknown_client_is_assumed_slow_like_the_slow_end_of_the_population():
    est = LinkEstimator()
    for c, mbps in enumerate([10.0, 5.0, 2.0, 0.05]):
        for b in (1_000, 20_000, 80_000):
            est.observe(c, "up", b, 0.1 + 8 * b / (mbps * 1e6))
    assert est.mbps(99, "up") < 2.0  # slower than the median client
    assert est.mbps(0, "up") == pytest.approx(10.0, rel=0.01)


def test_deadline_skip_leaves_out_known_hopeless_clients_but_tries_unknown_ones():
    hopeless = ClientView(client=5, up_mbps=0.001, down_mbps=0.001, up_latency_s=5.0, down_latency_s=5.0,
                          compute_s=1.0, down_bytes=10_000)
    new = ClientView(**{**hopeless.__dict__, "client": 6, "known": False})
    ok = ClientView(client=7, up_mbps=10, down_mbps=10, up_latency_s=0.01, down_latency_s=0.01,
                    compute_s=0.5, down_bytes=10_000)
    p = Deadline(5.0, ladder=tuple(LADDER))  # skip=1 is the default
    got = p.assign(_info(), [hopeless, new, ok])
    assert got[5] is None and got[6] == "ef+topk:ratio=0.01+q:bits=8"
    assert got[7] not in (None, "ef+topk:ratio=0.01+q:bits=8")
    assert Deadline(5.0, skip=0, ladder=tuple(LADDER)).assign(_info(), [hopeless])[5] is not None


def test_deadline_unknown_client_gets_the_hardest_rung_and_does_not_set_the_pace():
    slow_new = ClientView(client=1, up_mbps=0.05, down_mbps=0.05, up_latency_s=1.0, down_latency_s=1.0,
                          compute_s=1.0, down_bytes=10_000, known=False)  # top-k 4.92 s if believed
    mid = ClientView(client=2, up_mbps=1.0, down_mbps=8.0, up_latency_s=0.05, down_latency_s=0.05,
                     compute_s=2.0, down_bytes=100_000)  # none 5.4, fp16 3.8, q8 3.0, top-k 2.216 s
    hard = Deadline(20.0, safety=1.0, slack=0.0, ladder=tuple(LADDER)).assign(_info(), [slow_new, mid])
    # the unknown client's guessed 4.92 s does not pace the round: `mid` keeps its own floor
    assert hard == {1: "ef+topk:ratio=0.01+q:bits=8", 2: "ef+topk:ratio=0.01+q:bits=8"}
    prior = Deadline(20.0, safety=1.0, slack=0.0, unknown="prior", ladder=tuple(LADDER))
    assert prior.assign(_info(), [slow_new, mid]) == {1: "ef+topk:ratio=0.01+q:bits=8", 2: "fp16"}
    with pytest.raises(ValueError, match="unknown must be"):
        make_policy("deadline:seconds=5,unknown=maybe")


def test_deadline_cut_sits_out_a_lone_slow_known_client_within_the_drop_share():
    fast = [ClientView(client=i, up_mbps=10, down_mbps=10, up_latency_s=0.01, down_latency_s=0.01,
                       compute_s=0.2, down_bytes=10_000) for i in range(5)]
    slow = ClientView(client=9, up_mbps=0.05, down_mbps=0.05, up_latency_s=1.0, down_latency_s=1.0,
                      compute_s=1.0, down_bytes=10_000)  # ~4.9 s at top-k, fits a 20 s deadline
    ladder = tuple(LADDER)
    assert Deadline(20.0, ladder=ladder).assign(_info(), [*fast, slow])[9] is not None  # cut off
    got = Deadline(20.0, cut=3, ladder=ladder).assign(_info(), [*fast, slow])
    assert got[9] is None and all(got[i] is not None for i in range(5))
    # the share: with 4 clients, 0.2 of them rounds down to nobody
    assert Deadline(20.0, cut=3, ladder=ladder).assign(_info(), [*fast[:3], slow])[9] is not None
    # an unknown slow client is always tried
    new = ClientView(**{**slow.__dict__, "known": False})
    assert Deadline(20.0, cut=3, ladder=ladder).assign(_info(), [*fast, new])[9] is not None
    with pytest.raises(ValueError, match="cut > 1"):
        make_policy("deadline:seconds=5,cut=0.5")


def test_deadline_sync_sends_the_whole_model_lossily_only_when_exact_would_be_late():
    # 0.2 Mbit/s down: the exact 100 kB model takes 4 s, fp16 2 s, q8 1 s (+ latency, compute, upload)
    syncs = {"none": 100_000, "fp16": 50_000, "q:bits=8": 25_000}
    slow = ClientView(client=1, up_mbps=1.0, down_mbps=0.2, up_latency_s=0.05, down_latency_s=0.05,
                      compute_s=0.5, down_bytes=100_000, sync_bytes=syncs)
    fast = ClientView(client=2, up_mbps=10.0, down_mbps=10.0, up_latency_s=0.05, down_latency_s=0.05,
                      compute_s=0.5, down_bytes=100_000, sync_bytes=syncs)
    ladder = tuple(LADDER)
    ups, downs = Deadline(3.0, safety=1.0, slack=1.0, sync=1, ladder=ladder).assign_sync(_info(), [slow, fast])
    # slow: exact 4.6+ s misses 3 s, fp16 0.05+2+0.5+0.05+0.016 = 2.616 s fits
    assert downs == {1: "fp16"} and ups[1] == "ef+topk:ratio=0.01+q:bits=8"
    assert ups[2] == "none"  # 0.08+0.5+0.05+0.32 = 0.95 s: fast gets the exact model and sends raw
    # no slack: the round cannot end before the slow client's fastest way, q8 + top-k (1.616 s)
    ups, downs = Deadline(3.0, safety=1.0, slack=0.0, sync=1, ladder=ladder).assign_sync(_info(), [slow, fast])
    assert downs == {1: "q:bits=8"} and ups == {1: "ef+topk:ratio=0.01+q:bits=8", 2: "none"}
    # with sync=0 the slow client cannot make 3 s at all: known and hopeless, it sits out
    ups0, downs0 = Deadline(3.0, safety=1.0, slack=0.0, sync=0, ladder=ladder).assign_sync(_info(), [slow, fast])
    assert ups0[1] is None and downs0 == {}
    # a client never seen gets the smallest model download and the hardest rung
    new = ClientView(**{**fast.__dict__, "client": 3, "known": False})
    assert Deadline(3.0, sync=1, ladder=ladder).assign_sync(_info(), [new])[1] == {3: "q:bits=8"}
    # deltas suffice (no sync_bytes): nothing to choose
    plain = ClientView(**{**slow.__dict__, "client": 4, "sync_bytes": None, "down_bytes": 5_000})
    assert Deadline(3.0, sync=1, ladder=ladder).assign_sync(_info(), [plain])[1] == {}


def _sync_task():
    """Four clients, three fast and one whose download of the exact 14 kB model takes ~2.3 s."""
    model, clients, test = random_task(3, n=40, n_test=80, hidden=256)
    fast = Link(up_mbps=20, down_mbps=50, latency_s=0.02)
    slow = Link(up_mbps=0.05, down_mbps=0.05, latency_s=0.1)
    return model, clients, test, [fast, fast, fast, slow]


def test_deadline_sync_in_simulation_counts_the_lossy_blob_and_resyncs_next_time():
    model, clients, test, links = _sync_task()
    kw = {"rounds": 5, "per_round": 4, "network": links, "deadline": 3.0, "down_codec": "ef+q:bits=8"}
    res = Simulation(model, clients, test, policy="deadline:seconds=3", **kw).run()  # sync=1: default
    full = len(fedpress.compress({k: v for k, v in model().state_dict().items()}, "none"))
    synced = [h for h in res.history if "3" in h.get("client_syncs", {})]
    assert synced, "the slow client never got a lossy whole model"
    for h in synced:
        assert h["client_syncs"]["3"] in ("fp16", "q:bits=8")
    # every round the slow client needs the whole model again; each lossy copy is smaller than it
    assert sum(h["clients_dropped"] for h in res.history[1:]) == 0
    assert all(h["downlink_bytes"] < 4 * full for h in synced)
    exact = Simulation(model, clients, test, policy="deadline:seconds=3,sync=0", **kw).run()
    assert all("client_syncs" not in h for h in exact.history)


def test_lossy_copies_are_measured_on_probe_rounds_and_only_the_picked_one_encoded_otherwise(monkeypatch):
    import fedpress.sim.runner as runner_mod

    model, clients, test, links = _sync_task()
    calls: list[str] = []
    real = runner_mod.compress

    def spy(obj, spec, *a, **k):
        if spec in ("fp16", "q:bits=8"):
            calls.append(spec)
        return real(obj, spec, *a, **k)

    monkeypatch.setattr(runner_mod, "compress", spy)
    res = Simulation(model, clients, test, policy="deadline:seconds=3", rounds=6, per_round=4, probe_every=5,
                     network=links, deadline=3.0, down_codec="ef+q:bits=8").run()
    synced = [h for h in res.history if h.get("client_syncs")]
    assert len(synced) >= 4
    # both copies on probe rounds 1 and 6 (t = 0, 5), one (the picked copy) in each other synced round
    assert len(calls) == 2 * 2 + (len(synced) - 2)


def test_a_resumed_policy_run_equals_the_uninterrupted_one(tmp_path):
    # The link estimator's caches must be pure functions of its observations: a fit that borrowed
    # the population's latency used to be kept until its own client observed again, so a resumed
    # run (empty caches) saw other estimates and diverged from round 4.
    from fedpress.sim.experiment import RunConfig, run_experiment

    cfg = RunConfig(scenario="digits", rounds=8, policy="deadline:seconds=10", network="mixed",
                    down_codec="ef+q:bits=8", checkpoint_every=3)
    full, _ = run_experiment(cfg, tmp_path / "full")
    run_experiment(dataclasses.replace(cfg, rounds=3), tmp_path / "part")
    resumed, _ = run_experiment(cfg, tmp_path / "part", resume=tmp_path / "part")
    assert [h["metric"] for h in resumed.history] == [h["metric"] for h in full.history]
    assert (tmp_path / "full" / "metrics.jsonl").read_bytes() == (tmp_path / "part" / "metrics.jsonl").read_bytes()
