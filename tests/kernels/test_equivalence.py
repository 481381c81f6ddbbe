"""The kernels compute exactly what the NumPy reference defines: same blob, same reconstruction,
same decoded values and the same WireError, for every routed stage, on many shapes and seeds.

Speed is not tested here (benchmarks/ and ``fedpress bench codecs --kernels both`` measure it).
"""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from kernel_data import make_data as _data

import fedpress
from fedpress import WireError, kernels
from fedpress.codecs import _reduce
from fedpress.codecs.sparsify import topk_indices
from fedpress.wire.format import read_blob, write_blob

pytest.importorskip("numba")

CHUNK = 10240  # fedpress.kernels._jit.CHUNK: sizes around it cross chunk boundaries

#: Every routed stage, with the parameters that change its kernel's code path.
SPECS = [
    "q:bits=8", "q:bits=4", "q:bits=1", "q:bits=2,block=13", "q:bits=3,block=7,stochastic=1",
    "q:bits=5,mode=absmax", "q:bits=6,block=0", "q:bits=7,block=20000", "q:bits=4,stochastic=1",
    "q:bits=2,mode=absmax,block=0,stochastic=1", "q:bits=8,target=0.05",
    "fixed:bits=8,lo=-3,hi=3", "fixed:bits=3,lo=-2,hi=2,rounding=nearest",
    "fixed:bits=4,lo=-2.5,hi=2.5,rounding=stochastic",
    "qsgd:levels=16", "qsgd:levels=1,block=8", "qsgd:levels=127,block=0", "qsgd:levels=5,block=20001",
    "sign", "sign:block=10", "sign:block=64", "sign:block=20000",
    "ternary", "ternary:block=9", "ternary:block=20003",
    "topk:ratio=0.01", "topk:ratio=0.3", "topk:ratio=1", "randk:ratio=0.05,unbiased=1",
    "threshold:tau=1.5", "threshold:tau=0",
    # odd widths are stored one per byte before zstd: the kernels' 8-bit store path
    "q:bits=3+zstd", "qsgd:levels=4+zstd", "fixed:bits=5,lo=-1,hi=1+zstd",
    # sub-tensors: the kernels see top-k's kept values
    "topk:ratio=0.05+q:bits=4", "threshold:tau=1+sign", "ef+sign:block=16", "ef+topk:ratio=0.02+q:bits=2",
]

SHAPES = [(), (0,), (1,), (7,), (3, 0, 2), (33, 17), (CHUNK - 1,), (CHUNK + 1,), (3 * CHUNK + 5,)]




def _both(spec: str, x, seed: int, **kw):
    out = {}
    # errstate: the reference's float32 arithmetic overflows on the "edge" values (as intended)
    for on in (False, True):
        with kernels.using(on), np.errstate(all="ignore"):
            try:
                e = fedpress.codec(spec).encode_ex(x, seed=seed, **kw)
            except ValueError as err:  # e.g. q on a block spanning more than float32 holds
                out[on] = ("ValueError", str(err), None)
                continue
            out[on] = (e.blob, e.recon, fedpress.decompress(e.blob, **{k: v for k, v in kw.items() if k == "masks"}))
    return out


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return (a.shape == b.shape and a.dtype == b.dtype
            and np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)))


def _assert_same_paths(spec, x, seed, **kw):
    got = _both(spec, x, seed, **kw)
    (b0, r0, d0), (b1, r1, d1) = got[False], got[True]
    if "ValueError" in (b0, b1):  # both paths must refuse the input, with the same message
        assert (b0, r0) == (b1, r1), f"{spec}: {b0}: {r0!r} vs {b1}: {r1!r}"
        return
    assert b0 == b1, f"{spec}: blobs differ (shape {x.shape}, seed {seed})"
    # bit-level equality: -0.0 vs 0.0 and NaN payloads count
    assert _same(r0, r1), f"{spec}: reconstructions differ"
    assert _same(d0, d1), f"{spec}: decoded values differ"
    assert _same(d1, r1), f"{spec}: kernel reconstruction is not what decode returns"


def _kern():
    # the kernel module whatever FEDPRESS_KERNELS says (these tests compare both paths explicitly)
    with kernels.using(True):
        return kernels.cpu()


def test_kernels_are_active_here():
    from fedpress.kernels import _jit

    assert kernels.available() and _kern() is not None
    assert _jit.CHUNK == CHUNK and CHUNK % 40 == 0
    assert (_jit.SUM_LANES, _jit.SUM_SPAN) == (_reduce.SUM_LANES, _reduce.SUM_SPAN)
    with kernels.using(False):
        assert kernels.cpu() is None


@pytest.mark.parametrize("spec", SPECS)
def test_same_bytes_and_values_on_every_shape(spec):
    for i, shape in enumerate(SHAPES):
        for kind in ("normal", "edge"):
            _assert_same_paths(spec, _data(shape, i, kind), seed=i)


