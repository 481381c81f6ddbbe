"""End to end on a real Flower deployment: a SuperLink and two SuperNodes on 127.0.0.1, and
``flwr run`` of examples/flower with compressed uplink and downlink for two rounds.

Every process this test starts gets its own session and is stopped by its process-group id,
whatever happens; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("flwr")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "flower"
BIN = Path(sys.executable).parent
UP, DOWN = "ef+topk:ratio=0.05+q:bits=8", "ef+q:bits=8"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early with {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process started with start_new_session=True, and its children (SuperExec,
    ServerApp/ClientApp processes), by its process-group id."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
    with contextlib.suppress(ProcessLookupError):  # children left behind in the group
        os.killpg(proc.pid, signal.SIGKILL)


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
        port = _free_port()
        link = start("superlink", "flower-superlink", "--insecure", "--host", "127.0.0.1",
                     "--port", str(port), "--disable-runtime-dependency-installation")
        _wait_port(port, link, 60)
        for i in range(2):
            start(f"supernode{i}", "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}",
                  "--port", str(_free_port()), "--node-config", f"partition-id={i} num-partitions=2")
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "e2e"\n\n[superlink.e2e]\naddress = "127.0.0.1:{port}"\n'
            "insecure = true\n")
        yield env, logs
    finally:
        for p in reversed(procs):
            _stop(p)


def _tail(logs: dict[str, Path], n: int = 4000) -> str:
    return "\n".join(f"--- {k}\n{p.read_text(errors='replace')[-n:]}" for k, p in logs.items() if p.exists())


def test_flwr_run_example_with_compression(deployment, tmp_path):
    env, logs = deployment
    app = tmp_path / "app"
    shutil.copytree(EXAMPLE, app, ignore=shutil.ignore_patterns("__pycache__", ".flwr"))
    out = tmp_path / "result.json"
    cfg = f'num-server-rounds=2 codec="{UP}" down-codec="{DOWN}" out="{out}"'
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
    assert [r["round"] for r in rounds] == [1, 2]
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
    # Round 1 sends every node the full model; round 2 only a compressed delta, which the nodes
    # could apply because context.state kept their copy between ClientApp processes.
    assert len(full) == 2
    for node, n in rounds[1]["client_downlink_bytes"].items():
        assert n < full[node] / 3
    # Uplink: top-5 % with 8-bit values is far below the model's size.
    assert max(n for r in rounds for n in r["client_uplink_bytes"].values()) < min(full.values()) / 5
    assert res["final_accuracy"] is not None

    # Flower's own accounting: the run completed, and what the SuperLink received is far below
    # what four uncompressed models would take.
    ls = subprocess.run([str(BIN / "flwr"), "ls", "e2e", "--format", "json"], env=env, cwd=tmp_path,
                        capture_output=True, text=True, timeout=60)
    runs = json.loads(ls.stdout)["runs"]
    assert len(runs) == 1 and runs[0]["status"] == "finished:completed", ls.stdout
    inbound = runs[0]["network-traffic"]["inbound-bytes"]
    total_up = sum(r["uplink_bytes"] for r in rounds)
    assert total_up <= inbound < 4 * min(full.values()) / 2, (inbound, total_up, full)
