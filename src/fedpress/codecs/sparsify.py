"""Sparsifiers: top-k, random-k (indices regenerated from the seed) and threshold.

The kept values become a sub-tensor that the rest of the chain compresses further
(``topk:ratio=0.01+q:bits=8``). Indices travel as delta-varints or as a bitmap, whichever is smaller.
Top-k's selection, threshold's scan and the varint coding run in :mod:`fedpress.kernels` when it is
enabled, with the same result as the NumPy definitions here. On the Triton path (torch tensors that
:func:`fedpress.kernels.routes` sends there) top-k's selection and threshold's scan run on the
device, and the kept values stay there for the next stage; the indices' varints are written on
the host.
"""

from __future__ import annotations

import math

import numpy as np

from fedpress import kernels
from fedpress.codecs._bits import varint_decode, varint_encode
from fedpress.codecs.base import Ctx, Param, Stage, numel, require_finite
from fedpress.codecs.spec import register
from fedpress.wire.errors import WireError

_VARINT, _BITMAP = 0, 1


def write_indices(ctx: Ctx, idx: np.ndarray, n: int) -> None:
    """Sorted unique indices in [0, n): one mode byte, then gaps−1 as varints or an n-bit bitmap."""
    k = kernels.cpu()
    if k is not None:
        v = k.varint_indices_encode(idx, n)
        if v is not None:
            ctx.write(v)
            return
        _write_bitmap(ctx, idx, n)
        return
    gaps = np.diff(idx, prepend=-1) - 1
    v = varint_encode(gaps)
    if len(v) <= (n + 7) // 8:
        ctx.write(bytes([_VARINT]) + v)
    else:
        _write_bitmap(ctx, idx, n)


def _write_bitmap(ctx: Ctx, idx: np.ndarray, n: int) -> None:
    bm = np.zeros(n, np.uint8)
    bm[idx] = 1
    ctx.write(bytes([_BITMAP]) + np.packbits(bm, bitorder="little").tobytes())


def read_indices(ctx: Ctx, n: int, k: int | None = None) -> np.ndarray:
    f = ctx.read(None, "indices")
    if len(f) < 1:
        raise WireError(f"indices of tensor {ctx.name!r}: missing mode byte")
    mode, body = f[0], f[1:]
    kern = kernels.cpu()
    if mode == _VARINT and kern is not None:
        idx = _varint_indices_kernel(kern, body, n, k, ctx)
    elif mode == _VARINT:
        gaps = varint_decode(body, k, max_value=n)
        idx = np.cumsum(gaps.astype(np.int64) + 1) - 1
        if idx.size and idx[-1] >= n:
            raise WireError(f"indices of tensor {ctx.name!r} exceed its size {n}")
    elif mode == _BITMAP:
        if len(body) != (n + 7) // 8:
            raise WireError(f"index bitmap of tensor {ctx.name!r}: wrong length")
        bits = np.unpackbits(np.frombuffer(body, np.uint8), count=n, bitorder="little")
        idx = np.flatnonzero(bits)
        if k is not None and idx.size != k:
            raise WireError(f"index bitmap of tensor {ctx.name!r}: {idx.size} set, expected {k}")
    else:
        raise WireError(f"indices of tensor {ctx.name!r}: unknown mode {mode}")
    return idx


def _varint_indices_kernel(kern, body, n: int, k: int | None, ctx: Ctx) -> np.ndarray:
    # The checks of varint_decode, in its order, around the kernel that decodes and sums the gaps.
    b = np.frombuffer(body, np.uint8)
    if b.size == 0:
        if k:
            raise WireError(f"varints: expected {k} values, got 0")
        return np.zeros(0, np.int64)
    if b[-1] >= 0x80:
        raise WireError("varints: truncated last value")
    count = int(np.count_nonzero(b < 0x80))
    if k is not None and count != k:
        raise WireError(f"varints: expected {k} values, got {count}")
    idx, too_long, big = kern.varint_indices_decode(b, count)
    if too_long:
        raise WireError("varints: value too long")
    if big > n:
        raise WireError("varints: value out of range")
    if idx.size and idx[-1] >= n:
        raise WireError(f"indices of tensor {ctx.name!r} exceed its size {n}")
    return idx


