"""SCAFFOLD's part of a synchronous round (the math is in :mod:`fedpress.fl.scaffold`).

Before training the server broadcasts its control variate c as a real blob (:func:`broadcast`);
each client's job carries ĉ − cᵢ; while the server decodes the kept uploads, every client's Δcᵢ,
derived from its decoded update or decoded from its upload, is taken aside (:func:`observer`),
then moves cᵢ and c. The run state ``st["scaffold"]`` holds c and the cᵢ, so checkpoints carry them.
"""

from __future__ import annotations

import warnings

import torch

from fedpress.codecs import Codec
from fedpress.codecs.combine import cached_codec
from fedpress.fl import scaffold
from fedpress.wire import Structure


def broadcast(state: dict, down_codec: Codec | None, *, seed: int) -> tuple[dict, int]:
    """c as every client of the round receives it (ĉ: a real blob, with the downlink codec when
    there is one, else float32; its state is not kept, so a lossy ĉ carries no error feedback),
    and the bytes each of them downloads for it. ĉ is the encoder's reconstruction, which is what
    decoding the blob gives (law 1), so the blob is not decoded again here."""
    e = cached_codec(down_codec.spec if down_codec is not None else "none").encode_ex(state["c"], seed=seed)
    return {k: torch.as_tensor(v) for k, v in e.recon.items()}, len(e.blob)


def upload_structure(G: dict, float_keys, state: dict | None) -> Structure:
    """What an upload holds: the float entries of the model, then, with sent controls (``state``
    given), a Δcᵢ per trainable parameter, in the order the clients build it."""
    entries = {k: G[k] for k in float_keys}
    if state is not None:
        entries.update({scaffold.PREFIX + k: v for k, v in state["c"].items()})
    return Structure.of(entries)


def observer(dcs: dict, c_hat: dict, *, controls: str, cfg):
    """The aggregation's ``observe`` hook (:class:`fedpress.fl.aggregators.DecodingFactory`): from
    each aggregated client's decoded upload, its Δcᵢ into ``dcs`` — derived from the update (the
    client derives the same from its codec's reconstruction) or the decoded Δcᵢ it sent — and the
    model update alone on to the mean. :func:`fedpress.fl.scaffold.commit` then applies ``dcs``."""

    def observe(client, weight, update):
        model, sent = scaffold.split_controls(update)
        dcs[client] = sent if controls == "sent" else scaffold.control_delta(
            model, c_hat, steps=scaffold.local_steps(int(weight), cfg.epochs, cfg.batch_size), lr=cfg.lr)
        return model

    return observe


def check_resume(sim, st: dict) -> None:
    """A checkpoint carries SCAFFOLD's state exactly when the run that wrote it used SCAFFOLD."""
    if bool(sim.scaffold) != (st.get("scaffold") is not None):
        made = "with" if st.get("scaffold") is not None else "without"
        raise ValueError(f"the checkpoint was made {made} strategy 'scaffold'; resume it with the same strategy")


def check(sim) -> None:
    """SCAFFOLD needs each client's own decoded update (or Δcᵢ) and SGD steps of size lr: refuse,
    by name, what hides the one or changes the other."""
    if sim.scaffold_controls not in ("derived", "sent"):
        raise ValueError(f"scaffold_controls must be 'derived' or 'sent', got {sim.scaffold_controls!r}")
    if not sim.scaffold:
        if sim.scaffold_controls != "derived":
            raise ValueError("scaffold_controls applies to strategy 'scaffold' only")
        return
    why = None
    if sim.secagg or sim.dp_clip is not None:
        why = "secure aggregation and DP hide or clip the individual updates the server derives Δcᵢ from"
    elif sim.aggregate not in ("mean", "sparse_mean"):
        why = f"aggregate={sim.aggregate!r} drops updates the control variates would still absorb"
    elif sim.train_cfg.optimizer != "sgd" or sim.train_cfg.momentum:
        # With heavy-ball momentum β, (x − y)/(Kη) estimates the gradient / (1 − β): the correction
        # is too large by that factor, and training diverged (least squares, β = 0.8).
        why = (f"optimizer={sim.train_cfg.optimizer!r}, momentum={sim.train_cfg.momentum:g}: the variates "
               "assume plain SGD steps of size lr")
    elif sim.policy is not None and sim.scaffold_controls == "sent":
        why = "a codec policy sizes uploads without the Δcᵢ that controls='sent' adds to them"
    if why:
        raise ValueError(f"strategy 'scaffold' cannot be used here: {why}")
    if sim.scaffold_controls == "derived" and (sim.codec.error_feedback or sim.codec.sparse):
        # Measured on digits (5 seeds, alpha 0.1): ef+top-k 1 % at 0.86 under FedAvg, 0.48 under
        # SCAFFOLD with derived variates.
        warnings.warn(f"scaffold derives each client's variate from its decoded update; with {sim.codec.spec!r} "
                      "most of an update waits in the error-feedback residual, so the variates are mostly "
                      "codec error: use scaffold_controls='sent' (--scaffold-controls sent)", stacklevel=4)
