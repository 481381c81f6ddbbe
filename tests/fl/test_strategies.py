import pytest
import torch

from fedpress.fl.strategies import make_strategy


def _quad_descent(name, steps=200, **kw):
    """Minimise 0.5*||w - 3||^2 with pseudo-gradient deltas -(w-3)*0.1."""
    s = make_strategy(name, **kw)
    p = {"w": torch.zeros(4)}
    st = s.init(p)
    for _ in range(steps):
        p, st = s.apply(p, {"w": -(p["w"] - 3.0) * 0.1}, st)
    return p["w"]


@pytest.mark.parametrize("name,kw", [("fedavg", {}), ("fedavgm", {"momentum": 0.5}),
                                     ("fedadam", {"server_lr": 0.05}), ("fedyogi", {"server_lr": 0.05})])
def test_strategies_converge_on_a_quadratic(name, kw):
    w = _quad_descent(name, **kw)
    assert torch.allclose(w, torch.full((4,), 3.0), atol=0.05), w


def test_fedavg_applies_delta_exactly():
    s = make_strategy("fedavg")
    p, _ = s.apply({"w": torch.ones(3)}, {"w": torch.tensor([1.0, -1.0, 0.5])}, s.init({"w": torch.ones(3)}))
    assert p["w"].tolist() == [2.0, 0.0, 1.5]


def test_unknown_strategy_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown strategy 'fedfoo'"):
        make_strategy("fedfoo")


def test_yogi_differs_from_adam():
    a = _quad_descent("fedadam", steps=5, server_lr=0.05)
    y = _quad_descent("fedyogi", steps=5, server_lr=0.05)
    assert not torch.allclose(a, y)
