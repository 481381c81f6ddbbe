"""Experiments: a scenario + a config → a :class:`~fedpress.sim.runner.Simulation`, its files and
its report. What ``fedpress run`` and ``fedpress compare`` (and TOML configs) are made of."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import sys
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fedpress.codecs import Codec


class ConfigError(ValueError):
    """A bad config value or key; the message names it."""


@dataclass
class RunConfig:
    """Every option of ``fedpress run``; ``None`` means "the scenario's default"."""

    scenario: str = "digits"
    codec: str = "none"
    down_codec: str | None = None
    clients: int | None = None
    per_round: int | None = None
    rounds: int | None = None
    partition: str | None = None
    alpha: float | None = None
    network: str | None = None
    deadline: float | None = None
    seed: int = 0
    local_epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    strategy: str = "fedavg"
    scaffold_controls: str = "derived"  # strategy scaffold: derived (no extra uplink) | sent
    server_lr: float | None = None
    prox_mu: float = 0.0
    l1: float = 0.0
    l2: float = 0.0
    prune: float | None = None  # target sparsity (fraction pruned)
    prune_mode: str = "oneshot"
    prune_scope: str = "global"
    prune_start: int | None = None
    prune_end: int | None = None
    target: float | None = None
    data_root: str | None = None
    checkpoint_every: int = 0
    per_client_eval: bool = False
    policy: str | None = None  # fixed | deadline:seconds=S | budget:bytes=B | accordion
    jitter: float = 0.0  # per-round lognormal sigma of link bandwidths
    secagg: bool = False
    secagg_threshold: int | None = None
    dropout: float = 0.0  # fraction of clients that vanish after uploading
    dp_clip: float | None = None
    dp_noise: float | None = None
    dp_delta: float = 1e-5
    dp_adaptive: bool = False
    dp_mode: str = "central"  # central (server adds the noise) | distributed (clients, inside secagg)
    target_epsilon: float | None = None
    backend: str = "local"  # local | ray
    ray_address: str | None = None  # backend ray: join this cluster ("auto", "ray://host:10001")
    workers: int | None = None  # backend ray: local Ray's CPUs (on a cluster: max tasks in flight)
    # auto | mean | sparse_mean | median | sparse_median | trimmed_mean[:beta=B] | krum[:f=F,m=M]
    # | norm_clip[:factor=F] | majority (fedpress.fl.aggregators.make_aggregator)
    aggregate: str = "auto"
    wait_full_deadline: bool = True  # a round with a dropped straggler lasts the whole deadline
    sampling: str | None = None  # fixed | poisson (default: poisson under DP, else fixed)
    attack: str | None = None  # signflip|scale|noise[:...,fraction=F]: Byzantine clients (robustness)
    # Asynchronous buffered aggregation (FedBuff, fedpress.sim.fedbuff): the server steps every K
    # arrivals with M clients in flight (default min(clients, 2K)); rounds then counts server steps.
    async_buffer: int | None = None
    concurrency: int | None = None
    staleness: str = "sqrt"  # none | sqrt | poly:a=A | hinge:a=A,b=B (weight of a stale update)

    def check(self) -> RunConfig:
        """Validate values that can be checked before loading anything (one clear error each)."""
        Codec(self.codec)
        if self.down_codec:
            Codec(self.down_codec)
        for name in ("clients", "per_round", "rounds", "local_epochs", "batch_size", "async_buffer",
                     "concurrency"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        for name in ("alpha", "lr", "deadline"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f"{name} must be > 0, got {v!r}")
        if self.policy:
            from fedpress.policy import make_policy

            try:
                make_policy(self.policy)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        if self.sampling not in (None, "fixed", "poisson"):
            raise ConfigError(f"sampling must be 'fixed' or 'poisson', got {self.sampling!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.attack:
            from fedpress.fl.attacks import make_attack

            try:
                make_attack(self.attack)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        if self.aggregate != "auto":
            from fedpress.fl.aggregators import make_aggregator

            try:
                make_aggregator(self.aggregate)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        if self.backend not in ("local", "ray"):
            raise ConfigError(f"backend must be 'local' or 'ray', got {self.backend!r}")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise ConfigError(f"workers must be a positive integer, got {self.workers!r}")
        if self.backend != "ray" and (self.ray_address or self.workers is not None):
            raise ConfigError("--address and --workers are options of --backend ray")
        if self.backend == "ray":
            import importlib.util

            if importlib.util.find_spec("ray") is None:
                raise ConfigError("--backend ray needs Ray: pip install 'fedpress[ray]'")
        if (self.dp_noise is not None or self.target_epsilon is not None) and self.dp_clip is None:
            raise ConfigError("dp_noise / target_epsilon need dp_clip (the L2 clip C)")
        if self.dp_mode not in ("central", "distributed"):
            raise ConfigError(f"dp_mode must be central or distributed, got {self.dp_mode!r}")
        if self.dp_mode == "distributed" and (self.dp_clip is None or not self.secagg):
            raise ConfigError("--dp-mode distributed needs --dp-clip and --secagg (clients add the noise "
                              "inside the secure sum)")
        if self.secagg:
            from fedpress.privacy.codes import secagg_compatible

            ok, why = secagg_compatible(self.codec)
            if not ok:
                raise ConfigError(f"codec {self.codec!r} cannot be used with --secagg: {why}")
        if self.prune is not None and not 0 <= self.prune < 1:
            raise ConfigError(f"prune (target sparsity) must be in [0, 1), got {self.prune!r}")
        self._check_async()
        from fedpress.data import SCENARIOS

        if self.scenario not in SCENARIOS:
            raise ConfigError(f"unknown scenario {self.scenario!r}; known: {', '.join(SCENARIOS)}")
        return self


    def _check_async(self) -> None:
        """--async-buffer and its options; what assumes synchronous rounds is refused, by name."""
        if self.async_buffer is None:
            for flag, given in (("--concurrency", self.concurrency is not None),
                                ("--staleness", self.staleness != "sqrt")):
                if given:
                    raise ConfigError(f"{flag} is an option of --async-buffer K (asynchronous FedBuff)")
            return
        from fedpress.sim.fedbuff import staleness_weight

        try:
            staleness_weight(self.staleness)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.concurrency is not None and self.concurrency < self.async_buffer:
            raise ConfigError(f"--concurrency ({self.concurrency}) must be >= --async-buffer ({self.async_buffer}): "
                              "the buffer could never fill")
        synchronous = (
            (self.secagg, "--secagg", "secure aggregation masks the clients of one round together"),
            (self.dp_clip is not None, "--dp-clip", "the DP accountant counts synchronous sampled rounds"),
            (self.policy not in (None, "fixed"), "--policy", "codec policies plan synchronous rounds"),
            (self.aggregate not in ("auto", "mean", "sparse_mean"), f"--aggregate {self.aggregate}",
             "robust rules compare the clients of one round"),
            (self.attack is not None, "--attack", "attacks are measured against robust synchronous rules"),
            (self.prune is not None, "--prune", "the pruning schedule is per synchronous round"),
            (self.deadline is not None, "--deadline", "nobody waits for a round: there is no deadline"),
            (not self.wait_full_deadline, "--close-early", "nobody waits for a round: there is no deadline"),
            (self.sampling is not None, "--sampling", "clients are started as others finish"),
            (self.dropout > 0, "--dropout", "it models clients vanishing from a synchronous round"),
            (self.per_round is not None, "--per-round", "use --concurrency (clients in flight)"),
        )
        for bad, flag, why in synchronous:
            if bad:
                raise ConfigError(f"--async-buffer cannot be combined with {flag}: {why}")
        if self.down_codec and Codec(self.down_codec).stateful:
            raise ConfigError(f"--down-codec {self.down_codec!r} is stateful; with --async-buffer every client "
                              "downloads the whole model, lossily with a stateless codec (fp16, q:bits=8, ...)")


RUN_KEYS = {f.name: f for f in fields(RunConfig)}
COMPARE_KEYS = {"codecs", "out", "jobs", "quiet", "seeds"}  # seeds: compare --seeds N


def _coerce(key: str, value: Any) -> Any:
    f = RUN_KEYS[key]
    t = str(f.type)
    if value is None:
        return None
    if "bool" in t:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be true/false, got {value!r}")
        return value
    if t.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        return value
    if t.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
    return value


def load_config(path: str | Path, *, allow_compare: bool = False) -> dict[str, Any]:
    """Read a TOML config; unknown keys or bad values are one :class:`ConfigError` naming them."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    data = {k.replace("-", "_"): v for k, v in data.items()}
    allowed = set(RUN_KEYS) | (COMPARE_KEYS if allow_compare else set())
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"unknown config key(s) in {path}: {', '.join(unknown)}")
    out = {}
    for k, v in data.items():
        if k in RUN_KEYS:
            out[k] = _coerce(k, v)
        elif k == "codecs":
            if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
                raise ConfigError("config key 'codecs' must be a list of spec strings")
            out[k] = v
        elif k == "seeds":
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"config key 'seeds' must be a positive integer, got {v!r}")
            out[k] = v
        else:
            out[k] = v
    return out


