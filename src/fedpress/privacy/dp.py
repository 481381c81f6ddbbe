"""Client-level differential privacy: DP-FedAvg with fixed or adaptive clipping, and an accountant.

**DP-FedAvg** (McMahan et al., ICLR 2018). Each client's whole update is clipped to L2 norm ≤ C, the
clipped updates are summed, Gaussian noise N(0, σ²) with σ = z·C is added to every coordinate of
the sum, and the result is divided by the *expected* number of clients. Adding or removing one
client changes the sum by at most C, so each round is a Gaussian mechanism with noise multiplier z;
with clients sampled at rate q per round, :class:`Accountant` turns (z, q, rounds, δ) into ε.

**Adaptive clipping** (Andrew et al., NeurIPS 2021) tracks a quantile γ of the update norms:
each client also reports b = 1[‖Δ‖ ≤ C], the server forms the noisy fraction
b̄ = (Σb + N(0, σ_b²)) / m and sets C ← C·exp(−η(b̄ − γ)). The count is a second Gaussian query
(sensitivity ½ after centring), so the update noise is raised to z_Δ = (z⁻² − (2σ_b)⁻²)^(-1/2)
and the pair together costs what one mechanism with multiplier z costs.

**Compression and DP together.** What holds and what does not:

- *Clip before compressing* (:func:`clip_update` on the client). The server's clip is what bounds
  sensitivity: :class:`DPFactory` clips every decoded update again, so the guarantee holds whatever
  the codec did. Client-side clipping just keeps the server's clip from discarding signal.
- A codec may *increase* the norm (stochastic quantisation, rescaled randk: ‖Δ'‖ can exceed ‖Δ‖).
  If the server relied on the client's clip alone, sensitivity would be C·(1 + codec error), not C;
  hence the second clip on the server, on the decoded update, which is the one that counts.
- Error feedback is post-processing-safe only when the residual is computed from the *clipped*
  update and never leaves the client. EF residuals carry unclipped mass into later rounds, but
  every round's contribution is still clipped at C on the server, so per-round sensitivity stays C.
- Unbiased quantisation adds its own variance on top of the DP noise: for d coordinates the
  mean's error is about (z·C)²·d/m² + (quantisation variance)/m. When the DP noise dominates,
  coarser codes cost nothing in accuracy: choose bits so the quantisation variance is well below
  (z·C)²/m.
- Under secure aggregation the server cannot re-clip (it never sees an update), so the
  client's clip is the only one and the codec's error counts: a client-clipped update quantised
  on a shared symmetric range decodes to norm ≤ C + √d·(per-coordinate error bound), and that is
  the sensitivity to noise for (:func:`secagg_sensitivity`, :func:`dp_mean_from_sum`). The noise
  is added by the server to the securely summed value: the server never sees an individual
  update, but it does see the sum before noise (central DP with a trusted noise-adder).
  :mod:`fedpress.privacy.ddp` removes that trust: each client adds discrete Gaussian noise to its
  codes inside the masked sum (distributed DP, ``--dp-mode distributed``).

The accountant matches how clients are sampled. ``sampling="poisson"`` (each client joins a round
independently with probability q = per_round / clients; the simulator's default under DP): the
Poisson-subsampled Gaussian mechanism under add/remove-one adjacency, as in DP-FedAvg (McMahan et
al. 2018), with RDP or PLD. ``sampling="fixed"`` (exactly per_round clients, uniformly without
replacement): the sampled-without-replacement Gaussian (Wang, Balle & Kasiviswanathan 2019) under
replace-one adjacency, where one client's update can move the clipped sum by 2C, so the noise
multiplier against that sensitivity is z/2 (RDP only). Treating fixed-size sampling as Poisson,
common in FL code, understates ε.

>>> import torch
>>> dp = DPFactory(clip=1.0, noise_multiplier=0.0, expected_clients=2)
>>> proc = dp.create()
>>> proc.accept({"w": torch.tensor([3.0, 4.0])})   # norm 5: clipped to 1
>>> proc.accept({"w": torch.tensor([0.3, 0.4])})   # norm 0.5: kept
>>> mean, meas = proc.result()
>>> [round(v, 4) for v in mean["w"].tolist()], meas["dp_clipped_fraction"]
([0.45, 0.6], 0.5)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from fedpress.fl.aggregators import Factory, SumFactory


def _sq_norm(v) -> float:
    if torch.is_tensor(v):
        return float(v.detach().to(torch.float64).pow(2).sum())
    return float(np.sum(np.square(np.asarray(v, np.float64))))


def update_norm(update: dict[str, Any]) -> float:
    """Global L2 norm of a dict of tensors or arrays (in float64).

    >>> update_norm({"a": torch.tensor([3.0]), "b": torch.tensor([4.0])})
    5.0
    """
    return math.sqrt(sum(_sq_norm(v) for v in update.values()))


def clip_update(update: dict[str, Any], clip: float) -> tuple[dict[str, Any], float]:
    """Scale the whole update so its global L2 norm is at most ``clip``; returns (clipped,
    norm before clipping). Use it client-side *before* compressing.

    >>> c, n = clip_update({"w": torch.tensor([3.0, 4.0])}, 1.0)
    >>> c["w"].tolist(), n
    ([0.6000000238418579, 0.800000011920929], 5.0)
    """
    if not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    norm = update_norm(update)
    factor = min(1.0, clip / norm) if norm > 0 else 1.0
    if factor == 1.0:
        return dict(update), norm
    return {k: v * factor for k, v in update.items()}, norm


def _generator(seed: int, *words: int) -> torch.Generator:
    s = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, *words]).generate_state(
        1, np.uint64
    )[0]
    return torch.Generator().manual_seed(int(s) & ((1 << 63) - 1))


def gaussian_noise_like(
    update: dict[str, Any], std: float, seed: int, *words: int
) -> dict[str, torch.Tensor]:
    """Independent N(0, std²) float64 noise shaped like each entry of ``update``, drawn from
    (seed, *words) so a run is reproducible.

    >>> n = gaussian_noise_like({"w": torch.zeros(100_000)}, 2.0, seed=0)
    >>> round(float(n["w"].std()), 1)
    2.0
    """
    g = _generator(seed, *words)
    out = {}
    for k, v in update.items():
        shape = tuple(v.shape)
        out[k] = (
            torch.randn(shape, generator=g, dtype=torch.float64) * std
            if std > 0
            else torch.zeros(shape, dtype=torch.float64)
        )
    return out


def local_dp(
    update: dict[str, Any], clip: float, noise_multiplier: float, seed: int
) -> tuple[dict[str, torch.Tensor], float]:
    """Local DP: clip to ``clip`` and add N(0, (z·clip)²) on the client, so the report is itself a
    Gaussian mechanism (``Accountant(z, sample_rate=1.0, delta)`` per report). Costs far more
    accuracy than central DP: the noise of every client adds up. Returns (noisy, norm).

    >>> noisy, norm = local_dp({"w": torch.zeros(4)}, clip=1.0, noise_multiplier=1.0, seed=0)
    >>> noisy["w"].shape, norm
    (torch.Size([4]), 0.0)
    """
    clipped, norm = clip_update(update, clip)
    noise = gaussian_noise_like(clipped, noise_multiplier * clip, seed, 0x10CA1)
    return {
        k: (torch.as_tensor(v).to(torch.float64) + noise[k]).to(torch.float32)
        for k, v in clipped.items()
    }, norm


# ----------------------------------------------------------------------------- the aggregator
class DPFactory:
    """DP-FedAvg as a stackable aggregation factory: clip each accepted update (a dict of
    tensors), sum with ``inner`` (a *summing* factory: :class:`SumFactory`, or a secure sum), add
    N(0, (z·C)²) per coordinate and divide by ``expected_clients`` (the realised count when None).

    State across rounds lives on the factory: the round counter (noise seeds derive from
    ``(seed, round)``) and, with ``adaptive=True``, the clip, updated after each ``result``.
    Client weights are ignored: DP-FedAvg's sensitivity assumes each client counts once.
    With ``accountant`` given, each round steps it and reports ``dp_epsilon``.

    >>> import torch
    >>> dp = DPFactory(clip=1.0, noise_multiplier=1.0, seed=0, adaptive=True, expected_clients=10,
    ...                clipped_count_stddev=1.0, target_quantile=0.5)
    >>> p = dp.create()
    >>> for i in range(10):
    ...     p.accept({"w": torch.full((4,), 0.1 * (i + 1))})
    >>> _, meas = p.result()
    >>> meas["dp_clip"], meas["dp_clipped_fraction"], dp.clip == meas["dp_next_clip"]
    (1.0, 0.5, True)
    """

    def __init__(
        self,
        inner: Factory | None = None,
        *,
        clip: float,
        noise_multiplier: float,
        seed: int = 0,
        expected_clients: int | None = None,
        adaptive: bool = False,
        target_quantile: float = 0.5,
        clip_learning_rate: float = 0.2,
        clipped_count_stddev: float | None = None,
        accountant: Accountant | None = None,
    ):
        if not clip > 0:
            raise ValueError(f"clip must be > 0, got {clip}")
        if noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
        if expected_clients is not None and expected_clients < 1:
            raise ValueError("expected_clients must be >= 1")
        self.inner = inner if inner is not None else SumFactory()
        self.clip = float(clip)
        self.noise_multiplier = float(noise_multiplier)
        self.seed = int(seed)
        self.expected_clients = expected_clients
        self.adaptive = adaptive
        self.target_quantile = float(target_quantile)
        self.clip_learning_rate = float(clip_learning_rate)
        self.accountant = accountant
        self.round = 0
        self.count_stddev = 0.0
        self.value_noise_multiplier = self.noise_multiplier
        if adaptive:
            if not 0.0 <= target_quantile <= 1.0:
                raise ValueError("target_quantile must be in [0, 1]")
            if clipped_count_stddev is None:
                if expected_clients is None:
                    raise ValueError(
                        "adaptive clipping needs expected_clients or clipped_count_stddev"
                    )
                # Andrew et al.'s and TFF's default: noise of 5% of the expected count.
                clipped_count_stddev = 0.05 * expected_clients
            self.count_stddev = float(clipped_count_stddev)
            if self.noise_multiplier > 0:
                if not 2 * self.count_stddev > self.noise_multiplier:
                    raise ValueError(
                        f"clipped_count_stddev={self.count_stddev} is too small for "
                        f"noise_multiplier={self.noise_multiplier}: need 2*stddev > z"
                    )
                # Split the privacy cost between the update sum and the clipped count.
                self.value_noise_multiplier = (
                    self.noise_multiplier**-2 - (2 * self.count_stddev) ** -2
                ) ** -0.5

    def create(self) -> _DPProcess:
        self.round += 1
        return _DPProcess(self, self.inner.create(), self.round)


class _DPProcess:
    def __init__(self, factory: DPFactory, inner, rnd: int):
        self.f = factory
        self.inner = inner
        self.round = rnd
        self.clip = factory.clip  # fixed for the whole round, even if the factory adapts later
        self.count = 0
        self.unclipped = 0

    def accept(
        self, value: dict[str, torch.Tensor], weight: float = 1.0, client: int | None = None
    ) -> None:
        if weight <= 0:
            return
        clipped, norm = clip_update(value, self.clip)
        self.count += 1
        self.unclipped += norm <= self.clip
        self.inner.accept(clipped, 1.0, client)

    def result(self):
        f = self.f
        total, meas = self.inner.result()
        denom = f.expected_clients or self.count
        std = f.value_noise_multiplier * self.clip
        meas = {
            **meas,
            "dp_clip": self.clip,
            "dp_noise_multiplier": f.value_noise_multiplier,
            "dp_noise_std": std,
            "dp_clients": self.count,
            "dp_clipped_fraction": (self.count - self.unclipped) / self.count
            if self.count
            else 0.0,
        }
        out = None
        if total is not None:
            noise = gaussian_noise_like(total, std, f.seed, self.round, 1)
            out = {
                k: ((v.to(torch.float64) + noise[k]) / denom).to(torch.float32)
                for k, v in total.items()
            }
            meas["dp_denominator"] = denom
            meas["dp_noise_std_mean"] = std / denom
        if f.adaptive:
            m = f.expected_clients or max(self.count, 1)
            g = _generator(f.seed, self.round, 2)
            noisy = (
                self.unclipped
                + float(torch.randn((), generator=g, dtype=torch.float64)) * f.count_stddev
            )
            frac = noisy / m
            # Geometric update: the clip moves by a factor, not an amount, so it adapts at the same
            # speed whatever the scale of the norms.
            f.clip = self.clip * math.exp(-f.clip_learning_rate * (frac - f.target_quantile))
            meas["dp_unclipped_fraction_noisy"] = frac
            meas["dp_clipped_count_stddev"] = f.count_stddev
        meas["dp_next_clip"] = f.clip
        if f.accountant is not None:
            f.accountant.step()
            meas["dp_epsilon"] = f.accountant.epsilon()
            meas["dp_delta"] = f.accountant.delta
        return out, meas


def secagg_sensitivity(clip: float, error_bound: float, dim: int) -> float:
    """L2 sensitivity of one client's contribution to a secure sum of client-clipped, quantised
    updates: C + √d·b, where b bounds each coordinate's quantisation error (for
    :class:`~fedpress.privacy.codes.SharedRangeCodec`, ``codec.error_bound()``; clamping to a
    symmetric range around 0 only shrinks the norm). Noise must be scaled to this, not to C.

    >>> secagg_sensitivity(1.0, 0.01, 10_000)
    2.0
    """
    return float(clip) + math.sqrt(dim) * float(error_bound)


def dp_mean_from_sum(
    total: dict[str, torch.Tensor],
    *,
    sensitivity: float,
    noise_multiplier: float,
    denominator: float,
    seed: int,
    round: int,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Central DP on an already summed update (the secure-aggregation path, where
    :class:`DPFactory` cannot clip): add N(0, (z·sensitivity)²) per coordinate and divide by
    ``denominator`` (the expected number of clients). Noise derives from (seed, round).

    >>> mean, meas = dp_mean_from_sum({"w": torch.zeros(3)}, sensitivity=1.0, noise_multiplier=0.0,
    ...                               denominator=4, seed=0, round=1)
    >>> mean["w"].tolist(), meas["dp_noise_std"]
    ([0.0, 0.0, 0.0], 0.0)
    """
    if denominator <= 0:
        raise ValueError("denominator must be > 0")
    std = noise_multiplier * sensitivity
    noise = gaussian_noise_like(total, std, seed, round, 3)
    mean = {
        k: ((v.to(torch.float64) + noise[k]) / denominator).to(torch.float32)
        for k, v in total.items()
    }
    meas = {
        "dp_noise_std": std,
        "dp_noise_std_mean": std / denominator,
        "dp_sensitivity": sensitivity,
        "dp_noise_multiplier": noise_multiplier,
        "dp_denominator": denominator,
    }
    return mean, meas


