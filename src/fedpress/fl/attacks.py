"""Byzantine clients for robustness experiments: a seeded fraction of the clients send a corrupted
update, *before* compression, so the server receives real blobs of the attacker's making.

The attack is a pure function of the honest update and a seed; which clients attack is fixed for the
whole run (a seeded draw), as for an adversary that controls some devices. An attacking client does
not clip its update under DP: clipping is the client's own step, which an adversary skips.

Spec: ``signflip[:scale=S,fraction=F]`` (sends −S·Δ; Damaskinos et al. / Fang et al.'s sign-flip),
``scale:factor=K[,fraction=F]`` (boosts Δ by K, a model-replacement push), ``noise:std=S[,fraction=F]``
(sends N(0, S²) noise of Δ's shape) — default fraction 0.2.

>>> import torch
>>> a = make_attack("signflip:scale=2,fraction=0.25")
>>> a.apply({"w": torch.tensor([1.0, -0.5])}, seed=0)["w"].tolist()
[-2.0, 1.0]
>>> a.attackers(8, seed=0) == a.attackers(8, seed=0), len(a.attackers(8, seed=0))
(True, 2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

_PARAMS = {"signflip": {"scale": 1.0}, "scale": {"factor": 10.0}, "noise": {"std": 1.0}}


@dataclass(frozen=True)
class Attack:
    """One attack: its kind, the fraction of clients that run it and its strength."""

    kind: str
    fraction: float = 0.2
    strength: float = 1.0
    spec: str = ""

    def attackers(self, n_clients: int, seed: int) -> frozenset[int]:
        """The attacking clients: ⌈fraction·n⌉ of them, drawn once from ``seed``."""
        k = min(n_clients, math.ceil(self.fraction * n_clients - 1e-9))
        perm = np.random.default_rng([seed, 97]).permutation(n_clients)
        return frozenset(int(c) for c in perm[:k])

    def apply(self, update: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
        """The corrupted update (a new dict; the honest one is left as it is)."""
        if self.kind == "signflip":
            return {k: -self.strength * v for k, v in update.items()}
        if self.kind == "scale":
            return {k: self.strength * v for k, v in update.items()}
        g = torch.Generator().manual_seed(int(seed) % (1 << 63))
        return {k: torch.randn(v.shape, generator=g, dtype=torch.float32).to(v.dtype) * self.strength
                for k, v in update.items()}


def make_attack(spec: str | Attack | None) -> Attack | None:
    """Parse an attack spec (see the module docstring); ``None``/``"none"`` means no attack, and
    anything malformed is one ValueError naming the bad part."""
    if spec is None or isinstance(spec, Attack):
        return spec
    text = str(spec).strip()
    name, _, args = text.partition(":")
    if name == "none" and not args:
        return None
    if name not in _PARAMS:
        raise ValueError(f"bad attack {text!r}: expected signflip, scale or noise")
    vals = {"fraction": 0.2, **_PARAMS[name]}
    for item in filter(None, (a.strip() for a in args.split(","))):
        k, eq, v = item.partition("=")
        k = k.strip()
        if not eq or k not in vals:
            raise ValueError(f"bad attack {text!r}: unexpected {item!r} (takes {', '.join(vals)})")
        try:
            vals[k] = float(v)
        except ValueError:
            raise ValueError(f"bad attack {text!r}: {k} must be a number, got {v!r}") from None
        if not math.isfinite(vals[k]):
            raise ValueError(f"bad attack {text!r}: {k} must be finite")
    if not 0 < vals["fraction"] < 1:
        raise ValueError(f"bad attack {text!r}: fraction must be in (0, 1), got {vals['fraction']:g}")
    strength = vals[next(iter(_PARAMS[name]))]
    if name == "noise" and strength <= 0:
        raise ValueError(f"bad attack {text!r}: std must be > 0")
    return Attack(name, vals["fraction"], strength, text)
