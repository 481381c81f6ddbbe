import torch

from fedpress.fl.client import TrainConfig, local_train


def _setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    x = torch.randn(96, 8)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return model, {k: v.clone() for k, v in model.state_dict().items()}, (x, y)


def test_training_reduces_loss_and_is_deterministic():
    model, p, data = _setup()
    cfg = TrainConfig(epochs=5, batch_size=16, lr=0.2)
    a, loss_a = local_train(model, p, data, cfg, seed=1)
    b, loss_b = local_train(model, p, data, cfg, seed=1)
    assert all(torch.equal(a[k], b[k]) for k in a) and loss_a == loss_b
    _, loss_more = local_train(model, a, data, cfg, seed=2)
    assert loss_more < loss_a


def test_l1_proximal_makes_exact_zeros():
    model, p, data = _setup()
    dense, _ = local_train(model, p, data, TrainConfig(epochs=3, lr=0.1), seed=0)
    sparse, _ = local_train(model, p, data, TrainConfig(epochs=3, lr=0.1, l1=0.5), seed=0)
    z_dense = sum(int((v == 0).sum()) for k, v in dense.items() if v.dim() > 1)
    z_sparse = sum(int((v == 0).sum()) for k, v in sparse.items() if v.dim() > 1)
    assert z_dense == 0 and z_sparse > 50


def test_masks_keep_pruned_weights_at_zero():
    model, p, data = _setup()
    mask = torch.rand(p["0.weight"].shape) > 0.5
    p["0.weight"] = p["0.weight"] * mask
    out, _ = local_train(model, p, data, TrainConfig(epochs=2, lr=0.1, momentum=0.9), seed=0,
                         masks={"0.weight": mask})
    assert torch.all(out["0.weight"][~mask] == 0)
    assert torch.any(out["0.weight"][mask] != p["0.weight"][mask])


def test_fedprox_keeps_weights_closer_to_anchor():
    model, p, data = _setup()
    far, _ = local_train(model, p, data, TrainConfig(epochs=5, lr=0.2), seed=0)
    near, _ = local_train(model, p, data, TrainConfig(epochs=5, lr=0.2, prox_mu=5.0), seed=0)

    def dist(q):
        return sum(float(((q[k] - p[k]) ** 2).sum()) for k in p)

    assert dist(near) < dist(far)
