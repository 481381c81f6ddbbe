"""Distributed differential privacy: every client adds discrete Gaussian noise to its own integer
codes *inside* the secure sum, so nobody, the server included, ever sees a sum without noise.

Central DP under secure aggregation (:func:`~fedpress.privacy.dp.dp_mean_from_sum`) trusts the
server to add the noise after unmasking: it sees the exact sum first. The distributed discrete
Gaussian mechanism (DDG; Kairouz, Liu & Steinke, "The Distributed Discrete Gaussian Mechanism for
Federated Learning with Secure Aggregation", ICML 2021) removes that trust:

1. each client clips its update (with its error-feedback residual) to L2 norm C and stochastically
   rounds it to integer codes on the range [−R, R] shared by the round (step s = 2R/2ᵇ), exactly
   the codes secure aggregation already sums (:class:`~fedpress.privacy.codes.SharedRangeCodec`);
2. adds N_Z(0, σ²) to every code, σ = z·Δ₂/√t, where Δ₂ bounds the L2 distance of its codes from
   the codes of a zero update and t is the fewest clients whose noise any unmasked sum contains
   (secure aggregation refuses to unmask fewer than its threshold t);
3. reduces the noisy codes modulo 2ʷ and masks them; the server unmasks Σ codes + Σ noise mod 2ʷ
   and reads it back in the centred range, which holds it with overwhelming probability because
   w leaves 20 standard deviations of room for the noise.

The sum of t or more clients' noise is *not* a discrete Gaussian; Proposition 14 of the paper
bounds how far it is, and :func:`ddg_zcdp` turns that into zero-concentrated DP per round, which
``dp-accounting``'s RDP accountant composes and converts to (ε, δ).

What the guarantee is, and is not:

- Adjacency: one client's update replaced by zero, with the round's participants public (the
  server knows who uploaded). Δ₂ = C/s + √d·(1 + |−lo/s − round(−lo/s)|): the first term is the
  clipped update in code units, √d bounds stochastic rounding (each code moves by less than one
  step), and the last term is the distance of zero from the grid (0 on the symmetric ranges
  ``q`` uses under secure aggregation).
- No amplification by sampling: the server sees who took part in each round, so subsampling
  hides nothing from it; every round is composed at full strength. Against the server this is the
  honest figure; central DP-FedAvg's amplified ε assumes a server that keeps the sample secret.
- Each client adds noise for the worst case of only t survivors, so when everyone survives the
  sum carries n/t times the variance it needs: the price of not trusting anyone with the noise.
- Noise is drawn with NumPy in floating point (Canonne, Kamath & Steinke 2020's rejection sampler,
  not their exact-arithmetic one) and seeded for reproducible simulation; a deployment would seed
  it from the OS.

>>> import numpy as np
>>> z = discrete_gaussian(3.0, 100_000, np.random.default_rng(0))
>>> str(z.dtype), bool(abs(z.mean()) < 0.05), bool(abs(z.var() / 9.0 - 1) < 0.02)
('int64', True, True)
>>> acct = DistributedAccountant(delta=1e-5)
>>> for _ in range(10):
...     acct.step(ddg_zcdp(l2=100.0, l1=100.0 * 50, dim=2500, sigma=100.0 / 5 ** 0.5, n=5))
>>> round(acct.epsilon(), 1)   # z = 1: rho = 1/2 per round, 5 in all
19.1
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: How many standard deviations of the summed noise the modulus leaves room for, each side.
#: P(|N(0,1)| > 20) ≈ 5.5e-89, per coordinate: a wrapped sum is not a practical event.
NOISE_TAIL = 20.0


def discrete_gaussian(sigma: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` independent draws of the discrete Gaussian N_Z(0, σ²) (P(x) ∝ exp(−x²/2σ²) on the
    integers), by rejection from a discrete Laplace (Canonne, Kamath & Steinke 2020, Alg. 3).

    A discrete Laplace with scale t = ⌊σ⌋ + 1 is the difference of two geometric draws; each is
    kept with probability exp(−(|y| − σ²/t)²/2σ²), which leaves exactly the discrete Gaussian. At
    least ~40 % of proposals are kept, so a handful of vectorised passes suffice.

    >>> discrete_gaussian(0.0, 3, np.random.default_rng(0)).tolist()
    [0, 0, 0]
    """
    if not sigma >= 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    out = np.zeros(int(size), np.int64)
    if sigma == 0 or size == 0:
        return out
    t = math.floor(sigma) + 1
    p = -math.expm1(-1.0 / t)  # success probability of the geometric: 1 - e^(-1/t)
    todo = np.arange(out.size)
    while todo.size:
        m = todo.size
        # numpy's geometric counts trials (>= 1); the difference of two is the discrete Laplace.
        y = rng.geometric(p, m).astype(np.int64) - rng.geometric(p, m).astype(np.int64)
        keep = rng.random(m) < np.exp(-((np.abs(y) - sigma * sigma / t) ** 2) / (2 * sigma * sigma))
        out[todo[keep]] = y[keep]
        todo = todo[~keep]
    return out


