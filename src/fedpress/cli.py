"""The ``fedpress`` command line (Typer + Rich).

Errors a user can fix (bad specs, configs, missing data files) print one ``error:`` line and exit
with status 2 — never a traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="fedpress: communication-efficient federated learning, every byte measured.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _console(quiet: bool = False):
    from rich.console import Console

    c = Console(stderr=True, quiet=quiet)
    # Results tables are wide; in a pipe or CI log, don't squeeze them into 80 columns.
    if not c.is_terminal:
        c = Console(stderr=True, quiet=quiet, width=200)
    return c


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


@app.command("codecs")
def codecs_cmd() -> None:
    """List the codec stages, with one line of help each."""
    from rich.console import Console
    from rich.table import Table

    from fedpress.codecs import registry

    t = Table(title="codec stages (join with '+', e.g. ef+topk:ratio=0.01+q:bits=8+zstd)")
    t.add_column("stage")
    t.add_column("what it does")
    for name, help_ in registry().items():
        t.add_row(name, help_)
    con = Console()
    con.print(t)
    con.print("per-tensor rules after ';', first match wins, e.g. "
              "'ef+topk:ratio=0.01+q:bits=8; *.bias,numel<1024=none; fc.*=q:bits=4' "
              "(selectors: a name glob, numel<N, ndim<N)", soft_wrap=True)


@app.command("inspect")
def inspect_cmd(
    blob: Path = typer.Argument(..., help="a file holding one fedpress blob"),  # noqa: B008
    spec: list[str] = typer.Option(None, "--spec", help="the agreed spec, for a blob that names it by digest"),  # noqa: B008
    structure_from: Path = typer.Option(  # noqa: B008
        None, "--structure-from",
        help="a torch-saved state_dict of the model, for a blob that names its structure by fingerprint "
        "(the simulator's and Flower's uploads): its float entries, or all of them, whichever matches"),
    json_out: bool = typer.Option(False, "--json", help="print the breakdown as JSON"),
) -> None:
    """Where a blob's bytes go: envelope, body, and per tensor its pipeline and payload."""
    import json

    from rich.console import Console
    from rich.table import Table

    from fedpress import Structure, WireError, inspect_blob

    structures = None
    if structure_from is not None:
        import torch

        try:
            sd = torch.load(structure_from, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is one clear error
            _fail(f"cannot load a state_dict from {structure_from}: {e}")
        if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
            _fail(f"{structure_from} does not hold a state_dict (a dict of tensors)")
        # An update holds the model's float entries (the simulator) or all of them: offer both.
        structures = [Structure.of(sd), Structure.of({k: v for k, v in sd.items() if v.is_floating_point()})]
    try:
        info = inspect_blob(blob.read_bytes(), specs=spec or None, structures=structures)
    except OSError as e:
        _fail(f"cannot read {blob}: {e.strerror or e}")
    except WireError as e:
        _fail(f"{blob}: {e}")
    if json_out:
        typer.echo(json.dumps(info.to_dict(), indent=1))
        return
    body = f"{info.body_bytes} B body" + (f" ({info.lossless}-coded)" if info.lossless else "")
    t = Table(title=f"{blob.name}: {info.total_bytes} B = {info.envelope_bytes} B envelope + {body}; "
                    f"spec {info.spec!r}, seed {info.seed}")
    for col in ("tensor", "dtype", "shape", "pipeline", "fields", "payload B", "bits/value"):
        t.add_column(col)
    for x in info.tensors:
        t.add_row(x.name or "(top level)", x.dtype, "×".join(map(str, x.shape)) or "scalar", x.pipeline,
                  str(x.fields), str(x.payload_bytes), f"{x.bits_per_value:.3f}")
    con = Console()
    if not con.is_terminal:  # in a pipe or a log, don't squeeze the table into 80 columns
        con = Console(width=200)
    con.print(t)


@app.command("scenarios")
def scenarios_cmd() -> None:
    """List the built-in scenarios, with one line of help each."""
    from rich.console import Console
    from rich.table import Table

    from fedpress.data import SCENARIOS

    t = Table(title="scenarios (fedpress run --scenario NAME)")
    for col in ("scenario", "metric", "network", "clients", "rounds", "what it is"):
        t.add_column(col)
    for name, sc in SCENARIOS.items():
        t.add_row(name, sc.metric, sc.network, str(sc.clients), str(sc.rounds), sc.help)
    Console().print(t)


# The options run and compare share, each declared once here; `_with_run_options` gives them to both
# commands. Defaults are None = "not given", so config files and scenario defaults apply.
Opt = typer.Option


def _opt(name: str, type_: object, *decls: str, help: str, default: object = None) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[type_, Opt(*decls, help=help)])


