"""Server strategies as pure (init, apply) pairs with explicit state, like optax.

The aggregated client delta Δ is a pseudo-gradient step. FedAvg applies it as is; FedAvgM adds
server momentum (Hsu et al. 2019); FedAdam and FedYogi use adaptive server optimisers (Reddi et al.
2021, "Adaptive Federated Optimization"). FedProx (Li et al. 2020) changes the *client* objective
(a proximal term μ/2·‖w − w_global‖²) and aggregates like FedAvg; SCAFFOLD (Karimireddy et al.
2020) corrects the clients' gradients with control variates (:mod:`fedpress.fl.scaffold`, kept by
the simulator) and steps the server like FedAvg with ``server_lr`` as the global step size.

>>> import torch
>>> s = make_strategy("fedavgm", server_lr=1.0, momentum=0.9)
>>> p = {"w": torch.zeros(2)}
>>> st = s.init(p)
>>> p, st = s.apply(p, {"w": torch.ones(2)}, st)
>>> p, st = s.apply(p, {"w": torch.ones(2)}, st)
>>> p["w"].tolist()
[2.9000000953674316, 2.9000000953674316]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "scaffold")


@dataclass(frozen=True)
class Strategy:
    name: str = "fedavg"
    server_lr: float = 1.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    prox_mu: float = 0.0

    def init(self, params: dict[str, torch.Tensor]) -> dict:
        z = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in params.items() if v.is_floating_point()}
        if self.name == "fedavgm":
            return {"v": z}
        if self.name in ("fedadam", "fedyogi"):
            return {"m": z, "v": {k: torch.full_like(t, self.tau**2) for k, t in z.items()}}
        return {}

    def apply(self, params, delta, state):
        """New params and state after one aggregated delta (keys missing from delta are kept)."""
        out = dict(params)
        if self.name in ("fedavg", "fedprox", "scaffold"):
            for k, d in delta.items():
                out[k] = params[k] + self.server_lr * d.to(params[k].dtype)
            return out, state
        if self.name == "fedavgm":
            v = {k: self.momentum * state["v"][k] + d for k, d in delta.items()}
            for k in delta:
                out[k] = params[k] + self.server_lr * v[k].to(params[k].dtype)
            return out, {"v": {**state["v"], **v}}
        m, v = dict(state["m"]), dict(state["v"])
        for k, d in delta.items():
            m[k] = self.beta1 * m[k] + (1 - self.beta1) * d
            d2 = d * d
            if self.name == "fedadam":
                v[k] = self.beta2 * v[k] + (1 - self.beta2) * d2
            else:  # yogi: additive, sign-controlled update of the second moment
                v[k] = v[k] - (1 - self.beta2) * d2 * torch.sign(v[k] - d2)
            out[k] = params[k] + (self.server_lr * m[k] / (v[k].sqrt() + self.tau)).to(params[k].dtype)
        return out, {"m": m, "v": v}


def make_strategy(name: str, **kw) -> Strategy:
    """Build a strategy by name; unknown names or parameters are one clear error."""
    name = name.lower()
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name in ("fedadam", "fedyogi") and "server_lr" not in kw:
        kw["server_lr"] = 0.01
    return Strategy(name=name, **kw)
