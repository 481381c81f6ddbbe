"""The Triton kernels compile for a Hopper GPU (sm_90, H100/H200) with the bit-identity cares intact,
checked in their PTX — on a machine with no GPU.

Triton compiles ahead of time for a named target without a device: the front end, LLVM and the
bundled ``ptxas`` all run on the CPU. So every kernel launch the codecs make (recorded here while
the kernels run in the interpreter on a spread of specs and shapes) is compiled in a subprocess for
``GPUTarget("cuda", 90, 32)`` with the launch options the module passes, and its PTX must show:

* a cubin (ptxas accepted the inline ``div.rn.f32``, which the interpreter never sees);
* ``div.rn.f32`` wherever the kernel divides, and no approximate division (``div.full``,
  ``div.approx``, ``rcp.approx``): NumPy's float32 ``/`` is correctly rounded;
* no ``fma`` (``enable_fp_fusion=False`` honoured: the reference rounds ``a*b`` then ``+c``);
* no ``.ftz`` (subnormals kept, as NumPy keeps them).

What this cannot show is the kernels' results on the hardware or their speed: that is
``benchmarks/gpu_visit.sh``'s job on a lent GPU machine.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("triton")
torch = pytest.importorskip("torch")

import fedpress  # noqa: E402
from fedpress import kernels  # noqa: E402

SRC = Path(fedpress.__file__).resolve().parents[1]

#: Specs and shapes that reach every kernel and every constexpr variant the codecs launch.
SPECS = ["q:bits=8", "q:bits=4", "q:bits=1", "q:bits=2", "q:bits=3", "q:bits=5,mode=absmax",
         "q:bits=6,block=0", "q:bits=7,block=5000", "q:bits=3,block=7,stochastic=1",
         "q:bits=4,stochastic=1", "q:bits=2,mode=absmax,block=0,stochastic=1", "q:bits=3+zstd",
         "sign", "sign:block=10", "sign:block=4100", "topk:ratio=0.01", "threshold:tau=1",
         "topk:ratio=0.05+q:bits=4"]
SHAPES = [(100,), (4105,)]

_COMPILE = textwrap.dedent("""
    import json, re, sys
    import torch
    torch.cuda.is_available = lambda: True  # the module then decorates with triton.jit, DIV_MODE=1
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from fedpress.kernels import _triton as K
    assert not K.INTERPRETED and K.DIV_MODE == 1
    out, todo = [], []
    for name, sig, cx in json.load(sys.stdin):
        # The launches were recorded in the interpreter (DIV=0); on a GPU DIV=1 (inline PTX) is the
        # default and DIV=0 (tl.div_rn) the fallback of FEDPRESS_TRITON_DIV=div_rn: compile both.
        todo += [(name, sig, dict(cx, DIV=d)) for d in (1, 0)] if "DIV" in cx else [(name, sig, cx)]
    for name, sig, cx in todo:
        fn = getattr(K, name)
        try:
            k = triton.compile(ASTSource(fn, sig, cx), target=GPUTarget("cuda", 90, 32),
                               options=dict(K._OPTS))
            ptx = k.asm["ptx"]
            ops = sorted(set(re.findall(r"\\b(?:div|fma|rcp|sqrt|add|sub|mul|cvt|min|max)\\.[a-z0-9.]+", ptx)))
            out.append({"name": name, "cx": cx, "ops": ops, "cubin": len(k.asm["cubin"])})
        except Exception as e:  # reported per launch, with the compiler's message
            out.append({"name": name, "cx": cx, "error": f"{type(e).__name__}: {e}"[:2000]})
    json.dump(out, sys.stdout)
""")


def _record_launches() -> list:
    """Every distinct (kernel, argument types, constexprs) the codecs launch on the Triton path."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import mangle_type

    seen: dict[str, tuple] = {}
    run = InterpretedFunction.run

    def spy(self, *args, grid, warmup, **kw):
        names = self.arg_names
        cx = {k: v for k, v in kw.items() if k in names}
        sig = {n: mangle_type(a) for n, a in zip(names, args, strict=False)}  # the rest came as keywords
        sig.update({k: "constexpr" for k in cx})
        key = json.dumps([self.fn.__name__, sig, cx], sort_keys=True)
        seen.setdefault(key, (self.fn.__name__, sig, cx))
        return run(self, *args, grid=grid, warmup=warmup, **kw)

    InterpretedFunction.run = spy
    try:
        with kernels.using_gpu(True), np.errstate(all="ignore"):
            for spec in SPECS:
                for i, shape in enumerate(SHAPES):
                    x = torch.from_numpy(np.random.default_rng(i).normal(size=shape).astype(np.float32))
                    e = fedpress.codec(spec).encode_ex(x, seed=i)  # with the reconstruction
                    fedpress.decompress(e.blob, device="cpu")
                    fedpress.compress(x, spec, seed=i)  # without it
    finally:
        InterpretedFunction.run = run
    return list(seen.values())


@pytest.fixture(scope="module")
def compiled():
    launches = _record_launches()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    env.pop("TRITON_INTERPRET", None)
    res = subprocess.run([sys.executable, "-c", _COMPILE], input=json.dumps(launches), env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return launches, json.loads(res.stdout)


def test_every_kernel_the_codecs_launch_was_recorded_and_compiled(compiled):
    launches, out = compiled
    import fedpress.kernels._triton as K

    kernels_in_module = {n for n in dir(K) if n.endswith("_kernel")}
    assert {name for name, _, _ in launches} == kernels_in_module  # the workload reaches them all
    errors = [(r["name"], r["cx"], r["error"]) for r in out if "error" in r]
    assert not errors, errors
    assert all(r["cubin"] > 0 for r in out)
    # the constexpr variants that change code: every stored width, stochastic and not, recon or not
    q = [r["cx"] for r in out if r["name"] in ("_q_fused_kernel", "_q_enc_kernel")]
    assert {c["SBITS"] for c in q} >= {1, 2, 4, 8} and {c["STOCH"] for c in q} == {False, True}
    assert {c["REC"] for c in q} == {False, True}


def test_ptx_keeps_the_bit_identity_cares(compiled):
    _, out = compiled
    for r in out:
        ops = r["ops"]
        where = f"{r['name']} {r['cx']}: {ops}"
        assert not [o for o in ops if o.startswith("fma.")], "FMA contraction: " + where
        assert not [o for o in ops if ".ftz" in o], "flush-to-zero: " + where
        assert not [o for o in ops if re.match(r"(div\.(full|approx)|rcp\.approx)", o)], "approx div: " + where
    # the kernels that divide (q's lo/scale and quantise) use the correctly rounded division
    dividing = [r for r in out if r["name"] in ("_qparams_kernel", "_q_enc_kernel", "_q_fused_kernel")]
    assert dividing and all("div.rn.f32" in r["ops"] for r in dividing)
    assert {r["cx"]["DIV"] for r in dividing} == {0, 1}  # the inline PTX and the tl.div_rn fallback