_LEAD = [_opt("scenario", str | None, "--scenario", "-s", help="scenario name (fedpress scenarios)")]
_SHARED = [
    _opt("down_codec", str | None, "--down-codec", help="downlink codec spec (server → clients)"),
    _opt("clients", int | None, "--clients", help="number of clients"),
    _opt("per_round", int | None, "--per-round", help="clients sampled per round"),
    _opt("rounds", int | None, "--rounds", help="federated rounds"),
    _opt("alpha", float | None, "--alpha", help="Dirichlet label-skew alpha"),
    _opt("partition", str | None, "--partition", help="iid | dirichlet | shards | quantity | natural"),
    _opt("network", str | None, "--network", help="wifi | 4g | 3g | nbiot | mixed | none"),
    _opt("deadline", float | None, "--deadline", help="round deadline in simulated seconds"),
    _opt("seed", int | None, "--seed", help="random seed"),
    _opt("local_epochs", int | None, "--local-epochs", help="local epochs per round"),
    _opt("lr", float | None, "--lr", help="client learning rate"),
    _opt("batch_size", int | None, "--batch-size", help="client batch size"),
    _opt("strategy", str | None, "--strategy", help="fedavg | fedprox | fedavgm | fedadam | fedyogi | scaffold"),
    _opt("scaffold_controls", str | None, "--scaffold-controls",
         help="--strategy scaffold: derived (the server derives each client's variate from its decoded "
         "update; no extra uplink) | sent (clients upload it beside the update, as scaffold.dc.*)"),
    _opt("server_lr", float | None, "--server-lr", help="server learning rate"),
    _opt("prox_mu", float | None, "--prox-mu", help="FedProx mu"),
    _opt("l1", float | None, "--l1", help="L1 strength (proximal, exact zeros)"),
    _opt("l2", float | None, "--l2", help="L2 weight decay"),
    _opt("prune", float | None, "--prune", help="magnitude-prune to this sparsity (e.g. 0.9)"),
    _opt("prune_mode", str | None, "--prune-mode", help="oneshot | gradual"),
    _opt("prune_scope", str | None, "--prune-scope", help="global | layer"),
    _opt("target", float | None, "--target", help="metric target: report rounds/time/bytes to reach it"),
    _opt("data_root", str | None, "--data-root", help="folder with mnist/fashion-mnist/cifar10 files or LEAF femnist/shakespeare JSON"),
    _opt("policy", str | None, "--policy", help="fixed | deadline:seconds=S[,skip=0|1,sync=0|1,cut=C,"
         "unknown=hard|prior,slack=F,safety=F] | budget:bytes=B | accordion"),
    _opt("jitter", float | None, "--jitter", help="per-round lognormal sigma of link bandwidths"),
    _opt("secagg", bool | None, "--secagg/--no-secagg", help="secure aggregation (needs a fixed-range codec)"),
    _opt("secagg_threshold", int | None, "--secagg-threshold", help="Shamir threshold t (default: majority)"),
    _opt("dropout", float | None, "--dropout", help="fraction of clients vanishing after upload"),
    _opt("dp_clip", float | None, "--dp-clip", help="DP: L2 clip C of each update"),
    _opt("dp_noise", float | None, "--dp-noise", help="DP: noise multiplier z (sigma = z*C)"),
    _opt("dp_delta", float | None, "--dp-delta", help="DP: delta for the reported epsilon"),
    _opt("dp_adaptive", bool | None, "--dp-adaptive/--no-dp-adaptive", help="DP: adaptive clipping"),
    _opt("dp_mode", str | None, "--dp-mode",
         help="DP: central (the server adds noise to the sum) | distributed (each client adds discrete "
         "Gaussian noise inside the secure sum; needs --secagg)"),
    _opt("target_epsilon", float | None, "--target-epsilon", help="DP: size the noise to this epsilon"),
    _opt("sampling", str | None, "--sampling",
         help="fixed (exactly --per-round clients) | poisson (each joins with probability per_round/clients); "
         "default: poisson under DP, so the accountant's assumption holds"),
    _opt("backend", str | None, "--backend", help="local | ray"),
    _opt("address", str | None, "--address",
         help="--backend ray: join this Ray cluster (auto, ray://HOST:10001); default: start Ray here"),
    _opt("workers", int | None, "--workers",
         help="--backend ray: CPUs of the local Ray (on a cluster: tasks in flight)"),
    _opt("aggregate", str | None, "--aggregate",
         help="auto | mean | sparse_mean (per-coordinate over senders; auto: for top-k/threshold); "
         "robust to a minority of bad updates: median | sparse_median | trimmed_mean[:beta=B] | "
         "krum[:f=F,m=M] | norm_clip[:factor=F]; majority (signSGD majority vote)"),
    _opt("attack", str | None, "--attack",
         help="Byzantine clients: signflip[:scale=S] | scale:factor=K | noise:std=S, each [,fraction=F] "
         "(default 0.2); pair with --aggregate median|trimmed_mean"),
    _opt("async_buffer", int | None, "--async-buffer",
         help="asynchronous FedBuff: clients start as others finish, each from the model current then, and "
         "the server steps every K arriving updates, weighted down by staleness (--rounds: server steps)"),
    _opt("concurrency", int | None, "--concurrency",
         help="--async-buffer: clients training at once, >= K (default min(clients, 2K))"),
    _opt("staleness", str | None, "--staleness",
         help="--async-buffer: weight of an update s versions stale: sqrt (1/sqrt(1+s), default) | none | "
         "poly:a=A | hinge:a=A,b=B"),
    _opt("wait_full_deadline", bool | None, "--wait-full-deadline/--close-early",
         help="a round with a dropped straggler lasts the whole deadline (default); --close-early: it ends "
         "at the slowest kept client, as if the server knew who will miss"),
]
_TAIL = [
    _opt("config", Path | None, "--config", help="TOML file with any of these options"),
    _opt("quiet", bool, "--quiet", "-q", help="no progress bars or tables", default=False),
    _opt("json_out", bool, "--json", help="print the summary as JSON on stdout", default=False),
]