# ----------------------------------------------------------------------------- accounting
SAMPLINGS = ("poisson", "fixed")


def _dp_event(noise_multiplier: float, sample_rate: float, steps: int, sampling: str = "poisson",
              population: int | None = None):
    import dp_accounting

    if sampling == "fixed":
        # Replace-one adjacency: the clipped sum moves by up to 2C, so sigma/sensitivity = z/2.
        ev = dp_accounting.GaussianDpEvent(noise_multiplier / 2)
        if sample_rate < 1.0:
            k = round(sample_rate * population)
            ev = dp_accounting.SampledWithoutReplacementDpEvent(population, k, ev)
        return dp_accounting.SelfComposedDpEvent(ev, steps)
    ev = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sample_rate < 1.0:
        ev = dp_accounting.PoissonSampledDpEvent(sample_rate, ev)
    return dp_accounting.SelfComposedDpEvent(ev, steps)


def _check_sampling(sampling: str, method: str, population: int | None) -> None:
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be 'poisson' or 'fixed', got {sampling!r}")
    if sampling == "fixed":
        if method != "rdp":
            raise ValueError("fixed-size sampling is accounted with method='rdp' only")
        if not population or population < 1:
            raise ValueError("fixed-size sampling needs the population size (number of clients)")


def _epsilon(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, method: str,
    sampling: str = "poisson", population: int | None = None,
) -> float:
    if steps == 0 or sample_rate == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    import dp_accounting

    if sampling == "fixed":
        rel = dp_accounting.NeighboringRelation.REPLACE_ONE
        acct = dp_accounting.rdp.RdpAccountant(neighboring_relation=rel)
    elif method == "rdp":
        acct = dp_accounting.rdp.RdpAccountant()
    else:
        acct = dp_accounting.pld.PLDAccountant()
    acct.compose(_dp_event(noise_multiplier, sample_rate, steps, sampling, population))
    return float(acct.get_epsilon(delta))


