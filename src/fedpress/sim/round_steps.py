"""Pure pieces of one simulated round of :class:`~fedpress.sim.runner.Simulation`: who takes part,
what the policy is told, the round's clock, and the metrics row.

Each is a function of its arguments, with no running random generator: every draw is seeded from
(seed, round, ...), which is what lets a resumed run equal an uninterrupted one. The runner owns
the run state and passes in what each piece reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from fedpress.codecs.combine import cached_codec
from fedpress.fl.client import evaluate_loss, predict_proba
from fedpress.sim import network as netmod


class ClientResult(NamedTuple):
    """One client that trained this round: the blob it uploaded and what the clock and row need."""

    client: int
    blob: bytes  # what the server decodes (under secure aggregation: the masked codes)
    weight: float  # its number of samples: its weight in the mean
    down: int  # bytes downloaded: model or missed broadcasts, masks, secure-aggregation setup
    up: int  # bytes uploaded: len(blob), plus secure-aggregation setup
    compute_s: float  # simulated local training time
    train_loss: float
    spec: str  # the codec of its blob


@dataclass
class RoundPlan:
    """Who trains this round and what each downloads, once the policy has assigned codecs."""

    online: list[int]  # online and given a codec (not skipped by the policy)
    skipped: list[int]  # online, but left out by the policy
    downs: dict[int, int]  # client -> bytes it downloads (a lossy copy counted at its size)
    syncs: dict[int, str]  # client -> spec of the lossy copy of the whole model it starts from
    sync_blobs: dict[str, bytes]  # spec -> that lossy copy


def sample_clients(links: list[netmod.Link], *, sampling: str, sample_rate: float, per_round: int,
                   seed: int, rnd: int) -> tuple[np.ndarray, list[int]]:
    """The clients sampled in round ``rnd`` and, of those, the ones online (in client order)."""
    n_clients = len(links)
    rng = np.random.default_rng([seed, rnd, 11])
    if sampling == "poisson":
        sampled = np.flatnonzero(rng.random(n_clients) < sample_rate)
    else:
        sampled = np.sort(rng.choice(n_clients, per_round, replace=False))
    online = netmod.sample_available(links, sampled, rng)
    return sampled, [int(c) for c in online]


def ladder_bytes(ladder: tuple[str, ...], probe: dict, masks_np) -> dict[str, int]:
    """What each rung of the policy's ladder costs on this model: the length of a real blob of the
    ``probe`` update in each codec — measured, not computed."""
    return {spec: len(cached_codec(spec).encode_ex(probe, None, seed=1, structure="fingerprint", masks=masks_np,
                                                   spec_ref=True).blob)
            for spec in ladder}


def client_views(estimator, online: list[int], downs: dict[int, int], work: dict[int, float], *,
                 whole: set[int], sync_sizes: dict[str, int], full_len: int) -> list:
    """What the server believes about each online client, for the policy: its estimated links and
    compute time for ``work[c]`` (samples x epochs), what it downloads and, for a client that
    downloads the whole model, what each lossy copy of it (``sync_sizes``) would cost instead."""
    from fedpress.policy import ClientView

    def sync_bytes(c: int) -> dict[str, int] | None:
        if c not in whole or not sync_sizes:
            return None
        return {"none": downs[c], **{sp: downs[c] - full_len + n for sp, n in sync_sizes.items()}}

    est = estimator
    return [ClientView(client=c, up_mbps=est.mbps(c, "up"), down_mbps=est.mbps(c, "down"),
                       up_latency_s=est.latency(c, "up"), down_latency_s=est.latency(c, "down"),
                       compute_s=est.predict_compute(c, work[c]), down_bytes=downs[c], known=est.known(c, "up"),
                       sync_bytes=sync_bytes(c))
            for c in online]


def close_round(results: list[ClientResult], links: dict[int, netmod.Link], *, deadline: float | None,
                wait_full_deadline: bool, dropout: float, seed: int,
                rnd: int) -> tuple[netmod.RoundTiming, set[int], set[int]]:
    """The round's clock: stragglers past the deadline are dropped, then (``dropout``) some of the
    clients in time vanish after uploading: their bytes were sent, never used.

    Returns (the timing, the clients kept for aggregation, the clients that vanished).
    """
    parts = [netmod.Participant(client=r.client, link=links[r.client], down_bytes=r.down, up_bytes=r.up,
                                compute_s=r.compute_s) for r in results]
    timing = netmod.round_clock(parts, deadline, wait_full_deadline=wait_full_deadline)
    kept = set(timing.kept)
    vanished: set[int] = set()
    if dropout and kept:
        drng = np.random.default_rng([seed, rnd, 41])
        vanished = {c for c in sorted(kept) if drng.random() < dropout}
        kept -= vanished
    return timing, kept, vanished


def observe_transfers(estimator, results: list[ClientResult], links: dict[int, netmod.Link],
                      epochs: int) -> None:
    """Feed the server's link estimator the transfers it took part in (not the links themselves)."""
    for r in results:
        ln = links[r.client]
        estimator.observe(r.client, "down", r.down, netmod.transfer_seconds(r.down, ln.down_mbps, ln.latency_s))
        estimator.observe(r.client, "up", r.up, netmod.transfer_seconds(r.up, ln.up_mbps, ln.latency_s))
        estimator.observe_compute(r.client, r.weight * epochs, r.compute_s)


