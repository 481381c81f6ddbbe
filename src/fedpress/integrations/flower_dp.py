"""fedpress under Flower's central differential privacy: what :mod:`fedpress.integrations.flower`
does so that compression and Flower's DP wrappers (``flwr`` 1.42) keep the DP guarantee together.

Flower's central DP clips every client's model update to a norm ``C`` and adds Gaussian noise of
standard deviation ``noise_multiplier · C / num_sampled_clients`` to the average. The noise hides a
client only if every update that is averaged really has norm ≤ ``C``; compression sits between the
clip and the average, and that matters.

**Server-side clipping** (``DifferentialPrivacyServerSideFixedClipping``,
``...ServerSideAdaptiveClipping``) composes as it is: :class:`~fedpress.integrations.flower.FedpressStrategy`
decodes each reply into ``global + update`` before the DP wrapper sees it, so the wrapper clips the
very update that is averaged. ``FedpressStrategy`` must be the *outer* wrapper: a DP wrapper outside
it would read the compressed replies (``TypeError: ... 'fedpress/1'``).

**Client-side clipping** (``DifferentialPrivacyClientSideFixedClipping`` with ``fixedclipping_mod``,
or the adaptive pair) clips on the node, and *then* the update is compressed. The decoded update the
server averages is not the clipped one: quantisation can lengthen it (``q:bits=2`` by about 17 % on
a Gaussian update) and error feedback adds the residual of earlier rounds back, so its norm can exceed
``C`` while the noise is sized for ``C``: the guarantee breaks, silently. So:

* the server enforces it, exactly: ``FedpressStrategy`` reads the clip the wrapped strategy sends the
  nodes (``clipping_norm`` in the train config) and clips each *decoded* update to it before handing
  it on. Under central DP the server sees every update anyway, so this asks for no more trust, and it
  bounds what is averaged whatever a node did.
* the node loses little: :func:`~fedpress.integrations.flower.fedpress_mod`, seeing ``clipping_norm``,
  clips the update as ``fixedclipping_mod`` does, and adds to the error-feedback residual what the
  server's clip of the decoded update will take off, so error feedback sends it in a later round
  instead of losing it. (Without error feedback that excess is lost, like anything a clip removes.)

Why not clip *update + residual* on the node instead, so that the decoded update rarely exceeds
``C``? It wastes the budget a round has: a sparse codec sends a fraction of a vector of norm ``C``
(top-1 % about a quarter of it), and each round's clip also scales down what error feedback saved.
One node, updates 5·C long along a slowly turning direction, no noise, 50 rounds, ``C`` = 1, 2080
coordinates; the progress along the current direction (at most 50) was, clipping update + residual
/ the update with this feedback / the update without it: 3.9 / 10.5 / 9.0 for
``ef+topk:ratio=0.01+q:bits=8``, 18.0 / 25.9 / 20.3 for ``ef+topk:ratio=0.1+q:bits=2``, 29.0 / 33.7
/ 25.1 for ``ef+sign``, 41.6 / 40.7 / 36.0 for ``ef+q:bits=2``. The price: while a node keeps
sending more than ``C`` a round allows, the residual grows (there, to 6.6–35 vs. 0.6–23 without the
feedback), as a queue of what it could not send yet.

Flower's clipping mods are then optional. Where used they must run *inside* ``fedpress_mod`` (they
read the reply's model arrays, which ``fedpress_mod`` turns into one blob); ``fedpress_mod`` answers
with an error naming the fix, before training, when it finds itself inside one.

>>> import torch
>>> u = {"w": torch.tensor([3.0, 4.0])}
>>> clip_update(u, 1.0), u["w"].tolist()  # (norm before, scale applied)
((5.0, 0.2), [0.6000000238418579, 0.800000011920929])
"""

from __future__ import annotations

import importlib
import math
import sys

import numpy as np
import torch
from flwr.app import RecordDict
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedpress.codecs import Codec
from fedpress.codecs.feedback import residual_key
from fedpress.privacy.dp import update_norm

