"""Report plots: metric against uplink bytes (the headline), rounds and simulated time.

Figures are built with :class:`matplotlib.figure.Figure` and saved through the Agg canvas, never
through ``pyplot``: this needs no display, and it does not switch the backend of a user who
imported fedpress inside a notebook or a GUI session.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedpress.report.seeds import group_runs, seeds_of
from fedpress.report.tables import Run, _finite, higher_is_better, run_names

__all__ = [
    "partition_matrix",
    "plot_metric_vs_bytes",
    "plot_metric_vs_round",
    "plot_metric_vs_time",
    "plot_partition",
    "run_labels",
    "seed_band",
]


_DPI = 110


def run_labels(runs: Sequence[Run]) -> list[str]:
    """One legend label per run: the codec, plus whatever tells otherwise-equal runs apart.

    The downlink codec is added when runs differ in it, the scenario when runs span several, and
    the seed as a last resort, so two lines never share a label.

    >>> runs = [{"summary": {"codec": "none", "seed": 0}}, {"summary": {"codec": "q", "seed": 0}},
    ...         {"summary": {"codec": "q", "seed": 1}}]
    >>> run_labels(runs)
    ['none', 'q (seed 0)', 'q (seed 1)']
    """
    sums = [r.get("summary") or {} for r in runs]
    labels = run_names(sums)
    downs = {str(s.get("down_codec")) for s in sums}
    if len(downs) > 1:
        # Only runs that compress the downlink get the suffix: "q ↓none" is noise in a legend.
        labels = [
            f"{lab} ↓{s['down_codec']}"
            if str(s.get("down_codec") or "none").lower() != "none"
            else lab
            for lab, s in zip(labels, sums, strict=True)
        ]
    if len({s.get("scenario") for s in sums}) > 1:
        labels = [f"{s.get('scenario')}: {lab}" for lab, s in zip(labels, sums, strict=True)]
    if len(set(labels)) < len(labels):
        dup = {lab for lab in labels if labels.count(lab) > 1}
        labels = [
            f"{lab} (seed {s.get('seed')})" if lab in dup else lab
            for lab, s in zip(labels, sums, strict=True)
        ]
    if len(set(labels)) < len(labels):  # same seed too: fall back to position
        dup = {lab for lab in labels if labels.count(lab) > 1}
        labels = [f"{lab} #{i + 1}" if lab in dup else lab for i, lab in enumerate(labels)]
    return labels


def _series(run: Run, xkey: str, *, positive_x: bool = False) -> tuple[list[float], list[float]]:
    """(x, metric) points of a run's history, dropping rounds without a finite metric/x."""
    xs: list[float] = []
    ys: list[float] = []
    for i, row in enumerate(run.get("history") or []):
        x = _finite(row.get(xkey, i + 1 if xkey == "round" else None))
        y = _finite(row.get("metric"))
        if x is None or y is None or (positive_x and x <= 0):
            continue
        xs.append(x)
        ys.append(y)
    return xs, ys


