"""Asynchronous buffered aggregation (FedBuff; Nguyen et al., AISTATS 2022) on the simulated clock:
:class:`AsyncSimulation`.

The synchronous runner (:class:`~fedpress.sim.runner.Simulation`) waits, every round, for its
slowest sampled client (or for a deadline that throws that client's work away). Production systems
(Meta's Papaya) do not: the server keeps ``concurrency`` clients training at all times, each from
the model version that was current when it started, and applies the uploads as they arrive:

1. **Start.** An idle client is picked (seeded; a client is picked in proportion to its link's
   availability, uniformly when they are equal), downloads the current model G_v — a real blob,
   ``compress(G, "none")`` or, with ``down_codec``, a lossy copy it trains from — trains, and
   compresses its delta with *its own* codec state (error feedback persists across its
   participations, as in the synchronous runner).
2. **Clock.** Its update arrives ``download + compute + upload`` seconds later on its link
   (:mod:`~fedpress.sim.network`: the same link model, the upload sized by ``len(blob)``). Arrivals
   are processed in simulated-time order from a heap of ``(finish time, client)``.
3. **Buffer.** An arrival's staleness is ``s = v_now − v_start``. Every ``buffer`` (K) arrivals the
   server decodes the K blobs and steps G with ``Σ nᵢ·w(sᵢ)·Δᵢ / Σ nᵢ`` (nᵢ: the client's samples,
   as the synchronous mean weights; w: the staleness weight, 1/√(1+s) by default) through the
   server strategy (FedAvg, FedAdam, ...); the version moves on and the model is evaluated. The
   weight multiplies the update rather than renormalising the mean, as in FedBuff: a buffer of
   equally stale updates moves G less than a fresh one.
4. **Refill.** Each client that finished starts a replacement from the (possibly new) model.

A client's work is a pure function of the model it starts from and seeds derived from
(seed, start version, client), so it is done when the client starts: its arrival time needs the
length of its blob anyway, and the server then keeps no model snapshot per in-flight version —
only each in-flight client's blob. The same seed gives the same history. With ``buffer =
concurrency =`` the number of clients on identical zero-latency links, every client starts and
arrives together and the run is, row for row, the synchronous FedAvg run with ``per_round`` = all.

A client that crashes in training is dropped with a warning when it would have finished training
and replaced; it never takes the run down.

``checkpoint_every=N`` saves the whole run state (G, the strategy and codec states, the in-flight
clients with their blobs, the clock, the counters, the history) to ``out_dir/checkpoint.pt`` after
every N-th server step; ``run(resume=DIR)`` continues from it exactly where the step left off (the
arrivals of that instant not yet taken in included), so a resumed run equals an uninterrupted one.
No random draw comes from a running generator: every one is seeded by (seed, counters in the state).
"""

from __future__ import annotations

import heapq
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedpress.codecs import Codec, compress, decompress
from fedpress.fl.aggregators import auto_aggregator, make_aggregator
from fedpress.fl.client import TrainConfig
from fedpress.fl.strategies import make_strategy
from fedpress.sim import network as netmod
from fedpress.sim import round_steps as steps
from fedpress.sim.backends import ClientJob, make_backend
from fedpress.sim.results import (
    base_summary,
    finish_summary,
    load_checkpoint,
    save_checkpoint,
    write_results,
)
from fedpress.sim.runner import SimResult, _metric_fn, as_tensors, derive_seed
from fedpress.wire import Structure

log = logging.getLogger("fedpress")

STALENESS = ("none", "sqrt", "poly:a=A", "hinge:a=A,b=B")


