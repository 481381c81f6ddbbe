"""Fast paths for the codec hot loops, behind the unchanged codec API and wire format.

The NumPy code in :mod:`fedpress.codecs` is the *definition* of every codec; a kernel here is only
allowed to compute the same thing faster. "The same" means bit for bit: the same blob and the same
reconstruction for every input and seed (``tests/kernels`` checks it on many shapes and seeds), so a
blob never depends on whether the sender had a compiler.

Routing
-------
Codecs call :func:`cpu`, which returns the compiled CPU kernels (numba, ``@njit(nogil=True,
fastmath=False, cache=True)``, threaded as below) or ``None``; ``None`` means "use the NumPy
reference". Kernels are on when numba imports, unless ``FEDPRESS_KERNELS=0`` (or
``off``/``false``/``no``) forces the reference.
:func:`using` switches them for a block of code (tests and ``fedpress bench codecs --kernels``):

>>> from fedpress import kernels
>>> with kernels.using(False):
...     kernels.cpu() is None
True

Routed (encode and decode): ``q`` (1-8 bits, minmax/absmax, deterministic and stochastic; not the
``target=`` search), ``fixed``, ``qsgd``, ``sign``, ``ternary``, ``topk`` (sampled threshold, then
an exact fix-up to the k largest with ties to the lower index), ``fp16``/``bf16`` (bit
manipulation, NaN payloads as NumPy keeps them), the delta-varint index coding of the
sparsifiers and ``rht``'s chunked Walsh-Hadamard rotation (:mod:`fedpress.kernels._rht`; CPU only:
a CUDA tensor is rotated on the host). Random draws (stochastic rounding's uniforms, random-k's positions) still come from
NumPy's ``Generator`` seeded exactly as before, and are passed in: a kernel never has its own RNG.
Also faster on both paths: the blob is assembled with one copy (fields are arrays, not ``bytes``),
the reconstruction is skipped when only the blob is wanted (:func:`fedpress.compress`, non-EF
:meth:`fedpress.Codec.encode`), the finite check is one float32 sum, and the CRC-32 comes from ISA-L
(same checksum as ``zlib.crc32``, ~10x faster).

What "the definition" had to pin down for two implementations to agree (decoding is unchanged, and
old blobs decode exactly as before; only the encoder's choice moved, in the last bits of sign's and
QSGD's stored scales, and in these rare cases): sums of many values follow the fixed order of
:mod:`fedpress.codecs._reduce`; ``q`` stores +0.0 where a block's min/max is a signed zero, and
refuses (ValueError, on every path) a block whose span overflows float32; top-k breaks ties at the k-th largest
magnitude towards the lower index.

Threads: a large call splits its chunks over a small pool of Python threads running ``nogil``
kernels (``FEDPRESS_KERNEL_THREADS`` sets how many; default: the CPUs this process may use). Inputs
under :data:`SERIAL_BELOW` values run on the calling thread: waking the pool (~30-50 µs) would cost
more than it saves on a bias vector. The pool is remade after ``fork()``, and concurrent callers are
safe (chunks never share an output byte). Not numba's ``parallel=True``: its parfors took ~4x longer
to compile (cold caches cost every fresh checkout ~50 s instead of ~15 s), its default OpenMP layer
aborts forked children (``fedpress compare --jobs N`` forks) and its workqueue layer is not
thread-safe.

GPU (Triton; tested in the interpreter only)
--------------------------------------------
:func:`gpu` returns :mod:`fedpress.kernels._triton` when triton imports (the optional extra
``fedpress[gpu]``, ``triton==3.9.0``) and there is something to run it on: a CUDA device, or Triton's
CPU interpreter when ``TRITON_INTERPRET=1`` or :func:`using_gpu` (``True``) asks for it. Switching
the kernels off (``FEDPRESS_KERNELS=0``, ``using(False)``) switches it off too. :func:`routes` says
whether a tensor takes that path: CUDA tensors by default, CPU torch tensors too under
``using_gpu(True)`` (how ``tests/kernels/test_triton.py`` runs every kernel in the interpreter on a
machine without a GPU), none under ``using_gpu(False)``.

Routed, for a torch tensor on that path: the encode of ``q`` (1-8 bits, minmax/absmax,
deterministic and stochastic; not ``target=``), ``sign``, ``topk`` and ``threshold`` when they are
the first stage (not under ``ef`` nor with pruning masks: those keep host state), chains that stay on
the device (``topk+q``, ``threshold+sign``), and their decoders with
``fedpress.decompress(blob, device="cuda")``. Other stages take the tensor to the host and run as
before. One launch per step over a 1-D grid:

* q: when blocks tile a 2048-value program (block a power of two ≤ 2048, the default 256, or one
  block ≤ 2048 values), ONE pass: each program loads its values once, reduces min/max per block in
  an integer key space, computes lo/scale, quantises and packs (groups of 8 codes → ``bits`` bytes,
  so programs never share a byte): 4 bytes read and bits/8 written per value. Other blocks take two
  passes: min/max per (block, 4096-value span) item (a second reduction across spans for big
  blocks) and lo/scale, then quantise + pack. The reconstruction is fused when wanted;
* sign: the |x| sums in the span/lane order of :mod:`fedpress.codecs._reduce` (a sequential
  float64 loop per lane; spans of one block are added on the host, one float64 per 4096 values),
  then sign + pack;
* top-k: the CPU's sampled threshold, a count per tile (which also finds NaN/inf), an exclusive scan,
  a compaction in index order and the exact fix-up (``torch.kthvalue``, ties to the lower index)
  on the ~1.2k candidates; threshold reuses the count and compaction;
* decoders: unpack + dequantise fused, writing float32, with the largest code for the range checks.

Stochastic rounding's uniforms are NumPy's draws, made on the host as on every path and copied to the
device. Bit-identity cares: ``enable_fp_fusion=False`` and ``enable_reflect_ftz=False`` on every
launch, correctly rounded division (PTX ``div.rn.f32`` on a GPU; the interpreter's division is
NumPy's), round-half-even without libdevice, the reference's order for sums. The interpreter proves
the semantics, not the compiled code: the first GPU visit runs ``benchmarks/gpu_kernels.py``, which
checks the bytes against the CPU reference and then times the kernels against ``torch.clone`` and
naive torch (targets: encode ≤ 1.5× clone for q and sign, ≤ 3× for top-k 1 %). No GPU timings exist
yet. The D2H copy of the blob's fields (and H2D of stochastic uniforms) is outside the kernels and
dominates an end-to-end ``compress`` of a CUDA tensor.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from types import ModuleType

#: Below this many values a kernel runs on one thread (no pool wake-up).
SERIAL_BELOW = 1 << 16

_OFF = ("0", "off", "false", "no")
_forced: list[bool | None] = [None]
_gpu_forced: list[bool | None] = [None]
_loaded: list[ModuleType | None] = []
_gpu_loaded: list[ModuleType | None] = []
_import_lock = threading.Lock()


def available() -> bool:
    """Whether the compiled CPU kernels can be used here (numba imports)."""
    return _load() is not None


def enabled() -> bool:
    """Whether codecs currently route through the kernels (see :func:`using` and FEDPRESS_KERNELS).

    >>> isinstance(enabled(), bool)
    True
    """
    forced = _forced[-1]
    if forced is not None:
        return forced and available()
    if os.environ.get("FEDPRESS_KERNELS", "1").strip().lower() in _OFF:
        return False
    return available()


def cpu() -> ModuleType | None:
    """The CPU kernel module when kernels are enabled, else ``None`` (use the NumPy reference).

    >>> m = cpu()
    >>> m is None or hasattr(m, "q_encode")
    True
    """
    return _load() if enabled() else None


@contextlib.contextmanager
def using(on: bool | None):
    """Force kernels on (``True``), off (``False``) or back to the default (``None``) in a block.

    Forcing them on where numba is missing still gives the reference path.

    >>> with using(False):
    ...     enabled()
    False
    """
    _forced.append(on)
    try:
        yield
    finally:
        _forced.pop()


def describe() -> str:
    """One line saying which path codecs take here, for benchmark reports (CPU path, then the
    GPU path when it is available).

    >>> describe().startswith(("numba", "numpy"))
    True
    """
    m = _load()
    if m is None:
        out = "numpy: numba not installed"
    elif not enabled():
        out = "numpy: kernels off (FEDPRESS_KERNELS=0 or using(False))"
    else:
        import numba

        out = f"numba {numba.__version__}: {m.threads()} threads"
    g = gpu()
    if g is not None:
        out += f"; GPU: {g.describe()}"
    return out


def _switched_off() -> bool:
    forced = _forced[-1]
    if forced is not None:
        return not forced
    return os.environ.get("FEDPRESS_KERNELS", "1").strip().lower() in _OFF


def gpu() -> ModuleType | None:
    """The Triton kernel module, or ``None``: triton missing, kernels switched off (as for
    :func:`cpu`: ``FEDPRESS_KERNELS=0``, ``using(False)``, or ``using_gpu(False)``), or nothing to
    run them on (no CUDA device; the CPU interpreter counts only when ``TRITON_INTERPRET=1`` or
    ``using_gpu(True)`` asks for it).

    >>> m = gpu()
    >>> m is None or hasattr(m, "q_encode")
    True
    """
    if _switched_off() or _gpu_forced[-1] is False:
        return None
    m = _load_gpu()
    if m is None:
        return None
    if m.INTERPRETED and not (_gpu_forced[-1] or os.environ.get("TRITON_INTERPRET") == "1"):
        return None
    return m


@contextlib.contextmanager
def using_gpu(on: bool | None):
    """Route torch tensors through the Triton kernels (``True``, CPU tensors included: on a machine
    without CUDA they run in Triton's interpreter, which is how the tests check the GPU code),
    never (``False``: CUDA tensors are copied to the host and take the CPU path), or by default
    (``None``: CUDA tensors only).

    >>> with using_gpu(False):
    ...     gpu() is None
    True
    """
    _gpu_forced.append(on)
    try:
        yield
    finally:
        _gpu_forced.pop()


def routes(x) -> bool:
    """Whether a torch tensor (or a torch device, or a device string) takes the Triton path.

    >>> routes(None), routes("cpu")
    (False, False)
    """
    if x is None:
        return False
    if isinstance(x, str):
        kind = x.split(":")[0]
    else:
        dev = getattr(x, "device", x)
        kind = getattr(dev, "type", None)
        if kind is None or not type(x).__module__.startswith("torch"):
            return False
    if kind != "cuda" and _gpu_forced[-1] is not True:
        return False
    return gpu() is not None


def _import_once(cache: list, needs: tuple[str, ...], module: str) -> ModuleType | None:
    """``module`` imported once (thread-safe) if every package in ``needs`` imports, else None."""
    if cache:
        return cache[0]
    with _import_lock:
        if not cache:
            try:
                for name in needs:
                    importlib.import_module(name)
            except ImportError:
                cache.append(None)
            else:
                cache.append(importlib.import_module(module))
    return cache[0]


def _load_gpu() -> ModuleType | None:
    return _import_once(_gpu_loaded, ("torch", "triton"), "fedpress.kernels._triton")


def _load() -> ModuleType | None:
    return _import_once(_loaded, ("numba",), "fedpress.kernels._cpu")
    with _import_lock:
        if not _loaded:
            try:
                import numba  # noqa: F401
            except ImportError:
                _loaded.append(None)
            else:
                from fedpress.kernels import _cpu as mod

                _loaded.append(mod)
    return _loaded[0]
