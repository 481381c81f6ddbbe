"""Magnitude pruning: masks from a threshold τ or a target sparsity, global or per layer, one-shot
or gradual (the cubic schedule of Zhu & Gupta 2017).

Only weight tensors (≥ 2 dims) are pruned; biases and norms are left dense.

>>> import torch
>>> p = {"w": torch.tensor([[0.1, -2.0], [0.5, 3.0]]), "b": torch.tensor([0.01, 0.02])}
>>> m = magnitude_masks(p, sparsity=0.5)
>>> m["w"].tolist(), "b" in m
([[False, True], [False, True]], False)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def prunable(name: str, t: torch.Tensor) -> bool:
    return t.is_floating_point() and t.dim() >= 2


def magnitude_masks(
    params: dict[str, torch.Tensor],
    *,
    sparsity: float | None = None,
    tau: float | None = None,
    scope: str = "global",
    old: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Boolean keep-masks (True = kept). Exactly one of ``sparsity`` (fraction pruned) or ``tau``
    (prune |w| < τ). Pruned coordinates in ``old`` stay pruned (masks only ever shrink)."""
    if (sparsity is None) == (tau is None):
        raise ValueError("give exactly one of sparsity or tau")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    names = [k for k, v in params.items() if prunable(k, v)]

    def mag(k):
        a = params[k].detach().abs().float()
        return a.masked_fill(~old[k], -1.0) if old and k in old else a

    if tau is not None:
        return {k: (mag(k) >= tau) for k in names}
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    masks = {}
    if scope == "global":
        allm = torch.cat([mag(k).ravel() for k in names]) if names else torch.zeros(0)
        n_prune = int(round(sparsity * allm.numel()))
        thr = torch.kthvalue(allm, n_prune).values if n_prune > 0 else torch.tensor(-float("inf"))
        for k in names:
            masks[k] = mag(k) > thr
    else:
        for k in names:
            a = mag(k).ravel()
            n_prune = int(round(sparsity * a.numel()))
            thr = torch.kthvalue(a, n_prune).values if n_prune > 0 else torch.tensor(-float("inf"))
            masks[k] = mag(k) > thr
    return masks


@dataclass(frozen=True)
class PruneSchedule:
    """When and how much to prune. ``gradual`` ramps sparsity from 0 to ``sparsity`` between
    ``start`` and ``end`` rounds as s_t = s·(1 − (1 − p)³), p the progress (Zhu & Gupta 2017)."""

    sparsity: float | None = 0.9
    tau: float | None = None
    scope: str = "global"
    mode: str = "oneshot"  # or "gradual"
    start: int = 5
    end: int = 20
    every: int = 1

    def target_at(self, rnd: int) -> float | None:
        """Sparsity to prune to at the start of round ``rnd`` (None: do not prune this round)."""
        if self.tau is not None:
            return 0.0 if rnd == self.start else None
        if self.mode == "oneshot":
            return self.sparsity if rnd == self.start else None
        if rnd < self.start or rnd > self.end or (rnd - self.start) % self.every:
            return None
        p = (rnd - self.start) / max(self.end - self.start, 1)
        return self.sparsity * (1 - (1 - p) ** 3)


def sparsity_of(params: dict[str, torch.Tensor]) -> float:
    """Fraction of exact zeros among prunable weights."""
    tot = zeros = 0
    for k, v in params.items():
        if prunable(k, v):
            tot += v.numel()
            zeros += int((v == 0).sum())
    return zeros / tot if tot else 0.0
