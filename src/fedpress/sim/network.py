"""Simulated client links, network presets, stragglers and a simulated clock.

A round costs each participant ``download + compute + upload`` seconds, where a transfer of
``nbytes`` over a link takes ``latency + 8·nbytes / bandwidth``. The bytes are the real lengths of
the blobs the codecs produced, so the simulated time moves with the compression actually achieved.

Preset medians
--------------
The numbers below are rounded, representative medians read from the sources named; they are
meant to put each access technology in the right order of magnitude, not to model any one
operator, country or year.

===========  =========  ===========  =========  =======  ============
preset       up Mbit/s  down Mbit/s  latency s  compute  availability
===========  =========  ===========  =========  =======  ============
``wifi``     20         60           0.020      1.0      0.8
``4g``       6          20           0.050      0.7      0.5
``3g``       0.8        3            0.120      0.3      0.4
``nbiot``    0.02       0.02         2.0        0.02     0.3
===========  =========  ===========  =========  =======  ============

- **Wi-Fi**: Ookla Speedtest Global Index (fixed broadband medians, 2023–2024: roughly
  80–90 Mbit/s down, 35–45 up, ~10 ms), discounted for the in-home Wi-Fi hop.
- **4G / 3G**: Opensignal mobile network experience reports (4G download ~15–30 Mbit/s, upload
  ~5–10 Mbit/s, latency ~40–60 ms; 3G download a few Mbit/s, upload ~1 Mbit/s, latency
  ~100–150 ms) and the Ookla index for mobile uplink and latency.
- **NB-IoT**: 3GPP TR 45.820 (targets ≥160 bit/s at the coverage edge and ≤10 s exception-report
  latency) and TS 36.306 (UE category NB1 peaks of ~26 kbit/s down, ~60 kbit/s multi-tone up);
  measured application throughput of tens of kbit/s and latencies of seconds in Martinez et al.
  2019, "Exploring the performance boundaries of NB-IoT" (IEEE Internet of Things Journal).
- **Compute and availability**: FedScale (Lai et al. 2022, ICML) device traces show training
  speeds spanning about an order of magnitude across phones, and client availability traces
  (Yang et al. 2021, WWW, "Characterizing impacts of heterogeneity in federated learning upon
  large-scale smartphone data") show that only a fraction of devices is eligible at any moment.
  The compute factors (relative to a mid-range phone on Wi-Fi = 1.0; an NB-IoT node is an MCU)
  and availabilities in the table are our assumptions in that spirit, not measured medians.

``mixed`` is a population of 30 % wifi, 40 % 4g, 20 % 3g and 10 % nbiot clients. ``ideal`` (alias
``none``) has infinite bandwidth and zero latency, so simulated time is compute only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Link:
    """One client's connection and device.

    ``compute_factor`` is relative speed (1.0 = reference device, 0.5 = twice as slow);
    ``availability`` is the probability the client is online when sampled.

    >>> Link(up_mbps=1.0, down_mbps=10.0, latency_s=0.05).compute_factor
    1.0
    """

    up_mbps: float
    down_mbps: float
    latency_s: float
    compute_factor: float = 1.0
    availability: float = 1.0
    kind: str = ""  # the preset it was drawn from ("wifi", "nbiot", ...): groups per-client metrics

    def __post_init__(self) -> None:
        for name in ("up_mbps", "down_mbps", "compute_factor"):
            v = getattr(self, name)
            if not v > 0:  # also rejects NaN
                raise ValueError(f"Link.{name} must be > 0, got {v!r}")
        if not (self.latency_s >= 0 and math.isfinite(self.latency_s)):
            raise ValueError(f"Link.latency_s must be finite and >= 0, got {self.latency_s!r}")
        if not 0.0 <= self.availability <= 1.0:
            raise ValueError(f"Link.availability must be in [0, 1], got {self.availability!r}")


@dataclass(frozen=True)
class Preset:
    """A named network setting: a median :class:`Link`, or a mix of other presets.

    >>> PRESETS["4g"].median.latency_s
    0.05
    >>> dict(PRESETS["mixed"].mix)["nbiot"]
    0.1
    """

    name: str
    median: Link | None = None
    mix: tuple[tuple[str, float], ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        if (self.median is None) == (not self.mix):
            raise ValueError(f"preset {self.name!r}: give exactly one of median or mix")


_INF = math.inf

PRESETS: dict[str, Preset] = {
    "wifi": Preset(
        "wifi", Link(20.0, 60.0, 0.020, 1.0, 0.8, "wifi"), source="Ookla Speedtest Global Index"
    ),
    "4g": Preset("4g", Link(6.0, 20.0, 0.050, 0.7, 0.5, "4g"), source="Opensignal; Ookla"),
    "3g": Preset("3g", Link(0.8, 3.0, 0.120, 0.3, 0.4, "3g"), source="Opensignal"),
    "nbiot": Preset(
        "nbiot",
        Link(0.02, 0.02, 2.0, 0.02, 0.3, "nbiot"),
        source="3GPP TR 45.820, TS 36.306; Martinez et al. 2019",
    ),
    "mixed": Preset(
        "mixed",
        mix=(("wifi", 0.3), ("4g", 0.4), ("3g", 0.2), ("nbiot", 0.1)),
        source="mix of the presets above",
    ),
    "ideal": Preset("ideal", Link(_INF, _INF, 0.0, 1.0, 1.0, "ideal"), source="no network cost"),
}
_ALIASES = {"none": "ideal"}


def _lookup(preset: str) -> Preset:
    key = _ALIASES.get(preset, preset)
    if key not in PRESETS:
        known = ", ".join([*PRESETS, *_ALIASES])
        raise ValueError(f"unknown network preset {preset!r}; known presets: {known}")
    return PRESETS[key]


def _jitter(median: Link, z: np.ndarray, spread: float) -> Link:
    bw, lat, cpu, av = z
    if median.availability in (0.0, 1.0):
        avail = median.availability
    else:
        # Perturb in logit space so availability stays a probability.
        logit = math.log(median.availability / (1 - median.availability)) + spread * av
        avail = 1.0 / (1.0 + math.exp(-logit))
    # Up and down share one draw: a client with a poor connection is poor in both directions.
    scale_bw = math.exp(spread * bw)
    return Link(
        up_mbps=median.up_mbps * scale_bw,
        down_mbps=median.down_mbps * scale_bw,
        latency_s=median.latency_s * math.exp(spread * lat),
        compute_factor=median.compute_factor * math.exp(spread * cpu),
        availability=avail,
        kind=median.kind,
    )


def _mix_counts(mix: tuple[tuple[str, float], ...], n: int) -> list[int]:
    # Largest-remainder rounding: the population matches the mix as closely as n allows.
    w = np.array([f for _, f in mix], dtype=np.float64)
    raw = w / w.sum() * n
    counts = np.floor(raw).astype(np.int64)
    short = n - int(counts.sum())
    counts[np.argsort(-(raw - counts), kind="stable")[:short]] += 1
    return counts.tolist()


def make_links(preset: str, n_clients: int, seed: int = 0, spread: float = 0.5) -> list[Link]:
    """One :class:`Link` per client, log-normal around the preset medians (sigma = ``spread``).

    Bandwidth, latency and compute factor get multiplicative log-normal noise whose median is the
    preset's; availability is perturbed in logit space. ``spread=0`` gives identical clients.
    ``"mixed"`` assigns technologies in the preset's proportions, shuffled by ``seed``.
    ``"ideal"``/``"none"`` gives infinite bandwidth and zero latency for everyone.

    >>> links = make_links("4g", 3, seed=0)
    >>> len(links), links == make_links("4g", 3, seed=0)
    (3, True)
    >>> make_links("4g", 2, spread=0.0)[0] == PRESETS["4g"].median
    True
    >>> make_links("5g", 2)
    Traceback (most recent call last):
    ...
    ValueError: unknown network preset '5g'; known presets: wifi, 4g, 3g, nbiot, mixed, ideal, none
    """
    p = _lookup(preset)
    if isinstance(n_clients, bool) or not isinstance(n_clients, (int, np.integer)) or n_clients < 0:
        raise ValueError(f"n_clients must be a non-negative integer, got {n_clients!r}")
    if not (spread >= 0 and math.isfinite(spread)):
        raise ValueError(f"spread must be finite and >= 0, got {spread!r}")
    rng = np.random.default_rng(seed)
    if p.mix:
        kinds = [
            _lookup(name).median
            for (name, _), c in zip(p.mix, _mix_counts(p.mix, n_clients), strict=True)
            for _ in range(c)
        ]
        medians = [kinds[i] for i in rng.permutation(n_clients)]
    else:
        medians = [p.median] * n_clients
    z = rng.standard_normal((n_clients, 4))
    if p.name == "ideal" or spread == 0:
        # Ideal: no network to jitter, compute stays at the reference speed. spread=0: return the
        # medians themselves, since the logit round trip of availability is not exact in floats.
        return list(medians)
    return [_jitter(m, z[i], spread) for i, m in enumerate(medians)]


def jittered(link: Link, sigma: float, *key: int) -> Link:
    """``link`` for one participation, its up/down bandwidths scaled by log-normal factors
    (σ = ``sigma``) drawn from ``key`` (seed, round or version, client, ...), so a run replays the
    same fluctuations; ``sigma=0`` returns the link itself.

    >>> ln = Link(up_mbps=10.0, down_mbps=20.0, latency_s=0.05)
    >>> jittered(ln, 0.0, 1, 2) is ln, jittered(ln, 0.5, 1, 2) == jittered(ln, 0.5, 1, 2)
    (True, True)
    """
    if not sigma:
        return link
    f = np.random.default_rng([*key, 17]).lognormal(0.0, sigma, 2)
    return replace(link, up_mbps=link.up_mbps * f[0], down_mbps=link.down_mbps * f[1])


def transfer_seconds(nbytes: int, mbps: float, latency_s: float) -> float:
    """Seconds to move ``nbytes`` over a link: ``latency + 8·nbytes / (mbps·10⁶)``.

    >>> transfer_seconds(1_000_000, mbps=8.0, latency_s=0.05)
    1.05
    >>> transfer_seconds(123, mbps=float("inf"), latency_s=0.0)
    0.0
    """
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes!r}")
    if not mbps > 0:
        raise ValueError(f"mbps must be > 0, got {mbps!r}")
    return float(latency_s) + 8.0 * nbytes / (mbps * 1e6)


def compute_seconds(
    n_samples: int, epochs: int, link: Link, seconds_per_sample: float = 2e-4
) -> float:
    """Local training time: ``n_samples·epochs·seconds_per_sample / compute_factor``.

    ``seconds_per_sample`` is the reference device's cost of one sample-epoch.

    >>> compute_seconds(1000, 2, Link(1.0, 1.0, 0.0, compute_factor=0.5))
    0.8
    """
    if n_samples < 0 or epochs < 0:
        raise ValueError(f"n_samples and epochs must be >= 0, got {n_samples!r}, {epochs!r}")
    return n_samples * epochs * seconds_per_sample / link.compute_factor


@dataclass
class Participant:
    """One client's part in a round: its link, the bytes it moves, its compute time."""

    client: int
    link: Link
    down_bytes: int
    up_bytes: int
    compute_s: float

    def finish_s(self) -> float:
        """Seconds from round start until this client's update has arrived.

        >>> Participant(0, Link(8.0, 8.0, 0.1), 1_000_000, 1_000_000, 2.0).finish_s()
        4.2
        """
        ln = self.link
        down = transfer_seconds(self.down_bytes, ln.down_mbps, ln.latency_s)
        up = transfer_seconds(self.up_bytes, ln.up_mbps, ln.latency_s)
        return down + self.compute_s + up