def _with_run_options(fn):
    """Give a command every shared option (one list for run and compare, not two copies).

    ``fn`` declares only its own options, then ``**opts``, which receives the shared ones by name.
    Typer reads the signature built here (``__signature__``): --scenario, fn's first own option
    (its --codec), the shared options, fn's other own options, then --config, --quiet and --json.
    """
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
           for p in inspect.signature(fn, eval_str=True).parameters.values()
           if p.kind is not inspect.Parameter.VAR_KEYWORD]
    clash = {p.name for p in own} & {p.name for p in _LEAD + _SHARED + _TAIL}
    if clash:
        raise TypeError(f"{fn.__name__} redeclares shared option(s): {', '.join(sorted(clash))}")

    @functools.wraps(fn)
    def command(**kwargs):
        return fn(**kwargs)

    command.__signature__ = inspect.Signature(_LEAD + own[:1] + _SHARED + own[1:] + _TAIL)
    return command


def _cli_options(params: dict) -> dict:
    """The command's parameters that are RunConfig fields (one list of options, not two)."""
    from fedpress.sim.experiment import RunConfig

    renamed = {"address": "ray_address"}
    out = {renamed.get(k, k): v for k, v in params.items()}
    # compare's --codec is a list of specs, run by compare itself; the first stands for them in the
    # config (so a check such as --secagg's sees a codec that was asked for, not the default)
    if isinstance(out.get("codec"), list):
        out["codec"] = out["codec"][0] if out["codec"] else None
    return {k: v for k, v in out.items() if k in RunConfig.__dataclass_fields__}


def _merge(config: Path | None, allow_compare: bool, cli: dict) -> tuple[object, dict]:
    from fedpress.codecs import SpecError
    from fedpress.sim.experiment import ConfigError, RunConfig, load_config

    try:
        base = load_config(config, allow_compare=allow_compare) if config else {}
        extra = {k: base.pop(k) for k in list(base) if k not in RunConfig.__dataclass_fields__}
        given = {k: v for k, v in cli.items() if v is not None}
        cfg = RunConfig(**{**base, **given})
        if "codecs" in extra and "codec" not in base and "codec" not in given:
            cfg.codec = extra["codecs"][0]
        cfg.check()
    except (ConfigError, SpecError) as e:
        _fail(str(e))
    return cfg, extra


