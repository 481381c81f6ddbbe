import importlib.machinery
import sys

import pytest
import torch

from fedpress.sim.runner import Simulation


def _acc(probs, y):
    return float((probs.argmax(1) == y).mean())


def _model():
    return torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def _setup():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 10, generator=g) * 2

    def make(m):
        y = torch.randint(0, 3, (m,), generator=g)
        return centers[y] + torch.randn(m, 10, generator=g), y

    return [make(40) for _ in range(6)], make(200)


@pytest.mark.slow
def test_ray_backend_gives_identical_history():
    ray = pytest.importorskip("ray")
    clients, test = _setup()
    kw = {"rounds": 3, "per_round": 4, "lr": 0.1, "metric": _acc, "codec": "ef+topk:ratio=0.2+qsgd:levels=8"}
    local = Simulation(_model, clients, test, **kw).run()
    try:
        remote = Simulation(_model, clients, test, backend="ray",
                            backend_options={"num_cpus": 2}, **kw).run()
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert remote.history == local.history


def test_unknown_backend():
    clients, test = _setup()
    with pytest.raises(ValueError, match="unknown backend"):
        Simulation(_model, clients, test, backend="spark")


class _Ref:
    def __init__(self, value):
        self.value = value


class _FakeRay:
    """Just enough of Ray's API to run RayBackend in this process: tasks run at submission."""

    __spec__ = importlib.machinery.ModuleSpec("ray", None)

    def __init__(self):
        self.puts: list = []
        self.up = False
        self.init_kwargs: dict = {}

    def is_initialized(self):
        return self.up

    def init(self, **kw):
        self.up, self.init_kwargs = True, kw

    def shutdown(self):
        self.up = False

    def put(self, value):
        self.puts.append(value)
        return _Ref(value)

    def get(self, refs):
        return [r.value for r in refs] if isinstance(refs, list) else refs.value

    def wait(self, refs, num_returns=1):
        return refs[:num_returns], refs[num_returns:]

    def remote(self, **_options):
        def wrap(fn):
            class Task:
                @staticmethod
                def remote(*args):
                    return _Ref(fn(*(a.value if isinstance(a, _Ref) else a for a in args)))

            return Task

        return wrap


def _many_clients(n, m=8):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(m, 10, generator=g), torch.randint(0, 3, (m,), generator=g)) for _ in range(n)]


def test_ray_backend_puts_client_data_lazily(monkeypatch):
    """With 3000 registered clients, only the sampled ones' data reaches the object store, and
    only the recent ones stay there; the history equals the local backend's."""
    fake = _FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    clients, (_, test) = _many_clients(3000), _setup()
    kw = {"rounds": 4, "per_round": 5, "lr": 0.1, "metric": _acc, "codec": "ef+topk:ratio=0.2+q:bits=8"}
    local = Simulation(_model, clients, test, **kw).run()
    sim = Simulation(_model, clients, test, backend="ray", backend_options={"num_cpus": 2}, **kw)
    remote = sim.run()
    assert remote.history == local.history
    assert fake.init_kwargs["num_cpus"] == 2 and not fake.up  # started here, shut down after
    sampled = [int(c) for h in local.history for c in h["client_uplink_bytes"]]
    data_puts = [p for p in fake.puts if isinstance(p, tuple)]
    assert len(data_puts) == sim._backend.placed == len(set(sampled)) <= 20
    assert sim._backend.cached == []  # released on close


def test_ray_backend_data_cache_and_cluster_cap(monkeypatch):
    from fedpress.fl.client import TrainConfig
    from fedpress.sim.backends import ClientJob, RayBackend

    fake = _FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    clients = _many_clients(100)
    be = RayBackend(_model, clients, address="ray://head:10001", num_cpus=2)
    assert fake.init_kwargs["address"] == "ray://head:10001" and "num_cpus" not in fake.init_kwargs
    assert be.max_in_flight == 2  # joining a cluster: --workers caps the tasks in flight
    params = {k: v.detach().clone() for k, v in _model().state_dict().items()}
    keys = [k for k, v in params.items() if v.is_floating_point()]

    def rnd(cs):
        jobs = [ClientJob(client=c, spec="q:bits=8", state=None, train_seed=c, encode_seed=c) for c in cs]
        outs = be.map(params, jobs, TrainConfig(), float_keys=keys)
        assert [o["client"] for o in outs] == cs and all("blob" in o for o in outs)

    rnd([1, 2, 3, 4, 5])
    rnd([4, 5, 6, 7, 8])  # 4 and 5 are still there
    assert be.placed == 8 and be.cached == [1, 2, 3, 4, 5, 6, 7, 8]  # least recent first
    rnd([9, 10, 11, 12, 13])  # cache: twice the largest round (10); 1, 2, 3 fall out
    assert be.placed == 13 and len(be.cached) == 10 and 1 not in be.cached
    rnd([1])
    assert be.placed == 14  # put again when sampled again
    be.close()
    assert be.cached == [] and not fake.up