def staleness_weight(spec: str | Callable[[int], float]) -> tuple[str, Callable[[int], float]]:
    """``(name, w)``: the weight w(s) of an update that is s server versions stale.

    ``none`` (w = 1), ``sqrt`` (1/√(1+s), FedBuff's choice), ``poly:a=A`` ((1+s)^−A) and
    ``hinge:a=A,b=B`` (1 up to s = B, then 1/(A·(s−B)+1); FedAsync's hinge, default a=10, b=4), or
    any callable. Bad names or parameters are one ValueError.

    >>> name, w = staleness_weight("sqrt")
    >>> w(0), w(3)
    (1.0, 0.5)
    >>> staleness_weight("hinge:a=1,b=2")[1](4)
    0.3333333333333333
    """
    if callable(spec):
        return getattr(spec, "__name__", "custom"), spec
    name, _, args = str(spec).strip().partition(":")
    takes = {"none": {}, "sqrt": {}, "poly": {"a": 0.5}, "hinge": {"a": 10.0, "b": 4.0}}
    if name not in takes:
        raise ValueError(f"bad staleness {spec!r}: expected one of {', '.join(STALENESS)}")
    kw = dict(takes[name])
    for item in filter(None, (a.strip() for a in args.split(","))):
        k, eq, v = item.partition("=")
        if k.strip() not in kw or not eq:
            raise ValueError(f"bad staleness {spec!r}: unexpected {item!r}")
        try:
            kw[k.strip()] = float(v)
        except ValueError:
            raise ValueError(f"bad staleness {spec!r}: {k.strip()} must be a number, got {v!r}") from None
    if any(not (x >= 0 and math.isfinite(x)) for x in kw.values()):
        raise ValueError(f"bad staleness {spec!r}: parameters must be finite and >= 0")
    canon = name + (":" + ",".join(f"{k}={v:g}" for k, v in kw.items()) if kw else "")
    if name == "none":
        return canon, lambda s: 1.0
    if name == "sqrt":
        return canon, lambda s: 1.0 / math.sqrt(1.0 + s)
    if name == "poly":
        return canon, lambda s: (1.0 + s) ** -kw["a"]
    return canon, lambda s: 1.0 if s <= kw["b"] else 1.0 / (kw["a"] * (s - kw["b"]) + 1.0)


@dataclass
class _Flight:
    """One client between its start and its arrival (or its crash)."""

    client: int
    version: int  # the model version it started from
    finish_s: float  # when its upload arrives (a crashed client: when it would have finished training)
    blob: bytes | None  # None: it crashed in training
    spec: str
    weight: float  # its number of samples
    down: int
    up: int
    train_loss: float | None
    error: str | None = None