def slug(spec: str) -> str:
    """A file-system-safe name for a codec spec."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", spec).strip("_") or "codec"


def build_simulation(cfg: RunConfig, out_dir: str | Path | None = None, progress=None):
    """Load the scenario, partition its data and build the Simulation (an
    :class:`~fedpress.sim.fedbuff.AsyncSimulation` with ``async_buffer``), plus a partition summary."""
    from fedpress.data import get_scenario
    from fedpress.fl.pruning import PruneSchedule
    from fedpress.sim.partition import partition, summarize
    from fedpress.sim.runner import Simulation

    sc = get_scenario(cfg.scenario)
    scheme = cfg.partition or sc.partition
    # Under the natural partition --clients keeps the first N groups (LEAF: N users, the only ones
    # read into memory); other partitions split the pooled data into --clients parts.
    natural_cap = cfg.clients if scheme == "natural" else None
    data = sc.load(seed=cfg.seed, data_root=cfg.data_root, max_clients=natural_cap)
    y = data.y_train.numpy()
    if scheme == "natural":
        if data.groups is None:
            raise ConfigError(f"scenario {sc.name!r} has no natural client groups")
        groups = sorted(set(data.groups.tolist()))[:natural_cap]
        parts = [(data.groups == g).nonzero()[0] for g in groups]
    else:
        parts = partition(y, cfg.clients or sc.clients, scheme, alpha=cfg.alpha or sc.alpha, seed=cfg.seed)
    clients = [(data.x_train[p], data.y_train[p]) for p in parts]
    rounds = cfg.rounds or sc.rounds
    prune = None
    if cfg.prune is not None:
        start = cfg.prune_start if cfg.prune_start is not None else max(1, rounds // 4)
        end = cfg.prune_end if cfg.prune_end is not None else max(start + 1, (3 * rounds) // 4)
        prune = PruneSchedule(sparsity=cfg.prune, scope=cfg.prune_scope, mode=cfg.prune_mode,
                              start=start, end=end)
    part_summary = summarize(y, parts, data.n_classes)
    part_summary["scheme"] = scheme
    extra = {"partition": scheme, "alpha": cfg.alpha or sc.alpha, "synthetic": sc.synthetic}
    if cfg.async_buffer is not None:
        if cfg.scaffold_controls != "derived":
            raise ValueError("scaffold_controls needs strategy 'scaffold', which needs synchronous rounds "
                             "(not --async-buffer)")
        from fedpress.sim.fedbuff import AsyncSimulation

        sim = AsyncSimulation(
            lambda: sc.build_model(data), clients, (data.x_test, data.y_test),
            codec=cfg.codec, down_codec=cfg.down_codec, buffer=cfg.async_buffer, concurrency=cfg.concurrency,
            rounds=rounds, staleness=cfg.staleness, local_epochs=cfg.local_epochs or sc.local_epochs,
            lr=cfg.lr or sc.lr, batch_size=cfg.batch_size or sc.batch_size, seed=cfg.seed,
            strategy=cfg.strategy, server_lr=cfg.server_lr, prox_mu=cfg.prox_mu, l1=cfg.l1, l2=cfg.l2,
            network=cfg.network or sc.network, metric=sc.metric, per_client_eval=cfg.per_client_eval,
            target=cfg.target, scenario=sc.name, out_dir=out_dir, progress=progress, jitter=cfg.jitter,
            backend=cfg.backend, aggregate=cfg.aggregate, checkpoint_every=cfg.checkpoint_every,
            backend_options=({"address": cfg.ray_address, "num_cpus": cfg.workers}
                             if cfg.backend == "ray" else None),
            extra_summary=extra,
        )
        return sim, part_summary
    sim = Simulation(
        lambda: sc.build_model(data), clients, (data.x_test, data.y_test),
        codec=cfg.codec, down_codec=cfg.down_codec, rounds=rounds,
        per_round=cfg.per_round or sc.per_round, local_epochs=cfg.local_epochs or sc.local_epochs,
        lr=cfg.lr or sc.lr, batch_size=cfg.batch_size or sc.batch_size, seed=cfg.seed,
        strategy=cfg.strategy, server_lr=cfg.server_lr, prox_mu=cfg.prox_mu, l1=cfg.l1, l2=cfg.l2,
        prune=prune, network=cfg.network or sc.network, deadline=cfg.deadline, metric=sc.metric,
        per_client_eval=cfg.per_client_eval, target=cfg.target, scenario=sc.name,
        checkpoint_every=cfg.checkpoint_every, out_dir=out_dir, progress=progress,
        policy=cfg.policy, jitter=cfg.jitter, secagg=cfg.secagg, secagg_threshold=cfg.secagg_threshold,
        dropout=cfg.dropout, dp_clip=cfg.dp_clip, dp_noise=cfg.dp_noise, dp_delta=cfg.dp_delta,
        dp_adaptive=cfg.dp_adaptive, dp_mode=cfg.dp_mode, target_epsilon=cfg.target_epsilon, backend=cfg.backend,
        backend_options=({"address": cfg.ray_address, "num_cpus": cfg.workers}
                         if cfg.backend == "ray" else None),
        aggregate=cfg.aggregate, wait_full_deadline=cfg.wait_full_deadline, sampling=cfg.sampling,
        attack=cfg.attack, scaffold_controls=cfg.scaffold_controls, extra_summary=extra,
    )
    return sim, part_summary


def run_experiment(cfg: RunConfig, out_dir: str | Path | None, *, resume=None, progress=None):
    """Run one configuration; writes metrics.jsonl, summary.json, partition.json and config.json."""
    sim, part = build_simulation(cfg, out_dir, progress)
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "partition.json").write_text(json.dumps(part))
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    res = sim.run(resume=resume)
    return res, part


def _run_one(args, progress=None):
    """Process-pool entry point for ``compare --jobs``."""
    cfg, out_dir = args
    res, part = run_experiment(cfg, out_dir, progress=progress)
    return {"summary": res.summary, "history": res.history}, part


# --- compare --jobs N: runs in a process pool, their rounds reported back to this process ----------


class RunFailed(RuntimeError):
    """A run of a parallel compare that raised or whose worker process died; the message names it.
    ``user_error``: the cause is one a user can fix (a bad value, a missing data file)."""

    user_error = False


class _QueueLog(logging.Handler):
    """Sends a worker's ``fedpress`` warnings to the parent, which prints them above its bars."""

    def __init__(self, index: int, queue):
        super().__init__(logging.WARNING)
        self.index, self.queue = index, queue

    def emit(self, record):
        with contextlib.suppress(Exception):
            self.queue.put(("log", self.index, self.format(record)))


