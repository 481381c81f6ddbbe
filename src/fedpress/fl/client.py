"""Local training on a client: SGD/Adam epochs with FedProx, L2, L1 (proximal) and pruning masks.

L1 is applied as a proximal soft-threshold after every step, w ← sign(w)·max(|w| − lr·λ, 0), which
makes small weights *exactly* zero (a subgradient step would only make them small); exact zeros are
what later pruning and sparse codecs turn into saved bytes.

>>> import torch
>>> torch.manual_seed(0) and None
>>> model = torch.nn.Linear(4, 2)
>>> x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
>>> cfg = TrainConfig(epochs=2, batch_size=16, lr=0.1, l1=0.01)
>>> start = {k: v.clone() for k, v in model.state_dict().items()}
>>> params, loss = local_train(model, start, (x, y), cfg, seed=0)
>>> sorted(params), loss > 0
(['bias', 'weight'], True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"  # "sgd" or "adam"
    momentum: float = 0.0
    l2: float = 0.0  # weight decay
    l1: float = 0.0  # proximal soft-threshold strength
    prox_mu: float = 0.0  # FedProx
    max_grad_norm: float | None = None


def _soft_threshold_(p: torch.Tensor, t: float) -> None:
    p.copy_(torch.sign(p) * torch.clamp(p.abs() - t, min=0.0))


def local_train(
    model: torch.nn.Module,
    params: dict[str, torch.Tensor],
    data: tuple[torch.Tensor, torch.Tensor],
    cfg: TrainConfig,
    *,
    seed: int,
    loss_fn: Callable | None = None,
    masks: dict[str, torch.Tensor] | None = None,
    correction: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], float]:
    """Train ``model`` from ``params`` on ``data`` and return (new params, mean training loss).

    ``masks`` (name → bool tensor) pins pruned weights at zero: gradients are masked and weights
    re-masked after every step, so pruned coordinates never come back. ``correction`` (parameter
    name → tensor) is added to every step's gradient after clipping: SCAFFOLD's c − cᵢ
    (:mod:`fedpress.fl.scaffold`). ``params`` must not alias the model's own tensors (pass a copy,
    not ``model.state_dict()`` itself): they would be trained in place.
    """
    model.load_state_dict(params)
    model.train()
    loss_fn = loss_fn or torch.nn.functional.cross_entropy
    named = dict(model.named_parameters())
    trainable = [p for p in named.values() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(trainable, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.l2)
    elif cfg.optimizer == "adam":
        opt = torch.optim.Adam(trainable, lr=cfg.lr, weight_decay=cfg.l2)
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r} (sgd or adam)")
    anchor = {k: v.detach().clone() for k, v in named.items()} if cfg.prox_mu > 0 else None
    pmask = {k: masks[k] for k in named if masks and k in masks}
    corr = {k: v.to(named[k].dtype) for k, v in (correction or {}).items() if k in named}
    x, y = data
    n = x.shape[0]
    g = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=g)
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            total += float(loss.detach()) * idx.numel()
            count += idx.numel()
            if anchor is not None:
                prox = sum(((p - anchor[k]) ** 2).sum() for k, p in named.items())
                loss = loss + 0.5 * cfg.prox_mu * prox
            loss.backward()
            if pmask:
                for k, m in pmask.items():
                    if named[k].grad is not None:
                        named[k].grad.mul_(m)
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            for k, v in corr.items():  # the drift correction steers even a parameter without a gradient
                v = v * pmask[k] if k in pmask else v
                p = named[k]
                p.grad = v.clone() if p.grad is None else p.grad.add_(v)
            opt.step()
            with torch.no_grad():
                if cfg.l1 > 0:
                    for p in named.values():
                        if p.dim() > 1:  # weights only: biases are not what sparsity is about
                            _soft_threshold_(p, cfg.lr * cfg.l1)
                for k, m in pmask.items():
                    named[k].mul_(m)
    out = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return out, total / max(count, 1)


@torch.no_grad()
def predict_proba(model: torch.nn.Module, params, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Class probabilities of ``model`` with ``params`` on ``x`` (softmax of the logits)."""
    model.load_state_dict(params)
    model.eval()
    outs = [torch.softmax(model(x[i : i + batch_size]).float(), dim=1) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(outs) if outs else torch.zeros(0)


@torch.no_grad()
def evaluate_loss(model, params, x, y, loss_fn=None, batch_size: int = 4096) -> float:
    model.load_state_dict(params)
    model.eval()
    loss_fn = loss_fn or torch.nn.functional.cross_entropy
    tot = 0.0
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        tot += float(loss_fn(model(xb), yb)) * xb.shape[0]
    return tot / max(x.shape[0], 1)
