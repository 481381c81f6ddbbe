"""Reports over several seeds: aggregated rows, the paired comparison, the mean-and-band plots and
the files `compare --seeds N` writes (synthetic runs; the CLI end to end is in test_cli_compare_jobs)."""

from __future__ import annotations

import csv
import json
import statistics

import numpy as np
import pytest
from matplotlib.image import imread

from fedpress.report import plot_metric_vs_bytes, write_report
from fedpress.report.plots import seed_band
from fedpress.report.seeds import (
    STAT_KEYS,
    group_runs,
    paired_comparison,
    paired_t,
    per_run_table,
    seeds_table,
)
from fedpress.report.tables import RESULT_COLUMNS

# Final metrics per (codec, seed): q8 ties the baseline twice and loses once; topk wins once.
FINALS = {
    "none": [0.90, 0.80, 0.85],
    "q:bits=8": [0.90, 0.78, 0.85],
    "ef+topk:ratio=0.01": [0.88, 0.82, 0.80],
}
UPLINK = {"none": 40_000, "q:bits=8": 10_000, "ef+topk:ratio=0.01": 800}


@pytest.fixture
def seeded(make_run):
    runs = []
    for codec, finals in FINALS.items():
        for seed, final in enumerate(finals):
            # Seed-dependent sizes for top-k (entropy-coded sparse blobs vary with the data).
            per_round = UPLINK[codec] + (100 * seed if codec.startswith("ef") else 0)
            runs.append(make_run(codec, per_round, [0.3, 0.6 + 0.05 * seed, final], seed=seed))
    return runs


def test_groups_are_codecs_in_order(seeded):
    groups = group_runs(seeded)
    assert [[r["summary"]["seed"] for r in g] for g in groups] == [[0, 1, 2]] * 3
    assert [g[0]["summary"]["codec"] for g in groups] == list(FINALS)


def test_aggregated_rows_are_mean_std_min_max_of_the_runs(seeded):
    rows = seeds_table(seeded, target=0.65)
    runs = per_run_table(seeded, target=0.65)
    assert [r["codec"] for r in rows] == list(FINALS)
    for row in rows:
        mine = [r for r in runs if r["codec"] == row["codec"]]
        assert row["n_seeds"] == 3 and row["seeds"] == [0, 1, 2]
        for key in STAT_KEYS:
            vals = [r[key] for r in mine if r[key] is not None]
            if not vals:
                assert row[f"{key}_mean"] is None
                continue
            assert row[f"{key}_mean"] == pytest.approx(statistics.fmean(vals))
            assert row[f"{key}_min"] == min(vals) and row[f"{key}_max"] == max(vals)
            if len(vals) > 1:
                assert row[f"{key}_std"] == pytest.approx(statistics.stdev(vals))
            assert row["per_seed"][key] == [r[key] for r in mine]
    by = {r["codec"]: r for r in rows}
    assert by["none"]["final_metric_mean"] == pytest.approx(0.85)
    assert by["none"]["final_metric_std"] == pytest.approx(0.05)
    # 3 rounds x 40_000 B every seed: no spread; top-k's bytes vary by seed.
    assert (
        by["none"]["uplink_bytes_std"] == 0.0 and by["ef+topk:ratio=0.01"]["uplink_bytes_std"] > 0
    )


def test_target_counts_and_statistics_over_the_seeds_that_reached_it(seeded):
    by = {r["codec"]: r for r in seeds_table(seeded, target=0.68)}
    # round 2 metric is 0.60 / 0.65 / 0.70 by seed: only seed 2 reaches 0.68 there; every final
    # metric (>= 0.78) reaches it in round 3 at the latest.
    none = by["none"]
    assert none["reached_target"] == 3
    assert none["per_seed"]["rounds_to_target"] == [3, 3, 2]
    assert none["rounds_to_target_mean"] == pytest.approx(8 / 3)
    assert none["per_seed"]["uplink_bytes_to_target"] == [120_000, 120_000, 80_000]
    assert seeds_table(seeded)[0]["reached_target"] is None  # no target: nothing to count
    unreached = seeds_table(seeded, target=0.95)[0]
    assert unreached["reached_target"] == 0 and unreached["rounds_to_target_mean"] is None


