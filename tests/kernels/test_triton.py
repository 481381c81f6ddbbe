"""The Triton path computes exactly what the NumPy reference defines: same blob, same
reconstruction, same decoded values and the same errors.

Without CUDA (this project's CI) the kernels run in Triton's CPU interpreter, forced with
``kernels.using_gpu(True)`` for CPU torch tensors: that checks their semantics (the bytes), not their
speed. The last test runs the compiled kernels on CUDA tensors and is skipped without a GPU;
``benchmarks/gpu_kernels.py`` is the fuller check (and the timings) for a machine with one.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

pytest.importorskip("triton")
torch = pytest.importorskip("torch")

from kernel_data import make_data as _data  # noqa: E402

import fedpress  # noqa: E402
from fedpress import WireError, kernels  # noqa: E402
from fedpress.codecs import _reduce  # noqa: E402

TILE = 2048  # fedpress.kernels._triton.TILE: sizes around it cross program boundaries

#: Every stage with a device implementation, with the parameters that change its kernel's code path,
#: chains that stay on the device, and first stages that fall back to the host.
SPECS = [
    "q:bits=8", "q:bits=4", "q:bits=1", "q:bits=2,block=13", "q:bits=3,block=7,stochastic=1",
    "q:bits=5,mode=absmax", "q:bits=6,block=0", "q:bits=7,block=5000", "q:bits=4,stochastic=1",
    "q:bits=2,mode=absmax,block=0,stochastic=1", "q:bits=8,target=0.05", "q:bits=3+zstd",
    "sign", "sign:block=10", "sign:block=64", "sign:block=4100",
    "topk:ratio=0.01", "topk:ratio=0.3", "topk:ratio=1", "threshold:tau=1.5", "threshold:tau=0",
    "topk:ratio=0.05+q:bits=4", "threshold:tau=1+sign", "topk:ratio=0.1+q:bits=3+zstd",
    "qsgd:levels=4", "ternary:block=9",  # no device implementation: the tensor moves to the host
]

SHAPES = [(), (0,), (1,), (7,), (3, 0, 2), (33, 17), (TILE - 1,), (TILE + 1,), (2 * TILE + 9,)]




def _bits(a) -> tuple:
    a = a.detach().cpu() if isinstance(a, torch.Tensor) else a
    a = a.float().numpy() if isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16 else a
    a = np.asarray(a)
    return a.shape, str(a.dtype), a.reshape(-1).view(np.uint8).tobytes()


def _paths(spec, obj, seed, **kw):
    """(blob, recon, decoded) by the NumPy reference and by the Triton path (interpreter)."""
    dkw = {k: v for k, v in kw.items() if k == "masks"}
    out = []
    for ctx, dev in ((kernels.using(False), None), (kernels.using_gpu(True), "cpu")):
        with ctx, np.errstate(all="ignore"):
            try:
                e = fedpress.codec(spec).encode_ex(obj, seed=seed, **kw)
            except ValueError as err:  # e.g. q on a block spanning more than float32 holds
                out.append(("ValueError", str(err), None))
                continue
            dec = fedpress.decompress(e.blob, **dkw) if dev is None else fedpress.decompress(
                e.blob, device=dev, **dkw)
            out.append((e.blob, e.recon, dec))
    return out[0], out[1]


def _assert_same(spec, x, seed, **kw):
    (b0, r0, d0), (b1, r1, d1) = _paths(spec, x, seed, **kw)
    if "ValueError" in (b0, b1):  # both paths must refuse the input, with the same message
        assert (b0, r0) == (b1, r1), f"{spec}: {b0}: {r0!r} vs {b1}: {r1!r}"
        return
    assert b0 == b1, f"{spec}: blobs differ (shape {tuple(x.shape)}, seed {seed})"
    if isinstance(r0, dict):
        assert sorted(r0) == sorted(r1) and sorted(d0) == sorted(d1)
        pairs = [(r0[k], r1[k]) for k in r0] + [(d0[k], d1[k]) for k in d0]
    else:
        pairs = [(r0, r1), (d0, d1)]
    for a, b in pairs:  # bit level: -0.0 vs 0.0 and NaN payloads count
        assert _bits(a) == _bits(b), f"{spec}: values differ (shape {tuple(x.shape)}, seed {seed})"
    for v in (d1.values() if isinstance(d1, dict) else [d1]):
        assert isinstance(v, torch.Tensor) and v.device.type == "cpu"


@pytest.fixture
def spy(monkeypatch):
    """Counts calls into the Triton module, to prove the routed stages really took it."""
    with kernels.using_gpu(True):
        g = kernels.gpu()
    assert g is not None and g.INTERPRETED or torch.cuda.is_available()
    calls: dict[str, int] = {}
    for name in ("q_params", "q_encode", "q_encode_fused", "q_decode", "sign_encode", "sign_decode",
                 "topk_checked", "indices_ge"):
        fn = getattr(g, name)

        def wrapped(*a, _fn=fn, _name=name, **k):
            calls[_name] = calls.get(_name, 0) + 1
            return _fn(*a, **k)

        monkeypatch.setattr(g, name, wrapped)
    return calls


@pytest.mark.parametrize("spec", SPECS)
def test_same_bytes_and_values_on_every_shape(spec, spy):
    for i, shape in enumerate(SHAPES):
        for kind in ("normal", "edge"):
            _assert_same(spec, torch.from_numpy(_data(shape, i, kind)), seed=i)
    first = spec.split(":")[0].split("+")[0]
    want = {"q": "q_encode", "sign": "sign_encode", "topk": "topk_checked",
            "threshold": "indices_ge"}.get(first)
    if want and "target" not in spec:
        took = spy.get(want) or (want == "q_encode" and spy.get("q_encode_fused"))
        assert took, f"{spec} did not take the Triton path"
        dec = want.replace("encode", "decode")
        if dec.endswith("decode"):
            assert spy.get(dec), f"{spec} did not decode on the Triton path"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=st.sampled_from(["q:bits=3,block=5", "q:bits=7,stochastic=1,block=9", "sign:block=3",
                          "topk:ratio=0.3", "q:bits=2,mode=absmax", "threshold:tau=1"]),
    x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=40),
                 elements=st.floats(-(2.0**100), 2.0**100, width=32)),
    seed=st.integers(0, 2**32),
)
def test_property_same_bytes(spec, x, seed):
    _assert_same(spec, torch.from_numpy(x), seed)


@pytest.mark.parametrize("spec", ["q:bits=4", "q:bits=8,mode=absmax", "sign:block=100",
                                  "topk:ratio=0.1", "threshold:tau=1"])
@pytest.mark.parametrize("kind", ["scales", "ties"])
def test_same_bytes_on_hard_values(spec, kind):
    for seed in range(2):
        _assert_same(spec, torch.from_numpy(_data((2 * TILE + 3,), seed, kind)), seed=seed)


def test_spans_and_sampled_threshold():
    # Blocks of several 4096-value spans (sign's sums combine spans) and top-k on n >= 4096 (the
    # sampled threshold and its retry).
    for spec in ("sign", "q:bits=4,block=0", "topk:ratio=0.01", "topk:ratio=0.002"):
        _assert_same(spec, torch.from_numpy(_data((9001,), 1, "normal")), seed=1)
    x = np.ones(20_000, np.float32)
    x[::4] = 10.0  # the sample sees only the large values: its threshold lands too high
    _assert_same("topk:ratio=0.3", torch.from_numpy(x), seed=0)


def test_dtypes_state_dicts_and_device_outputs():
    g = torch.Generator().manual_seed(1)
    sd = {"w": torch.randn(40, 33, generator=g), "b": torch.zeros(40),
          "h": torch.randn(500, generator=g).half(), "d": torch.randn(30, generator=g).double(),
          "bf": torch.randn(64, generator=g).bfloat16(), "steps": torch.tensor(3)}
    for spec in ("q:bits=4", "sign:block=7", "topk:ratio=0.1+q:bits=8+zstd", "none"):
        _assert_same(spec, sd, seed=5)
    with kernels.using_gpu(True):
        out = fedpress.decompress(fedpress.compress(sd, "q:bits=4"), device="cpu")
    assert {k: v.dtype for k, v in out.items()} == {k: v.dtype for k, v in sd.items()}
    # numpy input: not routed (no device), same bytes anyway
    x = _data((100,), 0, "normal")
    with kernels.using_gpu(True):
        assert fedpress.compress(x, "q:bits=4") == fedpress.compress(x, "q:bits=4")


def test_error_feedback_and_masks_fall_back_to_the_host():
    x = torch.from_numpy(_data((300,), 3, "normal"))
    mask = np.random.default_rng(2).random(300) < 0.6
    _assert_same("ef+sign:block=16", x, seed=1)
    _assert_same("q:bits=3", x, seed=4, masks={"": mask})


@pytest.mark.parametrize("spec", ["q:bits=4", "sign", "topk:ratio=0.1", "threshold:tau=0.5"])
def test_non_finite_input_gives_the_same_error(spec):
    for bad in (np.nan, np.inf, -np.inf):
        x = _data((3000,), 0, "normal")
        x[1234] = bad
        errs = []
        for on in (False, True):
            with kernels.using(None if on else False), kernels.using_gpu(on or None):
                try:
                    fedpress.compress(torch.from_numpy(x), spec)
                    errs.append(None)
                except ValueError as e:
                    errs.append(str(e))
        assert errs[0] is not None and errs[0] == errs[1]


def _tamper(blob: bytes, field: int, new: bytes) -> bytes:
    from fedpress.wire.format import read_blob, write_blob

    p = read_blob(blob)
    fields = [bytes(f) for f in p.fields]
    fields[field] = new
    return write_blob(p.spec, p.seed, p.structure, fields,
                      zstd_level=3 if p.spec.endswith("zstd") else None)[0]


@pytest.mark.parametrize("spec,field,value", [
    ("q:bits=3+zstd", -1, b"\x09" * 100),
    ("q:bits=4,mode=absmax", -1, b"\xff" * 50),
    ("q:bits=4", -1, b"\x00" * 49),
    ("sign", -1, b"\x00" * 12),
    ("topk:ratio=0.1", 0, b"\x00" + b"\x00" * 9),
])
def test_malformed_fields_give_the_same_wire_error(spec, field, value):
    x = torch.from_numpy(_data((100,), 0, "normal"))
    blob = _tamper(fedpress.compress(x, spec, seed=1), field, value)
    errs = []
    for on in (False, True):
        with kernels.using_gpu(on):
            try:
                fedpress.decompress(blob, device="cpu" if on else None)
                errs.append(None)
            except WireError as e:
                errs.append(str(e))
    assert errs[0] is not None and errs[0] == errs[1]


# ----------------------------------------------------------------------------- q fused in one pass
@pytest.mark.parametrize("spec,n,fused", [
    ("q:bits=8", 2 * TILE + 300, True),  # the default block=256: 8 blocks a program, a partial tail
    ("q:bits=4,stochastic=1", TILE + 1, True),
    ("q:bits=5,mode=absmax", 3 * 256 + 1, True),
    ("q:bits=3,block=2048", 2 * TILE + 1, True),  # one block a program
    ("q:bits=1,block=1", 40, True),
    ("q:bits=6,block=0", 100, True),  # one block of at most TILE values: one program
    ("q:bits=6,block=0", 3000, False),  # a whole-tensor block beyond TILE
    ("q:bits=3,block=7", 300, False),  # blocks that do not tile
    ("q:bits=7,block=4096", 5000, False),  # a block larger than a program
])
def test_q_fused_path_is_taken_when_blocks_tile(spec, n, fused, spy):
    for kind in ("fit", "edge"):  # "edge" has blocks spanning beyond float32: the same ValueError
        _assert_same(spec, torch.from_numpy(_data((n,), n, kind)), seed=n)
    assert bool(spy.get("q_encode_fused")) == fused, spy
    assert bool(spy.get("q_params")) == (not fused) and bool(spy.get("q_encode")) == (not fused), spy


@pytest.mark.parametrize("spec", ["q:bits=8", "q:bits=4,stochastic=1", "q:bits=5,mode=absmax",
                                  "q:bits=2", "q:bits=3,mode=absmax"])
def test_q_fused_same_bytes_on_hard_values(spec, spy):
    # sizes straddling block and program boundaries; ties to even, subnormal scales, zero blocks
    for n, kind in ((255, "halves"), (257, "ties"), (1025, "fit"), (TILE, "scales"),
                    (TILE + 255, "fit"), (2 * TILE + 257, "halves")):
        _assert_same(spec, torch.from_numpy(_data((n,), n, kind)), seed=n)
    assert spy.get("q_encode_fused") and not spy.get("q_params")


def _bits_all(ts) -> list:
    return [None if t is None else _bits(t) for t in ts]


@pytest.mark.parametrize("bits,mode,block", [(8, "minmax", 256), (3, "absmax", 64),
                                             (5, "minmax", 2), (1, "minmax", 0)])
def test_q_fused_equals_the_two_pass_kernels(bits, mode, block):
    # min/max/lo/scale, bytes and reconstruction of the one-pass kernel against q_params + q_encode,
    # inputs with NaN, ±inf and overflowing spans included (the codec refuses them after the launch
    # from min/max and scale, so those must agree too)
    with kernels.using_gpu(True):
        g = kernels.gpu()
    top = (1 << bits) - 1 if mode == "minmax" else 2 * ((1 << (bits - 1)) - 1)
    r = np.random.default_rng(bits)
    refused = 0
    for n in (1, 9, 2 * TILE + 3):
        for kind in ("fit", "edge", "nan"):
            x = _data((n,), n, "edge" if kind == "nan" else kind)
            if kind == "nan":
                x[n // 2] = np.nan
                x[-1] = -np.inf
            xt = torch.from_numpy(x)
            if not g.fused_block(n, block):
                continue
            for u in (None, r.random(n, dtype=np.float32)):
                with np.errstate(all="ignore"):
                    one = g.q_encode_fused(xt, block, bits, mode, top, bits, u, True)
                    mn, mx, lo, scale = g.q_params(xt, block, bits, mode)
                    two = (mn, mx, lo, scale, *g.q_encode(xt, block, lo, scale, top, bits, u, True))
                # what the codec checks (min/max finite, scale·top finite) must agree bit for bit;
                # codes and reconstruction only where it accepts the input (a NaN's sign after
                # arithmetic is the hardware's, and numpy's loops may order operands either way)
                assert _bits_all(one[:4]) == _bits_all(two[:4]), (n, kind, u is None)
                with np.errstate(all="ignore"):
                    ok = np.isfinite(np.concatenate([one[0].numpy(), one[1].numpy(),
                                                     one[3].numpy() * np.float32(top)])).all()
                assert ok or kind != "fit"
                refused += not ok
                if ok:
                    assert _bits_all(one[4:]) == _bits_all(two[4:]), (n, kind, u is None)
    assert refused  # the NaN/inf and overflow cases were there


def test_fused_block_rule():
    with kernels.using_gpu(True):
        g = kernels.gpu()
    assert [g.fused_block(10_000, b) for b in (256, 1, 2048, 4096, 7, 0)] == [256, 1, 2048, 0, 0, 0]
    assert [g.fused_block(n, 256) for n in (0, 1, 255, 256, 257)] == [0, 1, TILE, 256, 256]
    assert g.fused_block(TILE, 0) == TILE and g.fused_block(TILE + 1, 0) == 0


# ----------------------------------------------------------------------------- building blocks
@pytest.mark.parametrize("n,block", [(1, 0), (17, 4), (4096, 0), (4097, 0), (10_000, 4095),
                                     (9000, 4100), (12_345, 100), (9, 9)])
def test_reductions_match_the_reference(n, block):
    with kernels.using_gpu(True):
        g = kernels.gpu()
    x = _data((n,), n, "scales")
    xt = torch.from_numpy(x)
    for square in (False, True):
        assert np.array_equal(g.block_sums(xt, block, square).numpy(),
                              _reduce.block_sums(x, block, square))
    lo, hi = g.block_minmax(torch.from_numpy(_data((n,), n, "edge")), block)
    nb, bsz = _reduce.block_shape(n, block)
    e = _data((n,), n, "edge")
    for b in range(nb):
        seg = e[b * bsz:(b + 1) * bsz]
        assert lo[b].item() == seg.min() and hi[b].item() == seg.max()


def test_minmax_keeps_nan():
    with kernels.using_gpu(True):
        g = kernels.gpu()
    x = torch.ones(5000)
    x[4500] = float("nan")
    lo, hi = g.block_minmax(x, 0)
    assert torch.isnan(lo).any() or torch.isnan(hi).any()


# ----------------------------------------------------------------------------- routing
def test_routing_switches(monkeypatch):
    t = torch.zeros(3)
    assert not kernels.routes(t) or torch.cuda.is_available()  # CPU tensors only when forced
    with kernels.using_gpu(True):
        assert kernels.routes(t) and kernels.routes("cpu") and kernels.gpu() is not None
        assert not kernels.routes(np.zeros(3))
        with kernels.using(False):  # switching the kernels off switches both paths off
            assert kernels.gpu() is None and not kernels.routes(t)
        monkeypatch.setenv("FEDPRESS_KERNELS", "0")
        assert kernels.gpu() is None
        monkeypatch.delenv("FEDPRESS_KERNELS")
        with kernels.using_gpu(False):
            assert kernels.gpu() is None and not kernels.routes("cuda")
    assert "triton" in kernels.describe() or kernels.gpu() is None


# ----------------------------------------------------------------------------- a real GPU
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_give_the_reference_bytes():  # pragma: no cover - needs a GPU
    from fedpress.kernels import _triton

    assert not _triton.INTERPRETED
    for spec in ("q:bits=8", "q:bits=4,stochastic=1", "q:bits=3,block=7", "sign", "sign:block=64",
                 "topk:ratio=0.01", "topk:ratio=0.05+q:bits=4", "threshold:tau=1"):
        for n in (1, 2047, 100_003, 1 << 20):
            for kind in ("normal", "edge", "ties"):
                x = torch.from_numpy(_data((n,), n, kind))
                with kernels.using(False), np.errstate(all="ignore"):
                    e0 = fedpress.codec(spec).encode_ex(x, seed=n)
                    d0 = fedpress.decompress(e0.blob)
                e1 = fedpress.codec(spec).encode_ex(x.cuda(), seed=n)
                d1 = fedpress.decompress(e1.blob, device="cuda")
                assert e0.blob == e1.blob, (spec, n, kind)
                assert _bits(e0.recon) == _bits(e1.recon), (spec, n, kind)
                assert d1.is_cuda and _bits(d0) == _bits(d1), (spec, n, kind)


def test_device_benchmark_runs():
    # The code behind `fedpress bench codecs --device cuda` and benchmarks/gpu_kernels.py, on CPU
    # tensors in the interpreter: it must run; its timings mean nothing here.
    from fedpress.bench import DEVICE_CODECS, bench_device_kernels, device_table

    with kernels.using_gpu(True):
        rows = bench_device_kernels(6000, repeat=1, device="cpu")
    assert [r["codec"] for r in rows] == [c[0] for c in DEVICE_CODECS]
    assert all(r["encode_ms"] > 0 and r["naive_over_kernel_encode"] > 0 for r in rows)
    assert device_table(rows, "t").row_count == len(rows)
