"""fedpress vs Flower's simulation engine on one workload: wall time side by side.

    .venv/bin/python benchmarks/vs_flower.py [--rounds 20] [--workers 2] [--only fedpress-local,...]

The workload, the same in all three: sklearn digits (``fedpress.data.get_scenario("digits")``),
its training split partitioned Dirichlet(0.5) over 20 clients
(``fedpress.sim.partition.partition``, seed 0), its MLP, 10 clients per round, 20 rounds, no
compression (codec ``none``), FedAvg weighted by examples, the scenario's local SGD (lr 0.2,
2 epochs, batch 32) through the same ``fedpress.fl.client.local_train``, one torch thread per
client, and a central test-set evaluation after every round. Same initial weights; each runner
samples its own 10 clients per round, so final accuracies agree up to that sampling.

(a) ``fedpress-local``: ``fedpress.Simulation`` in this process.
(b) ``fedpress-ray``: the same on a local Ray with ``--workers`` CPUs (started before the clock).
(c) ``flower-sim``: a ServerApp (``FedAvg.start``) and a ClientApp on Flower 1.42's simulation
    runtime, the supported (non-deprecated) path: a SuperLink started with ``--simulation`` and
    ``flwr run APP CONNECTION --federation-config "num-supernodes=20 ..."``; its Ray backend gets
    ``--workers`` CPUs, one per ClientApp.

Columns: ``run s`` is the federated loop (fedpress: ``Simulation.run()``; Flower: the ServerApp's
``strategy.start()``, measured inside the ServerApp); ``startup s`` is what comes before it (Ray's
start; for Flower the SuperLink's start, and the part of ``flwr run`` outside the loop: building
and shipping the app, the simulation process, Ray and its actors); ``total s`` is both.
Every number is measured in this run; on a busy machine rerun and compare.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedpress.integrations.processes import free_port, stop_process_group, wait_port

SEED, CLIENTS, ALPHA, PER_ROUND = 0, 20, 0.5, 10
BIN = Path(sys.executable).parent


# ----------------------------------------------------------------------------- fedpress
def run_fedpress(backend: str, rounds: int, workers: int) -> dict:
    import fedpress
    from fedpress.data import get_scenario
    from fedpress.sim.partition import partition

    sc = get_scenario("digits")
    data = sc.load(seed=SEED)
    parts = partition(data.y_train.numpy(), CLIENTS, "dirichlet", alpha=ALPHA, seed=SEED)
    clients = [(data.x_train[p], data.y_train[p]) for p in parts]
    startup = 0.0
    ray = None
    if backend == "ray":
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
        startup = time.perf_counter() - t0
    try:
        sim = fedpress.Simulation(lambda: sc.build_model(data), clients, (data.x_test, data.y_test),
                                  codec="none", rounds=rounds, per_round=PER_ROUND,
                                  local_epochs=sc.local_epochs, lr=sc.lr, batch_size=sc.batch_size,
                                  seed=SEED, network="none", backend=backend)
        t0 = time.perf_counter()
        res = sim.run()
        run_s = time.perf_counter() - t0
    finally:
        if ray is not None:
            ray.shutdown()
    return {"runner": f"fedpress-{backend}", "startup_s": startup, "run_s": run_s,
            "final_accuracy": res.summary["final_metric"],
            "accuracy": [h["metric"] for h in res.history]}


# ----------------------------------------------------------------------------- Flower
FLOWER_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "vsflower"
version = "1.0.0"
description = "fedpress benchmark workload on Flower's simulation runtime"
license = "Apache-2.0"
dependencies = ["flwr==1.42.0"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedpress"

[tool.flwr.app.components]
serverapp = "vsflower.server_app:app"
clientapp = "vsflower.client_app:app"

[tool.flwr.app.config]
rounds = 20
per-round = 10
clients = 20
alpha = 0.5
seed = 0
out = ""
"""