def test_compression_ratio_is_paired_by_seed(seeded):
    rows = per_run_table(seeded)
    topk = [r for r in rows if r["codec"] == "ef+topk:ratio=0.01"]
    assert [r["compression_ratio"] for r in topk] == pytest.approx([50.0, 40_000 / 900, 40.0])
    assert [r["seed"] for r in rows] == [0, 1, 2] * 3


def test_paired_comparison_counts_seeds_not_worse(seeded):
    paired = {p["codec"]: p for p in paired_comparison(seeded)}
    assert set(paired) == {
        "q:bits=8",
        "ef+topk:ratio=0.01",
    }  # the baseline is not compared to itself
    q8 = paired["q:bits=8"]
    assert q8["baseline"] == "none" and q8["paired_seeds"] == 3
    assert q8["seeds_not_worse"] == 2  # ties count as not worse
    assert [p["delta"] for p in q8["per_seed"]] == pytest.approx([0.0, -0.02, 0.0])
    assert q8["delta_final_mean"] == pytest.approx(-0.02 / 3)
    topk = paired["ef+topk:ratio=0.01"]
    assert topk["seeds_not_worse"] == 1
    assert topk["delta_final_min"] == pytest.approx(-0.05) and topk[
        "delta_final_max"
    ] == pytest.approx(0.02)
    row = {r["codec"]: r for r in seeds_table(seeded)}
    assert row["q:bits=8"]["seeds_not_worse_than_baseline"] == 2
    assert row["q:bits=8"]["delta_final_vs_baseline_mean"] == pytest.approx(-0.02 / 3)
    assert row["none"]["baseline"] is None and row["none"]["seeds_not_worse_than_baseline"] is None


def test_paired_comparison_has_a_t_interval_and_p_value(seeded):
    from scipy import stats

    topk = {p["codec"]: p for p in paired_comparison(seeded)}["ef+topk:ratio=0.01"]
    d = [p["delta"] for p in topk["per_seed"]]
    lo, hi = stats.t.interval(0.95, len(d) - 1, loc=np.mean(d), scale=stats.sem(d))
    assert (topk["delta_final_ci95_lo"], topk["delta_final_ci95_hi"]) == pytest.approx((lo, hi))
    assert topk["delta_final_ci95_lo"] < topk["delta_final_mean"] < topk["delta_final_ci95_hi"]
    assert topk["delta_final_p"] == pytest.approx(stats.ttest_rel([p["codec"] for p in topk["per_seed"]],
                                                                  [p["baseline"] for p in topk["per_seed"]]).pvalue)
    row = {r["codec"]: r for r in seeds_table(seeded)}["ef+topk:ratio=0.01"]
    assert row["delta_final_vs_baseline_p"] == topk["delta_final_p"]
    # undefined with one seed or no spread: None, not a fake certainty
    one = [r for r in seeded if r["summary"]["seed"] == 0]
    assert paired_comparison(one)[0]["delta_final_ci95_lo"] is None
    assert paired_t([0.01, 0.01, 0.01]) == (None, None, None)


def test_paired_comparison_follows_the_metric_direction(make_run):
    runs = [
        make_run("none", 10, [0.5, m], seed=s, metric_name="mse") for s, m in enumerate((0.2, 0.3))
    ]
    runs += [
        make_run("q", 5, [0.5, m], seed=s, metric_name="mse") for s, m in enumerate((0.1, 0.4))
    ]
    [p] = paired_comparison(runs)
    assert p["seeds_not_worse"] == 1  # a lower MSE (seed 0) is not worse, a higher one is


