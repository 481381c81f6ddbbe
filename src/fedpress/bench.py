"""`fedpress bench`: measured size, error and speed of codecs.

Every size here is ``len(blob)`` of a real blob; every time is wall-clock (best of ``repeat``) on
this machine, next to a plain memory copy of the same float32 data in the same run, so the ratios
travel between machines better than the milliseconds do::

    fedpress bench codecs                                  # 1M values, model-like state_dict
    fedpress bench codecs --size 10000000 --json
    fedpress bench codecs --codec q:bits=8 --codec "ef+topk:ratio=0.01+q:bits=4+zstd"
    fedpress bench codecs --size 10000000 --shape flat --kernels both   # NumPy path vs kernels

*Encode* is :meth:`fedpress.Codec.encode` (blob and new state; the reconstruction is only built when
error feedback needs it), *decode* is :func:`fedpress.decompress`. The copy baseline is re-measured
before every codec and the best copy of the whole run is the denominator, so a burst of load on a
shared machine inflates neither side of a ratio alone.

Tests never time anything; this module is where speed lives.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable, Iterable

import numpy as np
import typer

bench_app = typer.Typer(help="Benchmarks: measured bytes, error and speed.", no_args_is_help=True)

#: One spec per family (and the combinations people actually deploy).
DEFAULT_CODECS: tuple[str, ...] = (
    "none",
    "fp16",
    "bf16",
    "fixed:bits=8,lo=-1,hi=1",
    "q:bits=8",
    "q:bits=4",
    "q:bits=4,stochastic=1",
    "qsgd:levels=16",
    "qsgd:levels=16+zstd",
    "sign",
    "ternary",
    "topk:ratio=0.01",
    "topk:ratio=0.01+q:bits=8",
    "randk:ratio=0.01",
    "randk:ratio=0.01,unbiased=1",
    "threshold:tau=0.05",
    "svd:rank=4",
    "powersgd:rank=4",
    "ef+topk:ratio=0.01+q:bits=4+zstd",
    "q:bits=8+zstd",
)

# A small CNN's layers (conv: out, in, kh, kw; linear: out, in), widened by a common factor so the
# whole state_dict holds about the requested number of values.
_LAYOUT: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("conv1", (32, 3, 3, 3)),
    ("conv2", (64, 32, 3, 3)),
    ("conv3", (128, 64, 3, 3)),
    ("conv4", (256, 128, 3, 3)),
    ("conv5", (256, 256, 3, 3)),
    ("fc1", (256, 256)),
    ("fc2", (10, 256)),
)


def _layer_shapes(width: float) -> list[tuple[str, tuple[int, ...]]]:
    shapes = []
    last = len(_LAYOUT) - 1
    for i, (name, shp) in enumerate(_LAYOUT):
        scaled = list(shp)
        if i < last:  # the class count (10) does not grow with width
            scaled[0] = max(1, round(shp[0] * width))
        if i > 0:  # neither do the input image channels (3)
            scaled[1] = max(1, round(shp[1] * width))
        shapes.append((f"{name}.weight", tuple(scaled)))
        shapes.append((f"{name}.bias", (scaled[0],)))
    return shapes


def _count(shapes) -> int:
    return sum(math.prod(s) for _, s in shapes)


def model_like_state_dict(size: int = 1_000_000, seed: int = 0) -> dict:
    """A state_dict-shaped update of conv and linear weights plus biases, about ``size`` float32
    values in all (torch tensors). Weights are N(0, 1/fan_in) — the scale of an initialisation or
    of a normalised update — and biases are ten times smaller.

    >>> sd = model_like_state_dict(100_000)
    >>> sorted(sd)[:2], abs(sum(t.numel() for t in sd.values()) - 100_000) < 2_000
    (['conv1.bias', 'conv1.weight'], True)
    """
    import torch

    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    lo, hi = 0.01, 64.0
    for _ in range(60):  # bisection on the width multiplier
        mid = math.sqrt(lo * hi)
        if _count(_layer_shapes(mid)) < size:
            lo = mid
        else:
            hi = mid
    shapes = min((_layer_shapes(lo), _layer_shapes(hi)), key=lambda s: abs(_count(s) - size))
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shp in shapes:
        fan_in = math.prod(shp[1:]) if len(shp) > 1 else None
        std = 1.0 / math.sqrt(fan_in) if fan_in else 0.1 / math.sqrt(shp[0])
        out[name] = torch.randn(shp, generator=g) * std
    return out


def flat_vector(size: int = 1_000_000, seed: int = 0):
    """A flat float32 vector of N(0, 1) values (torch tensor)."""
    import torch

    return torch.randn(size, generator=torch.Generator().manual_seed(seed))


def _flat_f32(obj) -> np.ndarray:
    from fedpress.wire.format import to_numpy

    vals = obj.values() if isinstance(obj, dict) else [obj]
    return np.concatenate([to_numpy(v).astype(np.float32, copy=False).ravel() for v in vals])


def _best_ms(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    best, out = math.inf, None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3, out


KERNEL_MODES = ("on", "off", "both")


def bench_codecs(
    size: int = 1_000_000,
    codecs: Iterable[str] | None = None,
    *,
    repeat: int = 3,
    shape: str = "state_dict",
    seed: int = 0,
    kernels: str = "on",
    device: str = "cpu",
) -> list[dict]:
    """Measure each codec on ``size`` float32 values; one dict per codec (see module docstring).

    ``kernels="both"`` measures every codec twice, NumPy reference path first, in the same run
    (rows carry ``"kernels": "off"`` / ``"on"``); ``"on"`` where numba is missing measures the
    reference and says so in ``"path"``.

    >>> rows = bench_codecs(20_000, ["q:bits=8", "topk:ratio=0.01"], repeat=1)
    >>> [r["codec"] for r in rows], all(r["bytes"] > 0 for r in rows)
    (['q:bits=8', 'topk:ratio=0.01'], True)
    >>> [r["kernels"] for r in bench_codecs(5_000, ["sign"], repeat=1, kernels="both")]
    ['off', 'on']
    """
    import fedpress
    from fedpress import kernels as kern
    from fedpress.wire.format import to_numpy

    if kernels not in KERNEL_MODES:
        raise ValueError(f"kernels must be one of {', '.join(KERNEL_MODES)}, got {kernels!r}")
    if shape == "state_dict":
        obj = model_like_state_dict(size, seed)
    elif shape == "flat":
        obj = flat_vector(size, seed)
    else:
        raise ValueError(f"shape must be 'state_dict' or 'flat', got {shape!r}")
    ref = _flat_f32(obj)
    if device != "cpu":
        obj = _to_device(obj, device)
    n = ref.size
    ref_norm = float(np.linalg.norm(ref.astype(np.float64)))
    # The baseline: a plain memory copy of the same float32 data (numpy, tensor by tensor; torch's
    # clone() carries per-call overhead that would flatter every codec).
    arrays = [to_numpy(v) for v in (obj.values() if isinstance(obj, dict) else [obj])]

    def copy_once():
        return [a.copy() for a in arrays]

    copy_ms = math.inf
    rows = []
    modes = {"on": [True], "off": [False], "both": [False, True]}[kernels]
    for spec in codecs or DEFAULT_CODECS:
        c = fedpress.codec(spec)
        for on in modes:
            copy_ms = min(copy_ms, _best_ms(copy_once, repeat)[0])
            with kern.using(on):
                path = kern.describe()
                # Warm-up outside the timing: the first call may load (or compile) kernels.
                enc = c.encode_ex(obj, None, seed=seed)
                blob = enc.blob
                fedpress.decompress(blob)
                # A fresh state each time: stateful codecs (ef, powersgd) are measured on a first
                # round.
                enc_ms, (blob2, _) = _best_ms(lambda c=c: c.encode(obj, None, seed=seed), repeat)
                dec_ms, dec = _best_ms(lambda blob=blob: fedpress.decompress(blob), repeat)
            if blob2 != blob:  # pragma: no cover - the laws forbid it; a benchmark must not hide it
                raise AssertionError(f"{spec}: Codec.encode and encode_ex made different blobs")
            err = float(np.linalg.norm((_flat_f32(dec) - ref).astype(np.float64)))
            rows.append({
                "codec": c.spec,
                "kernels": "on" if on else "off",
                "path": path,
                "n": n,
                "bytes": len(blob),
                "bits_per_coord": 8.0 * len(blob) / n,
                "header_bytes": enc.header_bytes,
                "ratio": 4.0 * n / len(blob),
                "rel_l2_error": err / ref_norm if ref_norm > 0 else 0.0,
                "encode_ms": enc_ms,
                "decode_ms": dec_ms,
            })
    for r in rows:  # the best copy of the whole run is every row's denominator
        r["copy_ms"] = copy_ms
        r["encode_over_copy"] = r["encode_ms"] / copy_ms
        r["decode_over_copy"] = r["decode_ms"] / copy_ms
    return rows


def check_device(device: str) -> None:
    """Raise ValueError unless ``device`` can be benchmarked here.

    >>> check_device("cpu")
    >>> check_device("tpu")
    Traceback (most recent call last):
    ...
    ValueError: device must be 'cpu' or 'cuda', got 'tpu'
    """
    if device == "cpu":
        return
    if device != "cuda":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    import torch

    if not torch.cuda.is_available():
        raise ValueError(
            "CUDA is not available here (torch.cuda.is_available() is False; torch "
            f"{torch.__version__}). fedpress has no GPU kernels yet either: see fedpress.kernels "
            "for their design. Use --device cpu."
        )


def _to_device(obj, device: str):
    # With CUDA present but no GPU kernels, the codecs copy tensors to the host first: measuring
    # that path (input on the GPU) is what a GPU user gets today.
    if isinstance(obj, dict):
        return {k: v.to(device) for k, v in obj.items()}
    return obj.to(device)


def _environment() -> dict:
    import torch

    from fedpress import kernels

    env = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "kernels": kernels.describe(),
    }
    try:
        import numba

        env["numba"] = numba.__version__
    except ImportError:  # pragma: no cover - numba is a dependency
        pass
    return env


def _table(rows: list[dict], title: str):
    from rich.table import Table

    t = Table(title=title)
    for col, just in [
        ("codec", "left"), ("kernels", "left"), ("bits/coord", "right"), ("ratio", "right"),
        ("header B", "right"),
        ("rel L2 err", "right"), ("enc ms", "right"), ("dec ms", "right"), ("copy ms", "right"),
        ("enc/copy", "right"), ("dec/copy", "right"),
    ]:
        t.add_column(col, justify=just)
    for r in rows:
        t.add_row(
            r["codec"], r["kernels"], f"{r['bits_per_coord']:.4f}", f"{r['ratio']:.1f}x",
            str(r["header_bytes"]),
            f"{r['rel_l2_error']:.4g}", f"{r['encode_ms']:.2f}", f"{r['decode_ms']:.2f}",
            f"{r['copy_ms']:.2f}", f"{r['encode_over_copy']:.2f}", f"{r['decode_over_copy']:.2f}",
        )
    return t


@bench_app.command("codecs")
def codecs_cmd(
    size: int = typer.Option(1_000_000, "--size", "-n", min=1, help="float32 values in the update"),
    codec: list[str] = typer.Option(None, "--codec", "-c", help="spec to measure (repeatable; default: one per family)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    repeat: int = typer.Option(3, "--repeat", "-r", min=1, help="timings are the best of R runs"),
    shape: str = typer.Option("state_dict", "--shape", help="state_dict (conv/linear weights + biases) or flat"),
    seed: int = typer.Option(0, "--seed", min=0, help="data and codec seed"),
    kernels: str = typer.Option("on", "--kernels", help="on (compiled kernels when available), off "
                                "(NumPy reference) or both (reference, then kernels, same run)"),
    device: str = typer.Option("cpu", "--device", help="cpu, or cuda (errors when CUDA is absent)"),
) -> None:
    """Per codec: measured bits per coordinate (from len(blob)), error, encode/decode time vs a copy."""
    from fedpress.codecs.spec import SpecError

    if shape not in ("state_dict", "flat"):
        raise typer.BadParameter("must be 'state_dict' or 'flat'", param_hint="--shape")
    if kernels not in KERNEL_MODES:
        raise typer.BadParameter(f"must be one of {', '.join(KERNEL_MODES)}", param_hint="--kernels")
    try:
        check_device(device)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--device") from None
    try:
        rows = bench_codecs(size, codec or None, repeat=repeat, shape=shape, seed=seed,
                            kernels=kernels, device=device)
    except SpecError as e:
        raise typer.BadParameter(str(e), param_hint="--codec") from None
    if as_json:
        doc = {"size": rows[0]["n"] if rows else size, "shape": shape, "repeat": repeat, "seed": seed,
               "kernels": kernels, "device": device, "environment": _environment(), "results": rows}
        typer.echo(json.dumps(doc, indent=2))
        return
    from rich.console import Console

    n = rows[0]["n"] if rows else size
    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        console = Console(width=max(console.width, 150))
    from fedpress import kernels as kern

    console.print(_table(rows, f"codecs on {n:,} float32 values ({shape}, {device}), best of {repeat}; "
                               f"kernels: {kern.describe()}"))