@pytest.mark.parametrize("spec", [s for s in SPECS if s.startswith("q:")])
def test_q_same_bytes_on_signed_zeros_subnormals_and_huge_values(spec):
    # "edge" data puts ±3e38 in one block, which q refuses on both paths; here the span fits.
    specials = np.array([0.0, -0.0, 1e-45, -1e-45, 1.5e38, 1e-39, -0.0], np.float32)
    for i, shape in enumerate([(7,), (CHUNK + 1,), (33, 17)]):
        x = _data(shape, i, "normal").reshape(-1)
        x[: specials.size] = specials
        _assert_same_paths(spec, x.reshape(shape), seed=i)
        got = _both(spec, x.reshape(shape), seed=i)
        assert got[False][0] != "ValueError", spec


@pytest.mark.parametrize("spec", ["q:bits=4", "q:bits=8,mode=absmax", "sign", "ternary", "topk:ratio=0.1",
                                  "qsgd:levels=8", "threshold:tau=1", "fixed:bits=2,lo=-1,hi=1"])
@pytest.mark.parametrize("kind", ["scales", "ties"])
def test_same_bytes_on_hard_values(spec, kind):
    for seed in range(3):
        _assert_same_paths(spec, _data((4 * CHUNK + 3,), seed, kind), seed=seed)


@pytest.mark.parametrize("spec", ["q:bits=4,stochastic=1,block=100", "sign:block=24", "topk:ratio=0.01",
                                  "qsgd:levels=16", "ternary:block=1000", "fixed:bits=8,lo=-4,hi=4"])
def test_threaded_path_is_identical(spec, monkeypatch):
    # Large inputs split over threads; an odd thread count makes uneven ranges.
    monkeypatch.setenv("FEDPRESS_KERNEL_THREADS", "3")
    monkeypatch.setattr(kernels, "SERIAL_BELOW", 1000)
    for seed in range(2):
        _assert_same_paths(spec, _data((5 * CHUNK + 77,), seed, "normal"), seed=seed)


def test_state_dicts_masks_and_torch():
    import torch

    sd = {"w": torch.randn(40, 33, generator=torch.Generator().manual_seed(1)),
          "b": torch.zeros(40), "h": torch.randn(500).half(), "steps": torch.tensor(3)}
    for spec in ("q:bits=4", "ef+topk:ratio=0.1+q:bits=8+zstd", "sign:block=7", "qsgd:levels=3"):
        got = _both(spec, sd, seed=5)
        assert got[False][0] == got[True][0], spec
    x = _data((50, 30), 2, "normal")
    mask = np.random.default_rng(2).random(x.shape) < 0.6
    _assert_same_paths("q:bits=3", x, 4, masks={"": mask})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=st.sampled_from(["q:bits=3,block=5", "q:bits=7,stochastic=1,block=9", "sign:block=3",
                          "ternary:block=4", "qsgd:levels=2,block=6", "topk:ratio=0.3", "fixed:bits=3,lo=-1,hi=1"]),
    x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=40),
                 elements=st.floats(-(2.0**100), 2.0**100, width=32)),
    seed=st.integers(0, 2**32),
)
def test_property_same_bytes(spec, x, seed):
    _assert_same_paths(spec, x, seed)


# ----------------------------------------------------------------------------- building blocks
@pytest.mark.parametrize("n,block", [(1, 0), (15, 0), (16, 0), (17, 4), (4096, 0), (4097, 0), (10_000, 4095),
                                     (50_000, 0), (50_000, 9000), (12_345, 100), (9, 9), (9, 10)])
def test_block_sums_follow_the_reference_order(n, block):
    k = _kern()
    x = _data((n,), n, "scales")
    for square in (False, True):
        ref = _reduce.block_sums(x, block, square)
        assert np.array_equal(k.block_sums(x, block, square), ref)
        # and the reference is a real sum (the order only moves the last bits)
        nb, bsz = _reduce.block_shape(n, block)
        exact = [np.sum(np.abs(x[b * bsz:(b + 1) * bsz].astype(np.float64)) ** (2 if square else 1))
                 for b in range(nb)]
        np.testing.assert_allclose(ref, exact, rtol=1e-12)


def test_block_minmax_matches_numpy():
    k = _kern()
    for n, block in [(1, 0), (100, 7), (5000, 0), (70_000, 256), (70_000, 30_000)]:
        x = _data((n,), n, "edge")
        lo, hi = k.block_minmax(x, block)
        nb, bsz = _reduce.block_shape(n, block)
        for b in range(nb):
            seg = x[b * bsz:(b + 1) * bsz]
            assert lo[b] == seg.min() and hi[b] == seg.max()


