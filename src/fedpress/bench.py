"""`fedpress bench`: measured size, error and speed of codecs.

Every size here is ``len(blob)`` of a real blob; every time is wall-clock (best of ``repeat``) on
this machine, next to a plain memory copy of the same float32 data in the same run, so the ratios
travel between machines better than the milliseconds do::

    fedpress bench codecs                                  # 1M values, model-like state_dict
    fedpress bench codecs --size 10000000 --json
    fedpress bench codecs --codec q:bits=8 --codec "ef+topk:ratio=0.01+q:bits=4+zstd"
    fedpress bench codecs --size 10000000 --shape flat --kernels both   # NumPy path vs kernels
    fedpress bench codecs --device cuda --shape flat --size 67108864    # Triton kernels on a GPU

*Encode* is :meth:`fedpress.Codec.encode` (blob and new state; the reconstruction is only built when
error feedback needs it), *decode* is :func:`fedpress.decompress`. The copy baseline is re-measured
before every codec and the best copy of the whole run is the denominator, so a burst of load on a
shared machine inflates neither side of a ratio alone.

With ``--device cuda`` the tensors live on the GPU, the routed codecs encode and decode there with
the Triton kernels (:func:`fedpress.kernels.gpu`; ``decompress(blob, device="cuda")``) and the copy
baseline is ``torch.clone`` on the device, synchronised. The end-to-end rows include moving the
blob's fields to the host; :func:`bench_device_kernels` adds the kernels alone (outputs left on the
device) against the same clone and against a naive torch implementation, timed in the same run.

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
    "qsgd:levels=16+ans",
    "sign",
    "ternary",
    "pq+fp16",
    "rht+q:bits=4",
    "topk:ratio=0.01",
    "topk:ratio=0.01+q:bits=8",
    "randk:ratio=0.01",
    "randk:ratio=0.01,unbiased=1",
    "sketch:ratio=0.002,k=1000+q:bits=8",
    "threshold:tau=0.05",
    "svd:rank=4",
    "powersgd:rank=4",
    "ef+topk:ratio=0.01+q:bits=4+zstd",
    "ef+topk:ratio=0.01+q:bits=4+ans",
    "q:bits=8+zstd",
    "q:bits=8+ans",
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


#: Value distributions of the benchmark data: what a low-bit quantiser's per-block scale meets.
VALUES = ("gaussian", "student-t", "outliers")


def _draw(shape, std: float, g, values: str):
    """``std`` × standard draws of ``values``: N(0, 1); Student-t with 2 degrees of freedom (dense
    heavy tails, as in many gradient and update distributions); or N(0, 1) with one ±30 outlier
    per 256 values (a scale spoiled in every block without the outliers dominating the norm)."""
    import torch

    if values not in VALUES:
        raise ValueError(f"values must be one of {', '.join(VALUES)}, got {values!r}")
    x = torch.randn(shape, generator=g)
    if values == "student-t":
        # t = z / sqrt(chi2_2 / 2), and chi2_2 / 2 is an Exp(1) draw
        x = x / torch.sqrt(torch.empty(shape).exponential_(1.0, generator=g))
    elif values == "outliers":
        flat = x.view(-1)
        pos = torch.randperm(flat.numel(), generator=g)[: flat.numel() // 256]
        flat[pos] = 30.0 * torch.sign(flat[pos] + 1e-30)
    return x * std


def model_like_state_dict(size: int = 1_000_000, seed: int = 0, values: str = "gaussian") -> dict:
    """A state_dict-shaped update of conv and linear weights plus biases, about ``size`` float32
    values in all (torch tensors). Weights are N(0, 1/fan_in) — the scale of an initialisation or
    of a normalised update — and biases are ten times smaller (``values`` other than "gaussian":
    the same scales, other distributions, see :data:`VALUES`).

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
        out[name] = _draw(shp, std, g, values)
    return out