def _user_errors():
    from fedpress.codecs import SpecError
    from fedpress.sim.experiment import ConfigError

    return (ConfigError, SpecError, FileNotFoundError, ValueError)


@app.command("run")
@_with_run_options
def run_cmd(
    codec: Annotated[str | None, Opt("--codec", "-c", help="uplink codec spec, e.g. ef+topk:ratio=0.01+q:bits=8")] = None,
    per_client_eval: Annotated[bool | None, Opt("--per-client-eval/--no-per-client-eval", help="also evaluate the global model on every client's data each round")] = None,
    checkpoint_every: Annotated[int | None, Opt("--checkpoint-every", help="checkpoint every N rounds")] = None,
    resume: Annotated[Path | None, Opt("--resume", help="resume from this run folder's checkpoint")] = None,
    out: Annotated[Path, Opt("--out", "-o", help="output folder")] = Path("results/run"),
    **opts,
) -> None:
    """Run one federated experiment; writes OUT/metrics.jsonl, OUT/summary.json and OUT/report.html."""
    config, quiet, json_out = opts.pop("config"), opts.pop("quiet"), opts.pop("json_out")
    cli = {**opts, "codec": codec, "per_client_eval": per_client_eval, "checkpoint_every": checkpoint_every}
    cfg, _ = _merge(config, False, _cli_options(cli))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedpress.sim.experiment import run_experiment

    console = _console(quiet)
    from fedpress.data import get_scenario

    total = cfg.rounds or get_scenario(cfg.scenario).rounds
    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
                      disable=quiet) as prog:
            task = prog.add_task(f"{cfg.scenario} · {cfg.codec}", total=total, info="")

            def on_round(row):
                prog.update(task, completed=row["round"],
                            info=f"metric {row['metric']:.4f} · up {row['cum_uplink_bytes']:,} B")

            res, part = run_experiment(cfg, out, resume=resume, progress=on_round)
    except _user_errors() as e:
        _fail(str(e))
    from fedpress.report.html import write_report

    runs = [{"summary": res.summary, "history": res.history}]
    # The same report as compare's, for one run (a policy run's codec choices included).
    write_report(out, runs, config=dataclasses.asdict(cfg), partition=part, target=cfg.target)
    if json_out:
        sys.stdout.write(json.dumps(res.summary, default=str) + "\n")
    if not quiet:
        from fedpress.report.tables import results_table, rich_table

        console.print(rich_table(results_table(runs, target=cfg.target), title=f"fedpress run → {out}"))


