from __future__ import annotations

import base64
import csv
import json
import re

import pytest

from fedpress.report import environment_info, write_report

PNG_SIG = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert('x')</script>"


@pytest.fixture
def report(tmp_path, runs, partition):
    runs[1]["summary"]["codec"] = EVIL
    config = {"scenario": "digits & co", "rounds": 5, "network": {"up_mbps": 10}}
    env = {"python": "3.11.7", "torch": "2.13.0+cpu", "cpu_count": 2, "note": "<b>"}
    paths = write_report(
        tmp_path / "out", runs, config=config, environment=env, partition=partition, target=0.9
    )
    return paths, paths["html"].read_text(encoding="utf-8"), runs


def test_all_files_written(report):
    paths, _, _ = report
    expected = {
        "csv": "results.csv",
        "json": "results.json",
        "accuracy_vs_bytes": "accuracy_vs_bytes.png",
        "metric_vs_round": "metric_vs_round.png",
        "metric_vs_time": "metric_vs_time.png",
        "partition": "partition.png",
        "html": "report.html",
    }
    assert {k: p.name for k, p in paths.items()} == expected
    for key in ("accuracy_vs_bytes", "metric_vs_round", "metric_vs_time", "partition"):
        assert paths[key].read_bytes()[:8] == PNG_SIG


def test_csv_and_json_contents(report):
    paths, _, runs = report
    with paths["csv"].open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["codec"] for r in rows] == [r["summary"]["codec"] for r in runs]
    assert float(rows[2]["compression_ratio"]) == pytest.approx(50.0)

    data = json.loads(paths["json"].read_text())
    assert data["config"]["rounds"] == 5
    assert data["target"] == 0.9
    assert [r["rounds_to_target"] for r in data["rows"]] == [4, 5, None, 4]
    assert [s["codec"] for s in data["summaries"]] == [r["summary"]["codec"] for r in runs]
    assert len(data["histories"][0]) == 5
    assert data["partition"]["alpha"] == 0.5
    assert data["environment"]["torch"] == "2.13.0+cpu"


def results_tbody(page: str) -> str:
    m = re.search(r"<table class='results' id='results'>.*?<tbody>(.*?)</tbody>", page, re.S)
    assert m, "results table missing"
    return m.group(1)


def test_html_table_has_one_row_per_run(report):
    _, page, runs = report
    body = results_tbody(page)
    assert body.count("<tr>") == len(runs)
    assert "50.0×" in body and "4.0×" in body
    assert "195.31 KiB" in body  # the baseline: 5 rounds x 40_000 B = 200_000 B
    assert "ef+<wbr>topk:ratio=0.01+<wbr>q:bits=4+<wbr>zstd" in body


def test_html_embeds_every_plot_as_base64(report):
    paths, page, _ = report
    uris = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(uris) == 4  # three plots + the partition heatmap
    decoded = {base64.b64decode(u) for u in uris}
    for key in ("accuracy_vs_bytes", "metric_vs_round", "metric_vs_time", "partition"):
        assert paths[key].read_bytes() in decoded


def test_html_is_self_contained(report):
    _, page, _ = report
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", page, re.I)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert "<script" not in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page


def test_html_escapes_text(report):
    _, page, _ = report
    assert EVIL not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "digits &amp; co" in page
    assert "&lt;b&gt;" in page and "<b>" not in page


def test_html_shows_config_environment_partition(report):
    _, page, _ = report
    for text in ("Configuration", "Environment", "Partition", "2.13.0+cpu", "up_mbps"):
        assert text in page
    assert "dirichlet" in page
    # per-client table: 4 clients, sizes 15 10 15 21
    part = re.search(r"<table class='partition'>.*?<tbody>(.*?)</tbody>", page, re.S).group(1)
    assert part.count("<tr>") == 4
    assert "<td class='num'>21</td>" in part


def test_environment_defaults_to_environment_info(tmp_path, runs):
    paths = write_report(tmp_path, runs[:1], config={})
    data = json.loads(paths["json"].read_text())
    env = data["environment"]
    for key in ("python", "numpy", "torch", "platform", "cpu_count"):
        assert key in env
    assert env == json.loads(json.dumps(environment_info()))
    assert "partition" not in paths


def test_upload_anatomy_table_shows_each_codecs_bytes_per_tensor(tmp_path):
    from fedpress.report.html import _ANATOMY_ROWS, render_html

    def run(codec, tensors, total):
        return {"summary": {"codec": codec, "upload_anatomy": {
            "codec": codec, "round": 3, "client": 1, "total_bytes": total, "envelope_bytes": 21,
            "body_bytes": total - 21, "payload_bytes": sum(t[2] for t in tensors), "lossless": None,
            "tensors": [{"name": n, "shape": list(s), "payload_bytes": b, "pipeline": p, "dtype": "float32",
                         "fields": 1, "bits_per_value": 0.0} for n, s, b, p in tensors]}}, "history": []}

    runs = [run("q:bits=8", [("w", (64, 64), 4224, "q:bits=8"), ("b", (64,), 72, "q:bits=8")], 4317),
            run("topk; b=none", [("w", (64, 64), 98, "topk"), ("b", (64,), 256, "none")], 375),
            {"summary": {"codec": "secagg"}, "history": []}]  # no anatomy: left out
    page = render_html([], runs, images={})
    table = page[page.index("id='anatomy'"):page.index("</table>", page.index("id='anatomy'"))]
    assert "4.12 KiB · 8.25 b/v" in table and "98 B · 0.19 b/v" in table
    assert "256 B · 32.00 b/v" in table and "title='none'" in table
    assert "375 B" in table and "secagg" not in table
    # many tensors: the biggest are named (in model order), the rest summed in one row
    many = [(f"t{i}", (i + 1,), 4 * (i + 1), "none") for i in range(_ANATOMY_ROWS + 5)]
    page = render_html([], [run("none", many, 10_000)], images={})
    assert f"t{_ANATOMY_ROWS + 4}" in page and "5 other tensors" in page and ">t0<" not in page
    assert render_html([], [], images={}).count("id='anatomy'") == 0
    # an empty tensor has bytes but no values: a well-formed cell all the same
    page = render_html([], [run("none", [("e", (0, 3), 0, "none"), ("w", (2,), 8, "none")], 60)], images={})
    table = page[page.index("id='anatomy'"):page.index("</table>", page.index("id='anatomy'"))]
    assert table.count("<td") == table.count("</td>")
