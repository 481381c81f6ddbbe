"""Asynchronous buffered aggregation (fedpress.sim.fedbuff): the clock, staleness, the weighted mean
and its equivalence to synchronous FedAvg when nothing is asynchronous."""

import json
import math

import pytest
import torch
from toy_fl import accuracy, blobs, mlp
from typer.testing import CliRunner

import fedpress
from fedpress.sim import fedbuff
from fedpress.sim.experiment import ConfigError, RunConfig, run_experiment
from fedpress.sim.fedbuff import AsyncSimulation, staleness_weight
from fedpress.sim.network import Link, compute_seconds, transfer_seconds
from fedpress.sim.runner import Simulation

FAST = Link(up_mbps=50.0, down_mbps=50.0, latency_s=0.01)
SLOW = Link(up_mbps=0.5, down_mbps=0.5, latency_s=0.03)  # ~6 fast server steps per round trip


def _async(clients=None, test=None, **kw):
    if clients is None:
        clients, test = blobs()
    args = {"rounds": 4, "buffer": 3, "concurrency": 5, "lr": 0.1, "metric": accuracy, "network": "4g"}
    args.update(kw)
    return AsyncSimulation(mlp, clients, test, **args)


class Recording:
    """A server strategy that records every aggregated delta it is asked to apply."""

    def __init__(self, inner):
        self.inner, self.deltas = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def apply(self, params, delta, state):
        self.deltas.append({k: v.clone() for k, v in delta.items()})
        return self.inner.apply(params, delta, state)


@pytest.mark.parametrize("links", ["none", [Link(6.0, 20.0, 0.05)] * 8])
def test_buffer_of_every_client_on_identical_links_is_synchronous_fedavg(links):
    # K = M = all clients, identical links and data sizes: every client starts from the same model
    # and arrives at the same instant, so each server step is exactly a synchronous round.
    clients, test = blobs()
    kw = {"lr": 0.1, "metric": accuracy, "network": links, "codec": "ef+topk:ratio=0.1+q:bits=8"}
    sync = Simulation(mlp, clients, test, rounds=4, per_round=8, **kw).run()
    asy = AsyncSimulation(mlp, clients, test, rounds=4, buffer=8, concurrency=8, **kw).run()
    keys = ("round", "metric", "loss", "update_norm", "uplink_bytes", "downlink_bytes", "cum_uplink_bytes",
            "cum_downlink_bytes", "sim_seconds", "client_uplink_bytes")
    assert [{k: h[k] for k in keys} for h in asy.history] == [{k: h[k] for k in keys} for h in sync.history]
    assert [h["round_seconds"] for h in asy.history] == pytest.approx([h["round_seconds"] for h in sync.history])
    assert all(h["staleness_max"] == 0 and h["clients_kept"] == 8 for h in asy.history)
    assert all(torch.equal(asy.params[k], sync.params[k]) for k in sync.params)


def test_a_slow_clients_update_arrives_stale_and_is_weighted_down():
    clients, test = blobs(n_clients=3)
    kw = {"rounds": 12, "buffer": 1, "concurrency": 3, "network": [FAST, FAST, SLOW], "codec": "none"}
    runs = {}
    for rule in ("sqrt", "none"):
        sim = _async(clients, test, staleness=rule, **kw)
        sim.strategy = Recording(sim.strategy)
        runs[rule] = (sim.run(), sim.strategy.deltas)
    res, deltas = runs["sqrt"]
    times = [h["sim_seconds"] for h in res.history]
    i = next(i for i, h in enumerate(res.history) if "2" in h["client_uplink_bytes"])
    s = res.history[i]["staleness_max"]
    # The slow client started from version 0 and arrived after i server steps; a fast one lags by one
    # step (its twin's) or two (when the slow update came in between).
    assert s == i and i >= 3 and all(h["staleness_max"] <= 2 for j, h in enumerate(res.history) if j != i)
    assert res.history[i]["staleness_weight_mean"] == pytest.approx(1 / math.sqrt(1 + s))
    # It arrives when its link says: download the model, train, upload its blob.
    down = len(fedpress.compress((torch.manual_seed(0), mlp())[1].state_dict(), "none"))
    trip = (transfer_seconds(down, SLOW.down_mbps, SLOW.latency_s) + compute_seconds(60, 1, SLOW)
            + transfer_seconds(res.history[i]["uplink_bytes"], SLOW.up_mbps, SLOW.latency_s))
    assert times[i] == pytest.approx(trip) and times[i - 1] < trip
    # Its update is the same blob under either rule (it trained from version 0 on the same seeds,
    # and all blobs have one size, so the clock is the same); the sqrt rule scales it by 1/sqrt(1+s).
    res_none, deltas_none = runs["none"]
    assert res_none.history[i]["client_uplink_bytes"] == {"2": res.history[i]["uplink_bytes"]}
    assert res_none.history[i]["staleness_max"] == s
    for k in deltas[i]:
        torch.testing.assert_close(deltas[i][k], deltas_none[i][k] / math.sqrt(1 + s))