class Accountant:
    """(ε, δ) of DP-FedAvg so far: the subsampled Gaussian mechanism with noise multiplier z and
    sample rate q = per_round / clients, composed once per :meth:`step`, computed by
    ``dp-accounting`` (``method="rdp"``, Rényi DP, fast; or ``"pld"``, privacy loss distributions,
    tighter and slower). ``sampling`` says how clients are drawn (module docstring): ``"poisson"``
    or ``"fixed"`` (exactly q·``population`` clients; RDP only).

    >>> acc = Accountant(noise_multiplier=1.1, sample_rate=0.01, delta=1e-5)
    >>> acc.step(100); e1 = acc.epsilon(); acc.step(900)
    >>> 0 < e1 < acc.epsilon() < 3
    True
    >>> fixed = Accountant(1.1, 0.01, 1e-5, sampling="fixed", population=1000)
    >>> fixed.step(1000); fixed.epsilon() > acc.epsilon()   # replace-one: sensitivity 2C
    True
    """

    def __init__(
        self, noise_multiplier: float, sample_rate: float, delta: float, *, method: str = "rdp",
        sampling: str = "poisson", population: int | None = None,
    ):
        if noise_multiplier < 0:
            raise ValueError("noise_multiplier must be >= 0")
        if not 0 <= sample_rate <= 1:
            raise ValueError("sample_rate must be in [0, 1]")
        if not 0 < delta < 1:
            raise ValueError("delta must be in (0, 1)")
        if method not in ("rdp", "pld"):
            raise ValueError(f"method must be 'rdp' or 'pld', got {method!r}")
        _check_sampling(sampling, method, population)
        self.sampling, self.population = sampling, population
        self.noise_multiplier = float(noise_multiplier)
        self.sample_rate = float(sample_rate)
        self.delta = float(delta)
        self.method = method
        self.steps = 0

    def step(self, n: int = 1) -> None:
        """Account for ``n`` more rounds."""
        if n < 0:
            raise ValueError("n must be >= 0")
        self.steps += n

    def epsilon(self) -> float:
        """ε after the rounds stepped so far, at this accountant's δ (``inf`` without noise)."""
        return _epsilon(self.noise_multiplier, self.sample_rate, self.steps, self.delta,
                        self.method, self.sampling, self.population)


