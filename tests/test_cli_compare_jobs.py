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


# --- compare --seeds N: every codec over the same seeds, aggregated with its spread ---------------


def _csv(path):
    import csv

    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_compare_over_seeds_aggregates_what_each_run_measured(tmp_path, jobs):
    codecs, seeds = ["none", "q:bits=4"], [3, 4]  # --seed 3 --seeds 2: seeds 3 and 4
    r = CliRunner().invoke(app, ["compare", *TINY, "-c", codecs[0], "-c", codecs[1], "--seed", "3",
                                 "--seeds", "2", "--jobs", jobs, "--target", "0.2", "--out", str(tmp_path),
                                 "--quiet", "--json"])
    assert r.exit_code == 0, r.output
    summaries = {(c, s): json.loads((tmp_path / "runs" / experiment.slug(c) / f"seed{s}" / "summary.json")
                                    .read_text()) for c in codecs for s in seeds}
    assert all(v["seed"] == s and v["codec"] == c for (c, s), v in summaries.items())
    # the same seed gives every codec the same partition: paired runs
    assert len({(tmp_path / "runs" / experiment.slug(c) / "seed3" / "partition.json").read_text()
                for c in codecs}) == 1

    runs = _csv(tmp_path / "runs.csv")
    assert [(row["codec"], int(row["seed"])) for row in runs] == [(c, s) for c in codecs for s in seeds]
    for row in runs:
        assert float(row["final_metric"]) == summaries[row["codec"], int(row["seed"])]["final_metric"]

    agg = {row["codec"]: row for row in _csv(tmp_path / "results.csv")}
    assert list(agg) == codecs
    for c in codecs:
        for key, total in (("final_metric", "final_metric"), ("best_metric", "best_metric"),
                           ("uplink_bytes", "total_uplink_bytes"), ("downlink_bytes", "total_downlink_bytes")):
            vals = [summaries[c, s][total] for s in seeds]
            assert float(agg[c][f"{key}_mean"]) == pytest.approx(sum(vals) / len(vals)), (c, key)
            assert float(agg[c][f"{key}_min"]) == pytest.approx(min(vals))
            assert float(agg[c][f"{key}_max"]) == pytest.approx(max(vals))
        assert agg[c]["n_seeds"] == "2" and json.loads(agg[c]["seeds"]) == seeds
    # The paired comparison, recomputed from the summaries.
    deltas = [summaries["q:bits=4", s]["final_metric"] - summaries["none", s]["final_metric"] for s in seeds]
    q4 = agg["q:bits=4"]
    assert q4["baseline"] == "none" and q4["paired_seeds"] == "2"
    assert float(q4["delta_final_vs_baseline_mean"]) == pytest.approx(sum(deltas) / 2)
    assert int(q4["seeds_not_worse_than_baseline"]) == sum(d >= 0 for d in deltas)
    assert agg["none"]["seeds_not_worse_than_baseline"] == ""

    [line] = r.stdout.splitlines()  # --json: the aggregated rows, per-seed values included
    printed = {row["codec"]: row for row in json.loads(line)}
    assert printed["q:bits=4"]["per_seed"]["final_metric"] == [summaries["q:bits=4", s]["final_metric"]
                                                               for s in seeds]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["seeds"] == seeds and data["config"]["seeds"] == 2 and len(data["runs"]) == 4
    assert data["paired"][0]["per_seed"][1]["delta"] == pytest.approx(deltas[1])
    page = (tmp_path / "report.html").read_text()
    assert "2 codec(s) × 2 seeds (3, 4)" in page and "Paired comparison" in page
    for name in ("accuracy_vs_bytes.png", "metric_vs_round.png", "metric_vs_time.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_parallel_compare_over_seeds_reports_every_run(tmp_path):
    seen = []
    runs, _ = compare(_cfg(), ["none", "fp16"], tmp_path, jobs=2, quiet=True, mp_context="fork", seeds=2,
                      on_round=lambda i, row: seen.append((i, row["round"], row["metric"])))
    assert [(run["summary"]["codec"], run["summary"]["seed"]) for run in runs] == [
        ("none", 0), ("none", 1), ("fp16", 0), ("fp16", 1)]
    assert sorted((i, r) for i, r, _ in seen) == [(i, r) for i in range(4) for r in (1, 2)]
    finals = {i: m for i, r, m in seen if r == 2}
    assert [finals[i] for i in range(4)] == [run["summary"]["final_metric"] for run in runs]


def test_compare_shows_the_table_over_seeds(tmp_path):
    r = CliRunner().invoke(app, ["compare", *TINY, "--rounds", "1", "-c", "none", "-c", "fp16", "--seeds", "2",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "2 codecs × 2 seeds" in r.stderr and "mean ± sample std over 2 seeds (0, 1)" in r.stderr
    assert "Δ final vs none" in r.stderr and "≥ none" in r.stderr


@pytest.mark.parametrize("bad", ["0", "-2"])
def test_bad_seeds_is_one_clear_error(tmp_path, bad):
    r = CliRunner().invoke(app, ["compare", *TINY, "-c", "none", "--seeds", bad, "--out", str(tmp_path)])
    assert r.exit_code == 2
    assert r.output == f"error: --seeds must be a positive integer (runs per codec), got {bad}\n"
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ValueError, match="seeds must be a positive integer"):
        compare(_cfg(), ["none"], tmp_path, seeds=int(bad))


def test_seeds_from_a_toml_config(tmp_path):
    cfg = tmp_path / "exp.toml"
    cfg.write_text('scenario = "digits"\ncodecs = ["none", "fp16"]\nseeds = 2\nrounds = 1\nclients = 4\n'
                   'per_round = 2\njobs = 1\n')
    r = CliRunner().invoke(app, ["compare", "--config", str(cfg), "--out", str(tmp_path / "o"), "-q"])
    assert r.exit_code == 0, r.output
    assert len(_csv(tmp_path / "o" / "runs.csv")) == 4 and len(_csv(tmp_path / "o" / "results.csv")) == 2
    # the flag wins over the file, as every option does
    r = CliRunner().invoke(app, ["compare", "--config", str(cfg), "--seeds", "1", "--out", str(tmp_path / "p"),
                                 "-q"])
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "p" / "runs.csv").exists()
    cfg.write_text('scenario = "digits"\nseeds = 0\n')
    r = CliRunner().invoke(app, ["compare", "--config", str(cfg)])
    assert r.exit_code == 2 and r.output == "error: config key 'seeds' must be a positive integer, got 0\n"


def test_a_failed_run_over_seeds_names_its_seed(tmp_path, monkeypatch):
    def broken(cfg, out_dir, **kw):
        raise FileNotFoundError(f"no data for {cfg.codec}")

    monkeypatch.setattr(experiment, "run_experiment", broken)
    r = CliRunner().invoke(app, ["compare", *TINY, "-c", "none", "-c", "fp16", "--seeds", "2", "--jobs", "2",
                                 "--out", str(tmp_path), "--quiet"])
    assert r.exit_code == 2
    assert r.stderr == ("error: codec 'none' (seed 0): no data for none; 3 more run(s) failed: "
                        "'none' (seed 1), 'fp16' (seed 0), 'fp16' (seed 1)\n")
