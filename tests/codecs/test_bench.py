"""`fedpress bench codecs`: numbers come from real blobs (timings are reported, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import typer
from typer.testing import CliRunner

import fedpress
from fedpress.bench import DEFAULT_CODECS, bench_app, bench_codecs, model_like_state_dict


def test_model_like_state_dict():
    for n in (5_000, 200_000):
        sd = model_like_state_dict(n, seed=1)
        total = sum(t.numel() for t in sd.values())
        assert abs(total - n) <= 0.05 * n
        assert any(t.dim() == 4 for t in sd.values()) and any(t.dim() == 2 for t in sd.values())
        assert all(k.endswith((".weight", ".bias")) for k in sd)
    a, b = model_like_state_dict(5_000, seed=1), model_like_state_dict(5_000, seed=1)
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_bench_rows_are_measured_from_blobs():
    specs = ["q:bits=8", "topk:ratio=0.01+q:bits=8", "none"]
    rows = bench_codecs(20_000, specs, repeat=1, seed=3)
    sd = model_like_state_dict(20_000, seed=3)
    for spec, r in zip(specs, rows, strict=True):
        enc = fedpress.codec(spec).encode_ex(sd, seed=3)
        assert r["bytes"] == enc.nbytes and r["header_bytes"] == enc.header_bytes
        assert r["bits_per_coord"] == 8 * enc.nbytes / r["n"]
        assert r["encode_over_copy"] == r["encode_ms"] / r["copy_ms"]
        assert r["decode_over_copy"] == r["decode_ms"] / r["copy_ms"]
    assert rows[2]["rel_l2_error"] == 0 and 0 < rows[0]["rel_l2_error"] < 0.01
    flat = bench_codecs(3_000, ["fp16"], repeat=1, shape="flat")
    assert flat[0]["n"] == 3_000


def test_kernels_both_measures_each_path_on_the_same_blob():
    rows = bench_codecs(30_000, ["q:bits=4", "topk:ratio=0.01"], repeat=1, kernels="both", shape="flat")
    assert [(r["codec"], r["kernels"]) for r in rows] == [
        ("q:bits=4", "off"), ("q:bits=4", "on"), ("topk:ratio=0.01", "off"), ("topk:ratio=0.01", "on")]
    assert rows[0]["bytes"] == rows[1]["bytes"] and rows[0]["rel_l2_error"] == rows[1]["rel_l2_error"]
    assert rows[0]["path"].startswith("numpy") and len({r["copy_ms"] for r in rows}) == 1


def test_device_option():
    import torch

    res = _invoke("codecs", "--size", "1000", "--codec", "sign", "--device", "tpu")
    assert res.exit_code != 0 and "cpu" in res.output
    res = _invoke("codecs", "--size", "1000", "--codec", "sign", "--kernels", "sometimes")
    assert res.exit_code != 0
    res = _invoke("codecs", "--size", "1000", "--codec", "sign", "--device", "cuda", "--repeat", "1")
    if torch.cuda.is_available():  # pragma: no cover - no GPU in CI
        assert res.exit_code == 0
    else:
        assert res.exit_code != 0 and "CUDA is not available" in res.output


def test_default_codecs_cover_every_family():
    stages = {s.name for spec in DEFAULT_CODECS for s in fedpress.codec(spec).stages}
    # every stage of the registry, lossy or lossless, and error feedback
    assert set(fedpress.codecs.registry()) <= stages


def _invoke(*args):
    root = typer.Typer()
    root.add_typer(bench_app, name="bench")
    return CliRunner().invoke(root, ["bench", *args])


def test_cli_json_and_table():
    res = _invoke("codecs", "--size", "4000", "--codec", "q:bits=4", "--codec", "sign",
                                    "--json", "--repeat", "1")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert [r["codec"] for r in doc["results"]] == ["q:bits=4", "sign"]
    assert doc["size"] == doc["results"][0]["n"] and "environment" in doc
    res = _invoke("codecs", "-n", "3000", "-c", "fp16", "-r", "1", "--shape", "flat")
    assert res.exit_code == 0 and "fp16" in res.output and "bits/coord" in res.output
    bad = _invoke("codecs", "--size", "100", "--codec", "q:bits=9")
    assert bad.exit_code != 0 and "bits" in bad.output
    bad = _invoke("codecs", "--size", "100", "--shape", "cube")
    assert bad.exit_code != 0


def test_values_option_changes_the_data_and_where_rotation_pays():
    gauss, heavy = (bench_codecs(20_000, ["q:bits=2", "rht+q:bits=2"], repeat=1, shape="flat", values=v)
                    for v in ("gaussian", "student-t"))
    err = {(r["codec"], i): r["rel_l2_error"] for i, rows in enumerate((gauss, heavy)) for r in rows}
    # on heavy tails the per-block range is spoiled and the rotation repairs it; on Gaussian data
    # there is nothing to repair
    assert err["rht+q:bits=2", 1] < 0.6 * err["q:bits=2", 1]
    assert abs(err["rht+q:bits=2", 0] - err["q:bits=2", 0]) < 0.1 * err["q:bits=2", 0]
    res = _invoke("codecs", "-n", "3000", "-c", "sign", "-r", "1", "--values", "outliers", "--json")
    assert res.exit_code == 0 and json.loads(res.output)["values"] == "outliers"
    bad = _invoke("codecs", "--size", "100", "--values", "cauchy")
    assert bad.exit_code != 0 and "student-t" in bad.output


def test_console_script_wiring():
    """`fedpress bench codecs` as users type it (through fedpress.cli)."""
    out = subprocess.run([sys.executable, "-m", "fedpress", "bench", "codecs", "--size", "2000", "--codec",
                          "topk:ratio=0.1", "--json", "--repeat", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["results"][0]["codec"] == "topk:ratio=0.1"
