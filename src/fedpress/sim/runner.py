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
"""

from __future__ import annotations

import dataclasses
import json
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
from fedpress.fl.aggregators import DecodingFactory, make_aggregator
from fedpress.fl.client import TrainConfig, evaluate_loss, predict_proba
from fedpress.fl.pruning import PruneSchedule, magnitude_masks, sparsity_of
from fedpress.fl.strategies import make_strategy
from fedpress.policy.estimator import LinkEstimator
from fedpress.sim import network as netmod
from fedpress.sim.backends import ClientJob, make_backend
from fedpress.wire import Structure

log = logging.getLogger("fedpress")

CHECKPOINT = "checkpoint.pt"


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
        if aggregate != "auto":
            make_aggregator(aggregate)  # one clear ValueError for a bad name, before any work
        else:
            # Biased sparsifiers (top-k, threshold) send few coordinates per client: average each
            # coordinate over its senders. Everything else, and anything private, is a plain mean.
            specs = [self.codec.spec, *(getattr(self.policy, "ladder", ()) if self.policy else ())]
            sparse = any((c := cached_codec(sp)).lossy and c.lossy[0].name in ("topk", "threshold") for sp in specs)
            private = dp_clip is not None or secagg
            aggregate = "sparse_mean" if sparse and not private else "mean"
        self.aggregate = aggregate
        # True (default): a server cannot tell a straggler will miss until the deadline passes, so a
        # round with a straggler lasts the whole deadline. False: the round ends when its slowest
        # kept client is done, as if the server knew in advance who will miss (a lower bound).
        self.wait_full_deadline = bool(wait_full_deadline)
        self._sampling_arg = sampling
        self._init_privacy(dp_clip, dp_noise, dp_delta, dp_adaptive, target_epsilon, secagg,
                           secagg_threshold, secagg_neighbors, dropout)
        self._assigned: dict[int, str] = {}

    # ------------------------------------------------------------------ helpers
    def _init_privacy(self, clip, noise, delta, adaptive, target_eps, secagg, threshold, neighbors, dropout):
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dropout = float(dropout)
        if (noise is not None or target_eps is not None) and clip is None:
            raise ValueError("differential privacy needs dp_clip (the L2 clip C)")
        self.dp_clip, self.dp_delta, self.dp_adaptive = clip, float(delta), bool(adaptive)
        self.sample_rate = self.per_round / len(self.clients)
        # Under DP the default is Poisson sampling (each client joins with probability
        # per_round/clients), the assumption of DP-FedAvg's accountant; "fixed" draws exactly
        # per_round clients and is accounted as sampling without replacement (replace-one).
        sampling = self._sampling_arg or ("poisson" if clip is not None else "fixed")
        if sampling not in ("fixed", "poisson"):
            raise ValueError(f"sampling must be 'fixed' or 'poisson', got {sampling!r}")
        self.sampling = sampling
        self._acct_kw = {"sampling": sampling, "population": len(self.clients)}
        if clip is not None and noise is None:
            if target_eps is not None:
                from fedpress.privacy.dp import noise_for_target

                noise = noise_for_target(target_eps, self.dp_delta, self.sample_rate, self.rounds,
                                         **self._acct_kw)
            else:
                noise = 0.0
        self.dp_noise = noise
        self.target_epsilon = target_eps
        if self.aggregate != "mean" and (clip is not None or secagg):
            # DP's noise is calibrated to a mean of clipped updates, and secure aggregation reveals
            # only the sum: no other rule is defined on top of either.
            raise ValueError(f"aggregate={self.aggregate!r} works neither with DP nor with secure aggregation")
        self.secagg = bool(secagg)
        self.secagg_threshold, self.secagg_neighbors = threshold, neighbors
        self._sa_codec = None
        if self.secagg:
            from fedpress.privacy.codes import SharedRangeCodec

            self._sa_codec = SharedRangeCodec(self.codec.spec)  # refuses incompatible codecs
            if self.policy is not None:
                raise ValueError("secure aggregation needs one shared codec: no per-client policy")

    def _privacy_state(self) -> dict:
        if self.dp_clip is None:
            return {"dp": None, "accountant": None}
        from fedpress.privacy.dp import Accountant, DPFactory

        acc = Accountant(self.dp_noise, self.sample_rate, self.dp_delta, **self._acct_kw)
        if self.secagg:
            return {"dp": None, "accountant": acc}
        dp = DPFactory(None, clip=self.dp_clip,
                       noise_multiplier=self.dp_noise, seed=derive_seed(self.seed, 55) & 0x7FFFFFFF,
                       expected_clients=self.per_round, adaptive=self.dp_adaptive, accountant=acc)
        return {"dp": dp, "accountant": acc}

    def codec_for(self, client: int, rnd: int) -> Codec:
        """The uplink codec of ``client`` in round ``rnd``: the fixed codec, or the policy's pick."""
        spec = self._assigned.get(client)
        if spec is None:
            return self.codec
        return cached_codec(spec)

    def _jittered(self, client: int, rnd: int) -> netmod.Link:
        ln = self.links[client]
        if not self.jitter:
            return ln
        f = np.random.default_rng([self.seed, rnd, client, 17]).lognormal(0.0, self.jitter, 2)
        return dataclasses.replace(ln, up_mbps=ln.up_mbps * f[0], down_mbps=ln.down_mbps * f[1])

    def _assign(self, st, t, online, downs, float_keys, masks_np, whole, sync_sizes,
                full_len) -> tuple[dict, dict]:
        from fedpress.policy import ClientView, RoundInfo

        ladder = tuple(self.policy.ladder)
        if t % self.probe_every == 0 or set(ladder) - set(st["ladder_bytes"]):
            # Real blobs of a probe update (the last aggregated delta; before any, a small random
            # one) tell the policy what each rung costs on this model — measured, not computed.
            probe = st.get("last_delta")
            if probe is None:
                g = torch.Generator().manual_seed(derive_seed(self.seed, 99) & 0x7FFFFFFF)
                probe = {k: torch.randn(st["G"][k].shape, generator=g) * 1e-2 for k in float_keys}
            st["ladder_bytes"] = {
                spec: len(cached_codec(spec).encode_ex(probe, None, seed=1, structure="fingerprint",
                                                masks=masks_np, spec_ref=True).blob)
                for spec in ladder
            }
        est = st["estimator"]
        views = [ClientView(client=c, up_mbps=est.mbps(c, "up"), down_mbps=est.mbps(c, "down"),
                            up_latency_s=est.latency(c, "up"), down_latency_s=est.latency(c, "down"),
                            compute_s=est.predict_compute(c, float(self.clients[c][0].shape[0]) * self.train_cfg.epochs),
                            down_bytes=downs[c], known=est.known(c, "up"),
                            sync_bytes=({"none": downs[c], **{sp: downs[c] - full_len + n
                                                              for sp, n in sync_sizes.items()}}
                                        if c in whole and sync_sizes else None))
                 for c in online]
        budget = getattr(self.policy, "total", None)
        info = RoundInfo(round=t, rounds=self.rounds, deadline=self.deadline,
                         budget_left=None if budget is None else budget - st["cum_up"],
                         ladder_bytes=st["ladder_bytes"], history=st["history"])
        return self.policy.assign_sync(info, views)

    def _evaluate(self, model, params) -> tuple[float, float]:
        x, y = self.test
        probs = predict_proba(model, params, x).numpy()
        m = float(self.metric(probs, y.numpy()))
        return m, evaluate_loss(model, params, x, y, self.loss_fn)

    def _fresh_state(self) -> dict:
        torch.manual_seed(self.seed)
        model = self.model_fn()
        params = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return {
            "round": 0, "G": params, "B": {k: v.clone() for k, v in params.items()},
            "strategy": self.strategy.init(params), "down_state": {}, "client_states": {},
            "client_version": {}, "bcast": [], "masks": None, "mask_version": -1,
            "client_mask_version": {}, "history": [], "sim_seconds": 0.0, "cum_up": 0, "cum_down": 0,
            "estimator": LinkEstimator(), "ladder_bytes": {}, "last_delta": None,
            **self._privacy_state(), "secagg_overhead": 0,
            # q with a shared scale under SecAgg: the range for round 0 (the clip when clipping, so
            # nothing is clamped); afterwards 4x the largest coordinate of the last aggregate.
            "secagg_range": float(self.dp_clip) if self.dp_clip else 1.0,
            "timing": {"train_s": 0.0, "encode_s": 0.0, "decode_aggregate_s": 0.0, "eval_s": 0.0, "total_s": 0.0},
        }

    def _save(self, st: dict) -> None:
        if self.out_dir is None:
            raise ValueError("checkpointing needs out_dir")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.out_dir / (CHECKPOINT + ".tmp")
        torch.save({**st, "estimator": st["estimator"].state_dict()}, tmp)
        tmp.replace(self.out_dir / CHECKPOINT)

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
        if resume is not None:
            path = Path(resume)
            path = path / CHECKPOINT if path.is_dir() else path
            if not path.exists():
                raise FileNotFoundError(f"no checkpoint at {path}")
            st = torch.load(path, weights_only=False)
            est = LinkEstimator()
            est.load_state_dict(st["estimator"])
            st["estimator"] = est
        else:
            st = self._fresh_state()
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

    def _round(self, st: dict, model, float_keys: list[str]) -> dict:
        t = st["round"]
        tm = st["timing"]
        G, B = st["G"], st["B"]
        n_clients = len(self.clients)

        # -- pruning: the server prunes G; masks travel to clients on their next download
        if self.prune is not None:
            target = self.prune.target_at(t)
            if target is not None:
                old = st["masks"]
                if self.prune.tau is not None:
                    masks = magnitude_masks(G, tau=self.prune.tau, scope=self.prune.scope, old=old)
                else:
                    masks = magnitude_masks(G, sparsity=target, scope=self.prune.scope, old=old)
                st["masks"] = masks
                st["mask_version"] = t
                for k, m in masks.items():
                    G[k] = G[k] * m
                    B[k] = B[k] * m
        masks = st["masks"]
        masks_np = {k: m.numpy() for k, m in masks.items()} if masks else None
        if masks and st.get("mask_blob", (None, 0))[0] != st["mask_version"]:
            # The masks travel once per change (zstd-packed booleans); measure that blob once.
            st["mask_blob"] = (st["mask_version"], len(compress(dict(masks), "zstd")))
        mask_blob_len = st["mask_blob"][1] if masks else 0

        # -- broadcast: B moves by what the downlink codec really sent (B = G without one)
        if self.down_codec is not None and t > 0:
            delta = {k: G[k] - B[k] for k in float_keys}
            e = self.down_codec.encode_ex(delta, st["down_state"], seed=derive_seed(self.seed, t, 1 << 20),
                                          structure="fingerprint", masks=masks_np, spec_ref=True)
            st["down_state"] = e.state
            for k in float_keys:
                B[k] = B[k] + e.recon[k]
            st["bcast"].append((t, len(e.blob)))
        full_len = len(compress(B, "none"))  # what a client without B downloads this round
        # Keep only the broadcasts a lagging client could still use more cheaply than the full model.
        while st["bcast"] and sum(n for _, n in st["bcast"]) > full_len:
            st["bcast"].pop(0)

        # -- sampling and availability
        rng = np.random.default_rng([self.seed, t, 11])
        if self.sampling == "poisson":
            sampled = np.flatnonzero(rng.random(n_clients) < self.sample_rate)
        else:
            sampled = np.sort(rng.choice(n_clients, self.per_round, replace=False))
        online = netmod.sample_available(self.links, sampled, rng)
        online = [int(c) for c in online]

        # -- what each online client must download to hold B (known before anyone trains)
        downs: dict[int, int] = {}
        whole: set[int] = set()  # clients that download the whole model this round
        for c in online:
            ver = st["client_version"].get(c, -1)
            if self.down_codec is None or ver < 0:
                down = full_len
            else:
                missed = [n for (rr, n) in st["bcast"] if rr > ver]
                have_all = any(rr == ver + 1 for rr, _ in st["bcast"]) or ver == t
                down = min(sum(missed), full_len) if have_all else full_len
            if down == full_len:
                whole.add(c)
            if masks and st["client_mask_version"].get(c, -2) < st["mask_version"]:
                down += mask_blob_len
            downs[c] = down

        # -- the policy picks each client's codec from what the server knows (None: not this round)
        # and, for a client that downloads the whole model, whether it gets it lossily.
        # The policy weighs each lossy copy by its size, measured from a real blob of the model and
        # re-measured every probe_every rounds (like the uplink ladder); only the copies it picks are
        # encoded in the other rounds, and a client is always charged len() of the blob it gets.
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
        for c in online:  # these clients now download and hold B_t
            st["client_version"][c] = t
            if masks:
                st["client_mask_version"][c] = st["mask_version"]
        for c, sp in syncs.items():  # ... except a lossy copy of it: next time, the whole model again
            downs[c] += len(sync_blobs[sp]) - full_len
            st["client_version"][c] = -1

        results = []  # (client, blob, weight, down, up, compute_s, train_loss, spec)
        failed = 0
        Bsnap = {k: v.clone() for k, v in B.items()}
        sa = setup = None
        R = derive_seed(self.seed, t, 33)
        template = {k: tuple(G[k].shape) for k in float_keys}
        if self.secagg and self._sa_codec.shared_scale:
            self._sa_codec.set_range(st["secagg_range"])
        if self.secagg and len(online) >= 2:
            from fedpress.privacy.secagg import SecAggRound

            n_on = len(online)
            holders = n_on if self.secagg_neighbors is None else min(n_on, self.secagg_neighbors + 1)
            thr = self.secagg_threshold or (holders // 2 + 1)
            sa = SecAggRound(online, threshold=min(thr, holders), bits=self._sa_codec.bits,
                             vector_len=self._sa_codec.vector_len(template),
                             seed=derive_seed(self.seed, t, 31), neighbors=self.secagg_neighbors)
            setup = sa.setup_bytes()
        elif self.secagg:
            online = []  # one client alone would expose its update: nobody trains this round
        jobs = [ClientJob(client=c, spec=None if self.secagg else self.codec_for(c, t).spec,
                          state=st["client_states"].get(c), train_seed=derive_seed(self.seed, t, c, 2),
                          encode_seed=derive_seed(self.seed, t, c, 3),
                          start=sync_blobs[syncs[c]] if c in syncs else None,
                          attack=self.attack.spec if c in self.attackers else None)
                for c in online]
        outs = self._backend.map(Bsnap, jobs, self.train_cfg, float_keys=float_keys, masks=masks,
                                 masks_np=masks_np, loss_fn=self.loss_fn, clip=self.dp_clip)
        for job, out in zip(jobs, outs, strict=True):
            c = job.client
            tm["train_s"] += out["train_s"]
            if "error" in out:
                warnings.warn(f"round {t + 1}: client {c} failed in local training ({out['error']}); dropped",
                              stacklevel=2)
                failed += 1
                continue
            n = int(self.clients[c][0].shape[0])
            comp = netmod.compute_seconds(n, self.train_cfg.epochs, self.links[c])
            if sa is not None:
                t0 = time.perf_counter()
                codes, st["client_states"][c] = self._sa_codec.encode(
                    out["update"], round_seed=R, client_seed=job.encode_seed, state=st["client_states"].get(c))
                payload = sa.mask(c, codes)
                tm["encode_s"] += time.perf_counter() - t0
                su, sd = setup[c]
                results.append((c, payload, float(n), downs[c] + sd, len(payload) + su, comp, out["loss"],
                                self.codec.spec))
                continue
            tm["encode_s"] += out["encode_s"]
            st["client_states"][c] = out["state"]
            blob = out["blob"]
            results.append((c, blob, float(n), downs[c], len(blob), comp, out["loss"], job.spec))

        # -- clock: stragglers past the deadline are dropped. Links jitter per round when asked.
        links = {c: self._jittered(c, t) for c, *_ in results}
        parts = [netmod.Participant(client=c, link=links[c], down_bytes=d, up_bytes=u, compute_s=cs)
                 for (c, _b, _w, d, u, cs, _l, _s) in results]
        timing = netmod.round_clock(parts, self.deadline, wait_full_deadline=self.wait_full_deadline)
        kept = set(timing.kept)
        # Clients that vanish after uploading (``dropout``): their bytes were sent, never used.
        vanished: set[int] = set()
        if self.dropout and kept:
            drng = np.random.default_rng([self.seed, t, 41])
            vanished = {c for c in sorted(kept) if drng.random() < self.dropout}
            kept -= vanished
        # The server observes the transfers it took part in (not the links themselves).
        est = st["estimator"]
        for c, _b, w, d, u, cs, *_ in results:
            ln = links[c]
            est.observe(c, "down", d, netmod.transfer_seconds(d, ln.down_mbps, ln.latency_s))
            est.observe(c, "up", u, netmod.transfer_seconds(u, ln.up_mbps, ln.latency_s))
            est.observe_compute(c, w * self.train_cfg.epochs, cs)

        # -- streaming aggregation of the kept blobs
        t0 = time.perf_counter()
        extra_up = extra_down = 0
        priv: dict[str, Any] = {}
        if sa is not None:
            mean, priv, (extra_up, extra_down) = self._secagg_aggregate(st, sa, results, kept, online, template, R, t)
        else:
            structure = Structure.of({k: G[k] for k in float_keys})
            specs = sorted({r[7] for r in results})
            inner = st["dp"] if st["dp"] is not None else make_aggregator(self.aggregate)
            proc = DecodingFactory(inner, structures=[structure], masks=masks_np, specs=specs).create()
            for c, blob, w, *_ in results:
                if c in kept:
                    proc.accept(blob, weight=w, client=c)
            mean, meas = proc.result()
            priv = {k: v for k, v in meas.items() if k.startswith("dp_")}
        update_norm = float(torch.sqrt(sum((v.double() ** 2).sum() for v in mean.values()))) if mean else None
        if sa is not None and self._sa_codec.shared_scale and mean and not self.dp_clip:
            peak = max(float(v.abs().max()) for v in mean.values() if v.numel())
            if peak > 0:
                st["secagg_range"] = 4.0 * peak
        if sa is not None:
            priv["secagg_range"] = self._sa_codec.hi
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
        tm["decode_aggregate_s"] += time.perf_counter() - t0

        # -- evaluation and bookkeeping
        t0 = time.perf_counter()
        metric, loss = self._evaluate(model, G)
        row_extra = {}
        if self.per_client_eval:
            vals = []
            for x, y in self.clients:
                vals.append(float(self.metric(predict_proba(model, G, x).numpy(), y.numpy())))
            row_extra = {"client_metric_mean": float(np.nanmean(vals)), "client_metric_min": float(np.nanmin(vals)),
                         "client_metric_p10": float(np.nanpercentile(vals, 10))}
            # Per link kind (wifi, 4g, 3g, nbiot, ...): what a policy that leaves slow clients out
            # costs *their* data, which the global test metric can hide.
            kinds: dict[str, list[float]] = {}
            for ln, v in zip(self.links, vals, strict=True):
                kinds.setdefault(ln.kind or "custom", []).append(v)
            if len(kinds) > 1:
                row_extra["client_metric_by_kind"] = {k: float(np.nanmean(v)) for k, v in sorted(kinds.items())}
        tm["eval_s"] += time.perf_counter() - t0
        up = sum(r[4] for r in results) + extra_up
        downb = sum(r[3] for r in results) + extra_down
        st["cum_up"] += up
        st["cum_down"] += downb
        st["sim_seconds"] += timing.seconds
        row = {
            "round": t + 1, "metric": metric, "loss": loss, "update_norm": update_norm,
            "uplink_bytes": up, "downlink_bytes": downb,
            "cum_uplink_bytes": st["cum_up"], "cum_downlink_bytes": st["cum_down"],
            "sim_seconds": st["sim_seconds"], "round_seconds": timing.seconds,
            "clients_sampled": len(sampled), "clients_online": len(online),
            "clients_kept": len(kept), "clients_dropped": len(timing.dropped), "clients_failed": failed,
            "clients_vanished": len(vanished), "clients_skipped": len(skipped),
            "train_loss": float(np.mean([r[6] for r in results])) if results else None,
            "client_codecs": ({str(r[0]): r[7] for r in results}
                              if self.policy or len({r[7] for r in results}) > 1 else None),
            "client_uplink_bytes": {str(r[0]): r[4] for r in results},
            "client_syncs": {str(c): sp for c, sp in syncs.items()} or None,
            **row_extra,
            **priv,
        }
        if masks is not None or self.train_cfg.l1 > 0:
            row["sparsity"] = sparsity_of(G)
        for key in ("client_codecs", "client_syncs"):
            if row[key] is None:
                del row[key]
        return row

    def _secagg_aggregate(self, st, sa, results, kept, online, template, R, t):
        """Secure sum of the kept clients' masked codes; the server only ever sees the sum."""
        from fedpress.privacy.masking import SecAggError

        received = {c: blob for c, blob, *_ in results if c in kept}
        dropped = set(online) - set(received)
        priv: dict[str, Any] = {}
        try:
            total, meas = sa.unmask_sum(received, dropped)
        except SecAggError as e:
            warnings.warn(f"round {t + 1}: secure aggregation failed ({e}); round skipped", stacklevel=2)
            return None, {"secagg_failed": True}, (0, 0)
        # Setup bytes and the masked payloads are already in each client's counts; add the unmasking
        # phase (survivors' shares up, the server's requests down).
        extra = (int(meas["secagg_unmask_uplink_bytes"]), int(meas["secagg_unmask_downlink_bytes"]))
        over = int(meas.get("secagg_overhead_bytes", 0))
        st["secagg_overhead"] += over
        priv["secagg_overhead_bytes"] = over
        if self.dp_clip is not None:
            from fedpress.privacy.dp import dp_mean_from_sum, secagg_sensitivity

            s = self._sa_codec.decode_sum(total, len(received), template, round_seed=R)
            sens = secagg_sensitivity(self.dp_clip, self._sa_codec.error_bound(), self._sa_codec.vector_len(template))
            mean, dpm = dp_mean_from_sum(s, sensitivity=sens, noise_multiplier=self.dp_noise,
                                         denominator=self.per_round, seed=derive_seed(self.seed, 57) & 0x7FFFFFFF,
                                         round=t + 1)
            st["accountant"].step()
            priv.update(dpm)
            priv["dp_epsilon"] = st["accountant"].epsilon()
        else:
            mean = self._sa_codec.decode_mean(total, len(received), template, round_seed=R)
        return mean, priv, extra

    def _finish(self, st: dict, wall: float) -> SimResult:
        hist = st["history"]
        metrics = [h["metric"] for h in hist]
        summary = {
            "scenario": self.scenario, "codec": self.codec.spec,
            "down_codec": self.down_codec.spec if self.down_codec else None,
            "final_metric": metrics[-1] if metrics else float("nan"),
            "best_metric": float(np.nanmax(metrics)) if metrics else float("nan"),
            "metric_name": self.metric_name,
            "total_uplink_bytes": st["cum_up"], "total_downlink_bytes": st["cum_down"],
            "rounds": len(hist), "sim_seconds": st["sim_seconds"], "wall_seconds": wall,
            "seed": self.seed, "clients": len(self.clients), "per_round": self.per_round,
            "strategy": self.strategy.name, "network": self.network_name, "deadline": self.deadline,
            "sampling": self.sampling,
            "policy": (getattr(self.policy, "spec", None) or self.policy.name) if self.policy else "fixed",
            "secagg": self.secagg, "dropout": self.dropout, "aggregate": self.aggregate,
            "attack": self.attack.spec if self.attack else None, "attackers": sorted(self.attackers),
            "timing": {k: round(v, 4) for k, v in st["timing"].items()},
            **self.extra_summary,
        }
        if st.get("accountant") is not None:
            summary.update(epsilon=st["accountant"].epsilon(), delta=self.dp_delta, dp_clip=self.dp_clip,
                           dp_noise_multiplier=self.dp_noise, target_epsilon=self.target_epsilon)
        if self.secagg:
            summary["secagg_overhead_bytes"] = st["secagg_overhead"]
        if self.target is not None:
            hit = next((h for h in hist if h["metric"] >= self.target), None)
            summary["target"] = self.target
            summary["rounds_to_target"] = hit["round"] if hit else None
            summary["sim_seconds_to_target"] = hit["sim_seconds"] if hit else None
            summary["uplink_bytes_to_target"] = hit["cum_uplink_bytes"] if hit else None
        if self.out_dir:
            with open(self.out_dir / "metrics.jsonl", "w") as f:
                for h in hist:
                    f.write(json.dumps(h, sort_keys=True) + "\n")
            with open(self.out_dir / "summary.json", "w") as f:
                json.dump(summary, f, indent=2, sort_keys=True)
        return SimResult(hist, summary, st["G"])
