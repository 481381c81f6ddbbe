import json

import numpy as np
import pytest
import torch
from toy_fl import accuracy, blobs, mlp

import fedpress
from fedpress.sim.network import Link
from fedpress.sim.runner import Simulation

_acc, _data, _model = accuracy, blobs, mlp


def _sim(**kw):
    clients, test = _data()
    args = {"rounds": 4, "per_round": 4, "lr": 0.1, "metric": _acc, "network": "4g"}
    args.update(kw)
    return Simulation(_model, clients, test, **args)


def test_learns_and_reports_contract_keys(tmp_path):
    res = _sim(rounds=6, out_dir=tmp_path).run()
    assert res.history[-1]["metric"] > 0.8
    for key in ("round", "metric", "loss", "uplink_bytes", "downlink_bytes", "cum_uplink_bytes",
                "cum_downlink_bytes", "sim_seconds"):
        assert key in res.history[0]
    summ = json.loads((tmp_path / "summary.json").read_text())
    for key in ("scenario", "codec", "final_metric", "best_metric", "metric_name", "total_uplink_bytes",
                "total_downlink_bytes", "rounds", "sim_seconds", "wall_seconds", "seed"):
        assert key in summ
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[-1])["round"] == 6


def test_same_seed_same_metrics_file(tmp_path):
    _sim(out_dir=tmp_path / "a", codec="ef+topk:ratio=0.1+qsgd:levels=4").run()
    _sim(out_dir=tmp_path / "b", codec="ef+topk:ratio=0.1+qsgd:levels=4").run()
    _sim(out_dir=tmp_path / "c", codec="ef+topk:ratio=0.1+qsgd:levels=4", seed=1).run()
    a, b, c = ((tmp_path / d / "metrics.jsonl").read_bytes() for d in "abc")
    assert a == b and a != c


def test_resumed_run_equals_uninterrupted(tmp_path):
    kw = {"codec": "ef+powersgd:rank=2+q:bits=8", "down_codec": "ef+q:bits=8", "checkpoint_every": 3}
    full = _sim(rounds=6, out_dir=tmp_path / "full", **kw).run()
    _sim(rounds=3, out_dir=tmp_path / "part", **kw).run()  # "interrupted" after round 3
    resumed = _sim(rounds=6, out_dir=tmp_path / "part", **kw).run(resume=tmp_path / "part")
    assert resumed.history == full.history
    assert (tmp_path / "full" / "metrics.jsonl").read_bytes() == (tmp_path / "part" / "metrics.jsonl").read_bytes()


def test_uplink_bytes_are_blob_lengths():
    res = _sim(codec="none").run()
    clients, _ = _data()
    upd = {k: torch.zeros_like(v) for k, v in _model().state_dict().items()}
    one = len(fedpress.compress(upd, "none", structure="fingerprint", spec_ref=True))
    for h in res.history:
        assert h["uplink_bytes"] == sum(h["client_uplink_bytes"].values())
        assert h["uplink_bytes"] == one * h["clients_online"]
        # no downlink codec: every client downloads the full model blob (with its structure)
        assert h["downlink_bytes"] == len(fedpress.compress(upd, "none")) * h["clients_online"]


def test_compression_cuts_uplink_bytes_by_measured_ratio():
    dense = _sim(codec="none").run().summary["total_uplink_bytes"]
    comp = _sim(codec="ef+topk:ratio=0.05+q:bits=8").run().summary["total_uplink_bytes"]
    assert dense / comp > 4


def test_downlink_codec_sends_less_to_in_sync_clients():
    res = _sim(rounds=6, per_round=8, down_codec="q:bits=8").run()
    full = _sim(rounds=6, per_round=8).run()
    # round 1 everyone downloads the full model; afterwards in-sync clients get a q8 delta
    assert res.history[0]["downlink_bytes"] == full.history[0]["downlink_bytes"]
    assert res.history[-1]["downlink_bytes"] < full.history[-1]["downlink_bytes"] / 3


def test_crashing_client_is_dropped_not_fatal():
    clients, test = _data()
    clients[2] = (torch.randn(10, 7), torch.zeros(10, dtype=torch.long))  # wrong feature size
    sim = Simulation(_model, clients, test, rounds=3, per_round=8, lr=0.1, metric=_acc)
    with pytest.warns(UserWarning, match="client 2 failed"):
        res = sim.run()
    assert all(h["clients_failed"] == 1 and h["clients_kept"] == 7 for h in res.history)


def test_round_with_no_survivor_is_skipped():
    clients, test = _data(n_clients=2)
    bad = [(torch.randn(10, 7), torch.zeros(10, dtype=torch.long))] * 2
    sim = Simulation(_model, bad, test, rounds=2, per_round=2, metric=_acc)
    with pytest.warns(UserWarning):
        res = sim.run()
    assert [h["clients_kept"] for h in res.history] == [0, 0]
    assert res.history[0]["metric"] == res.history[1]["metric"]


def test_deadline_drops_stragglers_and_a_round_with_one_waits_out_the_deadline():
    clients, test = _data(n_clients=4)
    fast = Link(up_mbps=50, down_mbps=50, latency_s=0.01)
    slow = Link(up_mbps=0.001, down_mbps=0.001, latency_s=1.0)
    links = [fast, fast, fast, slow]
    kw = {"rounds": 2, "per_round": 4, "metric": _acc, "network": links, "deadline": 5.0}
    res = Simulation(_model, clients, test, **kw).run()
    for h in res.history:
        assert h["clients_dropped"] == 1 and h["clients_kept"] == 3
        assert h["round_seconds"] == 5.0
    ideal = Simulation(_model, clients, test, wait_full_deadline=False, **kw).run()
    for h in ideal.history:
        assert h["clients_dropped"] == 1 and h["round_seconds"] < 5.0
    fast_only = Simulation(_model, clients[:3], test, **{**kw, "network": links[:3], "per_round": 3}).run()
    assert all(h["round_seconds"] < 5.0 for h in fast_only.history)