@app.command("compare")
@_with_run_options
def compare_cmd(
    codec: Annotated[list[str] | None, Opt("--codec", "-c", help="codec spec; repeat for each codec")] = None,
    jobs: Annotated[int | None, Opt("--jobs", "-j", help="run codecs in N parallel processes")] = None,
    seeds: Annotated[int | None, Opt("--seeds", help="run every codec with seeds SEED, SEED+1, ..., SEED+N-1 "
                                     "(the same for every codec: paired) and report mean ± std over them "
                                     "(default 1)")] = None,
    out: Annotated[Path | None, Opt("--out", "-o", help="output folder")] = None,
    **opts,
) -> None:
    """Run several codecs on one scenario; writes results.csv/json, plots and report.html.

    With --seeds N > 1 each codec runs once per seed: results.csv has one row per codec (mean, std,
    min and max over the seeds, and the per-seed paired difference to the first codec), runs.csv one
    row per run, and the plots a mean line with a min-max band per codec.
    """
    config, quiet, json_out = opts.pop("config"), opts.pop("quiet"), opts.pop("json_out")
    cfg, extra = _merge(config, True, _cli_options({**opts, "codec": codec}))
    from fedpress.codecs import Codec, SpecError
    from fedpress.sim.experiment import RunFailed

    seeds = seeds if seeds is not None else extra.get("seeds", 1)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        _fail(f"--seeds must be a positive integer (runs per codec), got {seeds!r}")

    specs = codec or extra.get("codecs") or list(DEFAULT_CODECS)
    try:
        specs = [Codec(s).spec for s in specs]
    except SpecError as e:
        _fail(str(e))
    if len(set(specs)) != len(specs):
        _fail("the same codec is listed twice")
    from fedpress.sim.experiment import ConfigError

    try:  # every codec against the run options (e.g. --secagg), before any run starts
        for s in specs:
            dataclasses.replace(cfg, codec=s).check()
    except ConfigError as e:
        _fail(str(e))
    out = out or Path(extra.get("out", f"results/{cfg.scenario}"))
    jobs = jobs or int(extra.get("jobs", 1))
    quiet = quiet or bool(extra.get("quiet", False))
    try:
        runs, part = compare(cfg, specs, out, jobs=jobs, quiet=quiet, seeds=seeds)
    except RunFailed as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2 if e.user_error else 1) from None
    except _user_errors() as e:
        _fail(str(e))

    from fedpress.report.tables import results_table, rich_table

    if seeds > 1:
        from fedpress.report.seeds import seed_columns, seeds_note, seeds_table
        from fedpress.report.tables import to_jsonable

        rows = seeds_table(runs, target=cfg.target)
        if json_out:
            sys.stdout.write(json.dumps(to_jsonable(rows)) + "\n")
        if not quiet:
            _console(False).print(rich_table(
                rows, title=f"{cfg.scenario}: {len(specs)} codecs × {seeds} seeds → {out}/report.html",
                columns=seed_columns(rows), note=seeds_note(rows)))
        return
    if json_out:
        sys.stdout.write(json.dumps(results_table(runs, target=cfg.target), default=str) + "\n")
    if not quiet:
        _console(False).print(rich_table(results_table(runs, target=cfg.target),
                                              title=f"{cfg.scenario}: {len(runs)} codecs → {out}/report.html"))


DEFAULT_CODECS = (
    "none", "fp16", "q:bits=8", "qsgd:levels=16", "ef+topk:ratio=0.01+q:bits=8",
    "ef+powersgd:rank=4", "ef+sign",
)


