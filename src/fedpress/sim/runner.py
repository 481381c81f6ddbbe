"""The in-process federated simulator behind ``fedpress run``: :class:`Simulation`.

One round, as the server sees it:

1. **Broadcast.** The server's model G is what it optimises; clients hold B, the model the
   broadcasts let them rebuild. Without a downlink codec B = G and every sampled client downloads
   the full model. With one, the server compresses G − B (with its own error feedback), B moves by
   what was sent, and a client that missed rounds is brought in sync by the missed broadcasts or
   the full model, whichever is smaller (a policy may send a slow client the full model lossily;
   it then trains from that copy and gets the full model again next time).
2. **Local training** from B on each sampled, online client (FedProx, L1/L2, pruning masks).
3. **Uplink.** Each client compresses its delta with *its own* codec state (error-feedback residual,
   PowerSGD factor), which persists across the rounds it sits out. Every byte counted is
   ``len(blob)`` of a blob that was produced and is decoded by the server.
4. **Clock.** Each client's download + compute + upload time on its link; past the deadline it is
   a straggler and dropped. The round lasts until every client has reported, or the whole deadline
   when someone has not (the server cannot know a straggler will miss before the deadline passes);
   ``wait_full_deadline=False`` gives the idealised clock that ends at the slowest kept client.
5. **Aggregation** streams the kept blobs through decode → weighted mean, then the server strategy
   (FedAvg, FedAvgM, FedAdam, FedYogi) steps G.

All randomness derives from (seed, round, client), never from a running generator, so the same seed
gives an identical ``metrics.jsonl`` and a resumed run equals an uninterrupted one.

:meth:`Simulation._round` is these steps in order; their pieces live in :mod:`~fedpress.sim.downlink`
(pruning masks, broadcast, download sizes), :mod:`~fedpress.sim.round_steps` (sampling, the
policy's view, the clock, the metrics row), :mod:`~fedpress.sim.privacy_round` (DP, secure
aggregation) and :mod:`~fedpress.sim.results` (checkpoint, summary, result files).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedpress.codecs import Codec, compress
from fedpress.codecs.combine import cached_codec
from fedpress.fl import scaffold
from fedpress.fl.aggregators import DecodingFactory, auto_aggregator, make_aggregator
from fedpress.fl.client import TrainConfig
from fedpress.fl.pruning import PruneSchedule, sparsity_of
from fedpress.fl.strategies import make_strategy
from fedpress.policy.estimator import LinkEstimator
from fedpress.sim import downlink
from fedpress.sim import network as netmod
from fedpress.sim import round_steps as steps
from fedpress.sim import scaffold_round as sround
from fedpress.sim.backends import ClientJob, make_backend
from fedpress.sim.privacy_round import SecureRound, next_shared_range, privacy_state, settle_privacy
from fedpress.sim.results import load_checkpoint, save_checkpoint, summarize, write_results
from fedpress.wire import Structure

log = logging.getLogger("fedpress")

def derive_seed(*words: int) -> int:
    """A 63-bit seed from integers (SeedSequence mixing: no correlations between neighbours)."""
    a, b = np.random.SeedSequence([int(w) & 0xFFFFFFFFFFFFFFFF for w in words]).generate_state(2)
    return ((int(a) << 32) | int(b)) & ((1 << 63) - 1)


def as_tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) tensors from a tuple, a TensorDataset or any map-style dataset of (x, y) pairs."""
    if isinstance(ds, tuple | list) and len(ds) == 2 and all(torch.is_tensor(t) for t in ds):
        return ds[0], ds[1]
    if isinstance(ds, torch.utils.data.TensorDataset):
        return ds.tensors[0], ds.tensors[1]
    if isinstance(ds, torch.utils.data.Dataset):
        xs, ys = zip(*(ds[i] for i in range(len(ds))), strict=True)
        return torch.stack([torch.as_tensor(x) for x in xs]), torch.as_tensor(ys)
    raise TypeError(f"expected (x, y) tensors or a torch Dataset, got {type(ds).__name__}")


def _metric_fn(metric: str | Callable) -> tuple[str, Callable]:
    if callable(metric):
        return getattr(metric, "__name__", "metric"), metric
    from fedpress.data.metrics import compute_metric

    return metric, lambda probs, y: compute_metric(metric, probs, y)


@dataclass
class SimResult:
    """What :meth:`Simulation.run` returns: per-round ``history`` and the run ``summary``."""

    history: list[dict]
    summary: dict
    params: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)