def test_each_step_is_the_sample_and_staleness_weighted_mean_of_the_decoded_blobs(monkeypatch):
    clients, test = blobs(n_clients=6)
    clients = [(x[: n], y[: n]) for (x, y), n in zip(clients, (20, 60, 35, 50, 12, 44), strict=True)]
    sim = _async(clients, test, rounds=5, buffer=3, concurrency=5, network="mixed", codec="q:bits=8",
                 staleness="poly:a=1")
    sim.strategy = Recording(sim.strategy)
    decoded, stale, weights = [], [], []
    real_decompress, real_w = fedbuff.decompress, sim.staleness

    def record_decompress(blob, **kw):
        decoded.append((len(blob), real_decompress(blob, **kw)))
        return decoded[-1][1]

    def record_w(s):
        stale.append(s)
        return real_w(s)

    class RecordingMean:
        def __init__(self, inner):
            self.inner = inner

        def create(self):
            proc = self.inner.create()
            accept = proc.accept

            def rec(value, weight=1.0, client=None):
                weights.append((client, weight))
                accept(value, weight, client)

            proc.accept = rec
            return proc

    monkeypatch.setattr(fedbuff, "decompress", record_decompress)
    sim.staleness = record_w
    sim._aggregator = RecordingMean(sim._aggregator)
    res = sim.run()
    assert any(s > 0 for s in stale)
    at = 0
    for h, delta in zip(res.history, sim.strategy.deltas, strict=True):
        n = h["clients_kept"]
        part = range(at, at + n)
        assert h["uplink_bytes"] == sum(decoded[j][0] for j in part)  # bytes = len(blob) of what is decoded
        assert [weights[j][1] for j in part] == [float(clients[weights[j][0]][0].shape[0]) for j in part]
        total = sum(weights[j][1] for j in part)
        for k in delta:
            want = sum(weights[j][1] * (1 + stale[j]) ** -1 * decoded[j][1][k].double() for j in part) / total
            torch.testing.assert_close(delta[k], want.float(), rtol=1e-5, atol=1e-7)
        assert h["staleness_max"] == max(stale[j] for j in part)
        at += n


def test_clock_moves_forward_and_bytes_are_blob_lengths():
    clients, test = blobs()
    res = _async(clients, test, rounds=8, network="mixed", codec="ef+topk:ratio=0.1+q:bits=8",
                 down_codec="fp16", jitter=0.2).run()
    h = res.history
    times = [r["sim_seconds"] for r in h]
    assert times == sorted(times) and times[0] > 0 and all(r["round_seconds"] >= 0 for r in h)
    model_fp16 = len(fedpress.compress((torch.manual_seed(0), mlp())[1].state_dict(), "fp16"))
    for r in h:
        assert r["uplink_bytes"] == sum(r["client_uplink_bytes"].values())
        assert r["downlink_bytes"] == r["clients_started"] * model_fp16  # a real blob of the whole model
    assert [r["cum_uplink_bytes"] for r in h] == [sum(x["uplink_bytes"] for x in h[: i + 1]) for i in range(len(h))]
    assert res.summary["total_downlink_bytes"] == sum(r["downlink_bytes"] for r in h)
    assert res.summary["client_updates"] == 8 * 3 and res.summary["sim_seconds"] == times[-1]