class AsyncSimulation:
    """FedBuff: ``concurrency`` clients train at once, the server steps every ``buffer`` arrivals.

    Arguments shared with :class:`~fedpress.sim.runner.Simulation` mean the same, except
    ``rounds`` (server steps; or ``updates``: client updates to aggregate, rounded up to whole
    steps) and ``down_codec``: here it encodes the *whole* current model (a stateless lossy copy
    such as ``fp16`` or ``q:bits=8``, which the client trains from), since clients start from any
    version and a broadcast delta would not fit them all. ``staleness``: see
    :func:`staleness_weight`. ``eval_every``: evaluate every N steps (and the last); other rows have
    ``metric`` None. Secure aggregation, DP, codec policies, robust aggregation rules, attacks,
    pruning and deadlines assume synchronous rounds and are not offered. ``checkpoint_every``: save
    the run state to ``out_dir/checkpoint.pt`` every N server steps; ``run(resume=DIR)`` continues
    from it (see :func:`~fedpress.sim.results.save_checkpoint`).

    >>> import torch
    >>> torch.manual_seed(0) and None
    >>> xs = [(torch.randn(40, 5), torch.randint(0, 2, (40,))) for _ in range(6)]
    >>> test = (torch.randn(50, 5), torch.randint(0, 2, (50,)))
    >>> sim = AsyncSimulation(lambda: torch.nn.Linear(5, 2), xs, test, codec="ef+topk:ratio=0.2+q:bits=8",
    ...                       buffer=2, concurrency=4, rounds=3, network="4g", lr=0.1)
    >>> res = sim.run()
    >>> [h["round"] for h in res.history], res.summary["client_updates"]
    ([1, 2, 3], 6)
    >>> res.summary["total_uplink_bytes"] == sum(h["uplink_bytes"] for h in res.history)
    True
    """

    def __init__(
        self,
        model_fn: Callable[[], torch.nn.Module],
        client_datasets: Sequence,
        test_dataset,
        *,
        codec: str = "none",
        down_codec: str | None = None,
        buffer: int = 10,
        concurrency: int | None = None,
        rounds: int | None = None,
        updates: int | None = None,
        staleness: str | Callable[[int], float] = "sqrt",
        local_epochs: int = 1,
        lr: float = 0.05,
        batch_size: int = 32,
        loss_fn: Callable | None = None,
        seed: int = 0,
        strategy: str = "fedavg",
        server_lr: float | None = None,
        server_momentum: float = 0.9,
        prox_mu: float = 0.0,
        optimizer: str = "sgd",
        momentum: float = 0.0,
        l1: float = 0.0,
        l2: float = 0.0,
        network: str | Sequence[netmod.Link] = "none",
        metric: str | Callable = "accuracy",
        per_client_eval: bool = False,
        eval_every: int = 1,
        target: float | None = None,
        scenario: str = "custom",
        out_dir: str | Path | None = None,
        progress: Callable[[dict], None] | None = None,
        extra_summary: dict | None = None,
        threads: int | None = 1,
        jitter: float = 0.0,
        backend: str = "local",
        backend_options: dict | None = None,
        aggregate: str = "auto",
        checkpoint_every: int = 0,
    ):
        if not client_datasets:
            raise ValueError("client_datasets is empty")
        self.clients = [as_tensors(d) for d in client_datasets]
        n = len(self.clients)
        for name, v in (("buffer", buffer), ("concurrency", concurrency), ("rounds", rounds),
                        ("updates", updates), ("eval_every", eval_every)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.buffer = int(buffer)
        if self.buffer > n:
            raise ValueError(f"buffer ({self.buffer}) exceeds the number of clients ({n}): it could never fill")
        # Default M = 2K: enough clients in flight that slow ones do not stall the buffer.
        self.concurrency = int(concurrency) if concurrency is not None else min(n, 2 * self.buffer)
        if self.concurrency < self.buffer:
            raise ValueError(f"concurrency ({self.concurrency}) must be >= buffer ({self.buffer}): the buffer "
                             "could never fill")
        if self.concurrency > n:
            raise ValueError(f"concurrency ({self.concurrency}) exceeds the number of clients ({n})")
        if rounds is not None and updates is not None:
            raise ValueError("give rounds (server steps) or updates (client updates), not both")
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int | np.integer) \
                or checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be a non-negative integer, got {checkpoint_every!r}")
        if checkpoint_every and not out_dir:
            raise ValueError("checkpointing needs out_dir")
        self.checkpoint_every = int(checkpoint_every)
        self.rounds = rounds if rounds is not None else (-(-updates // self.buffer) if updates else 10)
        self.model_fn = model_fn
        self.test = as_tensors(test_dataset)
        self.codec = Codec(codec)
        self.down_codec = Codec(down_codec) if down_codec and down_codec != "none" else None
        if self.down_codec is not None and self.down_codec.stateful:
            raise ValueError(f"down_codec {self.down_codec.spec!r} is stateful; the asynchronous runner sends "
                             "each client the whole model, so it takes a stateless codec (fp16, q:bits=8, ...)")
        self.staleness_name, self.staleness = staleness_weight(staleness)
        self.eval_every = int(eval_every)
        self.train_cfg = TrainConfig(epochs=local_epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                                     momentum=momentum, l1=l1, l2=l2, prox_mu=prox_mu)
        self.loss_fn = loss_fn
        self.seed = int(seed)
        skw: dict[str, Any] = {"momentum": server_momentum}
        if server_lr is not None:
            skw["server_lr"] = server_lr
        self.strategy = make_strategy(strategy, **skw)
        if self.strategy.name == "scaffold":
            raise ValueError("strategy 'scaffold' needs synchronous rounds (its control variates step with "
                             "the round); use fedavg, fedavgm, fedadam or fedyogi with --async-buffer")
        if isinstance(network, str):
            self.network_name = network
            self.links = netmod.make_links(network, n, seed=self.seed)
        else:
            self.network_name, self.links = "custom", list(network)
            if len(self.links) != n:
                raise ValueError(f"{len(self.links)} links for {n} clients")
        self.metric_name, self.metric = _metric_fn(metric)
        self.per_client_eval, self.target, self.scenario = per_client_eval, target, scenario
        self.out_dir = Path(out_dir) if out_dir else None
        self.progress, self.extra_summary, self.threads = progress, extra_summary or {}, threads
        self.jitter = float(jitter)
        if backend not in ("local", "ray"):
            raise ValueError(f"unknown backend {backend!r} (local or ray)")
        self.backend, self.backend_options = backend, backend_options or {}
        if aggregate == "auto":  # as the synchronous runner: biased sparsifiers average over senders
            aggregate, self._aggregator = auto_aggregator([self.codec], private=False)
        elif aggregate not in ("mean", "sparse_mean"):
            raise ValueError(f"aggregate {aggregate!r} is not available asynchronously (mean or sparse_mean): "
                             "robust rules compare the clients of one synchronous round")
        else:
            self._aggregator = make_aggregator(aggregate)
        self.aggregate = aggregate

    # ------------------------------------------------------------------ the run
    def run(self, resume: str | Path | None = None) -> SimResult:
        """Run until ``rounds`` server steps have been taken (continuing from ``resume``'s checkpoint
        when given)."""
        wall0 = time.perf_counter()
        old_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            st = load_checkpoint(resume, mode="async") if resume is not None else self._fresh_state()
            model = (torch.manual_seed(self.seed), self.model_fn())[1]
            self._backend = make_backend(self.backend, self.model_fn, self.clients, **self.backend_options)
            try:
                self._loop(st, model, resumed=resume is not None)
            finally:
                self._backend.close()
            return self._finish(st, time.perf_counter() - wall0)
        finally:
            torch.set_num_threads(old_threads)

    def _fresh_state(self) -> dict:
        torch.manual_seed(self.seed)  # the synchronous runner's initial model, for the same seed
        params = {k: v.detach().clone() for k, v in self.model_fn().state_dict().items()}
        return {
            "mode": "async", "G": params, "version": 0, "strategy": self.strategy.init(params),
            "client_states": {},
            "now": 0.0, "heap": [], "flights": {}, "buffer": [], "dispatched": 0, "starts": {},
            "model_blob": None, "history": [], "cum_up": 0, "cum_down": 0,
            "period": self._period(0.0), "updates": 0, "failed": 0, "failed_since_arrival": set(),
            "timing": {"train_s": 0.0, "encode_s": 0.0, "decode_aggregate_s": 0.0, "eval_s": 0.0, "total_s": 0.0},
        }

    @staticmethod
    def _period(t0: float) -> dict:
        """What happens between two server steps: the bytes moved, the starts and the crashes."""
        return {"t0": t0, "down": 0, "started": 0, "failed": 0}

    def _loop(self, st: dict, model, resumed: bool = False) -> None:
        float_keys = [k for k, v in st["G"].items() if v.is_floating_point()]
        eligible = {c for c, ln in enumerate(self.links) if ln.availability > 0}
        if self.out_dir:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        if not resumed:
            self._refill(st, float_keys)
        while len(st["history"]) < self.rounds:
            if resumed:
                # A checkpoint is taken just after a server step, at the instant st["now"]: the
                # arrivals of that instant still in the heap are taken in before anyone starts.
                t, resumed = st["now"], False
            elif not st["heap"]:
                warnings.warn(f"asynchronous run stopped after {len(st['history'])} server steps: no client "
                              "could be started", stacklevel=3)
                return
            else:
                # Arrivals at the same instant are all taken in (client order) before anyone starts:
                # with identical links, a whole cohort arrives, the server steps, and a cohort starts.
                t = st["heap"][0][0]
            while st["heap"] and st["heap"][0][0] == t and len(st["history"]) < self.rounds:
                _, c = heapq.heappop(st["heap"])
                st["now"] = t
                stepped = len(st["history"])
                self._arrive(st, st["flights"].pop(c), model, float_keys)
                if (self.checkpoint_every and len(st["history"]) > stepped
                        and len(st["history"]) % self.checkpoint_every == 0):
                    save_checkpoint(st, self.out_dir)
            if (eligible and st["failed_since_arrival"] >= eligible
                    and all(f.blob is None for f in st["flights"].values())):
                warnings.warn(f"asynchronous run stopped after {len(st['history'])} server steps: every client "
                              "failed in local training since the last update arrived", stacklevel=3)
                return
            if len(st["history"]) < self.rounds:
                self._refill(st, float_keys)

    # ------------------------------------------------------------------ starts
    def _link(self, c: int, key: tuple[int, ...]) -> netmod.Link:
        """Client c's link for one participation (log-normally jittered with ``jitter``)."""
        return netmod.jittered(self.links[c], self.jitter, self.seed, *key)

    def _pick(self, st: dict, busy: set[int]) -> int | None:
        """An idle client, drawn with probability proportional to its availability (uniform when the
        availabilities are equal), from a generator seeded by the start's index (no running state)."""
        idle = [c for c in range(len(self.clients)) if c not in busy and self.links[c].availability > 0]
        if not idle:
            return None
        w = np.array([self.links[c].availability for c in idle], dtype=np.float64)
        rng = np.random.default_rng([self.seed, st["dispatched"], 13])
        return idle[int(rng.choice(len(idle), p=w / w.sum()))]

    def _download(self, st: dict) -> tuple[bytes | None, int]:
        """What a client starting now downloads: ``(the lossy copy of G_v it trains from, or None for
        the exact model; the bytes)``. Encoded once per version, like a broadcast, and always a real
        blob: ``compress(G, "none")`` or ``compress(G, down_codec)``."""
        v = st["version"]
        if st["model_blob"] is None or st["model_blob"][0] != v:
            if self.down_codec is None:
                st["model_blob"] = (v, None, len(compress(st["G"], "none")))
            else:
                blob = compress(st["G"], self.down_codec.spec, seed=derive_seed(self.seed, v, 1 << 20))
                st["model_blob"] = (v, blob, len(blob))
        return st["model_blob"][1], st["model_blob"][2]

    def _refill(self, st: dict, float_keys: list[str]) -> None:
        """Start clients until ``concurrency`` are in flight. Their work is done now (it depends only
        on G_v and seeds), in one backend call, so a Ray backend runs a cohort in parallel."""
        v, G = st["version"], st["G"]
        start, down = self._download(st)
        jobs, keys = [], []
        busy = set(st["flights"])
        while len(busy) < self.concurrency:
            c = self._pick(st, busy)
            if c is None:
                break
            # Seeds from (seed, version, client) as the synchronous runner's (seed, round, client);
            # a client that starts twice from one version adds how many times it did before.
            j = st["starts"].get((v, c), 0)
            st["starts"][(v, c)] = j + 1
            key = (v, c) if j == 0 else (v, c, 1 << 30 | j)
            jobs.append(ClientJob(client=c, spec=self.codec.spec, state=st["client_states"].get(c),
                                  train_seed=derive_seed(self.seed, *key, 2),
                                  encode_seed=derive_seed(self.seed, *key, 3), start=start))
            keys.append(key)
            busy.add(c)
            st["dispatched"] += 1
        st["starts"] = {k: n for k, n in st["starts"].items() if k[0] == v}
        if not jobs:
            return
        outs = self._backend.map(G, jobs, self.train_cfg, float_keys=float_keys, loss_fn=self.loss_fn)
        tm = st["timing"]
        for job, key, out in zip(jobs, keys, outs, strict=True):
            c = job.client
            n = float(self.clients[c][0].shape[0])
            ln = self._link(c, key)
            comp = netmod.compute_seconds(int(n), self.train_cfg.epochs, ln)
            tm["train_s"] += out["train_s"]
            st["period"]["down"] += down
            st["period"]["started"] += 1
            st["cum_down"] += down
            if "error" in out:
                # The server learns of the crash when the client would have finished training.
                t = st["now"] + netmod.transfer_seconds(down, ln.down_mbps, ln.latency_s) + comp
                f = _Flight(c, v, t, None, job.spec, n, down, 0, None, out["error"])
            else:
                tm["encode_s"] += out["encode_s"]
                st["client_states"][c] = out["state"]
                blob = out["blob"]
                part = netmod.Participant(client=c, link=ln, down_bytes=down, up_bytes=len(blob), compute_s=comp)
                f = _Flight(c, v, st["now"] + part.finish_s(), blob, job.spec, n, down, len(blob), out["loss"])
            st["flights"][c] = f
            heapq.heappush(st["heap"], (f.finish_s, c))

    # ------------------------------------------------------------------ arrivals and steps
    def _arrive(self, st: dict, f: _Flight, model, float_keys: list[str]) -> None:
        if f.blob is None:
            warnings.warn(f"client {f.client} failed in local training ({f.error}); dropped and replaced",
                          stacklevel=4)
            st["period"]["failed"] += 1
            st["failed"] += 1
            st["failed_since_arrival"].add(f.client)
            return
        st["failed_since_arrival"] = set()
        st["buffer"].append((f, st["version"] - f.version))
        if len(st["buffer"]) >= self.buffer:
            r0 = time.perf_counter()
            row = self._server_step(st, model, float_keys)
            st["timing"]["total_s"] += time.perf_counter() - r0
            st["history"].append(row)
            if self.progress:
                self.progress(row)

    def _server_step(self, st: dict, model, float_keys: list[str]) -> dict:
        """Decode the buffered blobs, take their staleness-weighted mean, step G; the metrics row."""
        buf, st["buffer"] = st["buffer"], []
        t0 = time.perf_counter()
        G = st["G"]
        structure = Structure.of({k: G[k] for k in float_keys})
        specs = sorted({f.spec for f, _ in buf})
        proc = self._aggregator.create()
        weights = []
        for f, s in buf:
            update = decompress(f.blob, structures=[structure], specs=specs)
            w = float(self.staleness(s))
            weights.append(w)
            # Scaling the update (not the mean's weight) keeps FedBuff's absolute down-weighting, and
            # keeps sparse_mean's zeros (what a client did not send) zero.
            if w != 1.0:
                update = {k: u * w for k, u in update.items()}
            proc.accept(update, weight=f.weight, client=f.client)
        mean, _ = proc.result()
        if mean is not None:  # None: every buffered client had no samples (weight 0)
            G2, st["strategy"] = self.strategy.apply(G, mean, st["strategy"])
            G.update(G2)
        st["version"] += 1
        st["timing"]["decode_aggregate_s"] += time.perf_counter() - t0
        step = len(st["history"]) + 1
        metric = loss = None
        per_client: dict = {}
        if step % self.eval_every == 0 or step == self.rounds:
            metric, loss, per_client = self._evaluate(st, model)
        up = sum(f.up for f, _ in buf)
        st["cum_up"] += up
        st["updates"] += len(buf)
        per, st["period"] = st["period"], self._period(st["now"])
        stale = [s for _, s in buf]
        client_up: dict[str, int] = {}
        for f, _ in buf:
            client_up[str(f.client)] = client_up.get(str(f.client), 0) + f.up
        row = {
            "round": step, "metric": metric, "loss": loss,
            "update_norm": (float(torch.sqrt(sum((v.double() ** 2).sum() for v in mean.values())))
                            if mean is not None else None),
            "uplink_bytes": up, "downlink_bytes": per["down"],
            "cum_uplink_bytes": st["cum_up"], "cum_downlink_bytes": st["cum_down"],
            "sim_seconds": st["now"], "round_seconds": st["now"] - per["t0"],
            "clients_kept": len(buf), "clients_started": per["started"], "clients_failed": per["failed"],
            "clients_in_flight": len(st["flights"]),
            "staleness_mean": float(np.mean(stale)), "staleness_max": int(max(stale)),
            "staleness_weight_mean": float(np.mean(weights)),
            "train_loss": float(np.mean([f.train_loss for f, _ in buf])),
            "client_uplink_bytes": client_up,
        }
        return {**row, **per_client}

    def _evaluate(self, st: dict, model) -> tuple[float, float, dict]:
        t0 = time.perf_counter()
        out = steps.evaluate(model, st["G"], self.test, self.metric, self.loss_fn,
                             (self.clients, self.links) if self.per_client_eval else None)
        st["timing"]["eval_s"] += time.perf_counter() - t0
        return out

    def _finish(self, st: dict, wall: float) -> SimResult:
        hist = st["history"]
        summary = base_summary(self, st, wall, sim_seconds=hist[-1]["sim_seconds"] if hist else 0.0)
        summary.update({
            "mode": "async", "buffer": self.buffer, "concurrency": self.concurrency,
            "staleness": self.staleness_name, "client_updates": st["updates"], "clients_failed": st["failed"],
            "client_starts": st["dispatched"], "policy": "fixed", "attack": None,
        })
        finish_summary(self, st, summary)
        if self.out_dir:
            write_results(self.out_dir, hist, summary)
        return SimResult(hist, summary, st["G"])