class Simulation:
    """Federated training of a user's own model on the user's own per-client datasets.

    >>> import torch, fedpress
    >>> torch.manual_seed(0) and None
    >>> xs = [(torch.randn(40, 5), torch.randint(0, 2, (40,))) for _ in range(4)]
    >>> sim = fedpress.Simulation(lambda: torch.nn.Linear(5, 2), xs, (torch.randn(50, 5), torch.randint(0, 2, (50,))),
    ...                           codec="ef+topk:ratio=0.1+q:bits=8", rounds=3, per_round=2, lr=0.1)
    >>> res = sim.run()
    >>> len(res.history), res.summary["total_uplink_bytes"] == sum(h["uplink_bytes"] for h in res.history)
    (3, True)
    """

    def __init__(
        self,
        model_fn: Callable[[], torch.nn.Module],
        client_datasets: Sequence,
        test_dataset,
        *,
        codec: str = "none",
        down_codec: str | None = None,
        rounds: int = 10,
        per_round: int = 10,
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
        prune: PruneSchedule | dict | None = None,
        network: str | Sequence[netmod.Link] = "none",
        deadline: float | None = None,
        metric: str | Callable = "accuracy",
        per_client_eval: bool = False,
        target: float | None = None,
        scenario: str = "custom",
        checkpoint_every: int = 0,
        out_dir: str | Path | None = None,
        progress: Callable[[dict], None] | None = None,
        extra_summary: dict | None = None,
        threads: int | None = 1,
        policy=None,
        jitter: float = 0.0,
        probe_every: int = 5,
        backend: str = "local",
        backend_options: dict | None = None,
        dp_clip: float | None = None,
        dp_noise: float | None = None,
        dp_delta: float = 1e-5,
        dp_adaptive: bool = False,
        target_epsilon: float | None = None,
        secagg: bool = False,
        secagg_threshold: int | None = None,
        secagg_neighbors: int | None = None,
        dropout: float = 0.0,
        aggregate: str = "auto",
        wait_full_deadline: bool = True,
        sampling: str | None = None,
        attack: str | None = None,
        dp_mode: str = "central",
        scaffold_controls: str = "derived",
    ):
        if not client_datasets:
            raise ValueError("client_datasets is empty")
        if rounds < 1 or per_round < 1:
            raise ValueError(f"rounds and per_round must be >= 1 (got {rounds}, {per_round})")
        self.model_fn = model_fn
        self.clients = [as_tensors(d) for d in client_datasets]
        self.test = as_tensors(test_dataset)
        self.codec = Codec(codec)
        self.down_codec = Codec(down_codec) if down_codec and down_codec != "none" else None
        self.rounds = rounds
        self.per_round = min(per_round, len(self.clients))
        self.train_cfg = TrainConfig(epochs=local_epochs, batch_size=batch_size, lr=lr,
                                     optimizer=optimizer, momentum=momentum, l1=l1, l2=l2,
                                     prox_mu=prox_mu)
        self.loss_fn = loss_fn
        self.seed = int(seed)
        skw: dict[str, Any] = {"momentum": server_momentum}
        if server_lr is not None:
            skw["server_lr"] = server_lr
        if strategy == "fedprox" and prox_mu == 0:
            warnings.warn("fedprox with prox_mu=0 is FedAvg", stacklevel=2)
        self.strategy = make_strategy(strategy, **skw)
        if isinstance(prune, dict):
            prune = PruneSchedule(**prune)
        self.prune = prune
        if isinstance(network, str):
            self.network_name = network
            self.links = netmod.make_links(network, len(self.clients), seed=self.seed)
        else:
            self.network_name = "custom"
            self.links = list(network)
            if len(self.links) != len(self.clients):
                raise ValueError(f"{len(self.links)} links for {len(self.clients)} clients")
        self.deadline = deadline
        self.metric_name, self.metric = _metric_fn(metric)
        self.per_client_eval = per_client_eval
        self.target = target
        self.scenario = scenario
        self.checkpoint_every = checkpoint_every
        self.out_dir = Path(out_dir) if out_dir else None
        self.progress = progress
        self.extra_summary = extra_summary or {}
        # Small per-client models train far faster on one intra-op thread (measured here: 5 ms vs
        # 61 ms per client on 2 busy cores); parallelism belongs across clients, not inside a step.
        self.threads = threads
        from fedpress.policy import make_policy

        self.policy = make_policy(policy)
        from fedpress.fl.attacks import make_attack

        self.attack = make_attack(attack)
        self.attackers = self.attack.attackers(len(self.clients), self.seed) if self.attack else frozenset()
        self.jitter = float(jitter)
        self.probe_every = max(int(probe_every), 1)
        if backend not in ("local", "ray"):
            raise ValueError(f"unknown backend {backend!r} (local or ray)")
        self.backend = backend
        self.backend_options = backend_options or {}
        if aggregate == "auto":
            # Biased sparsifiers (top-k, threshold) send few coordinates per client: average each
            # coordinate of the tensors they take over its senders. Anything private: a plain mean.
            specs = [self.codec.spec, *(getattr(self.policy, "ladder", ()) if self.policy else ())]
            aggregate, self._aggregator = auto_aggregator(map(cached_codec, specs),
                                                          private=dp_clip is not None or secagg)
        else:
            # Parsed once (one clear ValueError for a bad name, before any work); a stateless
            # factory that makes each round's process.
            self._aggregator = make_aggregator(aggregate)
        self.aggregate = aggregate
        # True (default): a server cannot tell a straggler will miss until the deadline passes, so a
        # round with a straggler lasts the whole deadline. False: the round ends when its slowest
        # kept client is done, as if the server knew in advance who will miss (a lower bound).
        self.wait_full_deadline = bool(wait_full_deadline)
        self._sampling_arg = sampling
        pv = settle_privacy(clients=len(self.clients), per_round=self.per_round, rounds=rounds,
                            codec_spec=self.codec.spec, policy=self.policy, aggregate=aggregate,
                            sampling=sampling, clip=dp_clip, noise=dp_noise, delta=dp_delta,
                            adaptive=dp_adaptive, target_eps=target_epsilon, secagg=secagg,
                            threshold=secagg_threshold, neighbors=secagg_neighbors, dropout=dropout,
                            dp_mode=dp_mode)
        self.dropout, self.sampling, self.sample_rate = pv.dropout, pv.sampling, pv.sample_rate
        self.dp_clip, self.dp_noise, self.dp_delta = pv.dp_clip, pv.dp_noise, pv.dp_delta
        self.dp_adaptive, self.target_epsilon, self._acct_kw = pv.dp_adaptive, pv.target_epsilon, pv.acct_kw
        self.secagg, self._sa_codec = pv.secagg, pv.sa_codec  # _sa_codec: the shared-range codec
        self.secagg_threshold, self.secagg_neighbors = pv.secagg_threshold, pv.secagg_neighbors
        self.dp_mode = pv.dp_mode
        self._assigned: dict[int, str] = {}
        self.scaffold = strategy == "scaffold"
        self.scaffold_controls = scaffold_controls
        sround.check(self)

    # ------------------------------------------------------------------ helpers
    def codec_for(self, client: int, rnd: int) -> Codec:
        """The uplink codec of ``client`` in round ``rnd``: the fixed codec, or the policy's pick."""
        spec = self._assigned.get(client)
        if spec is None:
            return self.codec
        return cached_codec(spec)

    def _jittered(self, client: int, rnd: int) -> netmod.Link:
        return netmod.jittered(self.links[client], self.jitter, self.seed, rnd, client)

    def _assign(self, st, t, online, downs, float_keys, masks_np, whole, sync_sizes,
                full_len) -> tuple[dict, dict]:
        """The policy's codec (and lossy sync) for each online client, from what the server knows."""
        from fedpress.policy import RoundInfo

        ladder = tuple(self.policy.ladder)
        if t % self.probe_every == 0 or set(ladder) - set(st["ladder_bytes"]):
            # Measured on the last aggregated delta; before any, on a small random update.
            probe = st.get("last_delta")
            if probe is None:
                g = torch.Generator().manual_seed(derive_seed(self.seed, 99) & 0x7FFFFFFF)
                probe = {k: torch.randn(st["G"][k].shape, generator=g) * 1e-2 for k in float_keys}
            st["ladder_bytes"] = steps.ladder_bytes(ladder, probe, masks_np)
        work = {c: float(self.clients[c][0].shape[0]) * self.train_cfg.epochs for c in online}
        views = steps.client_views(st["estimator"], online, downs, work, whole=whole, sync_sizes=sync_sizes,
                                   full_len=full_len)
        budget = getattr(self.policy, "total", None)
        info = RoundInfo(round=t, rounds=self.rounds, deadline=self.deadline,
                         budget_left=None if budget is None else budget - st["cum_up"],
                         ladder_bytes=st["ladder_bytes"], history=st["history"])
        return self.policy.assign_sync(info, views)

    def _fresh_state(self) -> dict:
        torch.manual_seed(self.seed)
        model = self.model_fn()
        params = {k: v.detach().clone() for k, v in model.state_dict().items()}
        privacy = privacy_state(clip=self.dp_clip, noise=self.dp_noise, sample_rate=self.sample_rate,
                                delta=self.dp_delta, acct_kw=self._acct_kw, secagg=self.secagg,
                                adaptive=self.dp_adaptive, expected_clients=self.per_round,
                                seed=derive_seed(self.seed, 55) & 0x7FFFFFFF, dp_mode=self.dp_mode)
        return {
            "round": 0, "G": params, "B": {k: v.clone() for k, v in params.items()},
            "strategy": self.strategy.init(params), "down_state": {}, "client_states": {},
            "client_version": {}, "bcast": [], "masks": None, "mask_version": -1,
            "client_mask_version": {}, "history": [], "sim_seconds": 0.0, "cum_up": 0, "cum_down": 0,
            "estimator": LinkEstimator(), "ladder_bytes": {}, "last_delta": None,
            **privacy, "secagg_overhead": 0,
            # q with a shared scale under SecAgg: the range for round 0 (the clip when clipping, so
            # nothing is clamped); afterwards 4x the largest coordinate of the last aggregate.
            "secagg_range": float(self.dp_clip) if self.dp_clip else 1.0,
            # ef+sketch under SecAgg: the server's error (and momentum) sketch (FetchSGD), carried
            # across rounds.
            "sketch_error": None, "sketch_velocity": None,
            # SCAFFOLD: the server's control variate c and each client's cᵢ (trainable parameters).
            "scaffold": scaffold.init(params, [k for k, p in model.named_parameters() if p.requires_grad])
            if self.scaffold else None,
            "timing": {"train_s": 0.0, "encode_s": 0.0, "decode_aggregate_s": 0.0, "eval_s": 0.0, "total_s": 0.0},
        }

    def _save(self, st: dict) -> None:
        if self.out_dir is None:
            raise ValueError("checkpointing needs out_dir")
        save_checkpoint(st, self.out_dir)

    # ------------------------------------------------------------------ the run
    def run(self, resume: str | Path | None = None) -> SimResult:
        """Run all rounds (continuing from ``resume``'s checkpoint when given)."""
        wall0 = time.perf_counter()
        old_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            return self._run(resume, wall0)
        finally:
            torch.set_num_threads(old_threads)

    def _run(self, resume, wall0: float) -> SimResult:
        st = load_checkpoint(resume) if resume is not None else self._fresh_state()
        sround.check_resume(self, st)
        model = (torch.manual_seed(self.seed), self.model_fn())[1]
        self._backend = make_backend(self.backend, self.model_fn, self.clients, **self.backend_options)
        try:
            return self._loop(st, model, wall0)
        finally:
            self._backend.close()

    def _loop(self, st, model, wall0) -> SimResult:
        float_keys = [k for k, v in st["G"].items() if v.is_floating_point()]
        tm = st["timing"]
        if self.out_dir:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        while st["round"] < self.rounds:
            r0 = time.perf_counter()
            row = self._round(st, model, float_keys)
            tm["total_s"] += time.perf_counter() - r0
            st["history"].append(row)
            st["round"] += 1
            if self.progress:
                self.progress(row)
            if self.checkpoint_every and st["round"] % self.checkpoint_every == 0:
                self._save(st)
        return self._finish(st, time.perf_counter() - wall0)

    # ------------------------------------------------------------------ one round
    # A round is the sequence of steps below, in this order. Each step names the run state it reads
    # and returns what later steps need; everything that outlives the round is in ``st``, which is
    # what a checkpoint saves, so a resumed run equals an uninterrupted one.
    def _round(self, st: dict, model, float_keys: list[str]) -> dict:
        t = st["round"]
        # Before anyone trains: prune on schedule, then broadcast (B moves by what was sent of G − B).
        masks, masks_np, mask_len = downlink.apply_pruning(self.prune, st, t)
        full_len = downlink.broadcast(self.down_codec, st, t, float_keys, masks_np,
                                      seed=derive_seed(self.seed, t, 1 << 20))
        # Who takes part, and what each must download to hold B.
        sampled, online = steps.sample_clients(self.links, sampling=self.sampling, sample_rate=self.sample_rate,
                                               per_round=self.per_round, seed=self.seed, rnd=t)
        downs, whole = downlink.download_sizes(st, online, t, full_len=full_len,
                                               lossy_downlink=self.down_codec is not None, mask_len=mask_len)
        # The policy's codecs and lossy syncs; under secure aggregation, the key setup (one client
        # alone would expose its update: then nobody trains).
        plan = self._plan(st, t, online, downs, whole, float_keys, masks, masks_np, full_len)
        secure = self._open_secagg(st, t, plan.online, float_keys)
        online = [] if self.secagg and secure is None else plan.online
        # Local training and uploads; the clock drops stragglers; the kept uploads step G.
        results, failed = self._train(st, t, online, plan, secure, float_keys, masks, masks_np)
        timing, kept, vanished = self._collect(st, t, results)
        update_norm, priv, (extra_up, extra_down) = self._server_step(st, t, results, kept, secure, float_keys,
                                                                      masks, masks_np)
        first = next((r for r in results if r.client in kept), None)
        # (under secure aggregation a blob is masked codes); one extra decode in the first round
        # with an upload and in the last, not in every round
        if secure is None and first is not None and (t == self.rounds - 1 or not st.get("upload_anatomy")):
            st["upload_anatomy"] = steps.upload_anatomy(first, t, self._upload_structure(st, float_keys), masks_np)
        # The metrics row.
        metric, loss, per_client = self._evaluate(st, model)
        up = sum(r.up for r in results) + extra_up
        down = sum(r.down for r in results) + extra_down
        st["cum_up"] += up
        st["cum_down"] += down
        st["sim_seconds"] += timing.seconds
        row = steps.metrics_row(
            rnd=t, metric=metric, loss=loss, update_norm=update_norm, results=results, up=up, down=down,
            totals=st, timing=timing, sampled=len(sampled), online=len(online), kept=len(kept), failed=failed,
            vanished=len(vanished), skipped=len(plan.skipped), syncs=plan.syncs,
            per_client_codecs=bool(self.policy), extra={**per_client, **priv})
        if masks is not None or self.train_cfg.l1 > 0:
            row["sparsity"] = sparsity_of(st["G"])
        return row

    def _plan(self, st, t, online, downs, whole, float_keys, masks, masks_np, full_len) -> steps.RoundPlan:
        """The policy picks each client's codec from what the server knows (None: not this round)
        and, for a client that downloads the whole model, whether it gets it lossily; then the
        clients that train are recorded as holding B_t (a lossy copy: the whole model next time).

        The policy weighs each lossy copy by its size, measured from a real blob of the model and
        re-measured every probe_every rounds (like the uplink ladder); only the copies it picks are
        encoded in the other rounds, and a client is always charged len() of the blob it gets.
        (These encodings stay in this module: tests count them through ``runner.compress``.)
        """
        B = st["B"]
        sync_blobs: dict[str, bytes] = {}
        sync_specs = [sp for sp in (self.policy.sync_ladder if self.policy else ()) if sp != "none"]
        if whole and sync_specs:
            sizes = st.setdefault("sync_bytes", {})
            if t % self.probe_every == 0 or set(sync_specs) - set(sizes):
                sync_blobs = {sp: compress(B, sp) for sp in sync_specs}
                sizes.update({sp: len(b) for sp, b in sync_blobs.items()})
        self._assigned, syncs = (self._assign(st, t, online, downs, float_keys, masks_np, whole,
                                              st.get("sync_bytes", {}) if whole else {}, full_len)
                                 if self.policy else ({}, {}))
        skipped = [c for c in online if self.policy and self._assigned.get(c) is None]
        online = [c for c in online if c not in skipped]
        syncs = {c: sp for c, sp in syncs.items() if c in online and c in whole and sp in sync_specs}
        for sp in set(syncs.values()) - set(sync_blobs):
            sync_blobs[sp] = compress(B, sp)
        downlink.record_downloads(st, t, online, syncs, {sp: len(b) for sp, b in sync_blobs.items()}, downs,
                                  full_len=full_len, masks=masks)
        return steps.RoundPlan(online=online, skipped=skipped, downs=downs, syncs=syncs, sync_blobs=sync_blobs)

    def _open_secagg(self, st, t, online, float_keys) -> SecureRound | None:
        """Under secure aggregation: set this round's shared range and key the online clients
        (None with fewer than two of them, or without secure aggregation)."""
        if not self.secagg:
            return None
        template = {k: tuple(st["G"][k].shape) for k in float_keys}
        if self._sa_codec.shared_scale:
            # Under DP the range is set by the clip alone (never by data the server saw).
            r = (self._sa_codec.dp_range(self.dp_clip, self._sa_codec.vector_len(template)) if self.dp_clip
                 else st["secagg_range"])
            self._sa_codec.set_range(r)
        if len(online) < 2:
            return None
        return SecureRound(self._sa_codec, online, template, threshold=self.secagg_threshold,
                           neighbors=self.secagg_neighbors, seed=derive_seed(self.seed, t, 31),
                           round_seed=derive_seed(self.seed, t, 33), sketch_seed=derive_seed(self.seed, 35),
                           distributed=(self.dp_clip, self.dp_noise) if self.dp_mode == "distributed" else None)

    def _train(self, st, t, online, plan, secure, float_keys, masks,
               masks_np) -> tuple[list[steps.ClientResult], int]:
        """Client jobs: each online client trains from B (or its lossy copy) and compresses its
        update with its own codec state. Returns (one result per client that did not fail, failures)."""
        tm = st["timing"]
        Bsnap = {k: v.clone() for k, v in st["B"].items()}
        c_hat, c_len = (sround.broadcast(st["scaffold"], self.down_codec, seed=derive_seed(self.seed, t, 1 << 21))
                        if self.scaffold else (None, 0))
        self._c_hat = c_hat
        jobs = [ClientJob(client=c, spec=None if self.secagg else self.codec_for(c, t).spec,
                          state=st["client_states"].get(c), train_seed=derive_seed(self.seed, t, c, 2),
                          encode_seed=derive_seed(self.seed, t, c, 3),
                          start=plan.sync_blobs[plan.syncs[c]] if c in plan.syncs else None,
                          attack=self.attack.spec if c in self.attackers else None,
                          control=None if c_hat is None else scaffold.correction(c_hat, st["scaffold"]["ci"].get(c)),
                          c_hat=c_hat if self.scaffold_controls == "sent" else None)
                for c in online]
        outs = self._backend.map(Bsnap, jobs, self.train_cfg, float_keys=float_keys, masks=masks,
                                 masks_np=masks_np, loss_fn=self.loss_fn, clip=self.dp_clip)
        results: list[steps.ClientResult] = []
        failed = 0
        for job, out in zip(jobs, outs, strict=True):
            c = job.client
            tm["train_s"] += out["train_s"]
            if "error" in out:
                warnings.warn(f"round {t + 1}: client {c} failed in local training ({out['error']}); dropped",
                              stacklevel=3)
                failed += 1
                continue
            n = int(self.clients[c][0].shape[0])
            comp = netmod.compute_seconds(n, self.train_cfg.epochs, self.links[c])
            if secure is not None:
                t0 = time.perf_counter()
                payload, st["client_states"][c] = secure.upload(c, out["update"], encode_seed=job.encode_seed,
                                                                state=st["client_states"].get(c), clip=self.dp_clip)
                tm["encode_s"] += time.perf_counter() - t0
                su, sd = secure.setup[c]
                results.append(steps.ClientResult(c, payload, float(n), plan.downs[c] + sd, len(payload) + su,
                                                  comp, out["loss"], self.codec.spec))
                continue
            tm["encode_s"] += out["encode_s"]
            st["client_states"][c] = out["state"]
            blob = out["blob"]
            results.append(steps.ClientResult(c, blob, float(n), plan.downs[c] + c_len, len(blob), comp,
                                              out["loss"], job.spec))
        return results, failed

    def _collect(self, st, t, results) -> tuple[netmod.RoundTiming, set[int], set[int]]:
        """The round's clock on this round's links (jittered when asked): stragglers past the
        deadline and clients that vanish after uploading are not aggregated. The server's link
        estimator learns from the transfers. Returns (timing, kept clients, vanished clients)."""
        links = {r.client: self._jittered(r.client, t) for r in results}
        timing, kept, vanished = steps.close_round(results, links, deadline=self.deadline,
                                                   wait_full_deadline=self.wait_full_deadline,
                                                   dropout=self.dropout, seed=self.seed, rnd=t)
        steps.observe_transfers(st["estimator"], results, links, self.train_cfg.epochs)
        return timing, kept, vanished

    def _server_step(self, st, t, results, kept, secure, float_keys, masks, masks_np):
        """Aggregate the kept uploads and step G. Returns (the norm of the mean update, None when
        nobody survived; the row's privacy fields; (extra bytes up, extra bytes down))."""
        t0 = time.perf_counter()
        dcs: dict = {}  # SCAFFOLD: each aggregated client's Δcᵢ, taken while decoding
        mean, priv, extra = self._aggregate(st, t, results, kept, secure, float_keys, masks_np, dcs)
        if self.scaffold and mean is not None:
            st["scaffold"] = scaffold.commit(st["scaffold"], dcs, n_clients=len(self.clients))
        update_norm = float(torch.sqrt(sum((v.double() ** 2).sum() for v in mean.values()))) if mean else None
        self._apply(st, t, mean, masks)
        st["timing"]["decode_aggregate_s"] += time.perf_counter() - t0
        return update_norm, priv, extra

    def _aggregate(self, st, t, results, kept, secure, float_keys, masks_np, dcs=None):
        """Streaming aggregation of the kept blobs (decode → DP or the aggregation rule), or the
        secure sum; with SCAFFOLD each client's Δcᵢ goes into ``dcs`` on the way. Returns (the mean
        update or None, the row's privacy fields, (extra bytes up, extra bytes down))."""
        if secure is not None:
            received = {r.client: r.blob for r in results if r.client in kept}
            mean, priv, extra, over = secure.aggregate(
                received, t, accountant=st["accountant"], clip=self.dp_clip, noise=self.dp_noise,
                denominator=self.per_round, dp_seed=derive_seed(self.seed, 57) & 0x7FFFFFFF,
                sketch_error=st.get("sketch_error"), sketch_velocity=st.get("sketch_velocity"))
            st["sketch_error"], st["sketch_velocity"] = secure.sketch_error, secure.sketch_velocity
            st["secagg_overhead"] += over
            st["secagg_range"] = next_shared_range(self._sa_codec, mean, clip=self.dp_clip,
                                                   current=st["secagg_range"])
            priv["secagg_range"] = self._sa_codec.hi
            return mean, priv, extra
        structure = self._upload_structure(st, float_keys)
        specs = sorted({r.spec for r in results})
        inner = st["dp"] if st["dp"] is not None else self._aggregator
        observe = (sround.observer(dcs, self._c_hat, controls=self.scaffold_controls, cfg=self.train_cfg)
                   if self.scaffold else None)
        proc = DecodingFactory(inner, structures=[structure], masks=masks_np, specs=specs, observe=observe).create()
        for r in results:
            if r.client in kept:
                proc.accept(r.blob, weight=r.weight, client=r.client)
        mean, meas = proc.result()
        return mean, {k: v for k, v in meas.items() if k.startswith("dp_")}, (0, 0)

    def _upload_structure(self, st, float_keys) -> Structure:
        return sround.upload_structure(st["G"], float_keys,
                                       st["scaffold"] if self.scaffold_controls == "sent" else None)

    def _apply(self, st, t, mean, masks) -> None:
        """The server strategy steps G by the mean update (kept pruned); without a downlink codec
        clients get G itself, so B = G."""
        G, B = st["G"], st["B"]
        st["last_delta"] = mean if mean is not None else st["last_delta"]
        if mean is not None:
            G2, st["strategy"] = self.strategy.apply(G, mean, st["strategy"])
            G.update(G2)
            if masks:
                for k, m in masks.items():
                    G[k] = G[k] * m
        else:
            log.warning("round %d: no surviving client; round skipped", t + 1)
        if self.down_codec is None:
            for k in G:
                B[k] = G[k].clone()

    def _evaluate(self, st, model) -> tuple[float, float, dict]:
        """G on the test set (metric, loss) and, with per_client_eval, on each client's data."""
        t0 = time.perf_counter()
        out = steps.evaluate(model, st["G"], self.test, self.metric, self.loss_fn,
                             (self.clients, self.links) if self.per_client_eval else None)
        st["timing"]["eval_s"] += time.perf_counter() - t0
        return out

    def _finish(self, st: dict, wall: float) -> SimResult:
        summary = summarize(self, st, wall)
        if self.out_dir:
            write_results(self.out_dir, st["history"], summary)
        return SimResult(st["history"], summary, st["G"])

