"""Result tables: one row per run, written as CSV/JSON and shown as a Rich table.

A *run* is ``{"summary": dict, "history": list[dict]}`` as produced by ``fedpress run``
(``summary.json`` plus the rows of ``metrics.jsonl``). Every byte count in a row is copied from
the run's own measured totals; nothing here estimates sizes.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DISPLAY_COLUMNS",
    "RESULT_COLUMNS",
    "display_rows",
    "format_bytes",
    "format_ratio",
    "higher_is_better",
    "results_table",
    "rich_table",
    "rounds_to_target",
    "run_names",
    "to_jsonable",
    "write_csv",
    "write_json",
]

Run = Mapping[str, Any]

#: Column order of :func:`results_table` rows (and therefore of ``results.csv``).
RESULT_COLUMNS: tuple[str, ...] = (
    "scenario",
    "codec",
    "down_codec",
    "metric_name",
    "final_metric",
    "best_metric",
    "target",
    "rounds_to_target",
    "sim_seconds_to_target",
    "uplink_bytes",
    "downlink_bytes",
    "compression_ratio",
    "rounds",
    "sim_seconds",
    "wall_seconds",
    "seed",
)

# Metrics where smaller is better. "Reaching the target" means going *below* it for these;
# treating a loss like an accuracy would report round 1 as the time-to-target for every codec.
_LOWER_IS_BETTER = frozenset(
    {"loss", "mse", "rmse", "mae", "mape", "error", "err", "perplexity", "log_loss", "nll"}
)


def higher_is_better(metric_name: str | None) -> bool:
    """Whether larger values of ``metric_name`` are better (accuracy, AUC, F1: yes; MSE: no).

    >>> higher_is_better("accuracy"), higher_is_better("mse"), higher_is_better(None)
    (True, False, True)
    """
    if not metric_name:
        return True
    name = str(metric_name).strip().lower()
    return not (name in _LOWER_IS_BETTER or name.endswith(("_loss", "_error", "_mse")))


def _finite(x: Any) -> float | None:
    """``x`` as a float, or None when missing / not a number / NaN / inf."""
    if x is None or isinstance(x, bool):
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def rounds_to_target(
    history: Iterable[Mapping[str, Any]],
    target: float | None,
    *,
    higher_better: bool = True,
) -> tuple[int | None, float | None]:
    """The first round whose metric reaches ``target``, and its cumulative simulated seconds.

    "Reaches" is ``metric >= target`` (or ``<=`` when ``higher_better`` is False). Rows with a
    missing or NaN metric (rounds without evaluation) are skipped. Returns ``(None, None)`` when
    the target is never reached or is None.

    >>> hist = [{"round": 1, "metric": 0.5, "sim_seconds": 2.0},
    ...         {"round": 2, "metric": 0.8, "sim_seconds": 4.5},
    ...         {"round": 3, "metric": 0.9, "sim_seconds": 7.0}]
    >>> rounds_to_target(hist, 0.8)
    (2, 4.5)
    >>> rounds_to_target(hist, 0.95)
    (None, None)
    """
    if target is None:
        return None, None
    for i, row in enumerate(history):
        m = _finite(row.get("metric"))
        if m is None:
            continue
        if (m >= target) if higher_better else (m <= target):
            rnd = row.get("round", i + 1)
            return (int(rnd) if rnd is not None else i + 1), _finite(row.get("sim_seconds"))
    return None, None


def _total(summary: Mapping[str, Any], history: Sequence[Mapping[str, Any]], key: str) -> Any:
    """A run's total bytes in one direction: the summary's total, else the last cumulative row."""
    value = summary.get(f"total_{key}")
    if value is None and history:
        value = history[-1].get(f"cum_{key}")
    return value


def results_table(runs: Sequence[Run], target: float | None = None) -> list[dict[str, Any]]:
    """One row per run with the headline numbers (keys: :data:`RESULT_COLUMNS`).

    ``target`` overrides each run's own ``summary["target"]``; with neither, the table falls back
    to a ``rounds_to_target`` the summary may already carry. ``compression_ratio`` is the uplink
    bytes of the uncompressed run (codec ``"none"``, same scenario) divided by this run's uplink
    bytes, or None when there is no such run.

    >>> def run(codec, up, metrics):
    ...     hist = [{"round": r + 1, "metric": m, "sim_seconds": 1.0 * (r + 1)}
    ...             for r, m in enumerate(metrics)]
    ...     return {"summary": {"scenario": "digits", "codec": codec, "total_uplink_bytes": up,
    ...                         "total_downlink_bytes": 10, "final_metric": metrics[-1],
    ...                         "best_metric": max(metrics)}, "history": hist}
    >>> runs = [run("none", 4000, [0.5, 0.9]), run("q:bits=8", 1000, [0.4, 0.6, 0.91])]
    >>> rows = results_table(runs, target=0.9)
    >>> [(r["codec"], r["compression_ratio"], r["rounds_to_target"]) for r in rows]
    [('none', 1.0, 2), ('q:bits=8', 4.0, 3)]
    """
    # Baseline per scenario: comparing a digits run against a fraud baseline would be meaningless.
    baseline: dict[Any, float] = {}
    for r in runs:
        s = r.get("summary") or {}
        if str(s.get("codec", "")).strip().lower() == "none" and not _policy(s):
            up = _finite(_total(s, r.get("history") or [], "uplink_bytes"))
            if up is not None and up > 0:
                baseline.setdefault(s.get("scenario"), up)

    rows: list[dict[str, Any]] = []
    names = run_names([r.get("summary") or {} for r in runs])
    for r, name in zip(runs, names, strict=True):
        s = r.get("summary") or {}
        hist = list(r.get("history") or [])
        tgt = _finite(target if target is not None else s.get("target"))
        metric_name = s.get("metric_name")
        if tgt is not None:
            rtt, secs = rounds_to_target(hist, tgt, higher_better=higher_is_better(metric_name))
        else:
            rtt, secs = s.get("rounds_to_target"), s.get("sim_seconds_to_target")
        up = _total(s, hist, "uplink_bytes")
        down = _total(s, hist, "downlink_bytes")
        base = baseline.get(s.get("scenario"))
        up_f = _finite(up)
        ratio = base / up_f if base is not None and up_f else None
        rows.append(
            {
                "scenario": s.get("scenario"),
                "codec": name,
                "down_codec": s.get("down_codec"),
                "metric_name": metric_name,
                "final_metric": s.get("final_metric"),
                "best_metric": s.get("best_metric"),
                "target": tgt,
                "rounds_to_target": rtt,
                "sim_seconds_to_target": secs,
                "uplink_bytes": up,
                "downlink_bytes": down,
                "compression_ratio": ratio,
                "rounds": s.get("rounds", len(hist) or None),
                "sim_seconds": s.get("sim_seconds", hist[-1].get("sim_seconds") if hist else None),
                "wall_seconds": s.get("wall_seconds"),
                "seed": s.get("seed"),
            }
        )
    return rows


def _policy(summary: Mapping[str, Any]) -> str | None:
    """The policy spec of a run that chose codecs per client, else None."""
    p = summary.get("policy")
    return None if p in (None, "", "fixed") else str(p)


def run_names(summaries: Sequence[Mapping[str, Any]]) -> list[str]:
    """What a row or a legend calls each run: its codec, or ``policy SPEC`` for a run whose codecs
    a policy chose. Policy runs that share a spec but were given different codecs (compare
    ``--policy P -c A -c B``) also name their codec, which the policy falls back on.

    >>> run_names([{"codec": "q:bits=8"}, {"codec": "none", "policy": "deadline:seconds=5"},
    ...            {"codec": "q:bits=4", "policy": "deadline:seconds=5"}])
    ['q:bits=8', 'policy deadline:seconds=5 (codec none)', 'policy deadline:seconds=5 (codec q:bits=4)']
    >>> run_names([{"codec": "q:bits=8", "aggregate": "mean", "attack": "signflip"},
    ...            {"codec": "q:bits=8", "aggregate": "median", "attack": "signflip"}])
    ['q:bits=8', 'q:bits=8 · median']
    """
    names = [f"policy {_policy(s)}" if _policy(s) else str(s.get("codec", "?")) for s in summaries]
    codecs: dict[str, set[str]] = {}
    for name, s in zip(names, summaries, strict=True):
        if _policy(s):
            codecs.setdefault(name, set()).add(str(s.get("codec")))
    names = [f"{n} (codec {s.get('codec')})" if len(codecs.get(n, ())) > 1 else n
             for n, s in zip(names, summaries, strict=True)]
    # Runs that differ in aggregation rule or attack say so (robustness comparisons).
    for key, fmt, plain in (("aggregate", "{} · {}", ("auto", "mean", "sparse_mean", None)),
                            ("attack", "{} under {}", (None,))):
        if len({str(s.get(key)) for s in summaries}) > 1:
            names = [fmt.format(n, s.get(key)) if s.get(key) not in plain else n
                     for n, s in zip(names, summaries, strict=True)]
    return names


def codec_usage(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """For runs with a per-client policy: how many client-rounds each codec was used for and the
    uplink bytes it produced (from each round's ``client_codecs`` and ``client_uplink_bytes``),
    plus the whole-model downloads sent lossily (``client_syncs``).

    >>> hist = [{"client_codecs": {"0": "none", "1": "ef+q:bits=8"},
    ...          "client_uplink_bytes": {"0": 4000, "1": 1100}, "client_syncs": {"1": "q:bits=8"}},
    ...         {"client_codecs": {"0": "none"}, "client_uplink_bytes": {"0": 4000}}]
    >>> rows = codec_usage([{"summary": {"policy": "deadline:seconds=5"}, "history": hist}])
    >>> [(r["codec"], r["client_rounds"], r["uplink_bytes"], r["share"]) for r in rows]
    [('none', 2, 8000, 0.6667), ('ef+q:bits=8', 1, 1100, 0.3333), ('lossy model download: q:bits=8', 1, None, None)]
    """
    out: list[dict[str, Any]] = []
    for r, name in zip(runs, run_names([r.get("summary") or {} for r in runs]), strict=True):
        s = r.get("summary") or {}
        if not _policy(s):
            continue
        count: dict[str, int] = {}
        nbytes: dict[str, int] = {}
        syncs: dict[str, int] = {}
        for h in r.get("history") or []:
            up = h.get("client_uplink_bytes") or {}
            codecs = h.get("client_codecs") or {c: s.get("codec", "?") for c in up}
            for c, spec in codecs.items():
                count[spec] = count.get(spec, 0) + 1
                nbytes[spec] = nbytes.get(spec, 0) + int(up.get(c, 0))
            for spec in (h.get("client_syncs") or {}).values():
                syncs[spec] = syncs.get(spec, 0) + 1
        total = sum(count.values())
        for spec in sorted(count, key=lambda k: -count[k]):
            out.append({"run": name, "scenario": s.get("scenario"), "codec": spec,
                        "client_rounds": count[spec], "uplink_bytes": nbytes[spec],
                        "share": round(count[spec] / total, 4)})
        for spec in sorted(syncs, key=lambda k: -syncs[k]):
            out.append({"run": name, "scenario": s.get("scenario"),
                        "codec": f"lossy model download: {spec}", "client_rounds": syncs[spec],
                        "uplink_bytes": None, "share": None})
    return out


def to_jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays, paths, sets and tuples turned into plain JSON types.

    Non-finite floats become None, because ``NaN`` is not valid JSON and breaks strict readers
    (browsers, ``jq``).

    >>> import numpy as np
    >>> to_jsonable({"a": np.float32(0.5), "b": (1, float("nan")), "c": np.arange(2)})
    {'a': 0.5, 'b': [1, None], 'c': [0, 1]}
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    # numpy / torch scalars and arrays, without importing either.
    if hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist())
    if hasattr(obj, "item"):
        return to_jsonable(obj.item())
    return str(obj)


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented, strictly valid JSON (see :func:`to_jsonable`); returns the path.

    >>> import json, tempfile, pathlib
    >>> p = write_json({"x": [1, 2]}, pathlib.Path(tempfile.mkdtemp()) / "r.json")
    >>> json.loads(p.read_text())
    {'x': [1, 2]}
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write ``rows`` as CSV with a header; None becomes an empty cell. Returns the path.

    Columns follow :data:`RESULT_COLUMNS` first, then any other keys in first-seen order.

    >>> import csv, tempfile, pathlib
    >>> p = write_csv([{"codec": "none", "uplink_bytes": 10, "compression_ratio": None}],
    ...               pathlib.Path(tempfile.mkdtemp()) / "r.csv")
    >>> list(csv.DictReader(p.open()))
    [{'codec': 'none', 'uplink_bytes': '10', 'compression_ratio': ''}]
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seen: dict[str, None] = {}
    for row in rows:
        for k in row:
            seen.setdefault(str(k), None)
    columns = [c for c in RESULT_COLUMNS if c in seen] + [
        c for c in seen if c not in RESULT_COLUMNS
    ]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_cell(row.get(k)) for k in columns})
    return path


def _csv_cell(v: Any) -> Any:
    v = to_jsonable(v)
    if v is None:
        return ""
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return v


def format_bytes(n: Any) -> str:
    """Human-readable binary size: ``B``, ``KiB``, ``MiB``, ``GiB``, ``TiB``; ``—`` when missing.

    >>> format_bytes(512), format_bytes(1536), format_bytes(3 * 2**20), format_bytes(None)
    ('512 B', '1.50 KiB', '3.00 MiB', '—')
    """
    f = _finite(n)
    if f is None:
        return "—"
    if abs(f) < 1024:
        return f"{int(f)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        f /= 1024.0
        if abs(f) < 1024 or unit == "TiB":
            break
    return f"{f:.2f} {unit}"


def format_ratio(x: Any) -> str:
    """A compression ratio like ``52.3×``; ``—`` when missing.

    >>> format_ratio(52.31), format_ratio(1), format_ratio(1234.5), format_ratio(None)
    ('52.3×', '1.0×', '1234×', '—')
    """
    f = _finite(x)
    if f is None:
        return "—"
    return f"{f:.0f}×" if f >= 1000 else f"{f:.1f}×"


def _fmt_metric(x: Any) -> str:
    f = _finite(x)
    return "—" if f is None else f"{f:.4f}"


def _fmt_seconds(x: Any) -> str:
    f = _finite(x)
    if f is None:
        return "—"
    return f"{f:.3g} s" if f < 100 else f"{f:,.0f} s"


def _fmt_plain(x: Any) -> str:
    return "—" if x is None or x == "" else str(x)


#: (row key, header, formatter, right-aligned) for the human-readable views (Rich and HTML).
DISPLAY_COLUMNS: tuple[tuple[str, str, Any, bool], ...] = (
    ("codec", "codec", _fmt_plain, False),
    ("down_codec", "down codec", _fmt_plain, False),
    ("final_metric", "final", _fmt_metric, True),
    ("best_metric", "best", _fmt_metric, True),
    ("rounds_to_target", "rounds→target", _fmt_plain, True),
    ("sim_seconds_to_target", "sim s→target", _fmt_seconds, True),
    ("uplink_bytes", "uplink", format_bytes, True),
    ("downlink_bytes", "downlink", format_bytes, True),
    ("compression_ratio", "uplink ratio", format_ratio, True),
    ("sim_seconds", "sim time", _fmt_seconds, True),
    ("wall_seconds", "wall time", _fmt_seconds, True),
)


def display_rows(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[Any, str, Any, bool]] | None = None
) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells shared by :func:`rich_table` and the HTML report.

    ``columns`` defaults to :data:`DISPLAY_COLUMNS`; a column whose key is None has a formatter
    that takes the whole row (the mean ± std cells of
    :func:`fedpress.report.seeds.seed_display_columns`).

    >>> display_rows([{"codec": "none", "uplink_bytes": 2048, "compression_ratio": 1.0}])[1][0][:3]
    ['none', '—', '—']
    """
    columns = DISPLAY_COLUMNS if columns is None else columns
    headers = [h for _, h, _, _ in columns]
    cells = [[fmt(row) if key is None else fmt(row.get(key)) for key, _, fmt, _ in columns]
             for row in rows]
    return headers, cells


def rich_table(
    rows: Sequence[Mapping[str, Any]],
    title: str = "fedpress results",
    *,
    columns: Sequence[tuple[Any, str, Any, bool]] | None = None,
    note: str | None = None,
) -> Any:
    """A :class:`rich.table.Table` of ``rows`` with readable bytes (KiB/MiB) and ratios (``52.3×``).

    ``columns``: as for :func:`display_rows`; ``note`` is added to the caption (what a mean ± std
    is taken over).

    Cells are :class:`rich.text.Text`, so a codec spec containing ``[...]`` is shown literally
    instead of being parsed as Rich markup.

    >>> import io
    >>> from rich.console import Console
    >>> t = rich_table([{"codec": "q:bits=8", "uplink_bytes": 3 * 2**20, "compression_ratio": 4}])
    >>> console = Console(width=200, record=True, file=io.StringIO())
    >>> console.print(t)
    >>> text = console.export_text()
    >>> "3.00 MiB" in text and "4.0×" in text
    True
    """
    from rich.table import Table
    from rich.text import Text

    metric_names = sorted({str(r.get("metric_name")) for r in rows if r.get("metric_name")})
    caption = f"metric: {', '.join(metric_names)}" if metric_names else None
    targets = sorted({r.get("target") for r in rows if r.get("target") is not None})
    if targets:
        caption = (caption + "; " if caption else "") + "target: " + ", ".join(map(str, targets))
    if note:
        caption = (caption + "; " if caption else "") + note
    columns = DISPLAY_COLUMNS if columns is None else columns
    table = Table(title=title, caption=caption)
    for _, header, _, right in columns:
        table.add_column(header, justify="right" if right else "left", no_wrap=not right)
    _, cells = display_rows(rows, columns)
    for row in cells:
        table.add_row(*(Text(c) for c in row))
    return table
