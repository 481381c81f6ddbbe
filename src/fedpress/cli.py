"""The ``fedpress`` command line (Typer + Rich).

Errors a user can fix (bad specs, configs, missing data files) print one ``error:`` line and exit
with status 2 — never a traceback.
"""

from __future__ import annotations

import dataclasses
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
    Console().print(t)


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


# Options shared by run and compare; None = "not given" so config files and scenario defaults apply.
Opt = typer.Option
Scenario = Annotated[str | None, Opt("--scenario", "-s", help="scenario name (fedpress scenarios)")]
DownCodec = Annotated[str | None, Opt("--down-codec", help="downlink codec spec (server → clients)")]
Clients = Annotated[int | None, Opt("--clients", help="number of clients")]
PerRound = Annotated[int | None, Opt("--per-round", help="clients sampled per round")]
Rounds = Annotated[int | None, Opt("--rounds", help="federated rounds")]
Alpha = Annotated[float | None, Opt("--alpha", help="Dirichlet label-skew alpha")]
Partition = Annotated[str | None, Opt("--partition", help="iid | dirichlet | shards | quantity | natural")]
Network = Annotated[str | None, Opt("--network", help="wifi | 4g | 3g | nbiot | mixed | none")]
Deadline = Annotated[float | None, Opt("--deadline", help="round deadline in simulated seconds")]
Seed = Annotated[int | None, Opt("--seed", help="random seed")]
Epochs = Annotated[int | None, Opt("--local-epochs", help="local epochs per round")]
Lr = Annotated[float | None, Opt("--lr", help="client learning rate")]
Batch = Annotated[int | None, Opt("--batch-size", help="client batch size")]
Strategy = Annotated[str | None, Opt("--strategy", help="fedavg | fedprox | fedavgm | fedadam | fedyogi")]
ServerLr = Annotated[float | None, Opt("--server-lr", help="server learning rate")]
ProxMu = Annotated[float | None, Opt("--prox-mu", help="FedProx mu")]
L1 = Annotated[float | None, Opt("--l1", help="L1 strength (proximal, exact zeros)")]
L2 = Annotated[float | None, Opt("--l2", help="L2 weight decay")]
Prune = Annotated[float | None, Opt("--prune", help="magnitude-prune to this sparsity (e.g. 0.9)")]
PruneMode = Annotated[str | None, Opt("--prune-mode", help="oneshot | gradual")]
PruneScope = Annotated[str | None, Opt("--prune-scope", help="global | layer")]
Target = Annotated[float | None, Opt("--target", help="metric target: report rounds/time/bytes to reach it")]
DataRoot = Annotated[str | None, Opt("--data-root", help="folder with mnist/fashion-mnist/cifar10 files")]
Config = Annotated[Path | None, Opt("--config", help="TOML file with any of these options")]
Policy = Annotated[str | None, Opt("--policy", help="fixed | deadline:seconds=S[,skip=0|1,sync=0|1,cut=C,unknown=hard|prior,slack=F,safety=F] | budget:bytes=B | accordion")]
Jitter = Annotated[float | None, Opt("--jitter", help="per-round lognormal sigma of link bandwidths")]
SecAgg = Annotated[bool | None, Opt("--secagg/--no-secagg", help="secure aggregation (needs a fixed-range codec)")]
SecAggT = Annotated[int | None, Opt("--secagg-threshold", help="Shamir threshold t (default: majority)")]
Dropout = Annotated[float | None, Opt("--dropout", help="fraction of clients vanishing after upload")]
DpClip = Annotated[float | None, Opt("--dp-clip", help="DP: L2 clip C of each update")]
DpNoise = Annotated[float | None, Opt("--dp-noise", help="DP: noise multiplier z (sigma = z*C)")]
DpDelta = Annotated[float | None, Opt("--dp-delta", help="DP: delta for the reported epsilon")]
DpAdaptive = Annotated[bool | None, Opt("--dp-adaptive/--no-dp-adaptive", help="DP: adaptive clipping")]
TargetEps = Annotated[float | None, Opt("--target-epsilon", help="DP: size the noise to this epsilon")]
Backend = Annotated[str | None, Opt("--backend", help="local | ray")]
RayAddress = Annotated[str | None, Opt("--address", help="--backend ray: join this Ray cluster (auto, ray://HOST:10001); default: start Ray here")]
Workers = Annotated[int | None, Opt("--workers", help="--backend ray: CPUs of the local Ray (on a cluster: tasks in flight)")]
WaitDeadline = Annotated[bool | None, Opt("--wait-full-deadline/--close-early", help="a round with a dropped straggler lasts the whole deadline (default); --close-early: it ends at the slowest kept client, as if the server knew who will miss")]
Aggregate = Annotated[str | None, Opt("--aggregate", help="auto | mean | sparse_mean (per-coordinate over senders; auto: for top-k/threshold)")]
Quiet = Annotated[bool, Opt("--quiet", "-q", help="no progress bars or tables")]
Json = Annotated[bool, Opt("--json", help="print the summary as JSON on stdout")]


