"""Reports: result tables (CSV/JSON/Rich), plots (PNG) and a self-contained HTML page.

Input everywhere is a list of runs, each ``{"summary": dict, "history": list[dict]}`` as written
by ``fedpress run`` (``summary.json`` and the rows of ``metrics.jsonl``). Runs of the same codec
with different seeds aggregate to mean ± spread with :func:`seeds_table` (``compare --seeds N``).

>>> from fedpress.report import results_table
>>> results_table([{"summary": {"codec": "none", "total_uplink_bytes": 8}, "history": []}])[0][
...     "compression_ratio"]
1.0
"""

from __future__ import annotations

from fedpress.report.html import environment_info, render_html, write_report
from fedpress.report.plots import (
    plot_metric_vs_bytes,
    plot_metric_vs_round,
    plot_metric_vs_time,
    plot_partition,
)
from fedpress.report.seeds import (
    describe,
    group_runs,
    paired_comparison,
    per_run_table,
    seeds_table,
)
from fedpress.report.tables import (
    format_bytes,
    format_ratio,
    results_table,
    rich_table,
    rounds_to_target,
    write_csv,
    write_json,
)

__all__ = [
    "describe",
    "environment_info",
    "format_bytes",
    "format_ratio",
    "group_runs",
    "paired_comparison",
    "per_run_table",
    "plot_metric_vs_bytes",
    "plot_metric_vs_round",
    "plot_metric_vs_time",
    "plot_partition",
    "render_html",
    "results_table",
    "rich_table",
    "rounds_to_target",
    "seeds_table",
    "write_csv",
    "write_json",
    "write_report",
]