def test_band_aligns_by_round_and_averages_x(make_run):
    a = make_run("q", 100, [0.2, 0.4, 0.6], seed=0)
    b = make_run("q", 300, [0.4, float("nan"), 0.8], seed=1)  # round 2 not evaluated in seed 1
    xs, mean, lo, hi = seed_band([a, b], "cum_uplink_bytes")
    assert xs == [200.0, 600.0]  # rounds 1 and 3 only, x the mean of the seeds' cumulative bytes
    assert mean == pytest.approx([0.3, 0.7]) and lo == [0.2, 0.6] and hi == [0.4, 0.8]
    assert seed_band([a, b], "round")[0] == [1.0, 3.0]


def _light(path, rgb, alpha=0.15, tol=0.03):
    """Pixels of colour ``rgb`` at ``alpha`` over white: the shaded band."""
    img = imread(path)[..., :3]
    want = 1.0 - alpha * (1.0 - np.array(rgb))
    return int(np.all(np.abs(img - want) < tol, axis=-1).sum())


def test_bytes_plot_over_seeds_draws_a_band(tmp_path, seeded):
    orange = (1.0, 0.498, 0.055)  # C1: q:bits=8
    banded = plot_metric_vs_bytes(seeded, tmp_path / "b.png", over_seeds=True)
    lines = plot_metric_vs_bytes([seeded[3]], tmp_path / "l.png")
    assert _light(banded, orange) > 1000 > _light(lines, orange)


def test_write_report_over_seeds(tmp_path, seeded, partition):
    paths = write_report(
        tmp_path, seeded, config={"seeds": 3}, partition=partition, target=0.68, over_seeds=True
    )
    with paths["runs_csv"].open(newline="") as fh:
        per_run = list(csv.DictReader(fh))
    assert [(r["codec"], r["seed"]) for r in per_run] == [
        (c, str(s)) for c in FINALS for s in range(3)
    ]
    assert list(per_run[0])[: len(RESULT_COLUMNS)] == list(RESULT_COLUMNS)
    with paths["csv"].open(newline="") as fh:
        agg = list(csv.DictReader(fh))
    assert [r["codec"] for r in agg] == list(FINALS)
    assert "per_seed" not in agg[0] and "final_metric" not in agg[0]
    for key in ("final_metric", "best_metric", "uplink_bytes", "rounds_to_target"):
        assert {f"{key}_{s}" for s in ("mean", "std", "min", "max")} <= set(agg[0])
    assert float(agg[1]["final_metric_mean"]) == pytest.approx(statistics.fmean(FINALS["q:bits=8"]))
    assert (
        agg[1]["seeds_not_worse_than_baseline"] == "2"
        and agg[0]["seeds_not_worse_than_baseline"] == ""
    )

    data = json.loads(paths["json"].read_text())
    assert data["seeds"] == [0, 1, 2] and len(data["runs"]) == 9 and len(data["histories"]) == 9
    assert data["rows"][2]["per_seed"]["final_metric"] == pytest.approx(
        FINALS["ef+topk:ratio=0.01"]
    )
    assert [p["codec"] for p in data["paired"]] == ["q:bits=8", "ef+topk:ratio=0.01"]

    page = paths["html"].read_text()
    assert "3 codec(s) × 3 seeds (0, 1, 2)" in page
    assert "Paired comparison" in page and "id='paired'" in page and "id='runs'" in page
    paired_table = page[page.index("id='paired'"):page.index("</table>", page.index("id='paired'"))]
    assert "seeds ≥ none" in paired_table and "{" not in paired_table  # headers are formatted
    assert "95 % CI (p)" in paired_table and "(p = " in paired_table
    assert agg[2]["delta_final_vs_baseline_ci95_lo"] != ""
    assert "0.850 ± 0.050" in page  # none's final metric, mean ± std
    assert "shaded: min–max across seeds" in page and "the partition of seed 0" in page


def test_one_seed_report_keeps_its_files(tmp_path, runs):
    paths = write_report(tmp_path, runs, config={})
    assert "runs_csv" not in paths and not (tmp_path / "runs.csv").exists()
    with paths["csv"].open(newline="") as fh:
        assert next(csv.reader(fh)) == list(RESULT_COLUMNS)
    assert "seeds" not in json.loads(paths["json"].read_text())
