"""Small reference models for the built-in scenarios (and for users who just want a baseline).

They are deliberately small: in federated learning every parameter is paid for in bytes each
round, so a few thousand to a few tens of thousands of parameters keep simulations fast and make
codec effects visible. Initialisation uses PyTorch's default initialisers, which draw from the
global RNG, so ``torch.manual_seed(s)`` before construction gives identical weights.

>>> import torch
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> model = make_model("mlp", in_dim=64, n_classes=10, hidden=(32,))
>>> model(torch.zeros(5, 64)).shape
torch.Size([5, 10])
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["MODELS", "CharRNN", "char_rnn", "cnn", "count_params", "logreg", "make_model", "mlp"]


def logreg(in_dim: int, n_classes: int) -> nn.Module:
    """Multinomial logistic regression: flatten, then one linear layer producing logits.

    Inputs of any trailing shape are flattened, so image tensors work as well as feature vectors.

    >>> import torch
    >>> m = logreg(30, 2)
    >>> m(torch.zeros(4, 30)).shape, count_params(m)
    (torch.Size([4, 2]), 62)
    """
    _check_positive(in_dim=in_dim, n_classes=n_classes)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_dim, n_classes))


def mlp(in_dim: int, n_classes: int, hidden: Sequence[int] = (64,)) -> nn.Module:
    """Multi-layer perceptron with ReLU between layers; returns logits.

    ``hidden`` lists the widths of the hidden layers (empty = logistic regression).

    >>> import torch
    >>> m = mlp(64, 10, hidden=(32, 16))
    >>> m(torch.zeros(3, 1, 8, 8)).shape  # images are flattened first
    torch.Size([3, 10])
    """
    _check_positive(in_dim=in_dim, n_classes=n_classes)
    widths = [int(w) for w in hidden]
    if any(w < 1 for w in widths):
        raise ValueError(f"mlp: hidden widths must be positive, got {tuple(hidden)}")
    layers: list[nn.Module] = [nn.Flatten()]
    prev = in_dim
    for w in widths:
        layers += [nn.Linear(prev, w), nn.ReLU()]
        prev = w
    layers.append(nn.Linear(prev, n_classes))
    return nn.Sequential(*layers)


def cnn(
    in_channels: int,
    n_classes: int,
    image_size: int,
    channels: tuple[int, int] = (16, 32),
    hidden: int = 64,
) -> nn.Module:
    """Small two-conv-layer network for square images (8×8 digits, 28×28 MNIST, 32×32 CIFAR).

    conv3×3 → ReLU → maxpool 2 → conv3×3 → ReLU → adaptive average pool to (at most) 4×4 →
    linear ``hidden`` → ReLU → linear ``n_classes``. The adaptive pool makes the head the same
    size for every image size, so the parameter count (about 38k with the defaults) and hence
    the bytes per round barely depend on the dataset — only the first conv grows with
    ``in_channels``.

    >>> import torch
    >>> m = cnn(1, 10, 28)
    >>> m(torch.zeros(2, 1, 28, 28)).shape, 10_000 < count_params(m) < 100_000
    (torch.Size([2, 10]), True)
    >>> cnn(3, 10, 32)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """
    _check_positive(in_channels=in_channels, n_classes=n_classes, hidden=hidden)
    if image_size < 2:
        raise ValueError(f"cnn: image_size must be >= 2, got {image_size}")
    c1, c2 = (int(c) for c in channels)
    _check_positive(channels=min(c1, c2))
    # After the 2×2 max-pool the map is image_size // 2 wide; never pool *up*, which would only
    # duplicate activations and inflate the head for tiny inputs.
    pooled = min(4, image_size // 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, c1, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(pooled),
        nn.Flatten(),
        nn.Linear(c2 * pooled * pooled, hidden),
        nn.ReLU(),
        nn.Linear(hidden, n_classes),
    )


class CharRNN(nn.Module):
    """Character model: embedding → one recurrent layer → linear head on the last position.

    Input: ``(N, L)`` character indices, as float (ScenarioData keeps every input float32; the
    indices are exact) or integer; output: ``(N, n_classes)`` logits for the next character.
    """

    def __init__(self, vocab_size: int, n_classes: int, embed_dim: int, hidden: int, cell: str):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn(embed_dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = x.long() if x.is_floating_point() else x
        out, _ = self.rnn(self.embed(idx))
        # Only the last position is scored: LEAF's Shakespeare task predicts the one character
        # after an 80-character window, so the earlier outputs have no target.
        return self.head(out[:, -1])


def char_rnn(
    in_dim: int,
    n_classes: int,
    vocab_size: int | None = None,
    embed_dim: int = 8,
    hidden: int = 64,
    cell: str = "lstm",
) -> nn.Module:
    """Small next-character model (LEAF Shakespeare): embedding 8 → LSTM/GRU → ``n_classes``.

    ``in_dim`` is the sequence length (what :meth:`Scenario.build_model` passes as the input
    size; the model itself accepts any length). ``vocab_size`` defaults to ``n_classes``: input
    and output alphabets are the same in next-character prediction. LEAF's reference model is a
    2-layer LSTM with 256 units (~820k parameters); one 64-unit layer (~25k) keeps a round on a
    CPU in seconds and the update in the same size class as the ``cnn``.

    >>> import torch
    >>> m = char_rnn(80, 80)
    >>> m(torch.randint(0, 80, (3, 80)).float()).shape, count_params(m)
    (torch.Size([3, 80]), 24784)
    >>> count_params(char_rnn(80, 80, cell="gru")) < count_params(m)
    True
    """
    _check_positive(in_dim=in_dim, n_classes=n_classes, embed_dim=embed_dim, hidden=hidden)
    vocab = n_classes if vocab_size is None else vocab_size
    _check_positive(vocab_size=vocab)
    if cell not in ("lstm", "gru"):
        raise ValueError(f"char_rnn: cell must be 'lstm' or 'gru', got {cell!r}")
    return CharRNN(vocab, n_classes, embed_dim, hidden, cell)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "logreg": logreg,
    "mlp": mlp,
    "cnn": cnn,
    "char_rnn": char_rnn,
}


def make_model(name: str, **kw) -> nn.Module:
    """Build a reference model by name (``"logreg"``, ``"mlp"``, ``"cnn"`` or ``"char_rnn"``).

    Keyword arguments go to the builder: ``in_dim``/``n_classes`` (+ ``hidden``) for
    ``logreg``/``mlp``/``char_rnn``; ``in_channels``/``n_classes``/``image_size`` for ``cnn``.

    >>> make_model("logreg", in_dim=4, n_classes=3)
    Sequential(
      (0): Flatten(start_dim=1, end_dim=-1)
      (1): Linear(in_features=4, out_features=3, bias=True)
    )
    >>> make_model("resnet152")
    Traceback (most recent call last):
    ...
    ValueError: unknown model 'resnet152'; choose one of char_rnn, cnn, logreg, mlp
    """
    builder = MODELS.get(str(name).lower())
    if builder is None:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    try:
        return builder(**kw)
    except TypeError as e:
        # Re-raise with the model name: a bare "unexpected keyword argument" from deep inside a
        # scenario's model_kwargs is hard to trace back otherwise.
        raise ValueError(f"make_model({name!r}): bad arguments {sorted(kw)}: {e}") from e


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (what a client would send uncompressed, in elements).

    >>> count_params(logreg(10, 3))
    33
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _check_positive(**values: int) -> None:
    for key, v in values.items():
        # numbers.Integral admits numpy ints (shapes often arrive as np.int64); bool is excluded
        # because True would silently mean a width of 1.
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"{key} must be an int, got {v!r}")
        if v < 1:
            raise ValueError(f"{key} must be >= 1, got {v}")