def _run_one_reporting(args, index: int, queue, single_thread: bool = False):
    """Process-pool entry point that also sends ``("start", index)``, then ``("round", index, round,
    metric, cum_uplink_bytes)`` per round and ``("log", index, text)`` per warning.

    ``queue`` is a ``Manager().Queue()`` proxy: it pickles under both 'fork' and 'spawn', and a worker
    that dies mid-``put`` cannot leave a lock held the way a plain ``multiprocessing.Queue`` can.
    ``single_thread``: run torch on one thread. A forked worker must: it inherits the locks of the
    parent's OpenMP threads but not the threads, and GNU OpenMP then hangs at its first parallel
    region whenever the parent ran torch ops before the fork (a notebook, a test session)."""
    # Under 'fork' a worker inherits the parent's Rich live display, whose stdout/stderr proxies
    # would redraw a stale copy of the bars on every line written here: use the real streams.
    for name in ("stdout", "stderr"):
        if type(getattr(sys, name)).__module__.startswith("rich"):
            setattr(sys, name, getattr(sys, f"__{name}__"))
    if single_thread:
        import torch

        torch.set_num_threads(1)
    if queue is None:
        return _run_one(args)

    def report(row):
        # progress is best effort: a vanished manager must not fail the run
        with contextlib.suppress(Exception):
            queue.put(("round", index, row["round"], row["metric"], row.get("cum_uplink_bytes")))

    logger, handler = logging.getLogger("fedpress"), _QueueLog(index, queue)
    logger.addHandler(handler)
    with contextlib.suppress(Exception):
        queue.put(("start", index))
    try:
        return _run_one(args, report)
    finally:
        logger.removeHandler(handler)


