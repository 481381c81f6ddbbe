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