def _scatter(n: int, idx: np.ndarray, vals: np.ndarray, shape) -> np.ndarray:
    out = np.zeros(n, np.float32)
    out[idx] = vals
    return out.reshape(shape)


def _scatter_device(n: int, idx, vals, shape, device):
    """:func:`_scatter` into a torch tensor on ``device`` (idx and vals: arrays or tensors)."""
    import torch

    idx = torch.as_tensor(np.asarray(idx) if isinstance(idx, np.ndarray) else idx).to(device)
    if isinstance(vals, np.ndarray):
        vals = torch.from_numpy(np.ascontiguousarray(vals, np.float32))
    out = torch.zeros(n, dtype=torch.float32, device=device)
    out[idx] = vals.to(device).reshape(-1)
    return out.reshape(shape)


def _device_selected(x, ctx, rest, select):
    # The device path of top-k and threshold: select on the device, write the indices (host
    # varints), hand the kept values on, still on the device.
    flat = x.reshape(-1)
    idx = select(flat)
    write_indices(ctx, idx.cpu().numpy(), flat.numel())
    (vals,) = rest([flat[idx]])
    return None if vals is None else _scatter_device(flat.numel(), idx, vals, x.shape, x.device)


def _decode_selected(ctx, rest, shape, device, k):
    n = numel(shape)
    idx = read_indices(ctx, n, k)
    (vals,) = rest([(idx.size,)])
    return _scatter_device(n, idx, vals, shape, device)


def keep_count(n: int, ratio: float) -> int:
    """Values kept out of n: ⌈ratio·n⌉, at least one of a non-empty tensor."""
    return 0 if n == 0 else min(n, max(1, math.ceil(ratio * n - 1e-9)))


def topk_indices(flat: np.ndarray, k: int) -> np.ndarray:
    """Sorted indices of the k largest |values|; among values tied with the k-th largest, the
    lowest indices win (a rule a threshold-and-compact kernel can follow exactly).

    >>> topk_indices(np.array([1, -3, 2, 3, 0, -2], np.float32), 3).tolist()
    [1, 2, 3]
    """
    n = flat.size
    if k >= n:
        return np.arange(n)
    kern = kernels.cpu()
    if kern is not None:
        return kern.topk_indices(flat, k)
    a = np.abs(flat)
    t = np.partition(a, n - k)[n - k]  # the k-th largest |value|
    above = np.flatnonzero(a > t)
    ties = np.flatnonzero(a == t)[: k - above.size]
    return np.sort(np.concatenate([above, ties]))


@register
class TopK(Stage):
    """Keep the ⌈ratio·n⌉ largest-magnitude values of each tensor (Aji & Heafield 2017; Stich et al.
    2018). Biased: pair it with ``ef``.

    Error bound: ‖g − g'‖² ≤ (1 − k/n)·‖g‖² (before the values' own compression).
    """

    name = "topk"
    help = "top-k sparsification per tensor: ratio=r (indices delta-varint or bitmap); use with ef"
    role = "transform"
    params = {"ratio": Param(float, 0.01, "fraction of values kept", lo=0.0, hi=1.0, lo_open=True)}
    recon_optional = True
    checks_finite = True

    def encode(self, x, ctx, rest):
        flat = x.ravel()
        k = keep_count(flat.size, self.ratio)
        kern = kernels.cpu()
        if kern is not None:  # its counting pass checks finiteness on the way
            idx, finite = kern.topk_checked(flat, k)
            require_finite(finite, ctx)
        else:
            require_finite(bool(np.isfinite(flat).all()), ctx)
            idx = topk_indices(flat, k)
        write_indices(ctx, idx, flat.size)
        (vals,) = rest([flat[idx]])
        return None if vals is None else _scatter(flat.size, idx, vals, x.shape)

    def decode(self, shape, ctx, rest):
        n = numel(shape)
        k = keep_count(n, self.ratio)
        idx = read_indices(ctx, n, k)
        (vals,) = rest([(k,)])
        return _scatter(n, idx, vals, shape)

    def encode_device(self, x, ctx, rest):
        g = kernels.gpu()
        if g is None:
            return self.encode(x.cpu().numpy(), ctx, rest)

        def select(flat):
            idx, finite = g.topk_checked(flat, keep_count(flat.numel(), self.ratio))
            require_finite(finite, ctx)  # its counting pass checks finiteness on the way
            return idx

        return _device_selected(x, ctx, rest, select)

    def decode_device(self, shape, ctx, rest, device):
        return _decode_selected(ctx, rest, shape, device, keep_count(numel(shape), self.ratio))


