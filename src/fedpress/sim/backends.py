"""Where client work runs: in this process (``local``, the default) or on a Ray cluster (``ray``).

The work of one client in one round — local training from the broadcast model, then encoding its
delta with its own codec state — is the pure function :func:`client_update`. Its randomness comes
from seeds the server derives from (seed, round, client), so every backend produces the same
bytes, the same states and the same metrics; a backend only changes where and how fast.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fedpress.codecs import Codec
from fedpress.fl.client import TrainConfig, local_train


@functools.lru_cache(maxsize=64)
def _codec(spec: str) -> Codec:
    return Codec(spec)


@dataclass
class ClientJob:
    client: int
    spec: str | None  # None: return the (clipped) float update; secure aggregation encodes it
    state: dict | None
    train_seed: int
    encode_seed: int


def client_update(model: torch.nn.Module, params: dict, data, cfg: TrainConfig, job: ClientJob, *,
                  float_keys: list[str], masks=None, masks_np=None, loss_fn=None,
                  clip: float | None = None) -> dict[str, Any]:
    """Train one client from ``params`` and encode its delta; never raises (errors are returned, so
    a crashing client cannot take the round down). With ``clip`` (differential privacy) the delta's
    L2 norm is clipped *before* compression, so error feedback only ever sees clipped updates."""
    t0 = time.perf_counter()
    try:
        new, loss = local_train(model, params, data, cfg, seed=job.train_seed, loss_fn=loss_fn, masks=masks)
    except Exception as exc:  # noqa: BLE001 - any client failure is reported, not raised
        return {"client": job.client, "error": repr(exc), "train_s": time.perf_counter() - t0}
    t1 = time.perf_counter()
    update = {k: new[k] - params[k] for k in float_keys}
    if clip is not None:
        from fedpress.privacy.dp import clip_update

        update, _ = clip_update(update, clip)
    if job.spec is None:
        return {"client": job.client, "update": update, "loss": loss, "train_s": t1 - t0, "encode_s": 0.0}
    e = _codec(job.spec).encode_ex(update, job.state, seed=job.encode_seed, structure="fingerprint",
                                   masks=masks_np, spec_ref=True)
    return {"client": job.client, "blob": e.blob, "state": e.state, "loss": loss,
            "train_s": t1 - t0, "encode_s": time.perf_counter() - t1}


class LocalBackend:
    """Clients one after another in this process, reusing one model instance."""

    name = "local"

    def __init__(self, model_fn: Callable[[], torch.nn.Module], clients: list, threads: int | None = 1):
        self.model_fn = model_fn
        self.clients = clients
        self._model = None

    def map(self, params, jobs: list[ClientJob], cfg, **kw) -> list[dict]:
        if self._model is None:
            self._model = self.model_fn()
        return [client_update(self._model, params, self.clients[j.client], cfg, j, **kw) for j in jobs]

    def close(self) -> None:
        pass


def _ray_client(model_fn, params, data, cfg, job, threads, kw):
    torch.set_num_threads(threads)
    return client_update(model_fn(), params, data, cfg, job, **kw)


class RayBackend:
    """Clients as Ray tasks (``pip install 'fedpress[ray]'``): client data is put in the object
    store once, the broadcast model once per round."""

    name = "ray"

    def __init__(self, model_fn, clients: list, *, address: str | None = None, num_cpus: int | None = None,
                 threads: int | None = 1):
        try:
            import ray
        except ImportError as e:  # pragma: no cover - depends on the extra
            raise RuntimeError("backend='ray' needs Ray: pip install 'fedpress[ray]'") from e
        self.ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            ray.init(address=address, num_cpus=num_cpus, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        self.model_fn = model_fn
        self.threads = threads or 1
        self._remote = ray.remote(num_cpus=1)(_ray_client)
        self._data = [ray.put(d) for d in clients]

    def map(self, params, jobs: list[ClientJob], cfg, **kw) -> list[dict]:
        ray = self.ray
        pref = ray.put(params)
        futs = [self._remote.remote(self.model_fn, pref, self._data[j.client], cfg, j, self.threads, kw)
                for j in jobs]
        return ray.get(futs)

    def close(self) -> None:
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()


def make_backend(name: str, model_fn, clients, **kw):
    if name == "local":
        return LocalBackend(model_fn, clients)
    if name == "ray":
        return RayBackend(model_fn, clients, **kw)
    raise ValueError(f"unknown backend {name!r} (local or ray)")