def test_topk_ties_go_to_the_lower_index():
    x = np.array([5, -5, 1, 5, 0, -5, 2], np.float32)
    for on in (False, True):
        with kernels.using(on):
            assert topk_indices(x, 2).tolist() == [0, 1]
            assert topk_indices(x, 5).tolist() == [0, 1, 3, 5, 6]
    # A sample that misleads (here it sees only the large values, so its threshold is above the
    # k-th largest) costs a retry, never a different answer.
    k = _kern()
    x = np.ones(300_000, np.float32)
    x[:: max(4, x.size // k.TOPK_SAMPLE)] = 10.0
    for kk in (20, 100_000):
        got = k.topk_indices(x, kk)
        with kernels.using(False):
            assert got.tolist() == topk_indices(x, kk).tolist()
    sparse = np.zeros(300_000, np.float32)
    sparse[-5:] = 1.0
    with kernels.using(False):
        want = topk_indices(sparse, 20)
    assert k.topk_indices(sparse, 20).tolist() == want.tolist()


def test_radix_select_is_partition():
    from fedpress.kernels import _jit

    r = np.random.default_rng(0)
    for n in (1, 5, 1000, 125_000):
        for v in (np.abs(r.normal(size=n)), r.integers(0, 3, size=n).astype(np.float64),
                  np.abs(r.normal(size=n)) * 10.0 ** r.integers(-45, 38, size=n)):
            v = v.astype(np.float32)
            for rank in {0, n // 2, n - 1}:
                assert _jit.kth_smallest(v, rank) == np.partition(v, rank)[rank]


def test_finite_check_is_exact():
    k = _kern()
    for n in (0, 1, 100, 3 * CHUNK + 1):
        x = _data((n,), n, "scales")
        assert k.all_finite(x)
        for bad in (np.inf, -np.inf, np.nan):
            for pos in {0, n // 2, n - 1} if n else ():
                y = x.copy()
                y[pos] = bad
                assert not k.all_finite(y)
    assert k.all_finite(np.full(1000, 3e38, np.float32))  # sums overflow, values do not


# ----------------------------------------------------------------------------- untrusted bytes
def _tamper(blob: bytes, field: int, new: bytes) -> bytes:
    p = read_blob(blob)
    fields = [bytes(f) for f in p.fields]
    fields[field] = new
    zstd = None
    if p.spec.endswith("zstd"):
        zstd = 3
    return write_blob(p.spec, p.seed, p.structure, fields, zstd_level=zstd)[0]


def _errors(blob: bytes):
    out = []
    for on in (False, True):
        with kernels.using(on):
            try:
                fedpress.decompress(blob)
                out.append(None)
            except WireError as e:
                out.append(str(e))
    return out


@pytest.mark.parametrize("spec,field,value", [
    ("q:bits=3+zstd", -1, b"\x09" * 100),           # code 9 does not fit 3 bits
    ("q:bits=4,mode=absmax", -1, b"\xff" * 50),     # 15 > 2·(2³−1)
    ("q:bits=4", -1, b"\x00" * 49),                 # truncated codes
    ("qsgd:levels=2", -1, b"\xff" * 38),            # code 7 > 2·levels (3 bits stored)
    ("qsgd:levels=2+zstd", -1, b"\x05" * 100),      # stored one per byte, code 5 > 4
    ("fixed:bits=3,lo=-1,hi=1+zstd", -1, b"\x08" * 100),
    ("ternary", -1, b"\xf3" * 20),                  # 243 is not five trits
    ("ternary", -1, b"\x00" * 19),
    ("sign", -1, b"\x00" * 12),
    ("topk:ratio=0.1", 0, b"\x00" + b"\x80" * 3),   # truncated varint
    ("topk:ratio=0.1", 0, b"\x00" + b"\x00" * 9),   # 9 gaps, 10 expected
    ("topk:ratio=0.1", 0, b"\x00" + b"\xff" * 10 + b"\x00" * 10),  # an 11-byte varint
    ("topk:ratio=0.1", 0, b"\x00" + b"\x7f" + b"\x00" * 9),       # gap 127 > n
    ("topk:ratio=0.1", 0, b"\x00" + b"\x00" * 9 + b"\x5b"),       # last index 100 >= n
    ("threshold:tau=0.5", 0, b"\x00" + b"\x80"),
])
def test_malformed_fields_give_the_same_wire_error(spec, field, value):
    x = _data((100,), 0, "normal")
    blob = _tamper(fedpress.compress(x, spec, seed=1), field, value)
    ref, kern = _errors(blob)
    assert ref is not None and ref == kern


# ----------------------------------------------------------------------------- switches and processes
def test_env_switch_forces_the_reference(monkeypatch):
    monkeypatch.setenv("FEDPRESS_KERNELS", "0")
    assert kernels.cpu() is None and not kernels.enabled()
    assert kernels.describe().startswith("numpy")
    with kernels.using(True):  # an explicit switch wins over the environment
        assert kernels.cpu() is not None
    monkeypatch.setenv("FEDPRESS_KERNELS", "1")
    assert kernels.cpu() is not None


def _child_blob(q):
    x = _data((3 * CHUNK,), 9, "normal")
    q.put(fedpress.compress(x, "q:bits=4,stochastic=1", seed=2))


def test_forked_children_can_use_the_kernels(monkeypatch):
    # The pool's threads do not survive fork(); a child must make its own (and never hang).
    monkeypatch.setattr(kernels, "SERIAL_BELOW", 1000)
    x = _data((3 * CHUNK,), 9, "normal")
    want = fedpress.compress(x, "q:bits=4,stochastic=1", seed=2)  # starts the pool here
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_blob, args=(q,))
    p.start()
    got = q.get(timeout=60)
    p.join(timeout=60)
    assert p.exitcode == 0 and got == want
