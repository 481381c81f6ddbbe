from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from fedpress.report import (
    plot_metric_vs_bytes,
    plot_metric_vs_round,
    plot_metric_vs_time,
    plot_partition,
)
from fedpress.report.plots import partition_matrix, run_labels

PNG_SIG = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIG
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def colour_pixels(path: Path, rgb: tuple[float, float, float], tol: float = 0.08) -> int:
    img = imread(path)[..., :3]
    return int(np.all(np.abs(img - np.array(rgb)) < tol, axis=-1).sum())


ORANGE = (1.0, 0.498, 0.055)  # matplotlib C1: the second run's line


@pytest.mark.parametrize("plot", [plot_metric_vs_bytes, plot_metric_vs_round, plot_metric_vs_time])
def test_plots_are_valid_nontrivial_pngs(tmp_path, runs, plot):
    path = plot(runs, tmp_path / f"{plot.__name__}.png", target=0.9)
    assert path.exists()
    w, h = png_size(path)
    assert w >= 600 and h >= 400
    assert path.stat().st_size > 10_000
    # The q:bits=8 run really was drawn (in C1), not just axes.
    assert colour_pixels(path, ORANGE) > 100


def test_plot_without_that_run_has_no_orange(tmp_path, runs):
    path = plot_metric_vs_bytes([runs[0]], tmp_path / "one.png")
    assert colour_pixels(path, ORANGE) < 20


def test_bytes_plot_survives_zero_bytes_and_missing_metrics(tmp_path, make_run):
    run = make_run("none", 100, [0.1, float("nan"), 0.3])
    run["history"].insert(0, {"round": 0, "metric": 0.05, "cum_uplink_bytes": 0})
    path = plot_metric_vs_bytes([run], tmp_path / "b.png")
    png_size(path)


def test_empty_runs_still_give_a_png(tmp_path):
    for plot in (plot_metric_vs_bytes, plot_metric_vs_round, plot_metric_vs_time):
        png_size(plot([], tmp_path / f"{plot.__name__}.png"))


def test_run_labels_are_unique(make_run):
    runs = [
        make_run("q", 1, [0.1], seed=0),
        make_run("q", 1, [0.1], seed=1),
        make_run("q", 1, [0.1], seed=1),
        make_run("q", 1, [0.1], down_codec="fp16"),
        make_run("none", 1, [0.1], down_codec="none"),
    ]
    labels = run_labels(runs)
    assert len(set(labels)) == len(labels)
    assert any("↓fp16" in lab for lab in labels)
    assert labels[-1] == "none"


def test_partition_matrix_shapes():
    ids, labels, counts, sizes = partition_matrix(
        {"label_counts": {"c0": {"cat": 2, "dog": 1}, "c1": {"dog": 4}}}
    )
    assert ids == ["c0", "c1"] and labels == ["cat", "dog"]
    assert counts == [[2.0, 1.0], [0.0, 4.0]] and sizes == [3.0, 4.0]

    ids, labels, counts, sizes = partition_matrix(
        {"clients": [{"id": 7, "size": 30, "label_counts": {"10": 1, "2": 29}}]}
    )
    assert ids == ["7"] and labels == ["2", "10"] and counts == [[29.0, 1.0]] and sizes == [30.0]

    assert partition_matrix({"client_sizes": [3, 4]})[2:] == (None, [3.0, 4.0])
    assert partition_matrix(None) == ([], [], None, None)


def test_partition_heatmap(tmp_path, partition):
    path = plot_partition(partition, tmp_path / "partition.png")
    assert path is not None
    w, h = png_size(path)
    assert w > 300 and h > 200
    assert plot_partition({"sizes": [1, 2]}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
