"""Low-rank reduction: truncated SVD and PowerSGD.

A tensor with ≥ 2 dims is viewed as a matrix (shape[0], rest) — conv kernels (out, in, kh, kw)
become (out, in·kh·kw). Tensors under ``min_size`` values, 1-D tensors (biases) and matrices where
rank r would not save anything (r·(m+n) ≥ m·n) pass through untouched to the next stage.
Whether a tensor passes through depends only on its shape and the spec, so nothing about it travels.
"""

from __future__ import annotations

import numpy as np

from fedpress.codecs.base import Ctx, Param, Rest, Stage, numel
from fedpress.codecs.spec import register


def matrix_shape(shape, rank: int, min_size: int) -> tuple[int, int, int] | None:
    """(m, n, r) if a tensor of this shape is reduced, else None (pass-through)."""
    if len(shape) < 2:
        return None
    m = int(shape[0])
    size = numel(shape)
    if m == 0 or size < max(min_size, 1):
        return None
    n = size // m
    r = min(rank, m, n)
    if r * (m + n) >= m * n:
        return None
    return m, n, r


class _LowRank(Stage):
    role = "transform"
    needs_seed = True  # randomised range finder / PowerSGD's initial Q
    params = {
        "rank": Param(int, 4, "rank r", lo=1, hi=4096),
        "min_size": Param(int, 4096, "tensors with fewer values pass through", lo=0),
    }

    def sub_shapes(self, m, n, r):  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, shape, ctx: Ctx, rest: Rest):
        mnr = matrix_shape(shape, self.rank, self.min_size)
        if mnr is None:
            (y,) = rest([tuple(shape)])
            return y
        a, b = rest(list(self.sub_shapes(*mnr)))
        return self.combine(a, b).reshape(shape)


def _range_finder(M: np.ndarray, r: int, rng: np.random.Generator, iters: int = 2) -> np.ndarray:
    """Randomised range finder with power iterations (Halko, Martinsson & Tropp 2011)."""
    k = min(r + 8, min(M.shape))
    Y = M @ rng.standard_normal((M.shape[1], k)).astype(np.float32)
    Q, _ = np.linalg.qr(Y)
    for _ in range(iters):
        Q, _ = np.linalg.qr(M.T @ Q)
        Q, _ = np.linalg.qr(M @ Q)
    return Q


@register
class SVD(_LowRank):
    """Truncated SVD: send U·S (m×r) and Vᵀ (r×n). Exact for small matrices, randomised with two
    power iterations for large ones (deterministic from the seed).

    Error bound: ‖M − M'‖_F ≈ √(Σ_{i>r} σᵢ²), the best rank-r approximation (Eckart–Young).
    """

    name = "svd"
    help = "truncated SVD of each weight matrix (conv kernels reshaped): rank=r, min_size"

    def sub_shapes(self, m, n, r):
        return (m, r), (r, n)

    @staticmethod
    def combine(a, b):
        return a @ b

    def encode(self, x, ctx: Ctx, rest: Rest):
        mnr = matrix_shape(x.shape, self.rank, self.min_size)
        if mnr is None:
            (y,) = rest([x])
            return y
        m, n, r = mnr
        M = x.reshape(m, n)
        if min(m, n) <= 4 * (r + 8):
            U, S, Vt = np.linalg.svd(M, full_matrices=False)
        else:
            Q = _range_finder(M, r, ctx.rng())
            Ub, S, Vt = np.linalg.svd(Q.T @ M, full_matrices=False)
            U = Q @ Ub
        a = (U[:, :r] * S[:r]).astype(np.float32)
        b = np.ascontiguousarray(Vt[:r], np.float32)
        a2, b2 = rest([a, b])
        return self.combine(a2, b2).reshape(x.shape)


def _orthonormalize(P: np.ndarray) -> np.ndarray:
    Q, R = np.linalg.qr(P)
    # Fix the signs so the factorisation is unique (QR is only unique up to column signs).
    s = np.sign(np.diag(R))
    s[s == 0] = 1
    return (Q * s).astype(np.float32)


@register
class PowerSGD(_LowRank):
    """PowerSGD (Vogels et al. 2019): one power iteration per round, P = orth(M·Q), Q = Mᵀ·P,
    send P (m×r) and Q (n×r); the decoder forms P·Qᵀ. Q is warm-started from the previous round
    (kept in the codec state), which is what makes a single iteration enough over time. Biased:
    pair it with ``ef`` as the paper does.

    Error bound: none per round (it is a one-step approximation); error feedback keeps it convergent.
    """

    name = "powersgd"
    help = "PowerSGD rank-r with warm-started Q kept in codec state: rank=r, min_size; use with ef"
    stateful = True

    def sub_shapes(self, m, n, r):
        return (m, r), (n, r)

    @staticmethod
    def combine(a, b):
        return a @ b.T

    def encode(self, x, ctx: Ctx, rest: Rest):
        mnr = matrix_shape(x.shape, self.rank, self.min_size)
        if mnr is None:
            (y,) = rest([x])
            return y
        m, n, r = mnr
        M = x.reshape(m, n)
        Q = ctx.state_in.get(ctx.state_key)
        if Q is None or Q.shape != (n, r):
            Q = ctx.rng().standard_normal((n, r)).astype(np.float32)
        P = _orthonormalize(M @ Q)
        Qn = (M.T @ P).astype(np.float32)
        ctx.state_out[ctx.state_key] = Qn
        a, b = rest([P, Qn])
        return self.combine(a, b).reshape(x.shape)
