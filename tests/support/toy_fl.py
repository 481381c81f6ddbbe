"""A tiny federated task the simulator tests share: 3 Gaussian blobs in 10-d, an MLP, accuracy."""

import torch


def accuracy(probs, y):
    return float((probs.argmax(1) == y).mean())


def blobs(n_clients=8, n=60, seed=0):
    """``n_clients`` datasets of ``n`` points each, and a 300-point test set, from one generator."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 10, generator=g) * 2

    def make(m):
        y = torch.randint(0, 3, (m,), generator=g)
        return centers[y] + torch.randn(m, 10, generator=g), y

    return [make(n) for _ in range(n_clients)], make(300)


def mlp():
    return torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def random_task(seed: int, *, n: int, n_test: int, features: int = 10, hidden: int = 64, n_clients: int = 4):
    """``(model_fn, clients, test)``: pure-noise 3-class data (the policy and report tests care
    about bytes and links, not accuracy), drawn clients first, then the test set."""
    g = torch.Generator().manual_seed(seed)
    clients = [(torch.randn(n, features, generator=g), torch.randint(0, 3, (n,), generator=g))
               for _ in range(n_clients)]
    test = (torch.randn(n_test, features, generator=g), torch.randint(0, 3, (n_test,), generator=g))

    def model():
        return torch.nn.Sequential(torch.nn.Linear(features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 3))

    return model, clients, test
