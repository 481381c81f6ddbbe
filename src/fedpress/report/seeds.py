"""Results over several seeds: one row per codec with mean, spread and a paired comparison.

On non-IID data the run-to-run spread of one codec is often larger than the gap between two codecs,
so a claim like "no accuracy loss" needs several seeds and a *paired* comparison: ``fedpress
compare --seeds N`` runs every codec with the same seeds, and seed ``s`` gives every codec the same
partition, links and client sampling (all randomness derives from the seed, the round and the
client, never from the codec). The difference "codec minus baseline" is then taken seed by seed,
which removes the part of the spread both runs share.

Input, as everywhere in :mod:`fedpress.report`, is a list of runs ``{"summary", "history"}``;
runs of one codec are told apart by ``summary["seed"]``.

>>> from fedpress.report.seeds import seeds_table
>>> def run(codec, seed, final, up):
...     return {"summary": {"scenario": "digits", "codec": codec, "seed": seed,
...                         "metric_name": "accuracy", "final_metric": final,
...                         "best_metric": final, "total_uplink_bytes": up}, "history": []}
>>> runs = [run("none", 0, 0.90, 400), run("none", 1, 0.80, 400),
...         run("q:bits=8", 0, 0.91, 100), run("q:bits=8", 1, 0.78, 100)]
>>> row = seeds_table(runs)[1]
>>> row["codec"], row["n_seeds"], round(row["final_metric_mean"], 3), row["compression_ratio_mean"]
('q:bits=8', 2, 0.845, 4.0)
>>> round(row["delta_final_vs_baseline_mean"], 3), row["seeds_not_worse_than_baseline"]
(-0.005, 1)
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fedpress.report.tables import (
    DISPLAY_COLUMNS,
    Run,
    _finite,
    _fmt_plain,
    format_bytes,
    format_ratio,
    higher_is_better,
    results_table,
    run_names,
)

__all__ = [
    "RUN_DISPLAY_COLUMNS",
    "STAT_KEYS",
    "describe",
    "group_runs",
    "paired_comparison",
    "per_run_table",
    "seed_columns",
    "seed_display_columns",
    "seeds_note",
    "seeds_of",
    "seeds_table",
]


#: The per-run numbers :func:`seeds_table` summarises as ``KEY_mean``, ``KEY_std``, ``KEY_min`` and
#: ``KEY_max`` (the per-seed values themselves go to the row's ``per_seed``).
STAT_KEYS: tuple[str, ...] = (
    "final_metric",
    "best_metric",
    "rounds_to_target",
    "sim_seconds_to_target",
    "uplink_bytes_to_target",
    "uplink_bytes",
    "downlink_bytes",
    "compression_ratio",
    "rounds",
    "sim_seconds",
    "wall_seconds",
)


#: The per-run table over seeds (``runs.csv``, HTML): the columns of a single run plus its seed.
RUN_DISPLAY_COLUMNS: tuple[tuple[Any, str, Any, bool], ...] = (
    DISPLAY_COLUMNS[0],
    ("seed", "seed", _fmt_plain, True),
    *DISPLAY_COLUMNS[1:],
)


def describe(values: Sequence[Any]) -> dict[str, float | int | None]:
    """Mean, sample standard deviation (n - 1), min, max and count of the finite ``values``.

    Missing and non-finite values (a seed that never reached the target) are left out, and ``n``
    says how many were used. ``std`` is None below two values: one seed has no spread to report.

    >>> describe([0.5, 0.75, None, 1.0])
    {'mean': 0.75, 'std': 0.25, 'min': 0.5, 'max': 1.0, 'n': 3}
    >>> describe([None])
    {'mean': None, 'std': None, 'min': None, 'max': None, 'n': 0}
    """
    xs = [f for f in (_finite(v) for v in values) if f is not None]
    if not xs:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {
        "mean": statistics.fmean(xs),
        "std": statistics.stdev(xs) if len(xs) > 1 else None,
        "min": min(xs),
        "max": max(xs),
        "n": len(xs),
    }


def _keys(runs: Sequence[Run]) -> list[tuple[Any, str, Any]]:
    """Each run's group key: (scenario, name as in the tables, downlink codec); the seed is not in
    it, which is what makes the runs of one codec one group."""
    sums = [r.get("summary") or {} for r in runs]
    return [
        (s.get("scenario"), name, s.get("down_codec"))
        for s, name in zip(sums, run_names(sums), strict=True)
    ]


def group_runs(runs: Sequence[Run]) -> list[list[Run]]:
    """The runs grouped by everything but their seed, groups and runs in first-seen order.

    >>> runs = [{"summary": {"codec": c, "seed": s}} for c in ("none", "q") for s in (0, 1)]
    >>> [[(r["summary"]["codec"], r["summary"]["seed"]) for r in g] for g in group_runs(runs)]
    [[('none', 0), ('none', 1)], [('q', 0), ('q', 1)]]
    """
    groups: dict[Any, list[Run]] = {}
    for run, key in zip(runs, _keys(runs), strict=True):
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def seeds_of(runs: Sequence[Run]) -> list[Any]:
    """The distinct seeds of ``runs``, in first-seen order.

    >>> seeds_of([{"summary": {"seed": 3}}, {"summary": {"seed": 4}}, {"summary": {"seed": 3}}])
    [3, 4]
    """
    return list(dict.fromkeys((r.get("summary") or {}).get("seed") for r in runs))


def per_run_table(runs: Sequence[Run], target: float | None = None) -> list[dict[str, Any]]:
    """One :func:`~fedpress.report.tables.results_table` row per run (``runs.csv``), in run order,
    plus ``uplink_bytes_to_target``: the cumulative uplink bytes when the run reached the target.

    The compression ratio is paired too: each run is divided into the ``none`` run *of its own
    seed*, since codecs whose size depends on the data (entropy coding, sparse formats, Poisson
    sampling) give a different byte count per seed.

    >>> runs = [{"summary": {"codec": c, "seed": s, "total_uplink_bytes": b}, "history": []}
    ...         for c, s, b in (("none", 0, 800), ("none", 1, 900), ("q", 0, 200), ("q", 1, 300))]
    >>> [(r["codec"], r["seed"], r["compression_ratio"]) for r in per_run_table(runs)]
    [('none', 0, 1.0), ('none', 1, 1.0), ('q', 0, 4.0), ('q', 1, 3.0)]
    """
    names = [key[1] for key in _keys(runs)]
    rows: list[dict[str, Any] | None] = [None] * len(runs)
    for seed in seeds_of(runs):
        idx = [i for i, r in enumerate(runs) if (r.get("summary") or {}).get("seed") == seed]
        for i, row in zip(idx, results_table([runs[i] for i in idx], target=target), strict=True):
            # The name over all runs, so a row names its codec exactly as the aggregated table does.
            rows[i] = {
                **row,
                "codec": names[i],
                "uplink_bytes_to_target": _bytes_at(runs[i], row.get("rounds_to_target")),
            }
    return [r for r in rows if r is not None]


def _bytes_at(run: Run, rnd: Any) -> Any:
    """The cumulative uplink bytes of ``run`` at round ``rnd`` (None when it never got there)."""
    if rnd is None:
        return None
    for i, row in enumerate(run.get("history") or []):
        if row.get("round", i + 1) == rnd:
            return row.get("cum_uplink_bytes")
    return None


def paired_t(deltas: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """The 95 % confidence interval of the mean paired difference (Student's t, n − 1 degrees of
    freedom) and the two-sided p-value of "no difference" (a paired t-test, scipy); None where
    undefined (fewer than two seeds, or every seed the same difference).

    >>> lo, hi, p = paired_t([0.02, 0.03, 0.01, 0.02, 0.04])
    >>> round(lo, 4), round(hi, 4), round(p, 4)
    (0.0098, 0.0382, 0.0093)
    """
    from scipy import stats

    n = len(deltas)
    if n < 2 or statistics.pstdev(deltas) == 0:
        return None, None, None
    mean, sem = statistics.fmean(deltas), statistics.stdev(deltas) / n ** 0.5
    half = float(stats.t.ppf(0.975, n - 1)) * sem
    return mean - half, mean + half, float(stats.ttest_1samp(deltas, 0.0).pvalue)


def paired_comparison(runs: Sequence[Run], target: float | None = None) -> list[dict[str, Any]]:
    """Every codec against the first one (the baseline), seed by seed, on the final metric.

    One dict per codec after the baseline: ``codec``, ``baseline``, ``metric_name``,
    ``paired_seeds`` (seeds both ran), ``delta_final_mean`` / ``_std`` / ``_min`` / ``_max`` (codec
    minus baseline, per seed), ``delta_final_ci95_lo`` / ``_hi`` and ``delta_final_p``
    (:func:`paired_t`), ``seeds_not_worse`` (seeds where the codec's final metric is at least
    the baseline's: ``>=`` for accuracy-like metrics, ``<=`` for losses) and ``per_seed`` (seed,
    codec value, baseline value, delta). ``target`` is passed through to the per-run rows.

    >>> def run(codec, seed, final):
    ...     return {"summary": {"codec": codec, "seed": seed, "final_metric": final,
    ...                         "metric_name": "accuracy"}, "history": []}
    >>> runs = [run("none", 0, 0.9), run("none", 1, 0.8), run("q", 0, 0.9), run("q", 1, 0.7)]
    >>> p = paired_comparison(runs)[0]
    >>> p["codec"], p["baseline"], round(p["delta_final_mean"], 3), p["seeds_not_worse"]
    ('q', 'none', -0.05, 1)
    """
    rows = per_run_table(runs, target)
    by_key: dict[Any, dict[Any, dict[str, Any]]] = {}
    for key, row in zip(_keys(runs), rows, strict=True):
        by_key.setdefault(key, {})[row.get("seed")] = row
    if len(by_key) < 2:
        return []
    (base_key, base), *others = by_key.items()
    out = []
    for key, seeded in others:
        higher = higher_is_better(next(iter(seeded.values())).get("metric_name"))
        per_seed = []
        for seed, row in seeded.items():
            a, b = _finite(row.get("final_metric")), _finite(base.get(seed, {}).get("final_metric"))
            if a is None or b is None:
                continue
            per_seed.append(
                {
                    "seed": seed,
                    "codec": a,
                    "baseline": b,
                    "delta": a - b,
                    "not_worse": a >= b if higher else a <= b,
                }
            )
        d = describe([p["delta"] for p in per_seed])
        lo, hi, pval = paired_t([p["delta"] for p in per_seed])
        out.append(
            {
                "codec": key[1],
                "baseline": base_key[1],
                "metric_name": next(iter(seeded.values())).get("metric_name"),
                "paired_seeds": len(per_seed),
                "delta_final_mean": d["mean"],
                "delta_final_std": d["std"],
                "delta_final_min": d["min"],
                "delta_final_max": d["max"],
                "delta_final_ci95_lo": lo,
                "delta_final_ci95_hi": hi,
                "delta_final_p": pval,
                "seeds_not_worse": sum(p["not_worse"] for p in per_seed),
                "per_seed": per_seed,
            }
        )
    return out


def seeds_table(runs: Sequence[Run], target: float | None = None) -> list[dict[str, Any]]:
    """One row per codec over its seeds (``results.csv`` of ``compare --seeds N``).

    Keys: ``scenario codec down_codec metric_name target n_seeds seeds``, then for each of
    :data:`STAT_KEYS` ``KEY_mean KEY_std KEY_min KEY_max`` (std: sample std, None for one value),
    ``reached_target`` (seeds that reached it, None without a target; the ``*_to_target``
    statistics are over those seeds only), the paired comparison against the first codec
    (``baseline``, ``delta_final_vs_baseline_mean/_std/_min/_max/_ci95_lo/_ci95_hi/_p``,
    ``seeds_not_worse_than_baseline``, ``paired_seeds``; empty on the baseline's own row), and
    ``per_seed`` with every per-seed value (``seed`` plus each of :data:`STAT_KEYS`), which
    ``results.json`` keeps and ``results.csv`` leaves to ``runs.csv``.

    >>> def run(codec, seed, metrics):
    ...     hist = [{"round": i + 1, "metric": m} for i, m in enumerate(metrics)]
    ...     return {"summary": {"codec": codec, "seed": seed, "final_metric": metrics[-1],
    ...                         "metric_name": "accuracy"}, "history": hist}
    >>> rows = seeds_table([run("none", 0, [0.5, 0.9]), run("none", 1, [0.7, 0.8])], target=0.7)
    >>> rows[0]["reached_target"], rows[0]["rounds_to_target_mean"], rows[0]["per_seed"]["seed"]
    (2, 1.5, [0, 1])
    """
    per_run = per_run_table(runs, target)
    paired = {p["codec"]: p for p in paired_comparison(runs, target)}
    grouped: dict[Any, list[dict[str, Any]]] = {}
    for key, row in zip(_keys(runs), per_run, strict=True):
        grouped.setdefault(key, []).append(row)
    out = []
    for (_, name, _), rows in grouped.items():
        first = rows[0]
        targets = {r.get("target") for r in rows if r.get("target") is not None}
        row: dict[str, Any] = {
            "scenario": first.get("scenario"),
            "codec": name,
            "down_codec": first.get("down_codec"),
            "metric_name": first.get("metric_name"),
            "target": targets.pop() if len(targets) == 1 else None,
            "n_seeds": len(rows),
            "seeds": [r.get("seed") for r in rows],
        }
        for key in STAT_KEYS:
            d = describe([r.get(key) for r in rows])
            for stat in ("mean", "std", "min", "max"):
                row[f"{key}_{stat}"] = d[stat]
            if key == "best_metric":  # right before the to-target columns it counts for
                row["reached_target"] = (
                    sum(r.get("rounds_to_target") is not None for r in rows)
                    if row["target"] is not None
                    else None
                )
        p = paired.get(name)
        row["baseline"] = p["baseline"] if p else None
        row["paired_seeds"] = p["paired_seeds"] if p else None
        for stat in ("mean", "std", "min", "max", "ci95_lo", "ci95_hi", "p"):
            row[f"delta_final_vs_baseline_{stat}"] = p[f"delta_final_{stat}"] if p else None
        row["seeds_not_worse_than_baseline"] = p["seeds_not_worse"] if p else None
        row["per_seed"] = {"seed": row["seeds"], **{k: [r.get(k) for r in rows] for k in STAT_KEYS}}
        out.append(row)
    return out


# --- the human-readable views (Rich and HTML) ------------------------------------------------------


def _pm(
    fmt: Callable[[Any], str], std_fmt: Callable[[Any, float], str] | None = None, unit: str = ""
):
    """A cell ``mean ± std`` of ``KEY_mean``/``KEY_std``; the ``±`` part is left out when the seeds
    agree exactly (a fixed-size codec sends the same bytes whatever the seed) or there is one.
    ``std_fmt(std, mean)`` formats the spread (default: like the mean); ``unit`` ends the cell."""

    def cell(row: Mapping[str, Any], key: str) -> str:
        mean, std = _finite(row.get(f"{key}_mean")), _finite(row.get(f"{key}_std"))
        if mean is None:
            return "—"
        text = fmt(mean)
        # A spread under 0.05 % of the mean would print as noise ("3 ± 0.0001 s"): left out.
        if std is not None and std > 5e-4 * abs(mean):
            text += f" ± {std_fmt(std, mean) if std_fmt else fmt(std)}"
        return text + unit

    return cell


def _metric_cell(sign: str = ""):
    """``mean ± std`` of a metric (or of a difference of metrics, ``sign="+"``), with three
    decimals as "0.912 ± 0.008" is usually written (the CSV keeps every digit), or three
    significant digits when the metric itself is small (an MSE of 0.00123). The scale comes from
    the row's final metric, so a difference is written like the metric it is a difference of."""

    def cell(row: Mapping[str, Any], key: str) -> str:
        mean, std = _finite(row.get(f"{key}_mean")), _finite(row.get(f"{key}_std"))
        if mean is None:
            return "—"
        scale = _finite(row.get("final_metric_mean"))
        spec = ".3f" if abs(scale if scale is not None else mean) >= 0.1 else ".3g"
        text = format(mean, sign + spec)
        spread = format(std, spec) if std else ""
        return text + (f" ± {spread}" if spread.strip("0.") else "")  # not "± 0.000"

    return cell


def _fmt_round(x: Any) -> str:
    f = _finite(x)
    return "—" if f is None else f"{f:.1f}".removesuffix(".0")


def _fmt_secs(x: float) -> str:  # the unit goes once at the end of the cell: "0.81 ± 0.15 s"
    return f"{x:.3g}" if x < 100 else f"{x:,.0f}"


def _std_secs(std: float, mean: float) -> str:
    return f"{std:.2g}" if std < 100 else f"{std:,.0f}"


def _std_percent(std: float, mean: float) -> str:
    # Bytes vary little between seeds, if at all: a relative spread is shorter and says more than
    # "81.55 KiB ± 10.86 KiB".
    return f"{100 * std / mean:.2g}%" if mean else format_bytes(std)


def seed_display_columns(
    baseline: str | None = None, *, higher_better: bool = True, with_down_codec: bool = True
) -> tuple[tuple[Any, str, Any, bool], ...]:
    """The columns of the aggregated table, shaped like
    :data:`~fedpress.report.tables.DISPLAY_COLUMNS` but with ``key`` None where the formatter takes
    the whole row (a mean ± std cell reads several keys). ``baseline`` names the paired columns;
    ``higher_better`` False (a loss-like metric) heads the not-worse count ``≤`` instead of ``≥``;
    ``with_down_codec`` False drops that column (every run sent the model uncompressed).

    >>> from fedpress.report.tables import display_rows
    >>> row = {"codec": "q", "final_metric_mean": 0.9123, "final_metric_std": 0.0081,
    ...        "uplink_bytes_mean": 2048, "uplink_bytes_std": 0.0, "n_seeds": 3,
    ...        "delta_final_vs_baseline_mean": -0.0012, "delta_final_vs_baseline_std": 0.002,
    ...        "seeds_not_worse_than_baseline": 2, "paired_seeds": 3}
    >>> headers, cells = display_rows([row], seed_display_columns("none"))
    >>> dict(zip(headers, cells[0]))["final"], dict(zip(headers, cells[0]))["uplink"]
    ('0.912 ± 0.008', '2.00 KiB')
    >>> dict(zip(headers, cells[0]))["Δ final vs none"], dict(zip(headers, cells[0]))["≥ none"]
    ('-0.001 ± 0.002', '2/3')
    """
    metric, delta = _metric_cell(), _metric_cell("+")
    seconds, nbytes = _pm(_fmt_secs, _std_secs, unit=" s"), _pm(format_bytes, _std_percent)
    ratio = _pm(format_ratio, lambda std, mean: f"{std:.0f}" if mean >= 1000 else f"{std:.1f}")
    rounds = _pm(_fmt_round)

    def stat(cell, key):
        return lambda row: cell(row, key)

    def to_target(row: Mapping[str, Any]) -> str:
        if row.get("reached_target") is None:
            return "—"
        return f"{rounds(row, 'rounds_to_target')} ({row['reached_target']}/{row.get('n_seeds')})"

    def not_worse(row: Mapping[str, Any]) -> str:
        k = row.get("seeds_not_worse_than_baseline")
        return "—" if k is None else f"{k}/{row.get('paired_seeds')}"

    base = baseline or "baseline"
    # Total simulated and wall time are left to the CSV: the table is wide, and wall time measures
    # this machine rather than the codec.
    columns = (
        ("codec", "codec", _fmt_plain, False),
        ("down_codec", "down codec", _fmt_plain, False),
        (None, "final", stat(metric, "final_metric"), True),
        (None, "best", stat(metric, "best_metric"), True),
        (None, f"Δ final vs {base}", stat(delta, "delta_final_vs_baseline"), True),
        (None, f"{'≥' if higher_better else '≤'} {base}", not_worse, True),
        (None, "rounds→target", to_target, True),
        (None, "sim s→target", stat(seconds, "sim_seconds_to_target"), True),
        (None, "uplink→target", stat(nbytes, "uplink_bytes_to_target"), True),
        (None, "uplink", stat(nbytes, "uplink_bytes"), True),
        (None, "downlink", stat(nbytes, "downlink_bytes"), True),
        (None, "uplink ratio", stat(ratio, "compression_ratio"), True),
    )
    return columns if with_down_codec else tuple(c for c in columns if c[0] != "down_codec")


def seed_columns(rows: Sequence[Mapping[str, Any]]) -> tuple[tuple[Any, str, Any, bool], ...]:
    """:func:`seed_display_columns` fitted to :func:`seeds_table` ``rows``: their baseline, the
    direction of their metric, and a down-codec column only when some run compressed the downlink.

    >>> [h for _, h, _, _ in seed_columns([{"codec": "q", "baseline": "none"}])][:5]
    ['codec', 'final', 'best', 'Δ final vs none', '≥ none']
    """
    base = next((r["baseline"] for r in rows if r.get("baseline")), None)
    metric = next((r["metric_name"] for r in rows if r.get("metric_name")), None)
    down = any(str(r.get("down_codec") or "none").lower() != "none" for r in rows)
    return seed_display_columns(base, higher_better=higher_is_better(metric), with_down_codec=down)


def seeds_note(rows: Sequence[Mapping[str, Any]]) -> str:
    """The caption that says what the aggregated numbers are.

    >>> seeds_note([{"seeds": [0, 1, 2], "baseline": None}, {"seeds": [0, 1, 2], "baseline": "none"}])
    'mean ± sample std over 3 seeds (0, 1, 2); Δ, ≥/≤: final metric vs none, paired by seed'
    """
    seeds = list(dict.fromkeys(s for r in rows for s in (r.get("seeds") or [])))
    base = next((r["baseline"] for r in rows if r.get("baseline")), None)
    text = f"mean ± sample std over {len(seeds)} seeds ({', '.join(map(str, seeds))})"
    if base:
        text += f"; Δ, ≥/≤: final metric vs {base}, paired by seed"
    if any(r.get("reached_target") is not None for r in rows):
        text += "; →target: over the seeds reaching it (count in brackets)"
    return text
