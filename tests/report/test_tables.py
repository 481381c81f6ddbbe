from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
from rich.console import Console

from fedpress.report import (
    format_bytes,
    format_ratio,
    results_table,
    rich_table,
    rounds_to_target,
    write_csv,
    write_json,
)
from fedpress.report.tables import RESULT_COLUMNS, higher_is_better


def test_rows_and_compression_ratios(runs):
    rows = results_table(runs)
    assert [r["codec"] for r in rows] == [r["summary"]["codec"] for r in runs]
    ratios = [r["compression_ratio"] for r in rows]
    # 5 rounds x 40_000 B baseline against 5 x {40_000, 10_000, 800, 5_000} B.
    assert ratios == pytest.approx([1.0, 4.0, 50.0, 8.0])
    assert rows[2]["uplink_bytes"] == 4000
    assert rows[2]["downlink_bytes"] == 5000
    assert rows[3]["down_codec"] == "fp16"
    assert rows[0]["down_codec"] is None
    assert rows[1]["final_metric"] == pytest.approx(0.91)
    assert rows[1]["best_metric"] == pytest.approx(0.91)
    assert rows[0]["sim_seconds"] == pytest.approx(10.0)
    assert rows[0]["wall_seconds"] == pytest.approx(1.5)
    assert set(RESULT_COLUMNS) <= set(rows[0])


def test_no_baseline_gives_no_ratio(runs):
    rows = results_table(runs[1:])
    assert all(r["compression_ratio"] is None for r in rows)


def test_baseline_is_per_scenario(make_run):
    runs = [
        make_run("none", 100, [0.5]),
        make_run("q", 25, [0.5]),
        make_run("none", 1000, [0.5], scenario="fraud"),
        make_run("q", 100, [0.5], scenario="fraud"),
        make_run("q", 10, [0.5], scenario="iot"),  # no baseline in this scenario
    ]
    ratios = [r["compression_ratio"] for r in results_table(runs)]
    assert ratios == pytest.approx([1.0, 4.0, 1.0, 10.0, None])


def test_uplink_falls_back_to_history_when_summary_lacks_total(make_run):
    run = make_run("q", 7, [0.1, 0.2])
    del run["summary"]["total_uplink_bytes"]
    base = make_run("none", 28, [0.1, 0.2])
    rows = results_table([base, run])
    assert rows[1]["uplink_bytes"] == 14
    assert rows[1]["compression_ratio"] == pytest.approx(4.0)


def test_rounds_to_target_first_crossing_inclusive(runs):
    rows = results_table(runs, target=0.9)
    # none reaches exactly 0.9 in round 4 (>= counts); q:bits=8 first in round 5;
    # topk never; powersgd 0.9 in round 4.
    assert [r["rounds_to_target"] for r in rows] == [4, 5, None, 4]
    assert [r["sim_seconds_to_target"] for r in rows] == [8.0, 10.0, None, 8.0]
    assert all(r["target"] == 0.9 for r in rows)


def test_rounds_to_target_skips_missing_metrics_and_uses_round_numbers():
    hist = [
        {"round": 0, "metric": None, "sim_seconds": 0.0},
        {"round": 5, "metric": float("nan"), "sim_seconds": 1.0},
        {"round": 10, "metric": 0.7, "sim_seconds": 2.0},
        {"round": 15, "metric": 0.95, "sim_seconds": 3.0},
    ]
    assert rounds_to_target(hist, 0.9) == (15, 3.0)
    assert rounds_to_target(hist, 0.5) == (10, 2.0)
    assert rounds_to_target(hist, 0.99) == (None, None)
    assert rounds_to_target(hist, None) == (None, None)
    assert rounds_to_target([], 0.1) == (None, None)


def test_lower_is_better_metric_reaches_target_from_above(make_run):
    run = make_run("none", 10, [0.9, 0.5, 0.2, 0.1], metric_name="mse")
    assert higher_is_better("mse") is False
    assert results_table([run], target=0.25)[0]["rounds_to_target"] == 3


def test_target_from_summary_and_override(make_run):
    run = make_run("none", 10, [0.1, 0.6, 0.8], target=0.5)
    assert results_table([run])[0]["rounds_to_target"] == 2
    assert results_table([run], target=0.75)[0]["rounds_to_target"] == 3
    # Without any target the summary's own value (if any) is passed through.
    bare = make_run("none", 10, [0.1], rounds_to_target=7)
    assert results_table([bare])[0]["rounds_to_target"] == 7


def test_write_csv_round_trips(tmp_path, runs):
    rows = results_table(runs, target=0.9)
    path = write_csv(rows, tmp_path / "sub" / "results.csv")
    with path.open(newline="") as fh:
        parsed = list(csv.DictReader(fh))
    assert len(parsed) == len(runs)
    assert list(parsed[0])[: len(RESULT_COLUMNS)] == list(RESULT_COLUMNS)
    assert parsed[2]["codec"] == "ef+topk:ratio=0.01+q:bits=4+zstd"
    assert float(parsed[2]["compression_ratio"]) == pytest.approx(50.0)
    assert int(parsed[1]["uplink_bytes"]) == 50_000
    assert parsed[2]["rounds_to_target"] == ""  # None -> empty cell
    assert parsed[0]["down_codec"] == ""


def test_write_json_is_strict_and_handles_numpy(tmp_path):
    obj = {"a": np.float32(0.25), "b": np.arange(3), "c": float("nan"), "d": (1, float("inf"))}
    path = write_json(obj, tmp_path / "r.json")
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": 0.25, "b": [0, 1, 2], "c": None, "d": [1, None]}


def test_format_helpers():
    assert format_bytes(0) == "0 B"
    assert format_bytes(1023) == "1023 B"
    assert format_bytes(1024) == "1.00 KiB"
    assert format_bytes(int(2.5 * 2**20)) == "2.50 MiB"
    assert format_bytes(3 * 2**30) == "3.00 GiB"
    assert format_bytes(float("nan")) == "—"
    assert format_ratio(52.345) == "52.3×"
    assert format_ratio(math.inf) == "—"


def test_rich_table_formats_and_does_not_parse_markup(runs):
    runs[1]["summary"]["codec"] = "[bold]q[/bold]"
    rows = results_table(runs, target=0.9)
    table = rich_table(rows, title="digits comparison")
    assert table.title == "digits comparison"
    assert table.row_count == len(runs)
    console = Console(width=250, record=True, file=io.StringIO())
    console.print(table)
    text = console.export_text()
    assert "195.31 KiB" in text  # 200_000 B
    assert "50.0×" in text and "4.0×" in text and "1.0×" in text
    assert "[bold]q[/bold]" in text  # shown literally, not eaten as markup
    assert "accuracy" in text  # metric name in the caption
