"""A self-contained HTML report plus the CSV/JSON/PNG files behind it.

``report.html`` needs nothing but itself: CSS is inline, plots are base64 ``data:`` URIs, and a
Content-Security-Policy forbids any other source, so the file can be mailed, archived as a CI
artifact or opened offline and look the same. Every piece of text that came from a run, a config
or the environment goes through :func:`html.escape`, since codec specs and scenario names are
user input.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import os
import platform
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedpress.report.plots import (
    partition_matrix,
    plot_metric_vs_bytes,
    plot_metric_vs_round,
    plot_metric_vs_time,
    plot_partition,
)
from fedpress.report.seeds import (
    RUN_DISPLAY_COLUMNS,
    paired_comparison,
    per_run_table,
    seed_columns,
    seeds_note,
    seeds_of,
    seeds_table,
)
from fedpress.report.tables import (
    DISPLAY_COLUMNS,
    Run,
    codec_usage,
    display_rows,
    format_bytes,
    higher_is_better,
    results_table,
    to_jsonable,
    write_csv,
    write_json,
)

__all__ = ["environment_info", "render_html", "write_report"]


# File names are part of the CLI contract (`fedpress compare` writes these into --out).
FILES = {
    "csv": "results.csv",
    "runs_csv": "runs.csv",  # only over several seeds: one row per run (codec × seed)
    "json": "results.json",
    "accuracy_vs_bytes": "accuracy_vs_bytes.png",
    "metric_vs_round": "metric_vs_round.png",
    "metric_vs_time": "metric_vs_time.png",
    "partition": "partition.png",
    "html": "report.html",
}

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
  margin:0 auto;max-width:1280px;padding:1.5rem 1.25rem 3rem;color:#1d2430;background:#fff;
  line-height:1.45}
h1{font-size:1.6rem;margin:0 0 .25rem}
h2{font-size:1.2rem;margin:2rem 0 .6rem;border-bottom:1px solid #d8dee6;padding-bottom:.25rem}
.meta{color:#5b6778;font-size:.9rem;margin:0 0 1rem}
table{border-collapse:collapse;font-size:.88rem;margin:.25rem 0}
th,td{border:1px solid #d8dee6;padding:.3rem .5rem;vertical-align:top}
th{background:#f2f5f9;text-align:left;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tbody tr:nth-child(even){background:#fafbfd}
td.code,code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85em}
.scroll{overflow-x:auto}
.plots{display:grid;grid-template-columns:1fr;gap:1rem;max-width:960px}
figure{margin:0;border:1px solid #e3e8ef;border-radius:6px;padding:.5rem;background:#fff}
figure img{display:block;max-width:100%;height:auto;margin:0 auto}
figcaption{font-size:.85rem;color:#5b6778;text-align:center;margin-top:.3rem}
.kv th{width:14rem}
details{margin:.5rem 0}
pre{background:#f6f8fa;border:1px solid #e3e8ef;padding:.6rem;overflow-x:auto;font-size:.8rem}
"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _version(dist: str, module: str | None = None) -> str | None:
    # A module already imported knows its exact build (torch's "+cpu"/"+cu121" local tag);
    # otherwise ask the installed metadata rather than importing torch just to read a string.
    mod = sys.modules.get(module or dist)
    v = getattr(mod, "__version__", None)
    if v:
        return str(v)
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - stdlib since 3.8
        return None
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def environment_info() -> dict[str, Any]:
    """Where the numbers came from: Python, library versions, platform and CPUs.

    Cheap: it reads package metadata instead of importing torch.

    >>> env = environment_info()
    >>> sorted(k for k in ("python", "numpy", "torch", "platform", "cpu_count") if k in env)
    ['cpu_count', 'numpy', 'platform', 'python', 'torch']
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "fedpress": _version("fedpress"),
        "numpy": _version("numpy"),
        "torch": _version("torch"),
        "matplotlib": _version("matplotlib"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
    }
    torch = sys.modules.get("torch")
    if torch is not None:  # only when the run already paid for importing it
        try:
            info["torch_threads"] = torch.get_num_threads()
            info["cuda"] = torch.version.cuda
            info["cuda_available"] = bool(torch.cuda.is_available())
        except Exception:  # diagnostics must never break a report
            pass
    return info