@register
class RandK(Stage):
    """Keep ⌈ratio·n⌉ values at positions drawn from the blob's seed: only the values travel, the
    decoder regenerates the positions. ``unbiased=1`` rescales by n/k so E[g'] = g (Stich et al.
    2018; Konečný et al. 2016).

    Error bound: exact on kept positions (before the values' own compression), zero elsewhere.
    """

    name = "randk"
    help = "random-k sparsification, positions from the seed (only values travel): ratio, unbiased=0|1"
    role = "transform"
    params = {
        "ratio": Param(float, 0.01, "fraction of values kept", lo=0.0, hi=1.0, lo_open=True),
        "unbiased": Param(bool, False, "rescale by n/k so the estimate is unbiased"),
    }
    recon_optional = True

    @property
    def unbiased(self):  # the parameter of the same name (stored in __dict__ by Stage.__init__)
        return self.__dict__["unbiased"]

    @property
    def needs_seed(self):  # the positions are drawn from the seed
        return True

    def _indices(self, n: int, ctx: Ctx) -> np.ndarray:
        k = keep_count(n, self.ratio)
        if k >= n:
            return np.arange(n)
        return np.sort(ctx.rng().choice(n, size=k, replace=False))

    def _finish(self, n, idx, vals, shape):
        if vals is None:  # no reconstruction wanted (ctx.recon False)
            return None
        out = _scatter(n, idx, vals, shape)
        if self.unbiased and idx.size:
            out *= np.float32(n / idx.size)
        return out

    def encode(self, x, ctx, rest):
        flat = x.ravel()
        idx = self._indices(flat.size, ctx)
        (vals,) = rest([flat[idx]])
        return self._finish(flat.size, idx, vals, x.shape)

    def decode(self, shape, ctx, rest):
        n = numel(shape)
        idx = self._indices(n, ctx)
        (vals,) = rest([(idx.size,)])
        return self._finish(n, idx, vals, shape)


@register
class Threshold(Stage):
    """Keep values with |g| ≥ tau (Strom 2015); the count varies, so it travels with the indices.

    Error bound: |g − g'| < tau on dropped values, exact on kept ones.
    """

    name = "threshold"
    help = "keep values with |g| >= tau (count varies per round): tau=t"
    role = "transform"
    params = {"tau": Param(float, 1e-3, "magnitude threshold", lo=0.0)}
    recon_optional = True

    def encode(self, x, ctx, rest):
        flat = x.ravel()
        k = kernels.cpu()
        if k is not None:
            idx = k.indices_ge(flat, np.float32(self.tau))
        else:
            idx = np.flatnonzero(np.abs(flat) >= np.float32(self.tau))
        write_indices(ctx, idx, flat.size)
        (vals,) = rest([flat[idx]])
        return None if vals is None else _scatter(flat.size, idx, vals, x.shape)

    def decode(self, shape, ctx, rest):
        n = numel(shape)
        idx = read_indices(ctx, n)
        (vals,) = rest([(idx.size,)])
        return _scatter(n, idx, vals, shape)

    def encode_device(self, x, ctx, rest):
        g = kernels.gpu()
        if g is None:
            return self.encode(x.cpu().numpy(), ctx, rest)
        return _device_selected(x, ctx, rest, lambda f: g.indices_ge(f, np.float32(self.tau)))

    def decode_device(self, shape, ctx, rest, device):
        return _decode_selected(ctx, rest, shape, device, None)