__all__ = [
    "KEY_CLIPPING_NORM",
    "clip_update",
    "clipping_norm",
    "enclosing_array_mod",
    "feed_back_clip",
]


def clipping_norm(content: RecordDict) -> float | None:
    """The clip ``C`` a client-side DP wrapper put in a train message's config; ``None`` if none.

    >>> from flwr.app import ConfigRecord
    >>> clipping_norm(RecordDict({"config": ConfigRecord({"clipping_norm": 0.5})}))
    0.5
    """
    for cfg in content.config_records.values():
        if KEY_CLIPPING_NORM in cfg:
            value = cfg[KEY_CLIPPING_NORM]
            c = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else -1.0
            if not (math.isfinite(c) and c > 0):
                raise ValueError(f"{KEY_CLIPPING_NORM} must be a positive number, got {value!r}")
            return c
    return None


def clip_update(update: dict[str, torch.Tensor], c: float) -> tuple[float, float]:
    """Scale ``update`` in place to norm ≤ ``c`` (Flower's FlatClip); return (norm before, scale).
    The norm is :func:`fedpress.privacy.dp.update_norm` (float64), on the node and the server alike,
    so both find the same scale for the same decoded update. In place, unlike that module's
    ``clip_update``: the mod and the strategy rewrite the reply's own tensors."""
    norm = update_norm(update)
    scale = min(1.0, c / norm) if norm > 0 else 1.0
    if scale < 1.0:
        for v in update.values():
            v.mul_(scale)
    return norm, scale


def feed_back_clip(state: dict, recon: dict[str, torch.Tensor], codec: Codec, c: float) -> dict:
    """Add to the EF residuals what the server's clip of the decoded update ``recon`` takes off.

    The codec sets ``residual = encoded − recon``; the server averages ``s · recon`` with
    ``s = min(1, c/|recon|)`` (the same float64 norm on both sides), so the residual that keeps
    error feedback's books straight is ``encoded − s · recon``.
    """
    norm = update_norm(recon)
    if norm <= c:
        return state
    keep = 1.0 - c / norm
    out = dict(state)
    for k, v in recon.items():
        rk = residual_key(k)
        if rk in out and codec.pipeline_for(k, tuple(v.shape)).error_feedback:
            extra = keep * v.detach().cpu().double().numpy()
            out[rk] = (np.asarray(out[rk], np.float64) + extra).astype(np.float32)
    return out


def _array_mods() -> dict:
    """Flower's client mods that read and rewrite the model arrays of the train reply."""
    codes = {}
    for module in ("flwr.clientapp.mod", "flwr.client.mod"):  # the Message API's and the legacy ones
        try:
            mod = importlib.import_module(module)
        except ImportError:  # pragma: no cover - moved in a later flwr
            continue
        for name in ("fixedclipping_mod", "adaptiveclipping_mod", "LocalDpMod"):
            fn = getattr(mod, name, None)
            if isinstance(fn, type):  # a class whose instances are the mods: its __call__ runs
                fn = vars(fn).get("__call__")
            if fn is not None and hasattr(fn, "__code__"):
                codes[fn.__code__] = name
    return codes


_ARRAY_MODS: dict | None = None


def enclosing_array_mod() -> str | None:
    """The name of a Flower mod that reads the reply's model arrays and that this call runs inside,
    if any.

    Flower chains mods by calls (with ``mods=[a, b]``, ``a`` calls ``b``, which calls the app) and
    passes a mod nothing that says what wraps it; the call stack does. Such a mod outside ``fedpress_mod``
    would get one fedpress blob back instead of the model and fail (or, for a downlink blob of the
    same key, raise on its stype) only after the node has trained.
    """
    global _ARRAY_MODS
    if _ARRAY_MODS is None:
        _ARRAY_MODS = _array_mods()
    f = sys._getframe(1)
    while f is not None:
        name = _ARRAY_MODS.get(f.f_code)
        if name is not None:
            return name
        f = f.f_back
    return None
