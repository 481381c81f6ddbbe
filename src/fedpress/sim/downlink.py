"""The downlink side of a simulated round: pruning masks, the broadcast, and what each client must
download to hold the model it trains from.

The server optimises G; clients hold B, the model the broadcasts let them rebuild (B = G without a
downlink codec). A client that missed rounds is brought in sync by the broadcasts it missed or the
full model, whichever is smaller. These functions read and update that bookkeeping in the run
state ``st`` (the keys each names), the one place a checkpoint saves.
"""

from __future__ import annotations

from fedpress.codecs import compress
from fedpress.fl.pruning import magnitude_masks


def apply_pruning(prune, st: dict, t: int) -> tuple[dict | None, dict | None, int | None]:
    """The server prunes G (and B) on the schedule's rounds; masks travel to the clients on their
    next download. Updates ``G``, ``B``, ``masks``, ``mask_version`` and ``mask_blob`` of ``st``.

    Returns (the masks, as numpy, the bytes of their blob; None without masks).
    """
    G, B = st["G"], st["B"]
    if prune is not None:
        target = prune.target_at(t)
        if target is not None:
            old = st["masks"]
            if prune.tau is not None:
                masks = magnitude_masks(G, tau=prune.tau, scope=prune.scope, old=old)
            else:
                masks = magnitude_masks(G, sparsity=target, scope=prune.scope, old=old)
            st["masks"] = masks
            st["mask_version"] = t
            for k, m in masks.items():
                G[k] = G[k] * m
                B[k] = B[k] * m
    masks = st["masks"]
    masks_np = {k: m.numpy() for k, m in masks.items()} if masks else None
    if masks and st.get("mask_blob", (None, 0))[0] != st["mask_version"]:
        # The masks travel once per change (zstd-packed booleans); measure that blob once.
        st["mask_blob"] = (st["mask_version"], len(compress(dict(masks), "zstd")))
    return masks, masks_np, st["mask_blob"][1] if masks else None


def broadcast(down_codec, st: dict, t: int, float_keys: list[str], masks_np, *, seed: int) -> int:
    """B moves by what the downlink codec really sent of G − B (with the server's own error
    feedback in ``down_state``); each broadcast's size is kept in ``bcast`` while a lagging client
    could still use it. Returns the size of the full model, what a client without B downloads."""
    G, B = st["G"], st["B"]
    if down_codec is not None and t > 0:
        delta = {k: G[k] - B[k] for k in float_keys}
        e = down_codec.encode_ex(delta, st["down_state"], seed=seed, structure="fingerprint", masks=masks_np,
                                 spec_ref=True)
        st["down_state"] = e.state
        for k in float_keys:
            B[k] = B[k] + e.recon[k]
        st["bcast"].append((t, len(e.blob)))
    full_len = len(compress(B, "none"))
    # Keep only the broadcasts a lagging client could still use more cheaply than the full model.
    while st["bcast"] and sum(n for _, n in st["bcast"]) > full_len:
        st["bcast"].pop(0)
    return full_len


def download_sizes(st: dict, online: list[int], t: int, *, full_len: int, lossy_downlink: bool,
                   mask_len: int | None) -> tuple[dict[int, int], set[int]]:
    """What each online client must download to hold B (known before anyone trains).

    A client last synced in round ``client_version[c]`` (-1: never, or from a lossy copy) gets the
    broadcasts it missed when all of them are still kept and together smaller than the full model,
    else the full model; plus the masks (``mask_len`` bytes; None: no masks) when they changed since.

    Returns (client -> bytes, the clients that download the whole model).
    """
    downs: dict[int, int] = {}
    whole: set[int] = set()
    for c in online:
        ver = st["client_version"].get(c, -1)
        if not lossy_downlink or ver < 0:
            down = full_len
        else:
            missed = [n for (rr, n) in st["bcast"] if rr > ver]
            have_all = any(rr == ver + 1 for rr, _ in st["bcast"]) or ver == t
            down = min(sum(missed), full_len) if have_all else full_len
        if down == full_len:
            whole.add(c)
        if mask_len is not None and st["client_mask_version"].get(c, -2) < st["mask_version"]:
            down += mask_len
        downs[c] = down
    return downs, whole


def record_downloads(st: dict, t: int, online: list[int], syncs: dict[int, str], sync_lens: dict[str, int],
                     downs: dict[int, int], *, full_len: int, masks) -> None:
    """The clients that train now hold B_t (and the current masks) — except those given a lossy
    copy of the whole model (``syncs``): they are charged that copy's size instead and get the
    whole model again next time. Updates ``downs`` and ``client_version``/``client_mask_version``."""
    for c in online:
        st["client_version"][c] = t
        if masks:
            st["client_mask_version"][c] = st["mask_version"]
    for c, sp in syncs.items():
        downs[c] += sync_lens[sp] - full_len
        st["client_version"][c] = -1