def _data_uri(png: bytes | Path) -> str:
    data = png if isinstance(png, bytes) else Path(png).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _value_html(v: Any) -> str:
    if isinstance(v, (Mapping, list, tuple)):
        return f"<code>{_e(json.dumps(to_jsonable(v), sort_keys=False))}</code>"
    return _e("—" if v is None else v)


def _kv_table(d: Mapping[str, Any], css_class: str = "kv") -> str:
    if not d:
        return "<p class='meta'>(none)</p>"
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_value_html(v)}</td></tr>" for k, v in d.items())
    return f"<div class='scroll'><table class='{_e(css_class)}'><tbody>{rows}</tbody></table></div>"


def _results_html(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[Any, str, Any, bool]] = DISPLAY_COLUMNS,
    table_id: str = "results",
) -> str:
    headers, cells = display_rows(rows, columns)
    head = "".join(f"<th scope='col'>{_e(h)}</th>" for h in headers)
    body = []
    for row in cells:
        tds = []
        for (key, _, _, right), c in zip(columns, row, strict=True):
            if right:
                tds.append(f"<td class='num'>{_e(c)}</td>")
            elif key is not None and "codec" in key:
                # Specs have no spaces; <wbr> after each '+' lets a long pipeline wrap by stage.
                tds.append(f"<td class='code'>{_e(c).replace('+', '+<wbr>')}</td>")
            else:
                tds.append(f"<td>{_e(c)}</td>")
        body.append(f"<tr>{''.join(tds)}</tr>")
    return (
        f"<div class='scroll'><table class='results' id='{_e(table_id)}'>"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _paired_html(paired: Sequence[Mapping[str, Any]]) -> str:
    """Each codec against the baseline, seed by seed (:func:`fedpress.report.seeds.paired_comparison`)."""
    if not paired:
        return ""
    higher = higher_is_better(paired[0].get("metric_name"))
    base = paired[0].get("baseline")

    def num(x: Any, fmt: str = "+.4f") -> str:
        return "—" if x is None else format(x, fmt)

    body = []
    for p in paired:
        spread = f"{num(p['delta_final_min'])} … {num(p['delta_final_max'])}"
        std = f" ± {num(p['delta_final_std'], '.4f')}" if p.get("delta_final_std") is not None else ""
        seeds = ", ".join(f"{q['seed']}: {q['delta']:+.4f}" for q in p["per_seed"])
        spec = _e(p["codec"]).replace("+", "+<wbr>")
        ci = ("—" if p.get("delta_final_ci95_lo") is None else
              f"{num(p['delta_final_ci95_lo'])} … {num(p['delta_final_ci95_hi'])} (p = {p['delta_final_p']:.3g})")
        body.append(
            f"<tr><td class='code'>{spec}</td><td class='num'>{_e(num(p['delta_final_mean']) + std)}</td>"
            f"<td class='num'>{_e(ci)}</td><td class='num'>{_e(spread)}</td>"
            f"<td class='num'>{_e(p['seeds_not_worse'])}/{_e(p['paired_seeds'])}</td>"
            f"<td class='code'>{_e(seeds)}</td></tr>"
        )
    cmp_ = "≥" if higher else "≤"
    return (
        "<h2>Paired comparison</h2>"
        f"<p class='meta'>the final metric of each codec minus that of the {_e(base)} run with the "
        "same seed (same partition, links and client sampling), then mean ± sample std over the seeds; "
        "95 % CI: Student's t over the seeds, p: paired t-test of no difference (with few seeds, read "
        f"both as rough); “{cmp_} {_e(base)}”: in how many seeds the codec was at least as good.</p>"
        "<div class='scroll'><table class='results' id='paired'><thead><tr>"
        f"<th scope='col'>codec</th><th scope='col'>Δ final vs {_e(base)}</th>"
        f"<th scope='col'>95 % CI (p)</th><th scope='col'>Δ min … max</th><th scope='col'>seeds {cmp_} {_e(base)}</th>"
        f"<th scope='col'>Δ per seed</th></tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _usage_html(usage: Sequence[Mapping[str, Any]]) -> str:
    """The per-client codec choices of policy runs (:func:`fedpress.report.tables.codec_usage`)."""
    if not usage:
        return ""
    body = []
    for u in usage:
        up = format_bytes(u["uplink_bytes"]) if u["uplink_bytes"] is not None else "—"
        share = f"{100 * u['share']:.1f} %" if u["share"] is not None else "—"
        spec = _e(u["codec"]).replace("+", "+<wbr>")
        body.append(f"<tr><td class='code'>{_e(u['run'])}</td><td class='code'>{spec}</td>"
                    f"<td class='num'>{_e(u['client_rounds'])}</td><td class='num'>{_e(up)}</td>"
                    f"<td class='num'>{_e(share)}</td></tr>")
    return (
        "<h2>Codecs chosen per client</h2><div class='scroll'><table class='results' id='usage'>"
        "<thead><tr><th scope='col'>run</th><th scope='col'>codec</th>"
        "<th scope='col'>client-rounds</th><th scope='col'>uplink</th><th scope='col'>share</th>"
        f"</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


#: Tensors listed by name in the upload table; the rest are summed in one row.
_ANATOMY_ROWS = 15


def _anatomy_html(runs: Sequence[Run]) -> str:
    """Where one upload's bytes go, per tensor and codec (each summary's ``upload_anatomy``: the
    first aggregated upload of the run's last round, decoded by :func:`fedpress.inspect_blob`).
    Over seeds, the first run of each codec."""
    by_codec: dict[str, Mapping[str, Any]] = {}
    for r in runs:
        a = (r.get("summary") or {}).get("upload_anatomy")
        if a and a["codec"] not in by_codec:
            by_codec[a["codec"]] = a
    if not by_codec:
        return ""
    names: dict[str, list] = {}
    for a in by_codec.values():
        for t in a["tensors"]:
            names.setdefault(t["name"], t["shape"])
    weight = {n: max((t["payload_bytes"] for a in by_codec.values() for t in a["tensors"] if t["name"] == n),
                     default=0) for n in names}
    shown = sorted(names, key=lambda n: -weight[n])[:_ANATOMY_ROWS]
    shown = [n for n in names if n in shown]  # keep the model's order
    rest = [n for n in names if n not in shown]

    def cell(a, ts):
        if not ts:
            return "<td class='num'>—</td>"
        b = sum(t["payload_bytes"] for t in ts)
        n = sum(math.prod(t["shape"]) for t in ts)
        pipes = sorted({t["pipeline"] for t in ts})
        per_value = f" · {8 * b / n:.2f} b/v" if n else ""
        return f"<td class='num' title='{_e(', '.join(pipes))}'>{_e(format_bytes(b))}{per_value}</td>"

    head = "".join(f"<th scope='col' class='code'>{_e(c).replace('+', '+<wbr>')}</th>" for c in by_codec)
    body = []
    for n in shown:
        cells = "".join(cell(a, [t for t in a["tensors"] if t["name"] == n]) for a in by_codec.values())
        shape = "×".join(map(str, names[n])) or "scalar"
        body.append(f"<tr><td class='code'>{_e(n)}</td><td>{_e(shape)}</td>{cells}</tr>")
    if rest:
        cells = "".join(cell(a, [t for t in a["tensors"] if t["name"] in rest]) for a in by_codec.values())
        body.append(f"<tr><td>{len(rest)} other tensors</td><td></td>{cells}</tr>")
    env = "".join(f"<td class='num'>{_e(format_bytes(a['envelope_bytes']))}</td>" for a in by_codec.values())
    total = "".join(f"<td class='num'>{_e(format_bytes(a['total_bytes']))}"
                    + (f" ({_e(a['lossless'])})" if a.get("lossless") else "") + "</td>" for a in by_codec.values())
    body.append(f"<tr><td>envelope</td><td></td>{env}</tr><tr><th scope='row'>blob</th><td></td>{total}</tr>")
    return (
        "<h2>Where an upload's bytes go</h2><p class='meta'>an upload aggregated in the last round of each run, "
        "decoded again: each tensor's payload (bytes · bits per value; hover for its pipeline), before a "
        "lossless stage over the whole body, then the envelope and the whole blob as sent.</p>"
        "<div class='scroll'><table class='results' id='anatomy'><thead><tr><th scope='col'>tensor</th>"
        f"<th scope='col'>shape</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _partition_html(partition: Mapping[str, Any] | None, heatmap: bytes | Path | None) -> str:
    if not partition:
        return "<p class='meta'>(no partition summary given)</p>"
    ids, labels, counts, sizes = partition_matrix(partition)
    bulky = {"label_counts", "clients", "sizes", "client_sizes", "num_samples", "n_samples"}
    scalars = {k: v for k, v in partition.items() if k not in bulky}
    parts = [_kv_table(scalars)] if scalars else []
    if sizes:
        stats = {
            "clients": len(sizes),
            "total samples": f"{sum(sizes):g}",
            "size min / median / max": (
                f"{min(sizes):g} / {statistics.median(sizes):g} / {max(sizes):g}"
            ),
        }
        parts.append(_kv_table(stats))
    if heatmap is not None:
        parts.append(
            "<figure><img alt='label counts per client' src='"
            f"{_data_uri(heatmap)}'><figcaption>label counts per client</figcaption></figure>"
        )
    # A per-client table stays readable up to a few dozen clients; beyond that the heatmap and the
    # size statistics say it better.
    if sizes and len(sizes) <= 50:
        show_labels = counts is not None and len(labels) <= 20
        head = "<th>client</th><th>size</th>" + (
            "".join(f"<th>{_e(lab)}</th>" for lab in labels) if show_labels else ""
        )
        body = []
        for i, size in enumerate(sizes):
            cid = ids[i] if i < len(ids) else str(i)
            tds = f"<td>{_e(cid)}</td><td class='num'>{size:g}</td>"
            if show_labels and counts is not None:
                tds += "".join(f"<td class='num'>{c:g}</td>" for c in counts[i])
            body.append(f"<tr>{tds}</tr>")
        parts.append(
            "<details><summary>per-client sizes"
            + (" and label counts" if show_labels else "")
            + "</summary><div class='scroll'><table class='partition'>"
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div></details>"
        )
    return "\n".join(parts)


def render_html(
    rows: Sequence[Mapping[str, Any]],
    runs: Sequence[Run],
    *,
    images: Mapping[str, bytes | Path],
    config: Mapping[str, Any] | None = None,
    environment: Mapping[str, Any] | None = None,
    partition: Mapping[str, Any] | None = None,
    partition_image: bytes | Path | None = None,
    title: str | None = None,
    run_rows: Sequence[Mapping[str, Any]] | None = None,
    paired: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """The report as one HTML string (see :func:`write_report`, which supplies the images).

    ``images`` maps ``accuracy_vs_bytes`` / ``metric_vs_round`` / ``metric_vs_time`` to PNG bytes
    or paths; missing ones are left out. Over several seeds ``rows`` are the aggregated rows of
    :func:`fedpress.report.seeds.seeds_table`, ``run_rows`` the per-run rows and ``paired`` the
    paired comparison; the page then says how many seeds and what the spread is.

    >>> page = render_html([{"codec": "<b>x</b>"}], [], images={}, title="t & t")
    >>> "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page and "t &amp; t" in page
    True
    """
    summaries = [dict(r.get("summary") or {}) for r in runs]
    scenarios = list(dict.fromkeys(str(s["scenario"]) for s in summaries if s.get("scenario")))
    metrics = list(dict.fromkeys(str(s["metric_name"]) for s in summaries if s.get("metric_name")))
    if title is None:
        title = "fedpress report" + (f" — {', '.join(scenarios)}" if scenarios else "")
    targets = sorted({r["target"] for r in rows if r.get("target") is not None})
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    over_seeds = run_rows is not None
    seeds = seeds_of(runs) if over_seeds else []
    meta = [f"generated {now}"]
    if over_seeds:
        meta.append(f"{len(rows)} codec(s) × {len(seeds)} seeds ({', '.join(map(str, seeds))})")
    else:
        meta.append(f"{len(rows)} run(s)")
    if metrics:
        meta.append("metric: " + ", ".join(metrics))
    if targets:
        meta.append("target: " + ", ".join(f"{t:g}" for t in targets))
    fp = _version("fedpress")
    if fp:
        meta.append(f"fedpress {fp}")

    captions = {
        "accuracy_vs_bytes": "metric vs cumulative uplink bytes (log scale): up and left wins",
        "metric_vs_round": "metric vs round",
        "metric_vs_time": "metric vs simulated time (network and compute)",
    }
    if over_seeds:
        band = (f"; lines: mean over {len(seeds)} seeds, shaded: min–max across seeds, "
                "points aligned by round")
        captions = {k: v + band for k, v in captions.items()}
    figs = []
    for key, caption in captions.items():
        if key in images:
            figs.append(
                f"<figure><img alt='{_e(caption)}' src='{_data_uri(images[key])}'>"
                f"<figcaption>{_e(caption)}</figcaption></figure>"
            )
    part_html = _partition_html(partition, partition_image)

    if over_seeds:
        results_html = (_results_html(rows, seed_columns(rows))
                        + f"<p class='meta'>{_e(seeds_note(rows))}.</p>")
        ratio_note = " with the same seed, then averaged"
        seeds_html = (f"\n{_paired_html(paired or [])}\n<details><summary>every run "
                      f"({len(run_rows)}: codec × seed, as in runs.csv)</summary>"
                      f"{_results_html(run_rows, RUN_DISPLAY_COLUMNS, table_id='runs')}</details>")
        if partition:
            part_html = (f"<p class='meta'>the partition of seed {_e(seeds[0])}; each seed "
                         "partitions the data anew, the same way for every codec.</p>" + part_html)
    else:
        results_html, ratio_note, seeds_html = _results_html(rows), "", ""
    summaries_json = json.dumps(to_jsonable(summaries), indent=2)
    body = f"""
<h1>{_e(title)}</h1>
<p class="meta">{_e(" · ".join(meta))}</p>
<h2>Results</h2>
{results_html}
<p class="meta">uplink ratio = uplink bytes of the uncompressed run (codec "none") ÷ this run's
uplink bytes{ratio_note}. All byte counts are lengths of bytes actually produced.</p>{seeds_html}
<h2>Plots</h2>
<div class="plots">
{"".join(figs) if figs else "<p class='meta'>(no plots)</p>"}
</div>
{_usage_html(codec_usage(runs))}
{_anatomy_html(runs)}
<h2>Configuration</h2>
{_kv_table(config or {})}
<h2>Environment</h2>
{_kv_table(environment or {})}
<h2>Partition</h2>
{part_html}
<h2>Run summaries</h2>
<details><summary>{len(summaries)} summary object(s)</summary>
<pre>{_e(summaries_json)}</pre></details>
"""
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>{body}</body>\n</html>\n"
    )


def write_report(
    out_dir: str | Path,
    runs: Sequence[Run],
    *,
    config: Mapping[str, Any],
    environment: Mapping[str, Any] | None = None,
    partition: Mapping[str, Any] | None = None,
    target: float | None = None,
    title: str | None = None,
    over_seeds: bool = False,
) -> dict[str, Path]:
    """Write the full comparison report into ``out_dir`` and return ``{name: path}``.

    Files: ``results.csv``, ``results.json`` (rows, config, environment, partition, per-run
    summaries and histories), ``accuracy_vs_bytes.png``, ``metric_vs_round.png``,
    ``metric_vs_time.png``, ``partition.png`` (only with label counts) and ``report.html``.
    Keys: ``csv json accuracy_vs_bytes metric_vs_round metric_vs_time [partition] html``.
    ``environment`` defaults to :func:`environment_info`.

    ``over_seeds``: ``runs`` hold every codec with several seeds (``compare --seeds N``).
    ``results.csv`` then has one row per codec with ``KEY_mean/_std/_min/_max`` columns and the
    paired comparison against the first codec (:func:`fedpress.report.seeds.seeds_table`), a new
    ``runs.csv`` has one row per run (key ``runs_csv``), ``results.json`` adds ``seeds``, ``runs``
    (those rows) and ``paired`` (with the per-seed differences), and the plots draw one mean line
    per codec with a min–max band.

    >>> import tempfile
    >>> run = {"summary": {"scenario": "digits", "codec": "none", "metric_name": "accuracy",
    ...                    "total_uplink_bytes": 4096, "final_metric": 0.9},
    ...        "history": [{"round": 1, "metric": 0.9, "cum_uplink_bytes": 4096,
    ...                     "sim_seconds": 1.0}]}
    >>> paths = write_report(tempfile.mkdtemp(), [run], config={"rounds": 1})
    >>> sorted(paths)
    ['accuracy_vs_bytes', 'csv', 'html', 'json', 'metric_vs_round', 'metric_vs_time']
    >>> all(p.exists() for p in paths.values())
    True
    >>> runs = [{"summary": {"scenario": "digits", "codec": c, "seed": s, "metric_name": "accuracy",
    ...                      "total_uplink_bytes": 4096 // (1 + i), "final_metric": 0.9 - 0.01 * s},
    ...          "history": [{"round": 1, "metric": 0.9 - 0.01 * s, "cum_uplink_bytes": 4096 // (1 + i),
    ...                       "sim_seconds": 1.0}]}
    ...         for i, c in enumerate(("none", "q:bits=8")) for s in (0, 1)]
    >>> paths = write_report(tempfile.mkdtemp(), runs, config={}, over_seeds=True)
    >>> sorted(paths)[:4], "2 seeds" in paths["html"].read_text()
    (['accuracy_vs_bytes', 'csv', 'html', 'json'], True)
    >>> len(paths["runs_csv"].read_text().splitlines()), len(paths["csv"].read_text().splitlines())
    (5, 3)
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(environment) if environment is not None else environment_info()
    paths: dict[str, Path] = {}
    extra: dict[str, Any] = {}
    run_rows = paired = None
    if over_seeds:
        rows = seeds_table(runs, target=target)
        run_rows = per_run_table(runs, target=target)
        paired = paired_comparison(runs, target=target)
        # per_seed (lists) stays in results.json: the CSV has one flat row per codec, runs.csv the rest.
        paths["csv"] = write_csv([{k: v for k, v in r.items() if k != "per_seed"} for r in rows],
                                 out / FILES["csv"])
        paths["runs_csv"] = write_csv(run_rows, out / FILES["runs_csv"])
        extra = {"seeds": seeds_of(runs), "runs": run_rows, "paired": paired}
    else:
        rows = results_table(runs, target=target)
        paths["csv"] = write_csv(rows, out / FILES["csv"])
    paths["json"] = write_json(
        {
            "rows": rows,
            **extra,
            "target": target,
            "config": config,
            "environment": env,
            "partition": partition,
            "summaries": [r.get("summary") or {} for r in runs],
            # Histories let a report be re-rendered (or re-plotted) from results.json alone.
            "histories": [list(r.get("history") or []) for r in runs],
        },
        out / FILES["json"],
    )
    tgt = target
    if tgt is None:
        own = {row["target"] for row in rows if row.get("target") is not None}
        tgt = own.pop() if len(own) == 1 else None
    paths["accuracy_vs_bytes"] = plot_metric_vs_bytes(
        runs, out / FILES["accuracy_vs_bytes"], target=tgt, over_seeds=over_seeds
    )
    paths["metric_vs_round"] = plot_metric_vs_round(
        runs, out / FILES["metric_vs_round"], target=tgt, over_seeds=over_seeds
    )
    paths["metric_vs_time"] = plot_metric_vs_time(
        runs, out / FILES["metric_vs_time"], target=tgt, over_seeds=over_seeds
    )
    heat = plot_partition(partition, out / FILES["partition"])
    if heat is not None:
        paths["partition"] = heat
    page = render_html(
        rows,
        runs,
        images={k: paths[k] for k in ("accuracy_vs_bytes", "metric_vs_round", "metric_vs_time")},
        config=config,
        environment=env,
        partition=partition,
        partition_image=heat,
        title=title,
        run_rows=run_rows,
        paired=paired,
    )
    paths["html"] = out / FILES["html"]
    paths["html"].write_text(page, encoding="utf-8")
    return paths
