"""`fedpress compare --jobs N`: rounds of every run reach the parent; a failing run fails alone."""

import json
import os

import pytest
from typer.testing import CliRunner

from fedpress.cli import _register_subcommands, app, compare
from fedpress.sim import experiment
from fedpress.sim.experiment import RunConfig, RunFailed

_register_subcommands()
TINY = ["--scenario", "digits", "--rounds", "2", "--clients", "6", "--per-round", "3"]


def _cfg():
    return RunConfig(scenario="digits", rounds=2, clients=6, per_round=3)


@pytest.fixture(scope="module", autouse=True)
def _warm():
    """One run in this process first: forked workers then inherit its imports (seconds each, cold)
    and its used OpenMP pool, the case where a forked worker would hang unless single-threaded."""
    experiment.run_experiment(_cfg(), None)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_parallel_compare_reports_rounds_of_every_run(tmp_path, method):
    seen = []
    runs, _ = compare(_cfg(), ["none", "q:bits=4"], tmp_path, jobs=2, quiet=True, mp_context=method,
                      on_round=lambda i, row: seen.append((i, row["round"], row["metric"])))
    assert sorted((i, r) for i, r, _ in seen) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    finals = {i: m for i, r, m in seen if r == 2}
    assert [finals[0], finals[1]] == [run["summary"]["final_metric"] for run in runs]
    assert (tmp_path / "report.html").exists()


def test_parallel_compare_quiet_json_prints_only_the_json(tmp_path):
    r = CliRunner().invoke(app, ["compare", *TINY, "-c", "none", "-c", "fp16", "--jobs", "2",
                                 "--out", str(tmp_path), "--quiet", "--json"])
    assert r.exit_code == 0, r.output
    assert r.stderr == ""
    [line] = r.stdout.splitlines()
    assert {row["codec"] for row in json.loads(line)} == {"none", "fp16"}


def test_parallel_compare_shows_a_bar_per_run(tmp_path):
    r = CliRunner().invoke(app, ["compare", *TINY, "-c", "none", "-c", "fp16", "--jobs", "2",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    bars = [line for line in r.stderr.splitlines() if "2/2" in line and "✓" in line]
    assert any(" none " in b for b in bars) and any(" fp16 " in b for b in bars), r.stderr


def test_a_failing_or_crashing_run_fails_alone(tmp_path, monkeypatch):
    """A run that raises and one whose process dies give one error; the other runs still finish
    (the crash breaks the pool, so its casualties rerun one process each)."""
    real = experiment.run_experiment

    def flaky(cfg, out_dir, **kw):
        if cfg.codec == "fp16":
            os._exit(3)  # a hard crash: no exception, no result
        if cfg.codec == "q:bits=4":
            raise ValueError("bad luck")
        return real(cfg, out_dir, **kw)

    monkeypatch.setattr(experiment, "run_experiment", flaky)  # forked workers inherit it
    seen = []
    with pytest.raises(RunFailed) as e:
        compare(_cfg(), ["fp16", "none", "q:bits=4", "q:bits=8"], tmp_path, jobs=2, quiet=True,
                mp_context="fork", on_round=lambda i, row: seen.append((i, row["round"])))
    msg = str(e.value)
    assert msg.startswith("codec 'fp16': its worker process died") and "1 more run(s) failed: 'q:bits=4'" in msg
    assert not e.value.user_error
    for ok in ("none", "q_bits=8"):
        assert json.loads((tmp_path / "runs" / ok / "summary.json").read_text())["rounds"] == 2
    assert {(1, 2), (3, 2)} <= set(seen)


def test_cli_reports_a_failed_parallel_run_in_one_line(tmp_path, monkeypatch):
    def broken(cfg, out_dir, **kw):
        raise FileNotFoundError(f"no data for {cfg.codec}")

    monkeypatch.setattr(experiment, "run_experiment", broken)
    r = CliRunner().invoke(app, ["compare", *TINY, "-c", "none", "-c", "fp16", "--jobs", "2",
                                 "--out", str(tmp_path), "--quiet"])
    assert r.exit_code == 2
    assert r.stderr == "error: codec 'none': no data for none; 1 more run(s) failed: 'fp16'\n"
