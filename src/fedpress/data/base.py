"""The two types every scenario speaks: :class:`ScenarioData` (tensors) and :class:`Scenario`
(a named recipe: loader + model + federated defaults)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from fedpress.models import make_model

__all__ = ["METRIC_NAMES", "NETWORKS", "PARTITIONS", "Scenario", "ScenarioData"]

METRIC_NAMES = ("accuracy", "auroc", "auprc", "f1")
PARTITIONS = ("dirichlet", "iid", "shards", "quantity", "natural")
NETWORKS = ("wifi", "4g", "3g", "nbiot", "mixed")


@dataclass
class ScenarioData:
    """Train/test tensors of one scenario, plus optional natural client ids.

    ``groups[i]`` is the client (hospital, bank, device) that owns training sample ``i``; when it
    is ``None`` the simulator partitions by label skew instead.

    >>> d = ScenarioData(torch.zeros(4, 3), torch.tensor([0, 1, 0, 1]),
    ...                  torch.zeros(2, 3), torch.tensor([1, 0]), n_classes=2)
    >>> d.input_shape, d.n_features, d.n_train, d.n_test
    ((3,), 3, 4, 2)
    >>> d.validate() is d
    True
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    groups: np.ndarray | None = None
    description: str = ""

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. ``(64,)`` or ``(1, 8, 8)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def n_features(self) -> int:
        """Number of scalar inputs per sample (the flattened size)."""
        return math.prod(self.input_shape)

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    def validate(self) -> ScenarioData:
        """Check dtypes, shapes and label ranges; return ``self`` or raise ``ValueError``.

        Catching a float label or a misaligned ``groups`` here gives one clear message instead of
        a confusing failure deep inside training or partitioning.
        """
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
                raise ValueError(f"x_{split} must be a float32 tensor, got {_describe(x)}")
            if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.ndim != 1:
                raise ValueError(f"y_{split} must be a 1-D int64 tensor, got {_describe(y)}")
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"x_{split} has {x.shape[0]} rows but y_{split} has {y.shape[0]}")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.n_classes):
                raise ValueError(
                    f"y_{split} labels must lie in [0, {self.n_classes}), "
                    f"got [{int(y.min())}, {int(y.max())}]"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"train/test sample shapes differ: {tuple(self.x_train.shape[1:])} vs "
                f"{tuple(self.x_test.shape[1:])}"
            )
        if self.groups is not None:
            g = np.asarray(self.groups)
            if g.shape != (self.n_train,) or not np.issubdtype(g.dtype, np.integer):
                raise ValueError(
                    f"groups must be an integer array of shape ({self.n_train},), "
                    f"got {g.dtype} {g.shape}"
                )
        return self


@dataclass(frozen=True)
class Scenario:
    """A named federated task: how to load it, which model to train, and sensible defaults.

    ``loader(seed, data_root)`` builds the :class:`ScenarioData`; use :meth:`load`. Defaults
    (``clients``, ``rounds``, ...) are what ``fedpress run --scenario NAME`` uses when no flag
    overrides them; ``dataclasses.replace`` derives a variant.

    >>> from fedpress.data import get_scenario
    >>> sc = get_scenario("digits")
    >>> data = sc.load(seed=0)
    >>> model = sc.build_model(data)
    >>> model(data.x_test[:3]).shape
    torch.Size([3, 10])
    """

    name: str
    help: str
    metric: str
    model: str
    model_kwargs: dict = field(hash=False)
    partition: str
    alpha: float
    network: str
    clients: int
    per_round: int
    rounds: int
    local_epochs: int
    lr: float
    batch_size: int
    synthetic: bool = False
    loader: Callable[[int, str | None], ScenarioData] | None = field(
        default=None, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        # Registry entries are written by hand; a typo in a default should fail at import time,
        # not after minutes of simulation.
        if self.metric not in METRIC_NAMES:
            raise ValueError(f"scenario {self.name!r}: unknown metric {self.metric!r}")
        if self.partition not in PARTITIONS:
            raise ValueError(f"scenario {self.name!r}: unknown partition {self.partition!r}")
        if self.network not in NETWORKS:
            raise ValueError(f"scenario {self.name!r}: unknown network {self.network!r}")
        if not 1 <= self.per_round <= self.clients:
            raise ValueError(
                f"scenario {self.name!r}: per_round={self.per_round} must be in "
                f"[1, clients={self.clients}]"
            )

    def load(self, seed: int = 0, data_root: str | None = None, *,
             max_clients: int | None = None) -> ScenarioData:
        """Load (or generate) the data; deterministic given ``seed``.

        ``data_root`` only matters for file-backed scenarios (mnist, fashion-mnist, cifar10,
        femnist, shakespeare); built-in and synthetic ones ignore it. ``max_clients`` reaches
        loaders that take it (LEAF's: only that many users are read into memory); the others load
        everything and the caller keeps the first groups.
        """
        if self.loader is None:
            raise NotImplementedError(f"scenario {self.name!r} has no loader")
        kw = {}
        if max_clients is not None:
            import inspect

            params = inspect.signature(self.loader).parameters
            if "max_clients" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
                kw["max_clients"] = int(max_clients)
        return self.loader(int(seed), data_root, **kw).validate()

    def build_model(self, data: ScenarioData) -> torch.nn.Module:
        """Build this scenario's model with input size and class count taken from ``data``.

        Seed torch (``torch.manual_seed``) first for reproducible initial weights.
        """
        kw = dict(self.model_kwargs)
        kw.setdefault("n_classes", data.n_classes)
        if self.model == "cnn":
            shape = data.input_shape
            if len(shape) != 3 or shape[1] != shape[2]:
                raise ValueError(
                    f"scenario {self.name!r}: cnn needs square (C, H, W) images, got {shape}"
                )
            kw.setdefault("in_channels", shape[0])
            kw.setdefault("image_size", shape[1])
        else:
            kw.setdefault("in_dim", data.n_features)
        return make_model(self.model, **kw)


def _describe(v) -> str:
    if isinstance(v, torch.Tensor):
        return f"tensor {v.dtype} {tuple(v.shape)}"
    return type(v).__name__


def to_data(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    n_classes: int,
    groups: np.ndarray | None = None,
    description: str = "",
) -> ScenarioData:
    """Wrap numpy arrays as a :class:`ScenarioData` with the contract's dtypes (internal helper)."""
    return ScenarioData(
        x_train=torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32)),
        y_train=torch.from_numpy(np.ascontiguousarray(y_train, dtype=np.int64)),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test, dtype=np.float32)),
        y_test=torch.from_numpy(np.ascontiguousarray(y_test, dtype=np.int64)),
        n_classes=int(n_classes),
        groups=None if groups is None else np.ascontiguousarray(groups, dtype=np.int64),
        description=description,
    )


def standardize(
    x_train: np.ndarray, x_test: np.ndarray, cols: np.ndarray | slice | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Z-score ``cols`` (default: all) with statistics of the training split only.

    Fitting on train only keeps test information out of training, as in a real deployment.
    """
    cols = slice(None) if cols is None else cols
    x_train, x_test = x_train.astype(np.float64), x_test.astype(np.float64)
    mu = x_train[:, cols].mean(axis=0)
    sd = x_train[:, cols].std(axis=0)
    sd[sd == 0] = 1.0  # constant columns stay constant instead of becoming NaN
    x_train[:, cols] = (x_train[:, cols] - mu) / sd
    x_test[:, cols] = (x_test[:, cols] - mu) / sd
    return x_train, x_test
