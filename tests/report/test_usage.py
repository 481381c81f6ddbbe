"""Policy runs in the report: labelled as policies, never the compression baseline, and a table of
the codecs chosen per client with their measured bytes."""


from toy_fl import random_task

from fedpress.report.html import render_html
from fedpress.report.tables import codec_usage, results_table
from fedpress.sim.network import Link
from fedpress.sim.runner import Simulation


def _runs():
    model, clients, test = random_task(1, n=40, n_test=80, features=8)
    fast = Link(up_mbps=20, down_mbps=50, latency_s=0.02)
    slow = Link(up_mbps=0.02, down_mbps=0.5, latency_s=0.1)
    kw = {"rounds": 4, "per_round": 4, "network": [fast, fast, slow, slow], "deadline": 3.0}
    runs = []
    for policy in (None, "deadline:seconds=3"):
        res = Simulation(model, clients, test, policy=policy, **kw).run()
        runs.append({"summary": res.summary, "history": res.history})
    return runs


def test_policy_runs_are_labelled_and_their_codec_choices_tabulated():
    runs = _runs()
    rows = results_table(runs)
    assert rows[0]["codec"] == "none" and rows[1]["codec"] == "policy deadline:seconds=3"
    # only the fixed uncompressed run is the baseline of the uplink ratio
    assert rows[0]["compression_ratio"] == 1.0
    assert rows[1]["compression_ratio"] > 1.0
    usage = [u for u in codec_usage(runs) if u["share"] is not None]
    assert sum(u["client_rounds"] for u in usage) == sum(len(h["client_uplink_bytes"]) for h in runs[1]["history"])
    assert sum(u["uplink_bytes"] for u in usage) == runs[1]["summary"]["total_uplink_bytes"]
    assert len(usage) >= 2  # fast and slow clients got different codecs
    from fedpress.report.plots import run_labels

    assert run_labels(runs) == ["none", "policy deadline:seconds=3"]
    page = render_html(rows, runs, images={})
    assert "Codecs chosen per client" in page and "id='usage'" in page
    assert "Codecs chosen per client" not in render_html(rows[:1], runs[:1], images={})


def test_policy_runs_given_different_codecs_are_told_apart():
    # compare --policy P -c none -c q:bits=8: two policy runs, one label each, everywhere.
    from fedpress.report.plots import run_labels

    pol = "deadline:seconds=3"
    runs = [{"summary": {"codec": c, "policy": pol, "seed": 0}, "history": []} for c in ("none", "q:bits=8")]
    want = [f"policy {pol} (codec none)", f"policy {pol} (codec q:bits=8)"]
    assert [r["codec"] for r in results_table(runs)] == want
    assert run_labels(runs) == want
    hist = [{"client_codecs": {"0": "none"}, "client_uplink_bytes": {"0": 10}}]
    runs = [dict(r, history=hist) for r in runs]
    assert [u["run"] for u in codec_usage(runs)] == want