def test_pruning_saves_uplink_bytes(tmp_path):
    base = _sim(rounds=6, codec="q:bits=8").run()
    pr = _sim(rounds=6, codec="q:bits=8", prune={"sparsity": 0.8, "start": 2, "mode": "oneshot"}).run()
    assert pr.history[-1]["sparsity"] >= 0.79
    assert pr.history[-1]["uplink_bytes"] < 0.5 * base.history[-1]["uplink_bytes"]


def test_error_feedback_state_persists_for_clients_sitting_out(tmp_path):
    sim = _sim(rounds=3, per_round=2, codec="ef+topk:ratio=0.1", checkpoint_every=3, out_dir=tmp_path)
    sim.run()
    st = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert len(st["client_states"]) >= 2
    for s in st["client_states"].values():
        res = [v for k, v in s.items() if k.startswith("ef/")]
        assert res and any(np.abs(r).sum() > 0 for r in res)


def test_bad_arguments():
    clients, test = _data()
    with pytest.raises(fedpress.SpecError):
        Simulation(_model, clients, test, codec="topk:ratio=2")
    with pytest.raises(ValueError, match="empty"):
        Simulation(_model, [], test)


def test_sparse_mean_keeps_the_step_size_of_sparse_updates():
    kw = {"rounds": 1, "codec": "topk:ratio=0.05", "per_round": 8}
    plain = _sim(aggregate="mean", **kw).run().params
    sparse = _sim(aggregate="sparse_mean", **kw).run().params
    init = (torch.manual_seed(0), _model())[1].state_dict()

    def moved(p):
        return sum(float((p[k] - init[k]).abs().sum()) for k in p)

    assert moved(sparse) > 1.3 * moved(plain)
    with pytest.raises(ValueError, match="sparse_mean"):
        _sim(aggregate="sparse_mean", dp_clip=1.0)


def test_auto_aggregation_picks_sparse_mean_only_for_biased_sparsifiers():
    assert _sim(codec="ef+topk:ratio=0.1").aggregate == "sparse_mean"
    assert _sim(codec="qsgd:levels=4").aggregate == "mean"  # exact zeros are real values here
    assert _sim(codec="topk:ratio=0.1", dp_clip=1.0).aggregate == "mean"
    # a rule that sparsifies some tensors counts too
    assert _sim(codec="q:bits=8; *.weight=ef+topk:ratio=0.1").aggregate == "sparse_mean"
    assert _sim(codec="q:bits=8; *.bias=none").aggregate == "mean"


def test_per_tensor_rules_run_and_pay_for_what_the_rules_send(tmp_path):
    """A run with rules learns, records the canonical routed spec, and every upload carries the
    biases' raw bytes (the codec-level tests show they decode exactly)."""
    spec = "ef+topk:ratio=0.2+q:bits=8; *.bias=none"
    res = _sim(codec=spec, rounds=6, out_dir=tmp_path, aggregate="mean").run()
    assert res.history[-1]["metric"] > 0.8
    assert json.loads((tmp_path / "summary.json").read_text())["codec"] == spec
    upd = {k: torch.zeros_like(v) for k, v in _model().state_dict().items()}
    one = len(fedpress.compress(upd, spec, structure="fingerprint", spec_ref=True))
    biases_raw = sum(v.numel() * 4 for k, v in upd.items() if k.endswith(".bias"))
    plain = _sim(codec="ef+topk:ratio=0.2+q:bits=8", rounds=6).run()
    # every upload carries the biases' raw bytes, so a routed upload is larger than them
    for h, hp in zip(res.history, plain.history, strict=True):
        assert h["uplink_bytes"] >= biases_raw * h["clients_online"]
        assert h["clients_online"] == 0 or h["uplink_bytes"] > hp["uplink_bytes"]
    assert one > biases_raw


def test_per_client_eval_groups_the_metric_by_link_kind():
    clients, test = _data(n_clients=4)
    fast = Link(up_mbps=50, down_mbps=50, latency_s=0.01, kind="wifi")
    slow = Link(up_mbps=1, down_mbps=1, latency_s=0.1, kind="nbiot")
    res = Simulation(_model, clients, test, rounds=2, per_round=4, metric=_acc, network=[fast, fast, slow, slow],
                     per_client_eval=True).run()
    by = res.history[-1]["client_metric_by_kind"]
    assert set(by) == {"wifi", "nbiot"}
    assert min(by.values()) <= res.history[-1]["client_metric_mean"] <= max(by.values())


def test_summary_says_where_the_last_upload_bytes_went():
    spec = "ef+topk:ratio=0.2+q:bits=8; *.bias=none"
    res = _sim(codec=spec).run()
    a = res.summary["upload_anatomy"]
    last = max(h["round"] for h in res.history if h["clients_kept"])
    row = next(h for h in res.history if h["round"] == last)
    assert a["round"] == last and a["codec"] == spec
    assert a["total_bytes"] == row["client_uplink_bytes"][str(a["client"])]
    assert a["total_bytes"] == a["envelope_bytes"] + a["body_bytes"]
    names = [t["name"] for t in a["tensors"]]
    assert names == [k for k, v in _model().state_dict().items()]
    for t in a["tensors"]:
        assert t["pipeline"] == ("none" if t["name"].endswith(".bias") else "ef+topk:ratio=0.2+q:bits=8")
        if t["pipeline"] == "none":
            assert t["payload_bytes"] == 4 * int(np.prod(t["shape"]))
