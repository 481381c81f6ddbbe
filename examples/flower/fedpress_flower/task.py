"""Data, model and local training shared by the ServerApp and the ClientApp.

The data is fedpress's ``digits`` scenario (sklearn's 8x8 handwritten digits, bundled with
scikit-learn, so nothing is downloaded); partition ``i`` of ``n`` is a Dirichlet label-skewed share.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from fedpress.data import compute_metric, get_scenario
from fedpress.fl.client import TrainConfig, evaluate_loss, local_train, predict_proba
from fedpress.sim.partition import partition
from fedpress.sim.runner import derive_seed

SCENARIO = "digits"


@lru_cache(maxsize=1)
def _load(seed: int):
    sc = get_scenario(SCENARIO)
    return sc, sc.load(seed=seed)


def build_model(seed: int) -> torch.nn.Module:
    """The scenario's model, with initial weights fixed by ``seed``."""
    sc, data = _load(seed)
    torch.manual_seed(seed)
    return sc.build_model(data)


def client_data(partition_id: int, num_partitions: int, seed: int, alpha: float):
    """(x, y) of one partition of the training split."""
    _, data = _load(seed)
    parts = partition(data.y_train.numpy(), num_partitions, "dirichlet", alpha=alpha, seed=seed)
    idx = torch.from_numpy(np.asarray(parts[partition_id]))
    return data.x_train[idx], data.y_train[idx]


def train(params: dict[str, torch.Tensor], x, y, *, seed: int, server_round: int, partition_id: int,
          epochs: int, lr: float, batch_size: int, prox_mu: float = 0.0):
    """Local SGD from ``params``; returns (new params, mean training loss)."""
    torch.set_num_threads(1)
    model = build_model(seed)
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, prox_mu=prox_mu)
    return local_train(model, params, (x, y), cfg,
                       seed=derive_seed(seed, server_round, partition_id, 2))


def evaluate(params: dict[str, torch.Tensor], x, y, seed: int) -> tuple[float, float]:
    """(accuracy, loss) of ``params`` on (x, y)."""
    model = build_model(seed)
    probs = predict_proba(model, params, x).numpy()
    return float(compute_metric("accuracy", probs, y.numpy())), evaluate_loss(model, params, x, y)


def test_split(seed: int):
    """(x, y) of the held-out test split, for the server's central evaluation."""
    _, data = _load(seed)
    return data.x_test, data.y_test