def run_pool(jobs_list, jobs: int, *, on_round=None, on_start=None, on_log=None, on_done=None,
             mp_context=None, poll: float = 0.1):
    """Run :func:`_run_one` for each ``(cfg, out_dir)`` of ``jobs_list`` in ``jobs`` processes.

    Returns one result per job, in order, or the exception that job ended with. Calls, in this
    process: ``on_round(index, row)`` per finished round (row: round, metric, cum_uplink_bytes; only
    when given, as it costs a manager process; then also ``on_start(index)`` when a worker takes a
    job up and ``on_log(index, text)`` per warning it logs, default: written to stderr) and
    ``on_done(index, error_or_None)`` per job.
    ``mp_context``: a start method name ('fork', 'spawn', ...), a context, or None (the default).

    A failing run never stops the others. A worker process that dies (a crash, the OOM killer)
    breaks the whole pool and fails every run still in it, so those runs go again, one process
    each: only the run that kills its own process then fails (as :class:`RunFailed`).
    """
    import multiprocessing
    from collections import deque
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp_context if not isinstance(mp_context, str | None) else multiprocessing.get_context(mp_context)
    manager = ctx.Manager() if on_round is not None else None
    queue = manager.Queue() if manager is not None else None
    outcome: dict[int, Any] = {}
    single_thread = ctx.get_start_method() == "fork"

    def drain():
        while queue is not None:
            try:
                kind, i, *msg = queue.get_nowait()
            except Exception:  # queue.Empty, or the manager is gone: nothing more to show
                return
            if kind == "round":
                on_round(i, dict(zip(("round", "metric", "cum_uplink_bytes"), msg, strict=True)))
            elif kind == "start":
                if on_start is not None:
                    on_start(i)
            elif on_log is not None:
                on_log(i, msg[0])
            else:
                sys.stderr.write(msg[0] + "\n")

    def drive(indices, isolated: bool):
        waiting, active = deque(indices), {}
        shared = None if isolated else ProcessPoolExecutor(max_workers=jobs, mp_context=ctx)
        try:
            while waiting or active:
                while waiting and (shared is not None or len(active) < jobs):
                    i = waiting.popleft()
                    pool = shared or ProcessPoolExecutor(max_workers=1, mp_context=ctx)
                    active[pool.submit(_run_one_reporting, jobs_list[i], i, queue, single_thread)] = (i, pool)
                done, _ = wait(active, timeout=poll, return_when=FIRST_COMPLETED)
                drain()
                for f in done:
                    i, pool = active.pop(f)
                    if pool is not shared:
                        pool.shutdown()
                    try:
                        outcome[i] = f.result()
                    except BrokenProcessPool:
                        outcome[i] = (RunFailed("its worker process died (crashed or was killed)")
                                      if isolated else BrokenProcessPool())
                    except Exception as e:
                        outcome[i] = e
                    if on_done is not None and not isinstance(outcome[i], BrokenProcessPool):
                        on_done(i, outcome[i] if isinstance(outcome[i], BaseException) else None)
        finally:
            for _, pool in active.values():
                pool.shutdown(wait=False, cancel_futures=True)
            if shared is not None:
                shared.shutdown(wait=True, cancel_futures=True)

    try:
        drive(range(len(jobs_list)), isolated=False)
        drive(sorted(i for i, o in outcome.items() if isinstance(o, BrokenProcessPool)), isolated=True)
        drain()
    finally:
        if manager is not None:
            manager.shutdown()
    return [outcome[i] for i in range(len(jobs_list))]