def noise_for_target(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    rounds: int,
    *,
    method: str = "rdp",
    rtol: float = 1e-3,
    sampling: str = "poisson",
    population: int | None = None,
) -> float:
    """The smallest noise multiplier z (to relative precision ``rtol``) whose ε after ``rounds``
    rounds at ``sample_rate`` is at most ``target_epsilon``: binary search over the accountant.

    >>> z = noise_for_target(2.0, 1e-5, 0.01, 500)
    >>> acc = Accountant(z, sample_rate=0.01, delta=1e-5)
    >>> acc.step(500)
    >>> 1.95 < acc.epsilon() <= 2.0
    True
    """
    if not target_epsilon > 0:
        raise ValueError("target_epsilon must be > 0")
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    _check_sampling(sampling, method, population)

    return smallest_noise(lambda z: _epsilon(z, sample_rate, rounds, delta, method, sampling, population),
                          target_epsilon, rtol)


def smallest_noise(eps, target_epsilon: float, rtol: float = 1e-3) -> float:
    """The smallest noise multiplier z (to relative precision ``rtol``) with ``eps(z)`` ≤ the
    target, for an ε that falls as z grows: doubling, then bisection. Shared by the central and
    the distributed accountants' ``*_for_target``.

    >>> round(smallest_noise(lambda z: 1 / z, 4.0), 3)
    0.25
    """
    lo, hi = 0.0, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise ValueError(f"target epsilon {target_epsilon} is out of reach")
    while hi - lo > rtol * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if eps(mid) > target_epsilon else (lo, mid)
    return hi