def test_same_seed_same_history(tmp_path):
    kw = {"network": "mixed", "codec": "ef+topk:ratio=0.1+qsgd:levels=4", "jitter": 0.3}
    _async(out_dir=tmp_path / "a", **kw).run()
    _async(out_dir=tmp_path / "b", **kw).run()
    _async(out_dir=tmp_path / "c", seed=1, **kw).run()
    a, b, c = ((tmp_path / d / "metrics.jsonl").read_bytes() for d in "abc")
    assert a == b and a != c
    row = json.loads(a.splitlines()[0])
    for key in ("round", "metric", "loss", "uplink_bytes", "downlink_bytes", "cum_uplink_bytes",
                "cum_downlink_bytes", "sim_seconds", "staleness_mean", "staleness_max"):
        assert key in row


def test_error_feedback_state_persists_across_a_clients_participations():
    sim = _async(rounds=6, codec="ef+topk:ratio=0.1", network="none")
    res = sim.run()
    assert res.summary["client_starts"] > len(sim.clients)  # some clients took part more than once
    # The residual is carried: a second run without error feedback sends different coordinates.
    plain = _async(rounds=6, codec="topk:ratio=0.1", network="none").run()
    assert res.history[-1]["metric"] != plain.history[-1]["metric"]


def test_crashing_client_is_replaced_not_fatal():
    clients, test = blobs()
    clients[2] = (torch.randn(10, 7), torch.zeros(10, dtype=torch.long))  # wrong feature size
    with pytest.warns(UserWarning, match="client 2 failed"):
        res = _async(clients, test, rounds=6, concurrency=5, network="none").run()
    assert len(res.history) == 6 and res.summary["clients_failed"] >= 1
    assert all("2" not in h["client_uplink_bytes"] for h in res.history)
    assert sum(h["clients_failed"] for h in res.history) == res.summary["clients_failed"]


def test_run_stops_cleanly_when_every_client_crashes():
    _, test = blobs()
    bad = [(torch.randn(10, 7), torch.zeros(10, dtype=torch.long))] * 4
    with pytest.warns(UserWarning, match="every client failed"):
        res = AsyncSimulation(mlp, bad, test, rounds=3, buffer=2, concurrency=3, metric=accuracy).run()
    assert res.history == [] and res.summary["rounds"] == 0


def test_learns_the_toy_task_on_slow_mixed_links():
    res = _async(rounds=15, network="mixed", codec="ef+topk:ratio=0.1+q:bits=8").run()
    assert res.history[-1]["metric"] > 0.8


def test_updates_sets_the_number_of_server_steps():
    assert _async(rounds=None, updates=10, buffer=3).rounds == 4
    assert _async(rounds=None).rounds == 10


def test_staleness_rules():
    assert staleness_weight("none")[1](50) == 1.0
    assert staleness_weight("sqrt")[1](8) == pytest.approx(1 / 3)
    assert staleness_weight("poly:a=1")[1](3) == 0.25
    name, w = staleness_weight("hinge")
    assert name == "hinge:a=10,b=4" and w(4) == 1.0 and w(5) == pytest.approx(1 / 11)
    for bad in ("cube", "poly:b=1", "hinge:a=x", "poly:a=-1"):
        with pytest.raises(ValueError, match="bad staleness"):
            staleness_weight(bad)


@pytest.mark.parametrize(("kw", "match"), [
    ({"buffer": 0}, "buffer must be a positive integer"),
    ({"buffer": 9}, r"buffer \(9\) exceeds the number of clients \(8\)"),
    ({"buffer": 4, "concurrency": 3}, r"concurrency \(3\) must be >= buffer \(4\)"),
    ({"concurrency": 9}, "exceeds the number of clients"),
    ({"updates": 5}, "not both"),
    ({"aggregate": "median"}, "robust rules"),
    ({"down_codec": "ef+q:bits=8"}, "stateless"),
    ({"staleness": "cube"}, "bad staleness"),
    ({"codec": "topk:ratio=2"}, "ratio"),
])
def test_bad_arguments_are_one_clear_error(kw, match):
    with pytest.raises(ValueError, match=match):
        _async(**kw)


