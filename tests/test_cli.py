import csv
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fedpress.cli import _register_subcommands, app
from fedpress.report.tables import RESULT_COLUMNS

_register_subcommands()
runner = CliRunner()

TINY = ["--scenario", "digits", "--rounds", "2", "--clients", "6", "--per-round", "3"]


def test_run_writes_contract_files(tmp_path):
    r = runner.invoke(app, ["run", *TINY, "--codec", "ef+topk:ratio=0.05+q:bits=8", "--out", str(tmp_path),
                            "--quiet", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["codec"] == "ef+topk:ratio=0.05+q:bits=8" and summary["rounds"] == 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [1, 2]
    assert json.loads(r.stdout.strip().splitlines()[-1])["total_uplink_bytes"] == summary["total_uplink_bytes"]
    assert "ef+topk:ratio=0.05+q:bits=8" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize("seeds", [[], ["--seeds", "1"]])
def test_compare_writes_report(tmp_path, seeds):
    r = runner.invoke(app, ["compare", *TINY, "--codec", "none", "--codec", "q:bits=4", "--out", str(tmp_path),
                            "--quiet", "--target", "0.3", *seeds])
    assert r.exit_code == 0, r.output
    for name in ("results.csv", "results.json", "accuracy_vs_bytes.png", "report.html"):
        assert (tmp_path / name).exists(), name
    # One seed (the default) is the one-row-per-run report it always was.
    assert next(csv.reader((tmp_path / "results.csv").open())) == list(RESULT_COLUMNS)
    assert not (tmp_path / "runs.csv").exists() and (tmp_path / "runs" / "q_bits=4" / "summary.json").exists()
    res = json.loads((tmp_path / "results.json").read_text())
    rows = res["rows"] if isinstance(res, dict) else res
    by = {row["codec"]: row for row in rows}
    assert by["none"]["uplink_bytes"] > 6 * by["q:bits=4"]["uplink_bytes"]
    assert by["q:bits=4"]["compression_ratio"] > 6


def test_config_file_and_cli_override(tmp_path):
    cfg = tmp_path / "exp.toml"
    cfg.write_text('scenario = "digits"\ncodec = "q:bits=8"\nrounds = 1\nclients = 4\nper_round = 2\n')
    r = runner.invoke(app, ["run", "--config", str(cfg), "--codec", "fp16", "--out", str(tmp_path / "o"), "-q"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["codec"] == "fp16"


def test_unknown_config_key_is_one_clear_line(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('scenario = "digits"\nrounds = 2\nlearning_rate = 0.1\n')
    r = runner.invoke(app, ["run", "--config", str(cfg), "--out", str(tmp_path)])
    assert r.exit_code == 2
    assert "unknown config key(s)" in r.output and "learning_rate" in r.output
    assert "Traceback" not in r.output


def test_bad_values_and_specs_are_one_clear_line(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('rounds = "many"\n')
    r = runner.invoke(app, ["run", "--config", str(cfg)])
    assert r.exit_code == 2 and "rounds" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["run", *TINY, "--codec", "topk:ratio=2"])
    assert r.exit_code == 2
    assert r.output.strip().count("\n") == 0 and "ratio must be in (0, 1], got 2" in r.output
    r = runner.invoke(app, ["compare", *TINY, "--codec", "none", "--codec", "q:bits=9", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "bits" in r.output
    r = runner.invoke(app, ["run", "--scenario", "nope"])
    assert r.exit_code == 2 and "unknown scenario" in r.output


def test_missing_dataset_files_are_a_clear_error(tmp_path):
    r = runner.invoke(app, ["run", "--scenario", "mnist", "--data-root", str(tmp_path), "--rounds", "1"])
    assert r.exit_code == 2 and "error:" in r.output and "Traceback" not in r.output


def test_listing_commands():
    r = runner.invoke(app, ["codecs"])
    assert r.exit_code == 0 and "topk" in r.output and "powersgd" in r.output
    r = runner.invoke(app, ["scenarios"])
    assert r.exit_code == 0 and "healthcare" in r.output and "iot" in r.output


# Every flag `run` and `compare` had before their shared options were declared once (captured from
# the two hand-written parameter lists with click introspection); extending is fine, losing is not.
SHARED_FLAGS = {
    "--address", "--aggregate", "--alpha", "--attack", "--backend", "--batch-size", "--clients", "--close-early",
    "--codec", "--config", "--data-root", "--deadline", "--down-codec", "--dp-adaptive", "--dp-clip", "--dp-mode",
    "--dp-delta", "--dp-noise", "--dropout", "--jitter", "--json", "--l1", "--l2", "--local-epochs",
    "--lr", "--network", "--no-dp-adaptive", "--no-secagg", "--out", "--partition", "--per-round",
    "--policy", "--prox-mu", "--prune", "--prune-mode", "--prune-scope", "--quiet", "--rounds",
    "--sampling", "--scenario", "--secagg", "--secagg-threshold", "--seed", "--server-lr", "--strategy", "--target",
    "--target-epsilon", "--wait-full-deadline", "--workers", "-c", "-o", "-q", "-s",
    "--scaffold-controls",  # SCAFFOLD (fedpress.fl.scaffold), added since
}
# Asynchronous FedBuff (fedpress.sim.fedbuff), added since.
SHARED_FLAGS |= {"--async-buffer", "--concurrency", "--staleness"}
RUN_FLAGS = SHARED_FLAGS | {"--checkpoint-every", "--per-client-eval", "--no-per-client-eval", "--resume"}
COMPARE_FLAGS = SHARED_FLAGS | {"--jobs", "-j", "--seeds"}


def _params(name):
    import typer

    return {p.name: p for p in typer.main.get_command(app).commands[name].params}


def test_run_and_compare_keep_every_flag():
    for name, flags in (("run", RUN_FLAGS), ("compare", COMPARE_FLAGS)):
        got = {o for p in _params(name).values() for o in (*p.opts, *p.secondary_opts)}
        assert got == flags, (name, got ^ flags)
    run, cmp_ = _params("run"), _params("compare")
    for key in set(run) & set(cmp_) - {"codec", "out"}:  # one definition: same flags, help, default
        a, b = run[key], cmp_[key]
        assert (a.opts, a.secondary_opts, a.help, a.default) == (b.opts, b.secondary_opts, b.help, b.default)
    assert run["out"].default == Path("results/run") and cmp_["out"].default is None
    assert cmp_["codec"].multiple and not run["codec"].multiple
    assert all(p.default is None for k, p in run.items() if k not in ("out", "quiet", "json_out"))
    assert [p.name for p in run.values()][:2] == ["scenario", "codec"]  # --help order kept


def test_help_lists_the_shared_options():
    for name in ("run", "compare"):
        r = runner.invoke(app, [name, "--help"])
        assert r.exit_code == 0
        for flag in ("--scenario", "--down-codec", "--dp-adaptive", "--target", "--config", "--json"):
            assert flag in r.output, (name, flag)


def test_compare_checks_the_codecs_it_runs_not_the_default(tmp_path):
    # --secagg used to be checked against the default codec 'none', so compare --secagg always failed
    ok = runner.invoke(app, ["compare", "--scenario", "digits", "--secagg", "-c", "q:bits=8", "-c",
                             "rht+q:bits=8", "--rounds", "1", "--out", str(tmp_path / "a"), "-q"])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(app, ["compare", "--scenario", "digits", "--secagg", "-c", "q:bits=8", "-c", "ef+sign",
                              "--rounds", "1", "--out", str(tmp_path / "b"), "-q"])
    assert bad.exit_code != 0 and "ef+sign" in bad.output and "secagg" in bad.output
    assert not (tmp_path / "b" / "runs").exists()  # refused before any run


def test_inspect_breaks_a_blob_down_and_refuses_bad_files(tmp_path):
    import fedpress

    sd = {"w": torch.randn(40, 30), "b": torch.randn(30)}
    f = tmp_path / "u.bin"
    f.write_bytes(fedpress.compress(sd, "ef+topk:ratio=0.1+q:bits=8; b=none", seed=1))
    r = runner.invoke(app, ["inspect", str(f), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["total_bytes"] == f.stat().st_size
    assert [(t["name"], t["pipeline"]) for t in d["tensors"]] == [("w", "ef+topk:ratio=0.1+q:bits=8"), ("b", "none")]
    assert d["tensors"][1]["payload_bytes"] == 120
    r = runner.invoke(app, ["inspect", str(f)])
    assert r.exit_code == 0 and "ef+topk:ratio=0.1+q:bits=8" in r.output
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a blob at all")
    r = runner.invoke(app, ["inspect", str(bad)])
    assert r.exit_code == 2 and "bad magic" in r.output
    r = runner.invoke(app, ["inspect", str(tmp_path / "missing.bin")])
    assert r.exit_code == 2 and "cannot read" in r.output


def test_inspect_reads_fingerprinted_uploads_with_the_models_state_dict(tmp_path):
    import fedpress

    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4))
    sd = model.state_dict()
    torch.save(sd, tmp_path / "model.pt")
    update = {k: torch.randn(v.shape) for k, v in sd.items() if v.is_floating_point()}  # no int buffer
    c = fedpress.codec("q:bits=8")
    f = tmp_path / "up.bin"
    f.write_bytes(c.encode_ex(update, structure="fingerprint", spec_ref=True).blob)
    r = runner.invoke(app, ["inspect", str(f), "--json"])
    assert r.exit_code == 2 and "fingerprint" in r.output
    r = runner.invoke(app, ["inspect", str(f), "--json", "--structure-from", str(tmp_path / "model.pt"),
                            "--spec", "q:bits=8"])
    assert r.exit_code == 0, r.output
    assert [t["name"] for t in json.loads(r.output)["tensors"]] == list(update)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    r = runner.invoke(app, ["inspect", str(f), "--structure-from", str(tmp_path / "junk.pt")])
    assert r.exit_code == 2 and "cannot load a state_dict" in r.output