@pytest.mark.slow
def test_ray_backend_many_registered_clients_real_ray():
    """On a real (local) Ray: 5000 registered clients, only the sampled ones are put."""
    ray = pytest.importorskip("ray")
    clients, (_, test) = _many_clients(5000), _setup()
    kw = {"rounds": 3, "per_round": 4, "lr": 0.1, "metric": _acc, "codec": "ef+topk:ratio=0.2+q:bits=8"}
    local = Simulation(_model, clients, test, **kw).run()
    sim = Simulation(_model, clients, test, backend="ray", backend_options={"num_cpus": 2}, **kw)
    try:
        remote = sim.run()
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert remote.history == local.history
    sampled = {int(c) for h in local.history for c in h["client_uplink_bytes"]}
    assert sim._backend.placed == len(sampled) <= 12


def test_cli_backend_ray_flags(monkeypatch, tmp_path):
    """`fedpress run --backend ray --workers N` starts a local Ray with N CPUs; `--address` joins a
    cluster instead; both flags without --backend ray are one clear error."""
    from typer.testing import CliRunner

    from fedpress.cli import app

    tiny = ["run", "--scenario", "digits", "--rounds", "1", "--clients", "5", "--per-round", "2", "-q"]
    runner = CliRunner()
    fake = _FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    r = runner.invoke(app, [*tiny, "--backend", "ray", "--workers", "3", "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert fake.init_kwargs.get("num_cpus") == 3 and "address" not in fake.init_kwargs
    r = runner.invoke(app, [*tiny, "--backend", "ray", "--address", "ray://head:10001", "--workers", "2",
                            "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert fake.init_kwargs == {"address": "ray://head:10001", "log_to_driver": False,
                                "configure_logging": False}
    r = runner.invoke(app, [*tiny, "--workers", "2", "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "error: --address and --workers are options of --backend ray" in r.output


def test_ray_backend_ships_views_compactly(monkeypatch):
    from fedpress.sim.backends import RayBackend

    fake = _FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    big_x, big_y = torch.randn(1000, 10), torch.randint(0, 3, (1000,))
    clients = [(big_x[i:i + 10], big_y[i:i + 10]) for i in range(0, 1000, 10)]  # views
    be = RayBackend(_model, clients)
    x, y = be.ray.get(be._data(3))
    assert torch.equal(x, clients[3][0]) and torch.equal(y, clients[3][1])
    assert x.untyped_storage().nbytes() == 10 * 10 * 4  # only its own rows travel
    be.close()


def test_client_update_trains_from_a_lossy_start_and_takes_its_delta_from_it():
    from fedpress import compress, decompress
    from fedpress.fl.client import TrainConfig
    from fedpress.sim.backends import ClientJob, client_update
    from fedpress.wire.format import Structure

    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    data = (torch.randn(20, 6), torch.randint(0, 3, (20,)))
    blob = compress(params, "q:bits=4")
    lossy = decompress(blob)
    assert any(not torch.equal(lossy[k], params[k]) for k in params)
    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.0)  # no step: the update is only the start's error
    job = ClientJob(client=0, spec="none", state=None, train_seed=1, encode_seed=2, start=blob)
    kw = {"structures": [Structure.of(params)], "specs": ["none"]}  # uplink blobs carry references
    out = client_update(model, params, data, cfg, job, float_keys=list(params))
    assert all(torch.count_nonzero(v) == 0 for v in decompress(out["blob"], **kw).values())
    exact = client_update(model, params, data, cfg, ClientJob(0, "none", None, 1, 2), float_keys=list(params))
    assert all(torch.count_nonzero(v) == 0 for v in decompress(exact["blob"], **kw).values())
    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.1)
    a = client_update(model, params, data, cfg, job, float_keys=list(params))
    b = client_update(model, params, data, cfg, ClientJob(0, "none", None, 1, 2), float_keys=list(params))
    assert a["blob"] != b["blob"]  # it really trained from the lossy copy