@pytest.mark.parametrize("kw", [
    # slow mixed links with jitter: clients started before the checkpoint arrive after it, stale
    {"network": "mixed", "jitter": 0.3, "codec": "ef+topk:ratio=0.1+q:bits=8", "down_codec": "q:bits=8",
     "strategy": "fedadam", "server_lr": 0.05},
    # identical zero-latency links, K=2 of M=4 arriving together: the checkpoint is taken mid-cohort,
    # with two arrivals of that instant still to take in
    {"network": "none", "buffer": 2, "concurrency": 4, "codec": "ef+powersgd:rank=2+q:bits=8"},
])
def test_resumed_run_equals_uninterrupted(tmp_path, kw):
    kw = {"checkpoint_every": 3, **kw}
    full = _async(rounds=6, out_dir=tmp_path / "full", **kw).run()
    part = _async(rounds=3, out_dir=tmp_path / "part", **kw).run()  # "interrupted" after step 3
    st = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)
    assert len(st["history"]) == 3 and st["flights"] and st["heap"]  # clients in flight span it
    assert any(f.blob is not None for f in st["flights"].values())
    assert any(s for s in st["client_states"].values())  # error-feedback residuals saved
    resumed = _async(rounds=6, out_dir=tmp_path / "part", **kw).run(resume=tmp_path / "part")
    assert part.history == full.history[:3]
    assert resumed.history == full.history
    assert all(torch.equal(resumed.params[k], full.params[k]) for k in full.params)
    assert (tmp_path / "full" / "metrics.jsonl").read_bytes() == (tmp_path / "part" / "metrics.jsonl").read_bytes()
    assert max(h["staleness_max"] for h in full.history[3:]) > 0 or kw["network"] == "none"
    for key in ("client_updates", "client_starts", "total_uplink_bytes", "total_downlink_bytes", "sim_seconds"):
        assert resumed.summary[key] == full.summary[key], key
    # the full run saved at steps 3 and 6; resuming its final checkpoint has nothing left to do
    again = _async(rounds=6, out_dir=tmp_path / "again", **kw).run(resume=tmp_path / "full")
    assert again.history == full.history


def test_checkpoint_needs_out_dir_and_resume_needs_an_async_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="out_dir"):
        _async(checkpoint_every=2)
    with pytest.raises(ValueError, match="checkpoint_every"):
        _async(checkpoint_every=-1, out_dir=tmp_path)
    with pytest.raises(FileNotFoundError):
        _async().run(resume=tmp_path / "nothing")
    clients, test = blobs()
    Simulation(mlp, clients, test, rounds=2, per_round=4, metric=accuracy, checkpoint_every=2,
               out_dir=tmp_path / "sync").run()
    with pytest.raises(ValueError, match="not an asynchronous"):
        _async().run(resume=tmp_path / "sync")
    _async(rounds=2, checkpoint_every=2, out_dir=tmp_path / "async").run()
    with pytest.raises(ValueError, match="not a synchronous"):
        Simulation(mlp, clients, test, rounds=3, per_round=4, metric=accuracy).run(resume=tmp_path / "async")


@pytest.mark.parametrize(("kw", "flag"), [
    ({"secagg": True, "codec": "q:bits=8"}, "--secagg"),
    ({"dp_clip": 1.0}, "--dp-clip"),
    ({"policy": "deadline:seconds=5"}, "--policy"),
    ({"aggregate": "trimmed_mean"}, "--aggregate trimmed_mean"),
    ({"attack": "signflip"}, "--attack"),
    ({"deadline": 5.0}, "--deadline"),
    ({"per_round": 5}, "--per-round"),
    ({"prune": 0.5}, "--prune"),
    ({"concurrency": 2}, r"--concurrency \(2\) must be >= --async-buffer \(3\)"),
    ({"staleness": "cube"}, "bad staleness"),
])
def test_run_config_refuses_what_assumes_synchronous_rounds(kw, flag):
    with pytest.raises(ConfigError, match=flag):
        RunConfig(async_buffer=3, **kw).check()


