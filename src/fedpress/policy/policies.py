"""Policies: before each round, choose each sampled client's uplink codec.

A policy sees only what a server knows: each client's *estimated* links and compute speed
(:class:`~fedpress.policy.estimator.LinkEstimator`), the bytes it will download, the round deadline,
the remaining byte budget, the round number and the recent training signal. It picks from a
*ladder* of codecs ordered from least to most aggressive, whose upload sizes the server measures by
really encoding a probe update with each (no formula). All lossy rungs use ``ef`` so a client's
error-feedback residual carries over exactly when its codec changes between rounds.

>>> p = Deadline(10, safety=1.0, ladder=["none", "ef+q:bits=8", "ef+topk:ratio=0.01+q:bits=8"])
>>> slow = ClientView(client=0, up_mbps=0.1, down_mbps=1.0, up_latency_s=0.1, down_latency_s=0.1,
...                   compute_s=1.0, down_bytes=10_000)
>>> fast = ClientView(client=1, up_mbps=10.0, down_mbps=10.0, up_latency_s=0.05, down_latency_s=0.05,
...                   compute_s=1.0, down_bytes=10_000)
>>> info = RoundInfo(round=0, rounds=10, deadline=None, budget_left=None,
...                  ladder_bytes={"none": 400_000, "ef+q:bits=8": 100_000, "ef+topk:ratio=0.01+q:bits=8": 2_000})
>>> p.assign(info, [slow, fast])    # slow: none 33.2 s, q8 9.3 s, top-k 1.5 s; fast: none 1.4 s
{0: 'ef+topk:ratio=0.01+q:bits=8', 1: 'none'}
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEFAULT_LADDER = (
    "none",
    "fp16",
    "ef+q:bits=8",
    "ef+q:bits=4",
    "ef+topk:ratio=0.1+q:bits=8",
    "ef+topk:ratio=0.03+q:bits=8",
    "ef+topk:ratio=0.01+q:bits=8",
    "ef+topk:ratio=0.003+q:bits=8",
)


#: Ways to send the whole model to a client that lacks it, least lossy first ("none": exact).
DEFAULT_SYNC = ("none", "fp16", "q:bits=8")


@dataclass(frozen=True)
class ClientView:
    """What the server believes about one sampled client this round."""

    client: int
    up_mbps: float
    down_mbps: float
    up_latency_s: float
    down_latency_s: float
    compute_s: float
    down_bytes: int
    known: bool = True  # the server has observed this client's transfers before
    #: A client that must download the whole model: the size of each way to send it, from "none"
    #: (exact float32, what ``down_bytes`` already is) to lossy ones; None when deltas suffice.
    sync_bytes: dict[str, int] | None = None

    def predict(self, up_bytes: int, down_bytes: int | None = None) -> float:
        """Predicted download + compute + upload seconds for an upload of ``up_bytes`` (and a
        download of ``down_bytes``, by default this round's ``down_bytes``)."""
        down = self.down_bytes if down_bytes is None else down_bytes
        return (self.down_latency_s + 8 * down / (self.down_mbps * 1e6) + self.compute_s
                + self.up_latency_s + 8 * up_bytes / (self.up_mbps * 1e6))


@dataclass
class RoundInfo:
    round: int
    rounds: int
    deadline: float | None
    budget_left: float | None
    ladder_bytes: dict[str, int]
    history: list[dict] = field(default_factory=list)


class Policy:
    """Base class: ``assign`` maps each sampled client to a codec spec (None: not this round).

    ``assign_sync`` also says how clients that must download the whole model receive it (a spec
    from ``ClientView.sync_bytes``; absent means exact float32); by default always exactly.
    """

    name = "fixed"
    spec: str | None = None  # set by make_policy
    ladder: tuple[str, ...] = DEFAULT_LADDER
    sync_ladder: tuple[str, ...] = ()

    def assign(self, info: RoundInfo, clients: list[ClientView]) -> dict[int, str]:  # pragma: no cover
        raise NotImplementedError

    def assign_sync(self, info: RoundInfo, clients: list[ClientView]) -> tuple[dict, dict[int, str]]:
        return self.assign(info, clients), {}


class Deadline(Policy):
    """Each client gets the least aggressive rung that keeps it inside the round's *effective*
    deadline. A known client that cannot make ``seconds`` even with the most aggressive rung sits
    the round out (``skip=1``, the default; deadline-aware selection as in FedCS, Nishio & Yonetani
    2019): under a clock where a missing update makes the server wait out the deadline, a certain
    straggler costs the whole deadline and contributes nothing. ``skip=0`` sends it the most
    aggressive rung anyway.

    The effective deadline is not ``seconds`` itself: a synchronous round lasts as long as its
    slowest client, and that client's time with the most aggressive rung, T, is unavoidable.
    Giving everyone else codecs that fill the whole deadline would stretch every round to it, so
    the effective deadline is min(seconds·safety, T·(1 + slack)): fast clients send at full fidelity
    as long as they finish by the time the slow ones must anyway.

    Clients never seen (``unknown="hard"``, the default) get the most aggressive rung and do not
    set T: their link is the estimator's guess, a wrong guess costs a straggler, and compressing
    one update hard costs little. ``unknown="prior"`` trusts the estimator's prior instead.

    A client that must download the whole model (first time sampled, or too far behind for the
    missed broadcasts) may receive it lossily (``fp16`` or ``q:bits=8`` of the weights) when the
    exact float32 model would not arrive in time (``sync=1``, the default; ``sync=0``: always
    exact): it trains from that copy, its update is taken relative to it, and it downloads the
    whole model again next time. On slow links that download, not the upload, is most of a round.

    ``cut=C`` (off by default) also sits out a known client predicted more than C× slower than the
    next slowest, at most ``drop`` (0.2) of the round: it alone would set the round's length.
    That trades its data for time, so it can bias the model against slow clients' data.
    """

    name = "deadline"

    def __init__(self, seconds: float, safety: float = 0.9, slack: float = 0.25, skip: float = 1.0,
                 unknown: str = "hard", cut: float = float("inf"), drop: float = 0.2,
                 sync: float = 1.0, ladder=DEFAULT_LADDER, sync_ladder=DEFAULT_SYNC):
        if not seconds > 0:
            raise ValueError(f"deadline policy: seconds must be > 0, got {seconds}")
        if unknown not in ("hard", "prior"):
            raise ValueError(f"deadline policy: unknown must be 'hard' or 'prior', got {unknown!r}")
        if not cut > 1 or not 0 <= drop < 1:
            raise ValueError(f"deadline policy: need cut > 1 and 0 <= drop < 1, got {cut}, {drop}")
        self.seconds, self.safety, self.slack = float(seconds), float(safety), float(slack)
        self.skip = bool(skip)
        self.unknown = unknown
        self.cut, self.drop = float(cut), float(drop)
        self.ladder = tuple(ladder)
        self.sync_ladder = tuple(sync_ladder) if sync else ()

    def assign(self, info, clients):
        return self.assign_sync(info, clients)[0]

    def _syncs(self, v: ClientView) -> list[tuple[str, int]]:
        """(spec, bytes) ways this client can receive the model, least lossy first."""
        if not self.sync_ladder or not v.sync_bytes:
            return [("none", v.down_bytes)]
        return [(s, v.sync_bytes[s]) for s in self.sync_ladder if s in v.sync_bytes]

    def assign_sync(self, info, clients):
        limit = self.seconds * self.safety
        hardest = info.ladder_bytes[self.ladder[-1]]
        syncs = {v.client: self._syncs(v) for v in clients}
        # The fastest a client can be: hardest uplink rung, smallest way to get the model.
        floor = [min(v.predict(hardest, b) for _, b in syncs[v.client]) for v in clients]
        # With unknown="hard" a client never seen sends with the most aggressive rung and does not
        # set the round's pace: its link is a guess, and a wrong guess costs a straggler (the
        # whole deadline) while over-compressing one update costs little.
        guess = self.unknown == "prior"
        pace = sorted((t, v.client) for v, t in zip(clients, floor, strict=True)
                      if t <= limit and (v.known or guess))
        out: dict[int, str | None] = {}
        # A known client predicted `cut`x slower than everyone else even at its hardest rung would
        # set the whole round's length alone: it sits out (at most `drop` of the round).
        budget = int(self.drop * len(clients))
        while budget > 0 and len(pace) >= 2 and pace[-1][0] > self.cut * pace[-2][0]:
            out[pace.pop()[1]] = None
            budget -= 1
        eff = min(limit, pace[-1][0] * (1 + self.slack)) if pace else limit
        sync_out: dict[int, str] = {}
        for v, t_min in zip(clients, floor, strict=True):
            if v.client in out:
                continue
            if self.skip and v.known and t_min > limit:
                out[v.client] = None
                continue
            options = syncs[v.client]
            down = min(options, key=lambda o: o[1])  # unknown or hopeless: the smallest
            pick = self.ladder[-1]
            if v.known or guess:
                # The model the client starts from first (least lossy sync that still lets the
                # hardest rung finish in time), then the mildest uplink rung on top of it.
                down = next((o for o in options if v.predict(hardest, o[1]) <= eff), down)
                pick = next((sp for sp in self.ladder
                             if v.predict(info.ladder_bytes[sp], down[1]) <= eff), pick)
            out[v.client] = pick
            if down[0] != "none":
                sync_out[v.client] = down[0]
        return out, sync_out


class Budget(Policy):
    """Spend a total uplink budget of ``bytes`` evenly over the remaining rounds: each client gets
    the least aggressive rung whose measured size fits its share of this round's allowance."""

    name = "budget"

    def __init__(self, bytes: float, ladder=DEFAULT_LADDER):  # noqa: A002 - the spec's own word
        if not bytes > 0:
            raise ValueError(f"budget policy: bytes must be > 0, got {bytes}")
        self.total, self.ladder = float(bytes), tuple(ladder)

    def assign(self, info, clients):
        left = self.total if info.budget_left is None else info.budget_left
        rounds_left = max(info.rounds - info.round, 1)
        share = max(left, 0.0) / rounds_left / max(len(clients), 1)
        pick = self.ladder[-1]
        for spec in self.ladder:
            if info.ladder_bytes[spec] <= share:
                pick = spec
                break
        return {v.client: pick for v in clients}


class Accordion(Policy):
    """Compress gently in critical learning phases, hard otherwise (Accordion: Agarwal et al. 2021,
    "Adaptive Gradient Communication via Critical Learning Regime Identification", MLSys; and the
    critical learning periods of FL, Yan et al. 2022, AAAI). A round is *critical* when the norm of
    the aggregated update changed by more than ``eta`` (relative) over the last ``interval``
    rounds, and during the first ``warmup`` rounds."""

    name = "accordion"

    def __init__(self, mild: str = "ef+q:bits=8", aggressive: str = "ef+topk:ratio=0.01+q:bits=8",
                 eta: float = 0.3, interval: int = 2, warmup: int = 3):
        self.mild, self.aggressive = mild, aggressive
        self.eta, self.interval, self.warmup = float(eta), int(interval), int(warmup)
        self.ladder = (mild, aggressive)

    def critical(self, history: list[dict]) -> bool:
        norms = [h.get("update_norm") for h in history]
        if len(norms) < max(self.warmup, self.interval + 1):
            return True
        a, b = norms[-1 - self.interval], norms[-1]
        if not a or b is None or not np.isfinite(a) or not np.isfinite(b):
            return True
        return abs(b - a) / a >= self.eta

    def assign(self, info, clients):
        spec = self.mild if self.critical(info.history) else self.aggressive
        return {v.client: spec for v in clients}


_WORDS = ("unknown",)  # parameters whose values are words, not numbers


def make_policy(spec: str | Policy | None) -> Policy | None:
    """``fixed`` (None), ``deadline:seconds=S[,safety=F,slack=F,skip=0|1,unknown=hard|prior,cut=C,
    drop=F,sync=0|1]``, ``budget:bytes=B`` or ``accordion[:eta=E,interval=I,warmup=W]``; anything else is
    one clear ValueError.

    >>> make_policy("deadline:seconds=10,unknown=prior").unknown
    'prior'
    >>> make_policy("fixed") is None
    True
    """
    if spec is None or isinstance(spec, Policy):
        return spec
    name, _, args = spec.strip().partition(":")
    kw: dict[str, float | str] = {}
    for item in filter(None, (a.strip() for a in args.split(","))):
        k, eq, v = item.partition("=")
        if not eq:
            raise ValueError(f"bad policy {spec!r}: expected key=value, got {item!r}")
        k = k.strip()
        if k in _WORDS:
            kw[k] = v.strip()
            continue
        try:
            kw[k] = float(v)
        except ValueError:
            raise ValueError(f"bad policy {spec!r}: {k} must be a number, got {v!r}") from None
    classes = {"deadline": Deadline, "budget": Budget, "accordion": Accordion}
    if name == "fixed":
        if kw:
            raise ValueError(f"bad policy {spec!r}: fixed takes no parameters")
        return None
    if name not in classes:
        raise ValueError(f"bad policy {spec!r}: unknown policy {name!r} (fixed, deadline, budget, accordion)")
    try:
        if name == "accordion":
            for k in ("interval", "warmup"):
                if k in kw:
                    kw[k] = int(kw[k])
        pol = classes[name](**kw)
    except TypeError as e:
        raise ValueError(f"bad policy {spec!r}: {e}") from None
    pol.spec = spec.strip()  # the summary records exactly what was asked for
    return pol