def seed_band(
    runs: Sequence[Run], xkey: str, *, positive_x: bool = False
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Mean line and min–max band over the runs of one codec with different seeds.

    Points are aligned **by round**, not interpolated. Its x is the mean over the seeds of that
    round's x (cumulative uplink bytes, simulated seconds, or the round itself), its y the mean
    metric and the band the lowest and highest metric of that round. Seeds do send different bytes
    per round (which clients are sampled and online, and data-dependent sizes such as entropy
    coding or sparse formats, change with the seed), so the alternative would be to interpolate
    each seed onto a common byte grid. That would average metric values no evaluation produced,
    and only over the byte range every seed covers, cutting each curve at the shortest seed's
    bytes. By round, every seed evaluates the same rounds: each point averages real measurements,
    the curve keeps its full length, and the spread in bytes is left to the table (``± %``).
    Rounds missing a finite value in any seed are left out, so every point averages the same seeds.

    Returns ``(x, mean, low, high)``.

    >>> runs = [{"history": [{"round": 1, "metric": 0.5, "cum_uplink_bytes": 100},
    ...                      {"round": 2, "metric": 0.7, "cum_uplink_bytes": 220}]},
    ...         {"history": [{"round": 1, "metric": 0.3, "cum_uplink_bytes": 100},
    ...                      {"round": 2, "metric": 0.9, "cum_uplink_bytes": 180}]}]
    >>> x, mean, lo, hi = seed_band(runs, "cum_uplink_bytes")
    >>> x, [round(m, 2) for m in mean], lo, hi
    ([100.0, 200.0], [0.4, 0.8], [0.3, 0.7], [0.5, 0.9])
    """
    per_run: list[dict[float, tuple[float, float]]] = []
    for run in runs:
        points: dict[float, tuple[float, float]] = {}
        for i, row in enumerate(run.get("history") or []):
            rnd = _finite(row.get("round", i + 1))
            x = rnd if xkey == "round" else _finite(row.get(xkey))
            y = _finite(row.get("metric"))
            if rnd is None or x is None or y is None or (positive_x and x <= 0):
                continue
            points[rnd] = (x, y)
        per_run.append(points)
    if not per_run:
        return [], [], [], []
    common = sorted(set.intersection(*(set(p) for p in per_run)))
    xs, mean, lo, hi = [], [], [], []
    for rnd in common:
        px = [p[rnd][0] for p in per_run]
        py = [p[rnd][1] for p in per_run]
        xs.append(sum(px) / len(px))
        mean.append(sum(py) / len(py))
        lo.append(min(py))
        hi.append(max(py))
    return xs, mean, lo, hi


def _metric_name(runs: Sequence[Run]) -> str:
    names = []
    for r in runs:
        n = (r.get("summary") or {}).get("metric_name")
        if n and str(n) not in names:
            names.append(str(n))
    return " / ".join(names) if names else "metric"


def _scenario_title(runs: Sequence[Run]) -> str:
    scen = []
    for r in runs:
        s = (r.get("summary") or {}).get("scenario")
        if s and str(s) not in scen:
            scen.append(str(s))
    return f" — {', '.join(scen)}" if scen else ""


def _si_bytes(v: float, _pos: Any = None) -> str:
    # Decimal units: a log axis puts major ticks on powers of ten, which read cleanly as
    # 1 kB / 10 kB / 1 MB, whereas KiB would label them 0.98 KiB, 9.8 KiB, ...
    if v <= 0:
        return "0"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= scale:
            return f"{v / scale:g} {unit}"
    return f"{v:g} B"


def _metric_plot(
    runs: Sequence[Run],
    path: str | Path,
    *,
    xkey: str,
    xlabel: str,
    title: str,
    log_x: bool = False,
    target: float | None = None,
    over_seeds: bool = False,
) -> Path:
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(8.0, 5.0), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    metric = _metric_name(runs)
    plotted = 0
    # Over seeds: one mean line and a min–max band per codec (seed_band says how points align).
    groups = group_runs(runs) if over_seeds else [[r] for r in runs]
    firsts = [g[0] for g in groups]
    for i, (group, label) in enumerate(zip(groups, run_labels(firsts), strict=True)):
        if over_seeds:
            xs, ys, lo, hi = seed_band(group, xkey, positive_x=log_x)
        else:
            xs, ys = _series(group[0], xkey, positive_x=log_x)
        if not xs:
            continue
        codec = str((group[0].get("summary") or {}).get("codec", "")).strip().lower()
        # The uncompressed baseline is drawn black and dashed so every other line reads against it.
        style: dict[str, Any] = (
            {"color": "black", "linestyle": "--"} if codec == "none" else {"color": f"C{i % 10}"}
        )
        ax.plot(
            xs,
            ys,
            label=label,
            linewidth=1.8,
            marker="o" if len(xs) <= 40 else None,
            markersize=3.5,
            **style,
        )
        if over_seeds and len(group) > 1:
            ax.fill_between(xs, lo, hi, color=style["color"], alpha=0.15, linewidth=0)
        plotted += 1
    if target is not None and plotted:
        ax.axhline(target, color="grey", linewidth=1.0, linestyle=":", label=f"target {target:g}")
    if log_x:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(_si_bytes))
    if not plotted:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, fontsize=14)
    ax.set_xlabel(xlabel, fontsize=11)
    ax.set_ylabel(metric, fontsize=11)
    n_seeds = len(seeds_of(runs)) if over_seeds else 1
    seeds_title = f" (mean of {n_seeds} seeds)" if n_seeds > 1 else ""
    ax.set_title(f"{title.format(metric=metric)}{_scenario_title(runs)}{seeds_title}", fontsize=12)
    ax.grid(True, which="major", alpha=0.4)
    if log_x:
        ax.grid(True, which="minor", alpha=0.15)
    if plotted:
        loc = "lower right" if higher_is_better(metric) else "upper right"
        handles, labels = ax.get_legend_handles_labels()
        if n_seeds > 1:  # the legend says what the shading is
            handles.append(Patch(color="grey", alpha=0.3, linewidth=0))
            labels.append(f"shaded: min–max over {n_seeds} seeds")
        ax.legend(handles, labels, loc=loc, fontsize=9, framealpha=0.9)
    fig.savefig(path, format="png")
    return path


def plot_metric_vs_bytes(
    runs: Sequence[Run], path: str | Path, *, target: float | None = None, over_seeds: bool = False
) -> Path:
    """Metric against cumulative uplink bytes (log x axis), one line per run; the headline plot.

    ``over_seeds``: one line per codec, the mean over its seeds, with a shaded min–max band
    (:func:`seed_band`: points aligned by round).

    >>> import tempfile, pathlib
    >>> run = {"summary": {"codec": "none", "metric_name": "accuracy"},
    ...        "history": [{"round": r, "metric": 0.5 + 0.1 * r, "cum_uplink_bytes": 1000 * r}
    ...                    for r in (1, 2, 3)]}
    >>> p = plot_metric_vs_bytes([run], pathlib.Path(tempfile.mkdtemp()) / "accuracy_vs_bytes.png")
    >>> p.read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    """
    return _metric_plot(
        runs,
        path,
        xkey="cum_uplink_bytes",
        xlabel="cumulative uplink bytes (log scale)",
        title="{metric} vs uplink bytes",
        log_x=True,
        target=target,
        over_seeds=over_seeds,
    )


def plot_metric_vs_round(
    runs: Sequence[Run], path: str | Path, *, target: float | None = None, over_seeds: bool = False
) -> Path:
    """Metric against FL round, one line per run (``over_seeds``: per codec, mean and min–max band).

    >>> import tempfile, pathlib
    >>> run = {"summary": {"codec": "q"}, "history": [{"round": 1, "metric": 0.4}]}
    >>> plot_metric_vs_round([run], pathlib.Path(tempfile.mkdtemp()) / "r.png").stat().st_size > 0
    True
    """
    return _metric_plot(
        runs,
        path,
        xkey="round",
        xlabel="round",
        title="{metric} vs round",
        target=target,
        over_seeds=over_seeds,
    )


def plot_metric_vs_time(
    runs: Sequence[Run], path: str | Path, *, target: float | None = None, over_seeds: bool = False
) -> Path:
    """Metric against cumulative simulated seconds (network + compute), one line per run
    (``over_seeds``: per codec, mean and min–max band, aligned by round).

    >>> import tempfile, pathlib
    >>> run = {"summary": {"codec": "q"},
    ...        "history": [{"round": 1, "metric": 0.4, "sim_seconds": 3}]}
    >>> plot_metric_vs_time([run], pathlib.Path(tempfile.mkdtemp()) / "t.png").stat().st_size > 0
    True
    """
    return _metric_plot(
        runs,
        path,
        xkey="sim_seconds",
        xlabel="simulated time (s)",
        title="{metric} vs simulated time",
        target=target,
        over_seeds=over_seeds,
    )


def _counts_row(v: Any) -> dict[str, float]:
    if isinstance(v, Mapping):
        return {str(k): float(c) for k, c in v.items()}
    return {str(j): float(c) for j, c in enumerate(v)}


def partition_matrix(
    partition: Mapping[str, Any] | None,
) -> tuple[list[str], list[str], list[list[float]] | None, list[float] | None]:
    """Normalise a partition summary to ``(client_ids, labels, counts, sizes)``.

    Accepted shapes (whichever the partitioner emits): ``label_counts`` as a clients × classes
    list of lists, a list of ``{label: count}`` dicts, or a ``{client: counts}`` dict; sizes as
    ``sizes`` / ``client_sizes`` / ``num_samples`` / ``n_samples`` (list or dict); or ``clients``,
    a list of dicts with ``size`` and ``label_counts``. ``counts`` is None when no label counts are
    given; ``sizes`` falls back to the row sums of ``counts``.

    >>> partition_matrix({"label_counts": [[3, 1], [0, 4]]})
    (['0', '1'], ['0', '1'], [[3.0, 1.0], [0.0, 4.0]], [4.0, 4.0])
    >>> partition_matrix({"sizes": {"a": 5, "b": 7}})
    (['a', 'b'], [], None, [5.0, 7.0])
    """
    if not partition:
        return [], [], None, None
    ids: list[str] = []
    rows: list[dict[str, float]] | None = None
    sizes: list[float] | None = None

    clients = partition.get("clients")
    if isinstance(clients, Sequence) and clients and isinstance(clients[0], Mapping):
        ids = [str(c.get("id", c.get("client", i))) for i, c in enumerate(clients)]
        lc = [c.get("label_counts", c.get("labels")) for c in clients]
        if all(x is not None for x in lc):
            rows = [_counts_row(x) for x in lc]
        sz = [c.get("size", c.get("n", c.get("num_samples"))) for c in clients]
        if all(_finite(x) is not None for x in sz):
            sizes = [float(x) for x in sz]
    else:
        lc = partition.get("label_counts")
        if isinstance(lc, Mapping):
            ids = [str(k) for k in lc]
            rows = [_counts_row(v) for v in lc.values()]
        elif isinstance(lc, Sequence) and not isinstance(lc, str):
            rows = [_counts_row(v) for v in lc]
            ids = [str(i) for i in range(len(rows))]
        for key in ("sizes", "client_sizes", "num_samples", "n_samples"):
            sz = partition.get(key)
            if isinstance(sz, Mapping):
                ids = ids or [str(k) for k in sz]
                sizes = [float(v) for v in sz.values()]
                break
            if isinstance(sz, Sequence) and not isinstance(sz, str):
                ids = ids or [str(i) for i in range(len(sz))]
                sizes = [float(v) for v in sz]
                break

    labels: list[str] = []
    counts: list[list[float]] | None = None
    if rows is not None:
        for r in rows:
            for k in r:
                if k not in labels:
                    labels.append(k)
        # Integer class ids sort numerically ("2" before "10"); names keep first-seen order.
        if all(lab.lstrip("-").isdigit() for lab in labels):
            labels.sort(key=int)
        counts = [[r.get(lab, 0.0) for lab in labels] for r in rows]
        if sizes is None:
            sizes = [sum(r) for r in counts]
    return ids, labels, counts, sizes


def plot_partition(partition: Mapping[str, Any] | None, path: str | Path) -> Path | None:
    """Heatmap of per-client label counts (clients × classes); None when there are no counts.

    >>> import tempfile, pathlib
    >>> p = plot_partition({"label_counts": [[5, 0], [1, 9], [3, 3]]},
    ...                    pathlib.Path(tempfile.mkdtemp()) / "partition.png")
    >>> p.name, p.stat().st_size > 1000
    ('partition.png', True)
    >>> plot_partition({"sizes": [1, 2]}, "unused.png") is None
    True
    """
    ids, labels, counts, sizes = partition_matrix(partition)
    if not counts or not labels:
        return None
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_clients, n_labels = len(counts), len(labels)
    height = min(9.0, 2.0 + 0.22 * n_clients)
    width = min(10.0, 3.5 + 0.45 * n_labels)
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(counts, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="samples")
    ax.set_xlabel("label", fontsize=10)
    ax.set_ylabel("client", fontsize=10)
    if n_labels <= 30:
        ax.set_xticks(range(n_labels), labels, fontsize=8, rotation=90 if n_labels > 12 else 0)
    if n_clients <= 40:
        ax.set_yticks(range(n_clients), ids, fontsize=8)
    if n_clients * n_labels <= 200:  # small enough for the numbers to be legible in the cells
        top = max(max(r) for r in counts) or 1.0
        for i, r in enumerate(counts):
            for j, c in enumerate(r):
                ax.text(
                    j,
                    i,
                    f"{c:g}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if c > 0.6 * top else "white",
                )
    title = f"label counts per client ({n_clients} clients"
    if sizes:
        title += f", sizes {min(sizes):g}–{max(sizes):g}"
    ax.set_title(title + ")", fontsize=11)
    fig.savefig(path, format="png")
    return path
