"""Where client work runs: in this process (``local``, the default) or on a Ray cluster (``ray``).

The work of one client in one round — local training from the broadcast model, then encoding its
delta with its own codec state — is the pure function :func:`client_update`. Its randomness comes
from seeds the server derives from (seed, round, client), so every backend produces the same
bytes, the same states and the same metrics; a backend only changes where and how fast.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fedpress.codecs.combine import cached_codec
from fedpress.fl.client import TrainConfig, local_train


@dataclass
class ClientJob:
    client: int
    spec: str | None  # None: return the (clipped) float update; secure aggregation encodes it
    state: dict | None
    train_seed: int
    encode_seed: int
    #: The whole model as the client received it, when that was lossy (a blob it decodes and trains
    #: from; its delta is taken relative to it). None: it holds the broadcast model exactly.
    start: bytes | None = None
    #: An attack spec (fedpress.fl.attacks) when this client is Byzantine: its update is corrupted
    #: before encoding, so what the server gets is a real blob of the attacker's making.
    attack: str | None = None
    #: SCAFFOLD: what this client adds to each local gradient (ĉ − cᵢ, fedpress.fl.scaffold).
    control: dict | None = None
    #: SCAFFOLD with controls="sent": the ĉ it was sent; it uploads its Δcᵢ beside the update.
    c_hat: dict | None = None


def client_update(model: torch.nn.Module, params: dict, data, cfg: TrainConfig, job: ClientJob, *,
                  float_keys: list[str], masks=None, masks_np=None, loss_fn=None,
                  clip: float | None = None) -> dict[str, Any]:
    """Train one client from ``params`` and encode its delta; never raises (errors are returned, so
    a crashing client cannot take the round down). With ``clip`` (differential privacy) the delta's
    L2 norm is clipped *before* compression, so error feedback only ever sees clipped updates."""
    t0 = time.perf_counter()
    if job.start is not None:
        from fedpress.codecs.combine import decompress

        params = {**params, **decompress(job.start)}
    try:
        new, loss = local_train(model, params, data, cfg, seed=job.train_seed, loss_fn=loss_fn, masks=masks,
                                correction=job.control)
    except Exception as exc:  # noqa: BLE001 - any client failure is reported, not raised
        return {"client": job.client, "error": repr(exc), "train_s": time.perf_counter() - t0}
    t1 = time.perf_counter()
    update = {k: new[k] - params[k] for k in float_keys}
    if job.c_hat is not None:  # from the true update, before compression (fedpress.fl.scaffold)
        from fedpress.fl.scaffold import local_steps, with_controls

        update = with_controls(update, job.c_hat, steps=local_steps(int(data[0].shape[0]), cfg.epochs,
                                                                    cfg.batch_size), lr=cfg.lr)
    if clip is not None:
        from fedpress.privacy.dp import clip_update

        update, _ = clip_update(update, clip)
    if job.attack is not None:  # after the clip: an adversary skips the client's own clipping
        from fedpress.fl.attacks import make_attack

        update = make_attack(job.attack).apply(update, seed=job.encode_seed)
    if job.spec is None:
        return {"client": job.client, "update": update, "loss": loss, "train_s": t1 - t0, "encode_s": 0.0}
    e = cached_codec(job.spec).encode_ex(update, job.state, seed=job.encode_seed, structure="fingerprint",
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


def _compact(obj):
    """``obj`` with every tensor that views a larger storage replaced by a copy of its own data:
    pickling a view (``x[i:j]`` of one big tensor) ships the whole storage."""
    if torch.is_tensor(obj):
        if obj.untyped_storage().nbytes() > obj.numel() * obj.element_size():
            return obj.clone(memory_format=torch.contiguous_format)
        return obj
    if isinstance(obj, tuple | list):
        return type(obj)(_compact(o) for o in obj)
    return obj


def _ray_client(model_fn, params, data, cfg, job, threads, kw):
    torch.set_num_threads(threads)
    return client_update(model_fn(), params, data, cfg, job, **kw)


class RayBackend:
    """Clients as Ray tasks (``pip install 'fedpress[ray]'``), on a local Ray started here
    (``num_cpus`` workers) or on a running cluster (``address``, e.g. ``"auto"`` or
    ``"ray://head:10001"``; its workers must have fedpress installed).

    What travels: the model factory once, the broadcast model once per round, and each sampled
    client's data. A client's data goes to the object store the first time the client is sampled,
    not at start, and stays only while the client is among the ``data_cache`` most recently sampled
    (default: twice the largest round so far), so the driver and the object store hold
    O(clients per round) of client data however many clients are registered.

    With ``address``, ``num_cpus`` cannot size the cluster; it caps the tasks in flight instead.
    """

    name = "ray"

    def __init__(self, model_fn, clients: list, *, address: str | None = None, num_cpus: int | None = None,
                 threads: int | None = 1, data_cache: int | None = None):
        try:
            import ray
        except ImportError as e:  # pragma: no cover - depends on the extra
            raise RuntimeError("backend='ray' needs Ray: pip install 'fedpress[ray]'") from e
        if num_cpus is not None and num_cpus < 1:
            raise ValueError(f"num_cpus must be >= 1, got {num_cpus}")
        if data_cache is not None and data_cache < 0:
            raise ValueError(f"data_cache must be >= 0, got {data_cache}")
        self.ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            if address:  # join: the cluster's size is its own (Ray refuses num_cpus here)
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            else:
                ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
        self.max_in_flight = num_cpus if address else None
        self.clients = clients
        self.threads = threads or 1
        self.data_cache = data_cache
        self._remote = ray.remote(num_cpus=1)(_ray_client)
        self._model_fn = ray.put(model_fn)  # once: a closure may carry a whole dataset
        self._refs: OrderedDict[int, Any] = OrderedDict()  # client -> data ref, least recent first
        self._largest = 0
        self.placed = 0  # client datasets put in the object store so far (re-puts included)

    @property
    def cached(self) -> list[int]:
        """Clients whose data is in the object store now, least recently sampled first."""
        return list(self._refs)

    def _data(self, client: int):
        ref = self._refs.pop(client, None)
        if ref is None:
            ref = self.ray.put(_compact(self.clients[client]))
            self.placed += 1
        self._refs[client] = ref  # most recent last
        return ref

    def map(self, params, jobs: list[ClientJob], cfg, **kw) -> list[dict]:
        ray = self.ray
        pref, kref = ray.put(params), ray.put(kw)
        self._largest = max(self._largest, len(jobs))
        args = [(self._data(j.client), j) for j in jobs]
        keep = self.data_cache if self.data_cache is not None else 2 * self._largest
        while len(self._refs) > keep:  # tasks of this round hold their own references
            self._refs.popitem(last=False)

        def submit(i):
            ref, job = args[i]
            return self._remote.remote(self._model_fn, pref, ref, cfg, job, self.threads, kref)

        if self.max_in_flight is None or len(args) <= self.max_in_flight:
            return ray.get([submit(i) for i in range(len(args))])
        out: list[Any] = [None] * len(args)
        pending = {submit(i): i for i in range(self.max_in_flight)}
        nxt = self.max_in_flight
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for f in done:
                out[pending.pop(f)] = ray.get(f)
                if nxt < len(args):
                    pending[submit(nxt)] = nxt
                    nxt += 1
        return out

    def close(self) -> None:
        self._refs.clear()
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()


def make_backend(name: str, model_fn, clients, **kw):
    if name == "local":
        return LocalBackend(model_fn, clients)
    if name == "ray":
        return RayBackend(model_fn, clients, **kw)
    raise ValueError(f"unknown backend {name!r} (local or ray)")