def ddg_zcdp(*, l2: float, l1: float, dim: int, sigma: float, n: int) -> list[tuple[float, float]]:
    """Zero-concentrated DP of one release of a sum with ``n`` clients' N_Z(0, σ²) noise on each of
    ``dim`` integer coordinates, for inputs whose L2 / L1 sensitivities are ``l2`` / ``l1`` (in
    code units): the three bounds of Kairouz, Liu & Steinke (2021), Prop. 14, each as (ρ, ξ), i.e.
    Rényi DP ε(α) ≤ ξ + ρα for every α > 1. Each is valid alone; τ measures how far a sum of
    discrete Gaussians is from one and vanishes quickly as σ grows.

    >>> [tuple(round(v, 6) for v in b) for b in ddg_zcdp(l2=10.0, l1=30.0, dim=9, sigma=10.0, n=1)]
    [(0.5, 0.0), (0.5, 0.0), (0.5, 0.0)]
    """
    if n < 1 or dim < 0:
        raise ValueError("n must be >= 1 and dim >= 0")
    if sigma <= 0:
        return [(math.inf, 0.0)] * 3
    if sigma < 0.5:
        raise ValueError(f"the distributed discrete Gaussian bound needs sigma >= 0.5, got {sigma:g}")
    tau = 10.0 * sum(math.exp(-2.0 * math.pi**2 * sigma**2 * k / (k + 1)) for k in range(1, n))
    a2 = l2 / (math.sqrt(n) * sigma)
    a1 = l1 / (math.sqrt(n) * sigma)
    return [
        (a2 * a2 / 2.0, tau * dim),
        ((a2 * a2 + 2.0 * a1 * tau + tau * tau * dim) / 2.0, 0.0),
        ((a2 + math.sqrt(dim) * tau) ** 2 / 2.0, 0.0),
    ]


def _zcdp_epsilon(rho: float, xi: float, delta: float) -> float:
    if rho == 0 and xi == 0:
        return 0.0
    if not math.isfinite(rho) or not math.isfinite(xi):
        return math.inf
    import dp_accounting

    acct = dp_accounting.rdp.RdpAccountant()
    acct.compose(dp_accounting.dp_event.ZCDpEvent(rho, xi))
    return float(acct.get_epsilon(delta))


class DistributedAccountant:
    """(ε, δ) of the distributed discrete Gaussian rounds released so far: each :meth:`step` adds
    one round's zCDP bounds (:func:`ddg_zcdp`; composition adds ρ and ξ), and :meth:`epsilon`
    converts each of the three running totals with ``dp-accounting``'s RDP accountant and keeps
    the smallest (each total alone is a valid bound). No amplification by sampling (module doc).

    >>> acct = DistributedAccountant(1e-5)
    >>> acct.epsilon(), acct.steps
    (0.0, 0)
    """

    def __init__(self, delta: float):
        if not 0 < delta < 1:
            raise ValueError("delta must be in (0, 1)")
        self.delta = float(delta)
        self.totals = [(0.0, 0.0)] * 3
        self.steps = 0

    def step(self, bounds: list[tuple[float, float]]) -> None:
        """Compose one more released round, given its three (ρ, ξ) bounds."""
        if len(bounds) != 3:
            raise ValueError("expected the three (rho, xi) bounds of ddg_zcdp")
        self.totals = [(r + dr, x + dx) for (r, x), (dr, dx) in zip(self.totals, bounds, strict=True)]
        self.steps += 1

    def epsilon(self) -> float:
        """ε after the rounds stepped so far, at this accountant's δ (``inf`` without noise)."""
        return min(_zcdp_epsilon(r, x, self.delta) for r, x in self.totals)


