"""End to end on a real Flower deployment: a SuperLink and two SuperNodes on 127.0.0.1, and
``flwr run`` of examples/flower with compressed uplink (``ef+topk:ratio=0.01+q:bits=8``) and
downlink for three rounds. Checks that the model improves, and that every node's uplink blob has
the length the simulator's client code (:func:`fedpress.sim.backends.client_update`) produces for
the same model, data, codec state and seed, and decodes to what the server aggregated.

Every process this test starts gets its own session and is stopped by its process-group id,
whatever happens; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedpress.integrations.processes import free_port, stop_process_group, wait_port

pytestmark = [pytest.mark.slow, pytest.mark.flower]
pytest.importorskip("flwr")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "flower"
BIN = Path(sys.executable).parent
UP, DOWN = "ef+topk:ratio=0.01+q:bits=8", "ef+q:bits=8"
ROUNDS, SEED, EPOCHS, LR = 3, 0, 3, 0.3  # enough local work that 1 % of the update shows in 3 rounds




@pytest.fixture
def deployment(tmp_path):
    home = tmp_path / "flwr-home"
    home.mkdir()
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}
    procs: list[subprocess.Popen] = []
    logs: dict[str, Path] = {}

    def start(name: str, *args: str) -> subprocess.Popen:
        logs[name] = tmp_path / f"{name}.log"
        with open(logs[name], "wb") as out:
            p = subprocess.Popen([str(BIN / args[0]), *args[1:]], stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env, cwd=tmp_path, start_new_session=True)
        procs.append(p)
        return p

    try:
        port = free_port()
        link = start("superlink", "flower-superlink", "--insecure", "--host", "127.0.0.1",
                     "--port", str(port), "--disable-runtime-dependency-installation")
        wait_port(port, link, 60)
        for i in range(2):
            start(f"supernode{i}", "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}",
                  "--port", str(free_port()), "--node-config", f"partition-id={i} num-partitions=2")
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "e2e"\n\n[superlink.e2e]\naddress = "127.0.0.1:{port}"\n'
            "insecure = true\n")
        yield env, logs
    finally:
        for p in reversed(procs):
            stop_process_group(p)


def _tail(logs: dict[str, Path], n: int = 4000) -> str:
    return "\n".join(f"--- {k}\n{p.read_text(errors='replace')[-n:]}" for k, p in logs.items() if p.exists())


def _replay(app: Path, res: dict, models_path: Path, monkeypatch) -> list[dict[int, int]]:
    """Recompute every node's uplink blob in this process with the simulator's client code, from
    the model the node trained from (saved by the ServerApp), and check that the server's aggregate
    is FedAvg of ``global + decoded update``. Returns the blob lengths per round and node."""
    import fedpress
    from fedpress.fl.client import TrainConfig
    from fedpress.integrations.flower import update_seed
    from fedpress.sim.backends import ClientJob, client_update
    from fedpress.sim.runner import derive_seed
    from fedpress.wire import Structure

    monkeypatch.syspath_prepend(str(app))
    monkeypatch.delitem(sys.modules, "fedpress_flower", raising=False)
    monkeypatch.delitem(sys.modules, "fedpress_flower.task", raising=False)
    from fedpress_flower import task

    # Which partition each node holds: the ServerApp sees node ids, each node knows its partition-id
    # (node config). The two partitions differ in size, and "num-examples" names it.
    sizes = {pid: len(task.client_data(pid, 2, SEED, 0.5)[1]) for pid in (0, 1)}
    assert sizes[0] != sizes[1], sizes
    by_size = {n: pid for pid, n in sizes.items()}
    m = res["rounds"][0]["client_metrics"]
    pids = {int(node): by_size[int(mm["num-examples"])] for node, mm in m.items()}
    assert sorted(pids.values()) == [0, 1], m

    saved = np.load(models_path)

    def model(r: int, kind: str) -> dict[str, torch.Tensor]:
        pre = f"round{r}/{kind}/"
        return {k[len(pre):]: torch.from_numpy(saved[k]) for k in saved.files if k.startswith(pre)}

    train_cfg = TrainConfig(epochs=EPOCHS, lr=LR, batch_size=32)
    states: dict[int, dict | None] = dict.fromkeys(pids)
    replayed = []
    torch.set_num_threads(1)
    for r in range(1, ROUNDS + 1):
        base, G = model(r, "base"), model(r - 1, "global")
        keys = [k for k, v in base.items() if v.is_floating_point()]
        structure = Structure.of({k: G[k] for k in keys})
        lens, num, den = {}, {k: torch.zeros_like(G[k], dtype=torch.float64) for k in keys}, 0
        for node, pid in sorted(pids.items()):
            x, y = task.client_data(pid, 2, SEED, 0.5)
            job = ClientJob(client=node, spec=UP, state=states[node],
                            train_seed=derive_seed(SEED, r, pid, 2),
                            encode_seed=update_seed(SEED, r, node))
            out = client_update(task.build_model(SEED), base, (x, y), train_cfg, job, float_keys=keys)
            assert "error" not in out, out
            states[node] = out["state"]
            lens[node] = len(out["blob"])
            update = fedpress.decompress(out["blob"], structures=[structure], specs=[UP])
            for k in keys:
                num[k] += len(y) * (G[k].double() + update[k].double())
            den += len(y)
        replayed.append(lens)
        # What the SuperLink's FedAvg made of the blobs the nodes sent equals FedAvg of ours.
        after = model(r, "global")
        for k in keys:
            np.testing.assert_allclose(after[k].numpy(), (num[k] / den).numpy(), rtol=1e-5, atol=1e-6)
    return replayed


def test_flwr_run_example_with_compression(deployment, tmp_path, monkeypatch):
    env, logs = deployment
    app = tmp_path / "app"
    shutil.copytree(EXAMPLE, app, ignore=shutil.ignore_patterns("__pycache__", ".flwr"))
    out, models = tmp_path / "result.json", tmp_path / "models.npz"
    cfg = (f'num-server-rounds={ROUNDS} codec="{UP}" down-codec="{DOWN}" seed={SEED} '
           f'local-epochs={EPOCHS} lr={LR} out="{out}" models-out="{models}"')
    try:
        run = subprocess.run([str(BIN / "flwr"), "run", str(app), "e2e", "--run-config", cfg, "--stream"],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=420)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"flwr run did not finish in time\n{e.stdout}\n{_tail(logs)}")
    assert run.returncode == 0, f"{run.stdout[-4000:]}\n{run.stderr[-4000:]}\n{_tail(logs)}"
    assert out.exists(), f"the ServerApp wrote no result\n{run.stdout[-4000:]}\n{_tail(logs)}"
    res = json.loads(out.read_text())
    assert res["finished"] is True and res["codec"] == UP and res["down_codec"] == DOWN
    rounds = res["rounds"]
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
    full = {}
    for r in rounds:
        ups = r["client_uplink_bytes"]
        assert len(ups) == 2 and all(n > 0 for n in ups.values()), r
        assert r["uplink_bytes"] == sum(ups.values()) and r["rejected"] == {}
        # The same numbers reach Flower's metrics history.
        tm = res["train_metrics"][str(r["round"])]
        assert tm["fedpress-uplink-bytes"] == r["uplink_bytes"]
        assert tm["fedpress-uplink-bytes-per-node"] == [ups[k] for k in sorted(ups, key=int)]
        if r["round"] == 1:
            full = r["client_downlink_bytes"]
    # Round 1 sends every node the full model; later rounds only a compressed delta, which the
    # nodes could apply because context.state kept their copy between ClientApp processes.
    assert len(full) == 2
    for r in rounds[1:]:
        for node, n in r["client_downlink_bytes"].items():
            assert n < full[node] / 3
    # Uplink: top-1 % with 8-bit values is far below the model's size.
    assert max(n for r in rounds for n in r["client_uplink_bytes"].values()) < min(full.values()) / 20

    # The model improves: the server's central evaluation after the last round beats the one
    # before the first.
    assert res["final_loss"] < res["initial_loss"], res
    assert res["final_accuracy"] > res["initial_accuracy"], res

    # The bytes match the simulator's: same model, data, codec state and seed give blobs of the
    # lengths the nodes sent, and they decode to what the server aggregated.
    replayed = _replay(app, res, models, monkeypatch)
    for r in rounds:  # shown with -s / on failure
        print(f"round {r['round']}: uplink {r['client_uplink_bytes']} B, downlink "
              f"{r['client_downlink_bytes']} B, accuracy {r['accuracy']:.4f}, loss {r['loss']:.4f}")
    print(f"before round 1: accuracy {res['initial_accuracy']:.4f}, loss {res['initial_loss']:.4f}")
    for r, lens in zip(rounds, replayed, strict=True):
        assert {int(k): v for k, v in r["client_uplink_bytes"].items()} == lens, (r["round"], lens)

    # Flower's own accounting: the run completed, and what the SuperLink received is far below
    # what the uncompressed models would take.
    ls = subprocess.run([str(BIN / "flwr"), "ls", "e2e", "--format", "json"], env=env, cwd=tmp_path,
                        capture_output=True, text=True, timeout=60)
    runs = json.loads(ls.stdout)["runs"]
    assert len(runs) == 1 and runs[0]["status"] == "finished:completed", ls.stdout
    inbound = runs[0]["network-traffic"]["inbound-bytes"]
    total_up = sum(r["uplink_bytes"] for r in rounds)
    assert total_up <= inbound < 2 * ROUNDS * min(full.values()) / 2, (inbound, total_up, full)