@dataclass
class RoundTiming:
    """When a round ended, who made it and when each participant finished."""

    seconds: float
    kept: list[int]
    dropped: list[int]
    finish_s: dict[int, float]


def round_clock(
    participants: list[Participant],
    deadline_s: float | None = None,
    *,
    wait_full_deadline: bool = True,
) -> RoundTiming:
    """Time one synchronous round; clients finishing after ``deadline_s`` are dropped.

    A server learns that a client missed the deadline only when the deadline passes, so a round
    with a dropped straggler lasts the whole deadline (``wait_full_deadline=True``, the default
    of :class:`~fedpress.sim.runner.Simulation`); otherwise it lasts until the slowest client's
    update has arrived. ``wait_full_deadline=False`` is an idealised server that knows in advance
    who will miss and closes at the slowest *kept* client: a lower bound on round time, which
    makes dropping stragglers look free. If nobody is kept, the round lasts the deadline. No
    deadline keeps everyone.

    >>> fast = Participant(0, Link(8.0, 8.0, 0.0), 1_000_000, 1_000_000, 1.0)   # 3 s
    >>> slow = Participant(1, Link(0.8, 0.8, 0.0), 1_000_000, 1_000_000, 1.0)  # 21 s
    >>> t = round_clock([fast, slow], deadline_s=10.0)
    >>> t.seconds, t.kept, t.dropped
    (10.0, [0], [1])
    >>> round_clock([fast, slow], deadline_s=10.0, wait_full_deadline=False).seconds
    3.0
    >>> round_clock([fast, slow]).seconds
    21.0
    """
    if deadline_s is not None and not deadline_s >= 0:
        raise ValueError(f"deadline_s must be >= 0 or None, got {deadline_s!r}")
    finish = {p.client: p.finish_s() for p in participants}
    if len(finish) != len(participants):
        raise ValueError("round_clock: participants must have distinct client ids")
    if deadline_s is None:
        kept, dropped = list(finish), []
    else:
        kept = [c for c, t in finish.items() if t <= deadline_s]
        dropped = [c for c, t in finish.items() if t > deadline_s]
    if kept:
        seconds = max(finish[c] for c in kept)
        if dropped and wait_full_deadline:
            seconds = float(deadline_s)
    else:
        seconds = float(deadline_s) if deadline_s is not None else 0.0
    return RoundTiming(seconds=seconds, kept=kept, dropped=dropped, finish_s=finish)


def sample_available(links: list[Link], candidates: np.ndarray, rng) -> np.ndarray:
    """The candidates that are online this round: each is kept with its link's availability.

    ``rng`` is a ``numpy.random.Generator`` (or a seed for one). Order is preserved.

    >>> links = [Link(1, 1, 0, availability=1.0), Link(1, 1, 0, availability=0.0)] * 2
    >>> sample_available(links, np.array([0, 1, 2, 3]), np.random.default_rng(0)).tolist()
    [0, 2]
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    cand = np.asarray(candidates, dtype=np.int64).ravel()
    avail = np.array([links[int(c)].availability for c in cand], dtype=np.float64)
    # One uniform draw per candidate even when availability is 0 or 1, so the generator's stream
    # (and every later draw) does not depend on the availability values.
    return cand[rng.random(cand.size) < avail]