def ddp_noise_for_target(target_epsilon: float, delta: float, rounds: int, *, rtol: float = 1e-3) -> float:
    """The smallest noise multiplier z (σ_sum = z·Δ₂) whose ε after ``rounds`` distributed rounds is
    at most ``target_epsilon``, ignoring τ (negligible once σ ≥ 2 code steps; the accountant still
    reports the exact bound): each round is then (1/2z²)-zCDP.

    >>> z = ddp_noise_for_target(8.0, 1e-5, 20)
    >>> 7.9 < _zcdp_epsilon(20 / (2 * z * z), 0.0, 1e-5) <= 8.0
    True
    """
    if not target_epsilon > 0:
        raise ValueError("target_epsilon must be > 0")
    if rounds < 1:
        raise ValueError("rounds must be >= 1")

    from fedpress.privacy.dp import smallest_noise

    return smallest_noise(lambda z: _zcdp_epsilon(rounds / (2 * z * z), 0.0, delta), target_epsilon, rtol)


@dataclass(frozen=True)
class DistributedNoise:
    """One round's distributed-noise parameters for a shared-range code.

    ``clip`` C and ``noise_multiplier`` z as in DP-FedAvg; ``min_clients`` t: the fewest clients
    whose noise an unmasked sum holds; ``scale``/``lo``: the code's step and range start (code c
    means c·scale + lo); ``dim``: codes per client; ``bits``: code width; ``n``: clients that may
    upload (sizes the modulus).

    >>> dn = DistributedNoise(clip=1.0, noise_multiplier=1.0, min_clients=4, scale=2 / 256, lo=-1.0,
    ...                       dim=100, bits=8, n=8)
    >>> dn.l2, dn.sigma, dn.width
    (138.0, 69.0, 14)
    """

    clip: float
    noise_multiplier: float
    min_clients: int
    scale: float
    lo: float
    dim: int
    bits: int
    n: int

    def __post_init__(self):
        if self.clip <= 0 or self.scale <= 0:
            raise ValueError("clip and scale must be > 0")
        if self.lo >= 0 or self.lo + self.scale * (1 << self.bits) <= 0:
            raise ValueError("distributed DP needs a range holding 0 (lo < 0 < hi): clamping to a range "
                             "without 0 could grow an update's norm")
        if self.noise_multiplier < 0 or self.min_clients < 1 or self.n < self.min_clients:
            raise ValueError("need noise_multiplier >= 0 and 1 <= min_clients <= n")

    @property
    def l2(self) -> float:
        """L2 sensitivity in code units: ‖codes − codes of zero‖ ≤ C/s + √d·(1 + grid offset of 0)."""
        z0 = -self.lo / self.scale
        return self.clip / self.scale + math.sqrt(self.dim) * (1.0 + abs(z0 - round(z0)))

    @property
    def l1(self) -> float:
        return math.sqrt(self.dim) * self.l2

    @property
    def sigma(self) -> float:
        """Each client's noise: the t-client sum then has standard deviation z·Δ₂."""
        return self.noise_multiplier * self.l2 / math.sqrt(self.min_clients)

    @property
    def width(self) -> int:
        """Bits w of the modulus 2ʷ: the centred sum n·2^(b−1) ± (codes' spread + noise tail) fits."""
        spread = self.n * (1 << (self.bits - 1)) + NOISE_TAIL * self.sigma * math.sqrt(self.n)
        return math.ceil(math.log2(spread + 1)) + 1

    def zcdp(self) -> list[tuple[float, float]]:
        """This round's (ρ, ξ) bounds, for :meth:`DistributedAccountant.step`."""
        return ddg_zcdp(l2=self.l2, l1=self.l1, dim=self.dim, sigma=self.sigma, n=self.min_clients)

    def noisy(self, codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Client-side: (codes + N_Z(0, σ²)) mod 2ʷ, ready to mask."""
        noise = discrete_gaussian(self.sigma, codes.size, rng)
        return (codes.astype(np.int64) + noise) & ((1 << self.width) - 1)

    def centred_sum(self, total: np.ndarray, received: int) -> np.ndarray:
        """Server-side: the unmasked Σ (codes + noise) mod 2ʷ of ``received`` clients as the signed
        integer it stands for, read around its centre ``received``·2^(b−1)."""
        w = self.width
        c0 = received * (1 << (self.bits - 1))
        t = np.asarray(total).astype(np.int64)
        return ((t - c0 + (1 << (w - 1))) & ((1 << w) - 1)) - (1 << (w - 1)) + c0
