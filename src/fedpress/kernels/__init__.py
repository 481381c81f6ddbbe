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
an exact fix-up to the k largest with ties to the lower index) and the delta-varint index coding of
the sparsifiers. Random draws (stochastic rounding's uniforms, random-k's positions) still come from
NumPy's ``Generator`` seeded exactly as before, and are passed in: a kernel never has its own RNG.
Also faster on both paths: the blob is assembled with one copy (fields are arrays, not ``bytes``),
the reconstruction is skipped when only the blob is wanted (:func:`fedpress.compress`, non-EF
:meth:`fedpress.Codec.encode`), the finite check is one float32 sum, and the CRC-32 comes from ISA-L
(same checksum as ``zlib.crc32``, ~10x faster).

What "the definition" had to pin down for two implementations to agree (decoding is unchanged, and
old blobs decode exactly as before; only the encoder's choice moved, in the last bits of sign's and
QSGD's stored scales, and in these rare cases): sums of many values follow the fixed order of
:mod:`fedpress.codecs._reduce`; ``q`` stores +0.0 where a block's min/max is a signed zero; a NaN
from a range that overflows float32 quantises to code 0; top-k breaks ties at the k-th largest
magnitude towards the lower index.

Threads: a large call splits its chunks over a small pool of Python threads running ``nogil``
kernels (``FEDPRESS_KERNEL_THREADS`` sets how many; default: the CPUs this process may use). Inputs
under :data:`SERIAL_BELOW` values run on the calling thread: waking the pool (~30-50 µs) would cost
more than it saves on a bias vector. The pool is remade after ``fork()``, and concurrent callers are
safe (chunks never share an output byte). Not numba's ``parallel=True``: its parfors took ~4x longer
to compile (cold caches cost every fresh checkout ~50 s instead of ~15 s), its default OpenMP layer
aborts forked children (``fedpress compare --jobs N`` forks) and its workqueue layer is not
thread-safe.

GPU (not built yet)
-------------------
No GPU was available when these kernels were written, so there is no Triton code (triton 3.9.0 does
install beside torch 2.13.0+cpu, but its CPU interpreter checks semantics, not speed, and this
package should not pull a 290 MB wheel for code nobody could time). ``fedpress bench codecs --device
cuda`` says so. The design for whoever has a GPU, per kernel one launch over a 1-D grid of tiles (one
tile = a multiple of 40 values, so packed bytes and trit bytes never straddle two programs):

* blockwise quantise: tile = whole quantisation blocks; ``tl.min``/``tl.max`` in registers give the
  block range, then quantise, shift codes into ``bits``-byte groups and store bytes; scales stored
  by the tile that owns the block. Blocks larger than a tile: a first grid reduces min/max per
  (block, tile), a second quantises.
* sign: ``x >= 0`` packed 8→1 with shifts and a sum over the group axis; the per-block |x| sums use
  the fixed span/lane order of :mod:`fedpress.codecs._reduce` (one program per span, 16 lanes), so
  GPU scales equal CPU scales bit for bit.
* top-k: sampled threshold (as on CPU), then one grid counts ``|x| >= t`` per tile, an exclusive
  scan gives offsets, a second grid compacts (index, value) pairs; the exact fix-up runs on the small
  candidate set. Random-k and stochastic rounding take their uniforms/positions from the same
  NumPy-seeded draws (copied to the device) so blobs stay identical across devices.
* decoders: unpack + dequantise fused, one tile per program, writing float32 directly.

Bit-identity with the CPU needs three cares: ``enable_fp_fusion=False`` (Triton fuses ``a*b+c``
into an FMA by default; the reference rounds twice), correctly rounded division (libdevice
``div_rn``: Triton lowers fp32 ``/`` to an approximate divide), and the reference's order for sums.
``tests/kernels`` applies unchanged: same blob, same reconstruction.
"""

from __future__ import annotations

import contextlib
import os
import threading
from types import ModuleType

#: Below this many values a kernel runs on one thread (no pool wake-up).
SERIAL_BELOW = 1 << 16

_OFF = ("0", "off", "false", "no")
_forced: list[bool | None] = [None]
_loaded: list[ModuleType | None] = []
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
    """One line saying which path codecs take here, for benchmark reports.

    >>> describe().startswith(("numba", "numpy"))
    True
    """
    m = _load()
    if m is None:
        return "numpy: numba not installed"
    if not enabled():
        return "numpy: kernels off (FEDPRESS_KERNELS=0 or using(False))"
    import numba

    return f"numba {numba.__version__}: {m.threads()} threads"


def _load() -> ModuleType | None:
    if _loaded:
        return _loaded[0]
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