def compare(cfg, specs: list[str], out: Path, *, jobs: int = 1, quiet: bool = False, on_round=None,
            mp_context=None, seeds: int = 1):
    """Run ``cfg`` once per codec spec and seed (optionally in parallel processes); write the report.

    ``seeds``: every codec runs with ``cfg.seed, cfg.seed + 1, ..., cfg.seed + seeds - 1``, the
    same seeds for every codec, so that seed ``s`` gives each codec the same partition, links and
    client sampling and the report can compare codecs seed by seed. With ``seeds > 1`` runs go to
    ``out/runs/<codec>/seed<s>/`` (else ``out/runs/<codec>/``, as before) and the report
    aggregates over the seeds (:func:`fedpress.report.write_report` with ``over_seeds``).
    Returns ``(runs, partition)``: the runs codec by codec, seed by seed within a codec, and the
    partition summary of the first run.

    ``on_round(index, row)`` is called in this process after every round of every run (row: round,
    metric, cum_uplink_bytes; ``index`` counts runs in that order: ``codec_index * seeds +
    seed_index``), with ``jobs > 1`` too. With ``jobs > 1`` a failing run lets the others finish,
    then raises one :class:`~fedpress.sim.experiment.RunFailed` naming it.
    ``mp_context``: the start method of the pool ('fork', 'spawn'; default: the platform's).

    >>> import tempfile
    >>> from fedpress.sim.experiment import RunConfig
    >>> cfg = RunConfig(scenario="digits", rounds=1, clients=4, per_round=2, seed=7)
    >>> runs, _ = compare(cfg, ["none", "q:bits=8"], Path(tempfile.mkdtemp()), quiet=True, seeds=2)
    >>> [(r["summary"]["codec"], r["summary"]["seed"]) for r in runs]
    [('none', 7), ('none', 8), ('q:bits=8', 7), ('q:bits=8', 8)]
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedpress.data import get_scenario
    from fedpress.report.html import write_report
    from fedpress.sim.experiment import _run_one, run_pool, slug

    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive integer, got {seeds!r}")
    out.mkdir(parents=True, exist_ok=True)
    seed_list = [cfg.seed + k for k in range(seeds)]
    # One seed keeps today's layout (runs/<codec>/) and names, so scripts reading them still work.
    jobs_list = [(dataclasses.replace(cfg, codec=s, seed=k),
                  out / "runs" / slug(s) / f"seed{k}" if seeds > 1 else out / "runs" / slug(s))
                 for s in specs for k in seed_list]
    names = [s if seeds == 1 else f"{s} · seed {k}" for s in specs for k in seed_list]
    labels = [repr(s) if seeds == 1 else f"{s!r} (seed {k})" for s in specs for k in seed_list]
    total_rounds = cfg.rounds or get_scenario(cfg.scenario).rounds
    results: list = [None] * len(jobs_list)
    console = _console(quiet)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
                  disable=quiet) as prog:
        what = "codecs" if seeds == 1 else f"{len(specs)} codecs × {seeds} seeds"
        task = prog.add_task(f"{cfg.scenario}: {what}", total=len(jobs_list), info="")
        if jobs > 1:
            # One bar per run, fed by the rounds the workers send back; a bar's clock starts when a
            # worker takes its run up (again, if a crashed pool makes it rerun).
            bars = [prog.add_task(f"  {n}", total=total_rounds, info="queued", start=False) for n in names]
            last: dict[int, str] = {}

            def show_start(i):
                last[i] = ""
                prog.reset(bars[i], start=True, info="")

            def show_round(i, row):
                last[i] = f"metric {row['metric']:.4f}"
                prog.update(bars[i], completed=row["round"], info=last[i])
                if on_round is not None:
                    on_round(i, row)

            def show_done(i, error):
                prog.update(bars[i], info="[red]failed" if error else f"{last.get(i, '')} ✓".strip())
                prog.stop_task(bars[i])
                prog.update(task, advance=1, info=names[i])

            def show_log(i, text):
                prog.console.print(f"{names[i]}: {text}", markup=False, highlight=False)

            outcomes = run_pool(jobs_list, jobs, on_round=None if quiet and on_round is None else show_round,
                                on_start=show_start, on_log=None if quiet else show_log, on_done=show_done,
                                mp_context=mp_context)
            _raise_failures(labels, jobs_list, outcomes)
            results = outcomes
        else:
            rtask = prog.add_task("  rounds", total=total_rounds, info="")
            for i, j in enumerate(jobs_list):
                prog.update(task, info=names[i])
                prog.reset(rtask)

                def on_row(row, i=i, rtask=rtask):
                    prog.update(rtask, completed=row["round"], info=f"metric {row['metric']:.4f}")
                    if on_round is not None:
                        on_round(i, row)

                results[i] = _run_one(j, on_row)
                prog.advance(task)
    runs = [r[0] for r in results]
    part = results[0][1]
    config = {**dataclasses.asdict(cfg), "codecs": specs}
    config.pop("codec", None)
    if seeds > 1:
        config["seeds"] = seeds  # with "seed", the first: the config reruns as TOML
    write_report(out, runs, config=config, partition=part, target=cfg.target, over_seeds=seeds > 1)
    return runs, part


def _raise_failures(labels, jobs_list, outcomes) -> None:
    """One error for the failed runs of a parallel compare: the first names its codec (``labels``:
    ``'spec'`` or ``'spec' (seed S)``) and counts the rest; a crash (not a user error) leaves its
    traceback in that run's folder, not on the screen."""
    import traceback

    from fedpress.sim.experiment import RunFailed

    failed = [(s, j[1], o) for s, j, o in zip(labels, jobs_list, outcomes, strict=True)
              if isinstance(o, BaseException)]
    if not failed:
        return
    label, run_dir, e = failed[0]
    user = isinstance(e, _user_errors()) and not isinstance(e, RunFailed)
    msg = f"codec {label}: {e}"
    if not user and not isinstance(e, RunFailed):  # a bug: keep its (remote) traceback
        msg = f"codec {label}: {type(e).__name__}: {e}"
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text("".join(traceback.format_exception(e)))
        msg += f" (traceback in {run_dir / 'error.txt'})"
    if len(failed) > 1:
        msg += f"; {len(failed) - 1} more run(s) failed: {', '.join(f[0] for f in failed[1:])}"
    err = RunFailed(msg)
    err.user_error = user
    raise err


def _register_subcommands() -> None:
    # Sub-apps live beside the code they drive; imported lazily so `fedpress --help` stays fast.
    from fedpress.bench import bench_app

    app.add_typer(bench_app, name="bench")


def main() -> None:
    _register_subcommands()
    app()
