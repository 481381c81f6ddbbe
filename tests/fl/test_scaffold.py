"""SCAFFOLD's pure pieces (fedpress.fl.scaffold) and the client's gradient correction."""

import torch

from fedpress.fl import scaffold
from fedpress.fl.client import TrainConfig, local_train


def test_control_delta_is_option_two_without_the_clients_own_variate():
    """Δcᵢ = cᵢ⁺ − cᵢ with cᵢ⁺ = cᵢ − ĉ + (x − yᵢ)/(Kη): the same whatever cᵢ was."""
    g = torch.Generator().manual_seed(0)
    c_hat = {"w": torch.randn(3, 2, generator=g)}
    delta = {"w": torch.randn(3, 2, generator=g), "buf": torch.ones(1)}  # keys outside ĉ are ignored
    for c_i in (torch.zeros(3, 2), torch.randn(3, 2, generator=g)):
        new_ci = c_i - c_hat["w"] + (-delta["w"]) / (7 * 0.05)
        d = scaffold.control_delta(delta, c_hat, steps=7, lr=0.05)
        assert set(d) == {"w"}
        torch.testing.assert_close(c_i + d["w"], new_ci)


def test_commit_keeps_c_the_mean_of_all_clients_variates():
    g = torch.Generator().manual_seed(1)
    params = {"w": torch.zeros(4), "b": torch.zeros(2), "running": torch.zeros(3)}
    st = scaffold.init(params, ["w", "b"])
    assert set(st["c"]) == {"w", "b"} and st["ci"] == {}
    n_clients = 6
    for rnd in range(5):
        c_hat = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in st["c"].items()}  # lossy copy
        who = [(rnd + j) % n_clients for j in range(3)]
        deltas = {c: scaffold.control_delta({k: torch.randn(v.shape, generator=g) for k, v in params.items()},
                                            c_hat, steps=3 + c, lr=0.1) for c in who}
        before = {c: st["ci"].get(c) for c in range(n_clients)}
        st = scaffold.commit(st, deltas, n_clients=n_clients)
        for c in range(n_clients):
            if c not in who:  # not aggregated this round: its variate is unchanged
                assert (st["ci"].get(c) is None) == (before[c] is None)
                if before[c] is not None:
                    torch.testing.assert_close(st["ci"][c]["w"], before[c]["w"])
        for k in ("w", "b"):
            mean = sum(st["ci"][c][k] for c in st["ci"]) / n_clients  # absent clients hold 0
            torch.testing.assert_close(st["c"][k], mean)


def test_sent_controls_travel_under_their_own_names_and_split_back():
    c_hat = {"w": torch.tensor([1.0, -1.0])}
    up = scaffold.with_controls({"w": torch.tensor([0.2, 0.4]), "bn.mean": torch.zeros(1)}, c_hat, steps=2, lr=0.1)
    assert list(up) == ["w", "bn.mean", "scaffold.dc.w"]
    torch.testing.assert_close(up["scaffold.dc.w"], torch.tensor([-2.0, -1.0]))
    model, dc = scaffold.split_controls(up)
    assert list(model) == ["w", "bn.mean"] and list(dc) == ["w"]


def test_correction_is_c_hat_minus_the_clients_variate():
    c_hat = {"w": torch.tensor([1.0, 2.0])}
    assert scaffold.correction(c_hat, None)["w"].tolist() == [1.0, 2.0]
    assert scaffold.correction(c_hat, {"w": torch.tensor([0.5, 3.0])})["w"].tolist() == [0.5, -1.0]
    assert scaffold.local_steps(100, 2, 32) == 8 and scaffold.local_steps(0, 1, 32) == 1


def test_local_train_adds_the_correction_to_every_step():
    """With a loss whose gradient is zero, K plain SGD steps move the weights by exactly −K·η·v."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1, bias=False)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(40, 3), torch.zeros(40)
    v = torch.tensor([[0.5, -1.0, 2.0]])
    cfg = TrainConfig(epochs=2, batch_size=10, lr=0.1)
    new, _ = local_train(model, start, (x, y), cfg, seed=0, loss_fn=lambda out, yy: 0.0 * out.sum(),
                         correction={"weight": v, "not_a_parameter": torch.ones(1)})
    torch.testing.assert_close(new["weight"], start["weight"] - 8 * 0.1 * v)
    # a pruned coordinate stays at zero against the correction; the others move as before
    new, _ = local_train(model, start, (x, y), cfg, seed=0, loss_fn=lambda out, yy: 0.0 * out.sum(),
                         correction={"weight": v}, masks={"weight": torch.tensor([[True, False, True]])})
    assert new["weight"][0, 1] == 0
    keep = [0, 2]
    torch.testing.assert_close(new["weight"][0, keep], (start["weight"] - 8 * 0.1 * v)[0, keep])