def flat_vector(size: int = 1_000_000, seed: int = 0, values: str = "gaussian"):
    """A flat float32 vector of N(0, 1) values (torch tensor), or of another :data:`VALUES` kind.

    >>> x = flat_vector(25_600, values="outliers")
    >>> int((x.abs() == 30).sum())
    100
    """
    import torch

    return _draw((size,), 1.0, torch.Generator().manual_seed(seed), values)


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
    values: str = "gaussian",
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
        obj = model_like_state_dict(size, seed, values)
    elif shape == "flat":
        obj = flat_vector(size, seed, values)
    else:
        raise ValueError(f"shape must be 'state_dict' or 'flat', got {shape!r}")
    ref = _flat_f32(obj)
    if device != "cpu":
        obj = _to_device(obj, device)
    n = ref.size
    ref_norm = float(np.linalg.norm(ref.astype(np.float64)))
    # The baseline: a plain memory copy of the same float32 data (numpy, tensor by tensor; torch's
    # clone() carries per-call overhead that would flatter every codec). On a GPU: torch.clone on
    # the device, synchronised.
    tensors = list(obj.values() if isinstance(obj, dict) else [obj])
    arrays = [to_numpy(v) for v in tensors] if device == "cpu" else []
    sync = _sync(device)

    def copy_once():
        if device != "cpu":
            out = [t.clone() for t in tensors]
            sync()
            return out
        return [a.copy() for a in arrays]

    dec_kw = {} if device == "cpu" else {"device": device}

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
                fedpress.decompress(blob, **dec_kw)
                # A fresh state each time: stateful codecs (ef, powersgd) are measured on a first
                # round.
                enc_ms, (blob2, _) = _best_ms(lambda c=c: c.encode(obj, None, seed=seed), repeat)
                dec_ms, dec = _best_ms(
                    lambda blob=blob: _synced(fedpress.decompress(blob, **dec_kw), sync), repeat)
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


def _sync(device: str):
    if device == "cuda":
        import torch

        return torch.cuda.synchronize
    return lambda: None


def _synced(out, sync):
    sync()
    return out


#: The device benchmark's codecs: (name, spec of the codec it times, naive torch baseline).
DEVICE_CODECS = (("q8", "q:bits=8", "q8"), ("q4", "q:bits=4", "q8"), ("sign", "sign", "sign"),
                 ("topk1%", "topk:ratio=0.01", "topk"))


def bench_device_kernels(size: int = 1 << 26, *, repeat: int = 5, seed: int = 0,
                         device: str = "cuda") -> list[dict]:
    """Time the Triton kernels alone, inputs and outputs on ``device``, against ``torch.clone`` of
    the same float32 tensor and a naive torch implementation (blockwise int8 with torch ops, sign
    via torch ops, ``torch.topk``), all synchronised, best of ``repeat``, in the same run.

    *encode* is what a codec computes before anything travels: q = block range + quantise + pack
    (one fused pass, ``q_encode_blocks``), sign = the fixed-order |x| sums + sign + pack, top-k = threshold,
    count, scan, compaction and fix-up, then the kept values; *decode* = unpack + dequantise (q,
    sign) or the scatter of k values (top-k). ``device="cpu"`` runs where
    :func:`fedpress.kernels.routes` sends CPU tensors (the interpreter in tests): no timing meaning.
    """
    import torch

    from fedpress import kernels as kern
    from fedpress.codecs.sparsify import keep_count

    g = kern.gpu()
    if g is None:
        raise ValueError("the Triton kernels are not available here (see fedpress.kernels.gpu)")
    x = torch.randn(size, generator=torch.Generator().manual_seed(seed)).to(device)
    sync = _sync(device)

    def timed(fn):
        fn()  # warm-up: compiles the kernels
        sync()
        return _best_ms(lambda: _synced(fn(), sync), repeat)

    copy_ms = timed(lambda: x.clone())[0]
    k = keep_count(size, 0.01)

    def q_enc(bits):
        def run():  # block 256 tiles a program: the fused one-pass kernel
            _, _, lo, scale, packed, _ = g.q_encode_blocks(x, 256, bits, "minmax", (1 << bits) - 1, bits)
            return packed, lo, scale
        return run

    def sign_enc():
        scale = g.sign_scale(g.block_sums(x, 0), size, 0)
        return g.sign_encode(x, 0, scale)[0], scale

    def topk_enc():
        idx = g.topk_checked(x, k)[0]
        return idx, x[idx]

    naive_q = lambda: g.naive_q8(x)  # noqa: E731
    rows = []
    for name, spec, naive in DEVICE_CODECS:
        if name in ("q8", "q4"):
            bits = 8 if name == "q8" else 4
            enc_ms, (packed, lo, scale) = timed(q_enc(bits))
            dec_ms = timed(lambda p=packed, lo=lo, s=scale, b=bits: g.q_decode(p, size, 256, b, lo, s))[0]
        elif name == "sign":
            enc_ms, (packed, scale) = timed(sign_enc)
            dec_ms = timed(lambda p=packed, s=scale: g.sign_decode(p, size, 0, s))[0]
        else:
            enc_ms, (idx, vals) = timed(topk_enc)

            def scatter(idx=idx, vals=vals):
                out = torch.zeros(size, device=device)
                out[idx] = vals
                return out

            dec_ms = timed(scatter)[0]
        if naive == "q8":
            nenc_ms, (codes, lo, scale) = timed(naive_q)
            ndec_ms = timed(lambda c=codes, lo=lo, s=scale: g.naive_q8_decode(c, lo, s, size))[0]
        elif naive == "sign":
            nenc_ms, (packed, scale) = timed(lambda: g.naive_sign(x))
            ndec_ms = timed(lambda p=packed, s=scale: g.naive_sign_decode(p, s, size))[0]
        else:
            nenc_ms, (idx, vals) = timed(lambda: g.naive_topk(x, k))
            ndec_ms = dec_ms  # the same scatter
        rows.append({
            "codec": name, "spec": spec, "n": size, "copy_ms": copy_ms,
            "encode_ms": enc_ms, "decode_ms": dec_ms,
            "naive_encode_ms": nenc_ms, "naive_decode_ms": ndec_ms,
            "encode_over_copy": enc_ms / copy_ms, "decode_over_copy": dec_ms / copy_ms,
            "naive_over_kernel_encode": nenc_ms / enc_ms,
            "naive_over_kernel_decode": ndec_ms / dec_ms,
        })
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
            f"{torch.__version__}). The Triton kernels need a CUDA GPU; use --device cpu."
        )


