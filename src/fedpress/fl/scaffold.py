"""SCAFFOLD's control variates (Karimireddy et al. 2020), as small pure pieces with explicit state.

Client drift: on non-IID data each client's local steps pull towards its own optimum, so FedAvg
with many local steps converges to a biased point. SCAFFOLD corrects every local gradient by
c − cᵢ, the server's estimate of the global gradient minus client i's own.

**No extra uplink (``controls="derived"``).** With the paper's option II a client's new variate is
cᵢ⁺ = cᵢ − c + (x − yᵢ)/(K·η), so the change the server must average,
Δcᵢ = cᵢ⁺ − cᵢ = −c − Δyᵢ/(K·η), depends only on c (the server's), the update Δyᵢ it receives
and K·η (local steps × local learning rate, which the server knows from the client's sample
count). The server therefore derives every Δcᵢ from the *decoded* update, and the client computes
the same from its codec's reconstruction (what the decoder produces, bit for bit), so c stays the
mean of the cᵢ exactly whatever the codec loses; only the broadcast of c costs bytes (downlink).
The price: cᵢ⁺ then estimates the client's gradient *plus* the codec's error over K·η. With codecs
that lose little per round (``q:bits=8``) that is harmless; with error feedback around top-k most
of each update waits in the residual, the estimate is mostly error, and training degrades.

**Sent variates (``controls="sent"``).** The client computes Δcᵢ from its true update and uploads
it beside Δyᵢ under the names ``scaffold.dc.<parameter>`` (so per-tensor rules can give them their
own pipeline, e.g. ``ef+topk:ratio=0.01+q:bits=8; scaffold.dc.*=ef+q:bits=4``); both sides then
move cᵢ by the *decoded* Δcᵢ, which keeps c the mean of the cᵢ. Twice the uplink values.

>>> import torch
>>> c_hat = {"w": torch.tensor([0.5, -0.5])}
>>> delta = {"w": torch.tensor([-0.2, 0.4])}            # decoded Δy: 4 steps at lr 0.1
>>> control_delta(delta, c_hat, steps=4, lr=0.1)["w"].tolist()
[0.0, -0.5]
"""

from __future__ import annotations

import math

import torch


def local_steps(n: int, epochs: int, batch_size: int) -> int:
    """Local SGD steps of a client with ``n`` samples: ``epochs`` passes of ⌈n/batch⌉ batches."""
    return epochs * max(1, math.ceil(n / batch_size))


def control_delta(delta: dict[str, torch.Tensor], c_hat: dict[str, torch.Tensor], *, steps: int,
                  lr: float) -> dict[str, torch.Tensor]:
    """Δcᵢ = −ĉ − Δyᵢ/(K·η) for each key of ``c_hat`` (option II; ĉ: the variate the client was sent)."""
    return {k: -c_hat[k] - delta[k].float() / (steps * lr) for k in c_hat}


def correction(c_hat: dict[str, torch.Tensor], c_i: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """What a client adds to each local gradient: ĉ − cᵢ (cᵢ = 0 before its first round)."""
    return {k: v - c_i[k] if c_i is not None else v.clone() for k, v in c_hat.items()}


#: Prefix of the uploaded control-variate changes (``controls="sent"``).
PREFIX = "scaffold.dc."


def with_controls(update: dict[str, torch.Tensor], c_hat: dict[str, torch.Tensor], *, steps: int,
                  lr: float) -> dict[str, torch.Tensor]:
    """The upload of ``controls="sent"``: the update, then Δcᵢ of its true (uncompressed) values."""
    return {**update, **{PREFIX + k: v for k, v in control_delta(update, c_hat, steps=steps, lr=lr).items()}}


def split_controls(decoded: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(the model update, Δcᵢ by parameter name) of a decoded ``controls="sent"`` upload."""
    model = {k: v for k, v in decoded.items() if not k.startswith(PREFIX)}
    return model, {k[len(PREFIX):]: v.float() for k, v in decoded.items() if k.startswith(PREFIX)}


def init(params: dict[str, torch.Tensor], keys) -> dict:
    """The server's SCAFFOLD state: c = 0 on the trainable ``keys``, and the clients' cᵢ (none yet)."""
    return {"c": {k: torch.zeros_like(params[k], dtype=torch.float32) for k in keys}, "ci": {}}


def commit(state: dict, control_deltas: dict[int, dict[str, torch.Tensor]], *, n_clients: int) -> dict:
    """The state after a round: each client in ``control_deltas`` (client → Δcᵢ, as decoded or
    derived by :func:`control_delta`) takes cᵢ += Δcᵢ, and c += Σ Δcᵢ / N (N: all clients, as in
    the paper, so c stays the mean of the cᵢ). Clients whose upload the server did not aggregate
    keep their cᵢ."""
    c = {k: v.clone() for k, v in state["c"].items()}
    ci = dict(state["ci"])
    for client, d in control_deltas.items():
        old = ci.get(client)
        ci[client] = {k: (old[k] if old is not None else torch.zeros_like(c[k])) + d[k] for k in c}
        for k in c:
            c[k] += d[k] / n_clients
    return {"c": c, "ci": ci}