FLOWER_TASK = '''\
"""The workload: fedpress's digits scenario, partitions, model, local SGD and evaluation."""

from functools import lru_cache

import torch

from fedpress.data import compute_metric, get_scenario
from fedpress.fl.client import TrainConfig, evaluate_loss, local_train, predict_proba
from fedpress.sim.partition import partition
from fedpress.sim.runner import derive_seed


@lru_cache(maxsize=1)
def load(seed, clients, alpha):
    sc = get_scenario("digits")
    data = sc.load(seed=seed)
    parts = partition(data.y_train.numpy(), clients, "dirichlet", alpha=alpha, seed=seed)
    return sc, data, parts


def build_model(cfg):
    sc, data, _ = load(int(cfg["seed"]), int(cfg["clients"]), float(cfg["alpha"]))
    return sc.build_model(data)


def client_data(cfg, pid):
    _, data, parts = load(int(cfg["seed"]), int(cfg["clients"]), float(cfg["alpha"]))
    return data.x_train[parts[pid]], data.y_train[parts[pid]]


def train(cfg, params, pid, server_round):
    torch.set_num_threads(1)
    sc, _, _ = load(int(cfg["seed"]), int(cfg["clients"]), float(cfg["alpha"]))
    x, y = client_data(cfg, pid)
    tc = TrainConfig(epochs=sc.local_epochs, lr=sc.lr, batch_size=sc.batch_size)
    # The train seed fedpress.Simulation gives client pid in round index server_round - 1.
    new, loss = local_train(build_model(cfg), params, (x, y), tc,
                            seed=derive_seed(int(cfg["seed"]), server_round - 1, pid, 2))
    return new, loss, len(y)


def evaluate(cfg, params):
    _, data, _ = load(int(cfg["seed"]), int(cfg["clients"]), float(cfg["alpha"]))
    model = build_model(cfg)
    probs = predict_proba(model, params, data.x_test).numpy()
    acc = float(compute_metric("accuracy", probs, data.y_test.numpy()))
    return acc, evaluate_loss(model, params, data.x_test, data.y_test)
'''

FLOWER_CLIENT = '''\
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from vsflower import task

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    params = msg.content["arrays"].to_torch_state_dict()
    rnd = int(msg.content["config"]["server-round"])
    new, loss, n = task.train(context.run_config, params, pid, rnd)
    metrics = MetricRecord({"train_loss": float(loss), "num-examples": n})
    return Message(RecordDict({"arrays": ArrayRecord(new), "metrics": metrics}), reply_to=msg)
'''

FLOWER_SERVER = '''\
import json
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from vsflower import task

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    torch.set_num_threads(1)
    n, k = int(cfg["clients"]), int(cfg["per-round"])
    strategy = FedAvg(fraction_train=k / n, fraction_evaluate=0.0, min_train_nodes=k,
                      min_available_nodes=n)
    torch.manual_seed(int(cfg["seed"]))  # the initial weights fedpress.Simulation starts from
    initial = ArrayRecord(task.build_model(cfg).state_dict())

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        acc, loss = task.evaluate(cfg, arrays.to_torch_state_dict())
        return MetricRecord({"accuracy": acc, "loss": loss})

    t0 = time.perf_counter()
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=int(cfg["rounds"]),
                            train_config=ConfigRecord(), evaluate_fn=central)
    run_s = time.perf_counter() - t0
    ev = result.evaluate_metrics_serverapp
    acc = [ev[r]["accuracy"] for r in sorted(ev) if r > 0]
    Path(str(cfg["out"])).write_text(json.dumps({"run_s": run_s, "accuracy": acc}))
'''