def _cli_options(params: dict) -> dict:
    """The command's parameters that are RunConfig fields (one list of options, not two)."""
    from fedpress.sim.experiment import RunConfig

    renamed = {"address": "ray_address"}
    out = {renamed.get(k, k): v for k, v in params.items()}
    # compare's --codec is a list of specs, handled by compare itself
    return {k: v for k, v in out.items()
            if k in RunConfig.__dataclass_fields__ and not (k == "codec" and isinstance(v, list))}


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
def run_cmd(
    scenario: Scenario = None,
    codec: Annotated[str | None, Opt("--codec", "-c", help="uplink codec spec, e.g. ef+topk:ratio=0.01+q:bits=8")] = None,
    down_codec: DownCodec = None, clients: Clients = None, per_round: PerRound = None,
    rounds: Rounds = None, alpha: Alpha = None, partition: Partition = None, network: Network = None,
    deadline: Deadline = None, seed: Seed = None, local_epochs: Epochs = None, lr: Lr = None,
    batch_size: Batch = None, strategy: Strategy = None, server_lr: ServerLr = None,
    prox_mu: ProxMu = None, l1: L1 = None, l2: L2 = None, prune: Prune = None,
    prune_mode: PruneMode = None, prune_scope: PruneScope = None, target: Target = None,
    data_root: DataRoot = None, policy: Policy = None, jitter: Jitter = None,
    secagg: SecAgg = None, secagg_threshold: SecAggT = None, dropout: Dropout = None,
    dp_clip: DpClip = None, dp_noise: DpNoise = None, dp_delta: DpDelta = None,
    dp_adaptive: DpAdaptive = None, target_epsilon: TargetEps = None, backend: Backend = None,
    address: RayAddress = None, workers: Workers = None,
    aggregate: Aggregate = None, wait_full_deadline: WaitDeadline = None,
    per_client_eval: Annotated[bool | None, Opt("--per-client-eval/--no-per-client-eval", help="also evaluate the global model on every client's data each round")] = None,
    checkpoint_every: Annotated[int | None, Opt("--checkpoint-every", help="checkpoint every N rounds")] = None,
    resume: Annotated[Path | None, Opt("--resume", help="resume from this run folder's checkpoint")] = None,
    out: Annotated[Path, Opt("--out", "-o", help="output folder")] = Path("results/run"),
    config: Config = None, quiet: Quiet = False, json_out: Json = False,
) -> None:
    """Run one federated experiment; writes OUT/metrics.jsonl and OUT/summary.json."""
    cfg, _ = _merge(config, False, _cli_options(locals()))
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

            res, _ = run_experiment(cfg, out, resume=resume, progress=on_round)
    except _user_errors() as e:
        _fail(str(e))
    if json_out:
        sys.stdout.write(json.dumps(res.summary, default=str) + "\n")
    if not quiet:
        from fedpress.report.tables import results_table, rich_table

        runs = [{"summary": res.summary, "history": res.history}]
        console.print(rich_table(results_table(runs, target=cfg.target), title=f"fedpress run → {out}"))


