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