def run_flower(rounds: int, workers: int, keep: Path | None = None) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="vsflower-")) if keep is None else keep
    app = tmp / "app"
    (app / "vsflower").mkdir(parents=True, exist_ok=True)
    (app / "pyproject.toml").write_text(FLOWER_PYPROJECT)
    (app / "vsflower" / "__init__.py").write_text("")
    (app / "vsflower" / "task.py").write_text(FLOWER_TASK)
    (app / "vsflower" / "client_app.py").write_text(FLOWER_CLIENT)
    (app / "vsflower" / "server_app.py").write_text(FLOWER_SERVER)
    home = tmp / "flwr-home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1", "RAY_DISABLE_USAGE_STATS": "1"}
    port = free_port()  # the SuperLink's one HTTP API: Control, Fleet, ServerAppIo
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{port}"\n'
        "insecure = true\n")
    out = tmp / "result.json"
    log = open(tmp / "superlink.log", "wb")  # noqa: SIM115 - closed in finally
    t0 = time.perf_counter()
    link = subprocess.Popen(
        [str(BIN / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
         "--host", "127.0.0.1", "--port", str(port), "--disable-runtime-dependency-installation"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=tmp,
        start_new_session=True)
    try:
        wait_port(port, link, 120)
        link_s = time.perf_counter() - t0
        fed = (f"num-supernodes={CLIENTS} client-resources-num-cpus=1 init-args-num-cpus={workers} "
               "init-args-log-to-driver=false")
        t1 = time.perf_counter()
        run = subprocess.run(
            [str(BIN / "flwr"), "run", str(app), "bench", "--stream", "--federation-config", fed,
             "--run-config", f'rounds={rounds} per-round={PER_ROUND} clients={CLIENTS} alpha={ALPHA} '
                             f'seed={SEED} out="{out}"'],
            env=env, cwd=tmp, capture_output=True, text=True, timeout=3600)
        flwr_run_s = time.perf_counter() - t1
        (tmp / "flwr-run.log").write_text(run.stdout + run.stderr)
        if run.returncode != 0 or not out.exists():
            raise RuntimeError(f"flwr run failed ({run.returncode}); logs in {tmp}\n{run.stdout[-3000:]}"
                               f"\n{run.stderr[-3000:]}")
    finally:
        stop_process_group(link)
        log.close()
    res = json.loads(out.read_text())
    if keep is None:  # kept (with the logs) only when something failed
        shutil.rmtree(tmp, ignore_errors=True)
    return {"runner": "flower-sim", "startup_s": link_s + flwr_run_s - res["run_s"],
            "run_s": res["run_s"], "final_accuracy": res["accuracy"][-1], "accuracy": res["accuracy"],
            "flwr_run_s": flwr_run_s, "superlink_start_s": link_s}


# ----------------------------------------------------------------------------- main
RUNNERS = ("fedpress-local", "fedpress-ray", "flower-sim")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2, help="Ray CPUs for fedpress-ray and Flower")
    ap.add_argument("--only", default=",".join(RUNNERS), help=f"subset of {','.join(RUNNERS)}")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.one:  # one runner in a fresh process: no warm caches or Ray left from another
        if args.one == "flower-sim":
            r = run_flower(args.rounds, args.workers)
        else:
            r = run_fedpress(args.one.split("-", 1)[1], args.rounds, args.workers)
        print(json.dumps(r))
        return
    rows = []
    for name in args.only.split(","):
        if name not in RUNNERS:
            sys.exit(f"unknown runner {name!r} ({', '.join(RUNNERS)})")
        p = subprocess.run([sys.executable, __file__, "--one", name, "--rounds", str(args.rounds),
                            "--workers", str(args.workers)], capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        if p.returncode != 0:
            print(f"{name}: failed\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"digits, Dirichlet({ALPHA}) over {CLIENTS} clients, {PER_ROUND} per round, {args.rounds} "
          f"rounds, codec none, {args.workers} Ray workers")
    head = f"{'runner':<15} {'run s':>8} {'startup s':>9} {'total s':>8} {'final acc':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['runner']:<15} {r['run_s']:>8.2f} {r['startup_s']:>9.2f} "
              f"{r['run_s'] + r['startup_s']:>8.2f} {r['final_accuracy']:>9.4f}")
    by = {r["runner"]: r for r in rows}
    if "flower-sim" in by:
        fl = by["flower-sim"]
        for name in ("fedpress-local", "fedpress-ray"):
            if name in by:
                r = by[name]
                print(f"{name} vs flower-sim: {fl['run_s'] / r['run_s']:.1f}x faster loop, "
                      f"{(fl['run_s'] + fl['startup_s']) / (r['run_s'] + r['startup_s']):.1f}x "
                      "faster end to end")


if __name__ == "__main__":
    main()