@app.command("compare")
def compare_cmd(
    scenario: Scenario = None,
    codec: Annotated[list[str] | None, Opt("--codec", "-c", help="codec spec; repeat for each codec")] = None,
    down_codec: DownCodec = None, clients: Clients = None, per_round: PerRound = None,
    rounds: Rounds = None, alpha: Alpha = None, partition: Partition = None, network: Network = None,
    deadline: Deadline = None, seed: Seed = None, local_epochs: Epochs = None, lr: Lr = None,
    batch_size: Batch = None, strategy: Strategy = None, server_lr: ServerLr = None,
    prox_mu: ProxMu = None, l1: L1 = None, l2: L2 = None, prune: Prune = None,
    prune_mode: PruneMode = None, prune_scope: PruneScope = None, target: Target = None,
    data_root: DataRoot = None, policy: Policy = None, jitter: Jitter = None,
    secagg: SecAgg = None, secagg_threshold: SecAggT = None, dropout: Dropout = None,
    dp_clip: DpClip = None, dp_noise: DpNoise = None, dp_delta: DpDelta = None,
    dp_adaptive: DpAdaptive = None, target_epsilon: TargetEps = None, backend: Backend = None,
    address: RayAddress = None, workers: Workers = None,
    aggregate: Aggregate = None, wait_full_deadline: WaitDeadline = None,
    jobs: Annotated[int | None, Opt("--jobs", "-j", help="run codecs in N parallel processes")] = None,
    out: Annotated[Path | None, Opt("--out", "-o", help="output folder")] = None,
    config: Config = None, quiet: Quiet = False, json_out: Json = False,
) -> None:
    """Run several codecs on one scenario; writes results.csv/json, plots and report.html."""
    cfg, extra = _merge(config, True, _cli_options(locals()))
    from fedpress.codecs import Codec, SpecError

    specs = codec or extra.get("codecs") or list(DEFAULT_CODECS)
    try:
        specs = [Codec(s).spec for s in specs]
    except SpecError as e:
        _fail(str(e))
    if len(set(specs)) != len(specs):
        _fail("the same codec is listed twice")
    out = out or Path(extra.get("out", f"results/{cfg.scenario}"))
    jobs = jobs or int(extra.get("jobs", 1))
    quiet = quiet or bool(extra.get("quiet", False))
    try:
        runs, part = compare(cfg, specs, out, jobs=jobs, quiet=quiet)
    except _user_errors() as e:
        _fail(str(e))

    from fedpress.report.tables import results_table, rich_table

    if json_out:
        sys.stdout.write(json.dumps(results_table(runs, target=cfg.target), default=str) + "\n")
    if not quiet:
        _console(False).print(rich_table(results_table(runs, target=cfg.target),
                                              title=f"{cfg.scenario}: {len(runs)} codecs → {out}/report.html"))


DEFAULT_CODECS = (
    "none", "fp16", "q:bits=8", "qsgd:levels=16", "ef+topk:ratio=0.01+q:bits=8",
    "ef+powersgd:rank=4", "ef+sign",
)


def compare(cfg, specs: list[str], out: Path, *, jobs: int = 1, quiet: bool = False):
    """Run ``cfg`` once per codec spec (optionally in parallel processes) and write the report."""
    from concurrent.futures import ProcessPoolExecutor

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedpress.report.html import write_report
    from fedpress.sim.experiment import _run_one, slug

    out.mkdir(parents=True, exist_ok=True)
    jobs_list = [(dataclasses.replace(cfg, codec=s), out / "runs" / slug(s)) for s in specs]
    results: dict[str, tuple] = {}
    console = _console(quiet)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
                  disable=quiet) as prog:
        task = prog.add_task(f"{cfg.scenario}: codecs", total=len(jobs_list), info="")
        if jobs > 1:
            with ProcessPoolExecutor(max_workers=jobs) as ex:
                futs = {ex.submit(_run_one, j): j[0].codec for j in jobs_list}
                for f in futs:
                    results[futs[f]] = f.result()
                    prog.update(task, advance=1, info=futs[f])
        else:
            from fedpress.data import get_scenario

            rtask = prog.add_task("  rounds", total=cfg.rounds or get_scenario(cfg.scenario).rounds, info="")
            for j in jobs_list:
                prog.update(task, info=j[0].codec)
                prog.reset(rtask)

                def on_round(row, rtask=rtask):
                    prog.update(rtask, completed=row["round"], info=f"metric {row['metric']:.4f}")

                results[j[0].codec] = _run_one(j, on_round)
                prog.advance(task)
    runs = [results[s][0] for s in specs]
    part = results[specs[0]][1]
    config = {**dataclasses.asdict(cfg), "codecs": specs}
    config.pop("codec", None)
    write_report(out, runs, config=config, partition=part, target=cfg.target)
    return runs, part


def _register_subcommands() -> None:
    # Sub-apps live beside the code they drive; imported lazily so `fedpress --help` stays fast.
    from fedpress.bench import bench_app

    app.add_typer(bench_app, name="bench")


def main() -> None:
    _register_subcommands()
    app()