def evaluate(model, params: dict, test: tuple, metric, loss_fn=None, per_client: tuple | None = None):
    """``params`` on the test set: (metric, loss, the per-client metrics of
    :func:`client_metrics` when ``per_client`` = (clients, links) is given, else {}). What both
    the synchronous and the asynchronous runner report after a step."""
    x, y = test
    value = float(metric(predict_proba(model, params, x).numpy(), y.numpy()))
    loss = evaluate_loss(model, params, x, y, loss_fn)
    return value, loss, (client_metrics(model, params, *per_client, metric) if per_client else {})


def client_metrics(model, params: dict, clients: list, links: list[netmod.Link], metric) -> dict:
    """The model's metric on every client's own data: mean, min, 10th percentile and, with more
    than one link kind, the mean per kind (wifi, 4g, 3g, nbiot, ...): what a policy that leaves slow
    clients out costs *their* data, which the global test metric can hide."""
    vals = [float(metric(predict_proba(model, params, x).numpy(), y.numpy())) for x, y in clients]
    row = {"client_metric_mean": float(np.nanmean(vals)), "client_metric_min": float(np.nanmin(vals)),
           "client_metric_p10": float(np.nanpercentile(vals, 10))}
    kinds: dict[str, list[float]] = {}
    for ln, v in zip(links, vals, strict=True):
        kinds.setdefault(ln.kind or "custom", []).append(v)
    if len(kinds) > 1:
        row["client_metric_by_kind"] = {k: float(np.nanmean(v)) for k, v in sorted(kinds.items())}
    return row


def metrics_row(*, rnd: int, metric: float, loss: float, update_norm: float | None,
                results: list[ClientResult], up: int, down: int, totals: dict, timing: netmod.RoundTiming,
                sampled: int, online: int, kept: int, failed: int, vanished: int, skipped: int,
                syncs: dict[int, str], per_client_codecs: bool, extra: dict[str, Any]) -> dict:
    """One line of ``metrics.jsonl``. ``totals``: the run's cum_up, cum_down and sim_seconds after
    this round; ``per_client_codecs``: list each client's codec even when all share one."""
    specs = {r.spec for r in results}
    row = {
        "round": rnd + 1, "metric": metric, "loss": loss, "update_norm": update_norm,
        "uplink_bytes": up, "downlink_bytes": down,
        "cum_uplink_bytes": totals["cum_up"], "cum_downlink_bytes": totals["cum_down"],
        "sim_seconds": totals["sim_seconds"], "round_seconds": timing.seconds,
        "clients_sampled": sampled, "clients_online": online,
        "clients_kept": kept, "clients_dropped": len(timing.dropped), "clients_failed": failed,
        "clients_vanished": vanished, "clients_skipped": skipped,
        "train_loss": float(np.mean([r.train_loss for r in results])) if results else None,
    }
    if per_client_codecs or len(specs) > 1:
        row["client_codecs"] = {str(r.client): r.spec for r in results}
    row["client_uplink_bytes"] = {str(r.client): r.up for r in results}
    if syncs:
        row["client_syncs"] = {str(c): sp for c, sp in syncs.items()}
    return {**row, **extra}


def upload_anatomy(result: ClientResult, rnd: int, structure, masks_np) -> dict:
    """Where one upload's bytes went (:func:`fedpress.inspect_blob`): the summary's
    ``upload_anatomy``, which the report shows per tensor."""
    from fedpress.codecs.anatomy import inspect_blob

    info = inspect_blob(result.blob, structures=[structure], specs=[result.spec], masks=masks_np).to_dict()
    keep = ("total_bytes", "envelope_bytes", "body_bytes", "payload_bytes", "lossless", "tensors")
    return {"round": rnd + 1, "client": result.client, "codec": result.spec, **{k: info[k] for k in keep}}