def _to_device(obj, device: str):
    # Routed codecs (fedpress.kernels.routes) encode CUDA tensors with the Triton kernels; the
    # others copy them to the host first: measuring that (input on the GPU) is what a GPU user gets.
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
    values: str = typer.Option("gaussian", "--values", help="gaussian, student-t (df 2: heavy tails) or "
                               "outliers (one ±30 per 256 values): where rotation (rht) pays"),
) -> None:
    """Per codec: measured bits per coordinate (from len(blob)), error, encode/decode time vs a copy."""
    from fedpress.codecs.spec import SpecError

    if shape not in ("state_dict", "flat"):
        raise typer.BadParameter("must be 'state_dict' or 'flat'", param_hint="--shape")
    if kernels not in KERNEL_MODES:
        raise typer.BadParameter(f"must be one of {', '.join(KERNEL_MODES)}", param_hint="--kernels")
    if values not in VALUES:
        raise typer.BadParameter(f"must be one of {', '.join(VALUES)}", param_hint="--values")
    try:
        check_device(device)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--device") from None
    try:
        rows = bench_codecs(size, codec or None, repeat=repeat, shape=shape, seed=seed,
                            kernels=kernels, device=device, values=values)
    except SpecError as e:
        raise typer.BadParameter(str(e), param_hint="--codec") from None
    dev_rows = bench_device_kernels(size, repeat=repeat, seed=seed) if device == "cuda" else []
    if as_json:
        doc = {"size": rows[0]["n"] if rows else size, "shape": shape, "values": values, "repeat": repeat,
               "seed": seed,
               "kernels": kernels, "device": device, "environment": _environment(), "results": rows}
        if dev_rows:
            doc["device_kernels"] = dev_rows
        typer.echo(json.dumps(doc, indent=2))
        return
    from rich.console import Console

    n = rows[0]["n"] if rows else size
    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        console = Console(width=max(console.width, 150))
    from fedpress import kernels as kern

    console.print(_table(rows, f"codecs on {n:,} float32 values ({shape}, {values}, {device}), best of {repeat}; "
                               f"kernels: {kern.describe()}"))
    if dev_rows:
        console.print(device_table(dev_rows, f"Triton kernels alone on {size:,} float32 values (flat), "
                                             f"best of {repeat}: vs torch.clone and vs naive torch"))


def device_table(rows: list[dict], title: str):
    """The rows of :func:`bench_device_kernels` as a rich table."""
    from rich.table import Table

    t = Table(title=title)
    for col in ("codec", "enc ms", "dec ms", "clone ms", "enc/clone", "dec/clone", "naive enc ms",
                "naive/enc", "naive dec ms", "naive/dec"):
        t.add_column(col, justify="left" if col == "codec" else "right")
    for r in rows:
        t.add_row(r["codec"], f"{r['encode_ms']:.3f}", f"{r['decode_ms']:.3f}", f"{r['copy_ms']:.3f}",
                  f"{r['encode_over_copy']:.2f}", f"{r['decode_over_copy']:.2f}",
                  f"{r['naive_encode_ms']:.3f}", f"{r['naive_over_kernel_encode']:.2f}x",
                  f"{r['naive_decode_ms']:.3f}", f"{r['naive_over_kernel_decode']:.2f}x")
    return t
