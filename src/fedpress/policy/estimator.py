"""Online link estimates learned from observed transfers, never from the simulator's truth.

A transfer of b bytes takes t = L + k·b seconds (latency L, k = 8 / bandwidth). The server only
sees (b, t) pairs of the transfers that happened. With varied sizes (different codecs, a full
model vs. a delta) a robust line fit separates L and k; with one size it cannot, so L falls back to
the population's latency estimate and k to the median of (t − L)/b. Medians over a sliding window
make the estimate robust to jitter and it follows a link that changes.

>>> est = LinkEstimator(window=8)
>>> for b in [10_000, 50_000, 10_000, 80_000]:   # a 2 Mbit/s link with 0.1 s latency
...     est.observe(0, "up", b, 0.1 + 8 * b / 2e6)
>>> round(est.mbps(0, "up"), 3), round(est.latency(0, "up"), 3)
(2.0, 0.1)
"""

from __future__ import annotations

from collections import defaultdict, deque

import numpy as np


class LinkEstimator:
    """Per-client, per-direction bandwidth/latency estimates plus compute speed."""

    def __init__(self, *, window: int = 16, prior_mbps: float = 1.0, prior_latency_s: float = 0.1,
                 min_spread: float = 1.5):
        self.window = window
        self.prior_mbps = prior_mbps
        self.prior_latency_s = prior_latency_s
        self.min_spread = min_spread
        self._obs: dict[tuple[int, str], deque] = defaultdict(lambda: deque(maxlen=window))
        self._compute: dict[int, deque] = defaultdict(lambda: deque(maxlen=window))
        # Caches, pure functions of the observations (so a resumed run, which starts them empty,
        # sees the same estimates): a client's own line fit, dropped when it observes again; and
        # fits that borrow the population's latency, valid only for the observations they saw.
        self._fit: dict[tuple[int, str], tuple[float, float]] = {}
        self._borrowed: dict[tuple[int, str], tuple[int, tuple[float, float]]] = {}
        self._pop_lat: dict[str, tuple[int, float]] = {}
        self._version = 0  # bumped by every observation

    # -- observations
    def observe(self, client: int, direction: str, nbytes: int, seconds: float) -> None:
        """Record one transfer (direction "up" or "down")."""
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
        if nbytes > 0 and seconds > 0:
            self._obs[(client, direction)].append((float(nbytes), float(seconds)))
            self._fit.pop((client, direction), None)
            self._version += 1

    def observe_compute(self, client: int, work: float, seconds: float) -> None:
        """Record ``seconds`` spent on ``work`` units (e.g. samples × epochs)."""
        if work > 0 and seconds > 0:
            self._compute[client].append(seconds / work)

    # -- estimates
    def _population_latency(self, direction: str) -> float:
        hit = self._pop_lat.get(direction)
        if hit is not None and hit[0] == self._version:
            return hit[1]
        lats = []
        for (_c, d), obs in self._obs.items():
            if d == direction and len(obs) >= 3:
                fit = self._line(obs)
                if fit is not None:
                    lats.append(fit[0])
        lat = float(np.median(lats)) if lats else self.prior_latency_s
        self._pop_lat[direction] = (self._version, lat)
        return lat

    def _line(self, obs) -> tuple[float, float] | None:
        b = np.array([o[0] for o in obs])
        t = np.array([o[1] for o in obs])
        if len(b) < 3 or b.max() < self.min_spread * b.min():
            return None
        # Theil–Sen slope: the median of pairwise slopes, robust to jittery transfers.
        i, j = np.triu_indices(len(b), 1)
        db = b[j] - b[i]
        ok = db != 0
        if not ok.any():
            return None
        k = float(np.median((t[j] - t[i])[ok] / db[ok]))
        if k <= 0:
            return None
        lat = float(max(np.median(t - k * b), 0.0))
        # Jitter is multiplicative on the transfer part, so once L is known the median of
        # (t − L)/b is a less biased slope than the pairwise one.
        k2 = float(np.median((t - lat) / b))
        return lat, k2 if k2 > 0 else k

    def _estimate(self, client: int, direction: str) -> tuple[float, float]:
        key = (client, direction)
        if key in self._fit:
            return self._fit[key]
        hit = self._borrowed.get(key)
        if hit is not None and hit[0] == self._version:
            return hit[1]
        obs = self._obs.get(key)
        if not obs:
            return self._population_prior(direction)
        fit = self._line(obs)
        if fit is not None:
            self._fit[key] = fit
            return fit
        # One transfer size: the latency comes from the other clients, so this fit is stale as
        # soon as anyone observes anything (it used to be kept until this client observed again).
        lat = min(self._population_latency(direction), min(o[1] for o in obs) * 0.999)
        k = float(np.median([(o[1] - lat) / o[0] for o in obs]))
        fit = (lat, max(k, 1e-15))
        self._borrowed[key] = (self._version, fit)
        return fit

    def _population_prior(self, direction: str) -> tuple[float, float]:
        """A client never seen: assume it is as slow as the slow end of the clients seen so far
        (10th-percentile bandwidth, 90th-percentile latency). Guessing the median would make a
        first-time NB-IoT device a certain straggler; guessing low only costs it some fidelity once."""
        fits = [self._estimate(c, d) for (c, d), obs in list(self._obs.items()) if d == direction and obs]
        if len(fits) < 3:
            return self.prior_latency_s, 8.0 / (self.prior_mbps * 1e6)
        lat = float(np.percentile([f[0] for f in fits], 90))
        k = float(np.percentile([f[1] for f in fits], 90))  # k = 8/bandwidth: high k = slow
        return lat, k

    def known(self, client: int, direction: str = "up") -> bool:
        return bool(self._obs.get((client, direction)))

    def mbps(self, client: int, direction: str) -> float:
        return 8.0 / self._estimate(client, direction)[1] / 1e6

    def latency(self, client: int, direction: str) -> float:
        return self._estimate(client, direction)[0]

    def predict_seconds(self, client: int, direction: str, nbytes: int) -> float:
        lat, k = self._estimate(client, direction)
        return lat + k * nbytes

    def predict_compute(self, client: int, work: float, default_per_unit: float = 2e-4) -> float:
        obs = self._compute.get(client)
        per = float(np.median(obs)) if obs else default_per_unit
        return per * work

    # -- checkpointing
    def state_dict(self) -> dict:
        return {"obs": {k: list(v) for k, v in self._obs.items()},
                "compute": {k: list(v) for k, v in self._compute.items()}}

    def load_state_dict(self, st: dict) -> None:
        self._obs.clear()
        self._compute.clear()
        self._fit.clear()
        self._borrowed.clear()
        self._pop_lat.clear()
        for k, v in st["obs"].items():
            self._obs[k].extend(v)
        for k, v in st["compute"].items():
            self._compute[k].extend(v)