def test_run_config_async_options_need_async_buffer():
    with pytest.raises(ConfigError, match="--concurrency is an option of --async-buffer"):
        RunConfig(concurrency=4).check()
    with pytest.raises(ConfigError, match="--staleness is an option of --async-buffer"):
        RunConfig(staleness="none").check()
    with pytest.raises(ConfigError, match="async_buffer must be a positive integer"):
        RunConfig(async_buffer=0).check()


def test_run_experiment_and_cli_write_the_report_files(tmp_path):
    cfg = RunConfig(scenario="digits", codec="q:bits=8", clients=6, rounds=3, async_buffer=2, concurrency=4,
                    network="mixed", target=0.2).check()
    res, _ = run_experiment(cfg, tmp_path / "api")
    assert res.summary["mode"] == "async" and res.summary["buffer"] == 2 and res.summary["concurrency"] == 4
    assert res.summary["rounds_to_target"] is not None
    assert len((tmp_path / "api" / "metrics.jsonl").read_text().splitlines()) == 3

    from fedpress.cli import app

    out = tmp_path / "cli"
    r = CliRunner().invoke(app, ["run", "--scenario", "digits", "--clients", "6", "--rounds", "2", "--codec",
                                 "ef+topk:ratio=0.1+q:bits=8", "--async-buffer", "2", "--concurrency", "3",
                                 "--staleness", "hinge:a=1,b=1", "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    for name in ("metrics.jsonl", "summary.json", "report.html", "accuracy_vs_bytes.png", "metric_vs_time.png"):
        assert (out / name).exists(), name
    summ = json.loads((out / "summary.json").read_text())
    assert summ["staleness"] == "hinge:a=1,b=1" and summ["rounds"] == 2
    # --checkpoint-every / --resume: a run stopped after 2 steps and resumed to 4 equals 4 at once
    base = ["run", "--scenario", "digits", "--clients", "6", "--codec", "ef+topk:ratio=0.1+q:bits=8",
            "--async-buffer", "2", "--concurrency", "4", "--network", "mixed", "--checkpoint-every", "2", "--quiet"]
    for args in (["--rounds", "4", "--out", str(tmp_path / "whole")],
                 ["--rounds", "2", "--out", str(tmp_path / "cut")],
                 ["--rounds", "4", "--out", str(tmp_path / "cut"), "--resume", str(tmp_path / "cut")]):
        r = CliRunner().invoke(app, base + args)
        assert r.exit_code == 0, r.output
    assert (tmp_path / "cut" / "checkpoint.pt").exists()
    assert (tmp_path / "whole" / "metrics.jsonl").read_bytes() == (tmp_path / "cut" / "metrics.jsonl").read_bytes()
    r = CliRunner().invoke(app, ["run", "--scenario", "digits", "--async-buffer", "2", "--secagg", "--codec",
                                 "q:bits=8", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--async-buffer cannot be combined with --secagg" in r.output


def test_rules_pick_sparse_mean_only_where_top_k_runs():
    clients, test = blobs()
    sim = _async(clients, test, rounds=4, codec="ef+topk:ratio=0.2+q:bits=8; *.bias=ternary")
    assert sim.aggregate == "sparse_mean"
    proc = sim._aggregator.create()
    proc.accept({"0.weight": torch.tensor([1.0, 0.0]), "0.bias": torch.tensor([2.0, 0.0])}, weight=1.0)
    proc.accept({"0.weight": torch.tensor([3.0, 0.0]), "0.bias": torch.tensor([0.0, 0.0])}, weight=1.0)
    out = proc.result()[0]
    assert out["0.weight"].tolist() == [2.0, 0.0] and out["0.bias"].tolist() == [1.0, 0.0]
    res = sim.run()
    assert res.summary["codec"] == "ef+topk:ratio=0.2+q:bits=8; *.bias=ternary" and len(res.history) == 4
