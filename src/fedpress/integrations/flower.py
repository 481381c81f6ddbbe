"""fedpress on Flower (``flwr`` 1.42): a client mod and a strategy wrapper.

Install with ``pip install 'fedpress[flower]'``. Two pieces, used together:

* :func:`fedpress_mod` — a ClientApp *mod* (middleware). It lets your ``@app.train()`` function
  train as usual, then replaces the model it returns by **one** ``Array`` holding a fedpress blob of
  the update (trained model − received model), ``stype="fedpress/<wire version>"``. The codec state
  (error-feedback residuals, PowerSGD factors) lives in ``context.state``, which Flower keeps for the
  node across rounds although every message runs in a fresh ClientApp process. When the server
  compresses the downlink too, the mod rebuilds the model from the broadcast before your function
  sees it.
* :class:`FedpressStrategy` — wraps any Flower strategy (``FedAvg``, ``FedAdam``, ``FedProx``...) by
  composition, like Flower's DP wrappers. It sends the codec spec in the train config, decodes each
  reply back into ``global model + update`` and hands the replies to the wrapped strategy, which
  aggregates exactly as it would without compression. Optional downlink compression: the server
  broadcasts compressed model deltas (with its own error feedback) to nodes that hold the previous
  broadcast, and the full model to the rest.

The bytes it reports are ``len(Array.data)`` of the payloads that actually crossed Flower, per node
and per round, in the ``MetricRecord`` that ``aggregate_train`` returns and in ``strategy.history``.
The uplink blob is exactly what the in-process simulator produces for the same update, codec, codec
state and seed (:func:`update_seed`): ``codec.encode_ex(update, state, seed=...,
structure="fingerprint", spec_ref=True)``.

A stock strategy refuses these replies (``Array.numpy()`` raises on an unknown ``stype``), and the
wrapper refuses non-fedpress replies with a message naming the node and the fix, so a half-configured
deployment fails loudly instead of averaging garbage.

Server::

    from flwr.serverapp.strategy import FedAvg
    strategy = FedpressStrategy(FedAvg(), codec="ef+topk:ratio=0.01+q:bits=8")
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=3)

Client::

    app = ClientApp(mods=[fedpress_mod])

With Flower's differential privacy
----------------------------------
Flower's central-DP wrappers go *inside* ``FedpressStrategy``, which then hands them decoded
``global + update`` replies. Server-side clipping needs nothing more: the wrapper clips the very
update that is averaged, then adds its noise::

    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg
    dp = DifferentialPrivacyServerSideFixedClipping(
        FedAvg(), noise_multiplier=1.0, clipping_norm=0.5, num_sampled_clients=10)
    strategy = FedpressStrategy(dp, codec="ef+topk:ratio=0.01+q:bits=8")

Client-side clipping clips *before* compression, and compression can lengthen the update again
(quantisation; error feedback adds earlier rounds' residual back), past the ``C`` the noise is sized
for. So the strategy clips each decoded update to the ``clipping_norm`` the DP wrapper sends the
nodes (exact, and no extra trust: under central DP the server sees each update anyway), and
``fedpress_mod`` clips the update as Flower's mod would and keeps what the server's clip will take
off in the error-feedback residual, so it is sent later rather than lost. Flower's clipping mod is
then optional; used, it must run *inside* ``fedpress_mod`` (the other order is an error reply naming
the fix). Details: :mod:`fedpress.integrations.flower_dp`. ::

    from flwr.clientapp.mod import fixedclipping_mod
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping
    dp = DifferentialPrivacyClientSideFixedClipping(
        FedAvg(), noise_multiplier=1.0, clipping_norm=0.5, num_sampled_clients=10)
    strategy = FedpressStrategy(dp, codec="ef+topk:ratio=0.01+q:bits=2")

    app = ClientApp(mods=[fedpress_mod])  # clips to clipping_norm itself

    @app.train(mods=[fixedclipping_mod])  # optional; inside fedpress_mod (adaptiveclipping_mod
    def train(msg, context):              # is needed there for the adaptive wrapper's norm bit)
        ...

>>> from flwr.serverapp.strategy import FedAvg
>>> s = FedpressStrategy(FedAvg(), codec="ef+topk:ratio=0.1+q:bits=8", seed=7)
>>> s.codec.spec, STYPE
('ef+topk:ratio=0.1+q:bits=8', 'fedpress/1')
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from logging import ERROR, INFO, WARNING
from typing import Any

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import log
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedpress.codecs import Codec, decompress
from fedpress.integrations import flower_dp as dp
from fedpress.sim.runner import derive_seed
from fedpress.wire import WIRE_VERSION, Structure, WireError

__all__ = [
    "STYPE",
    "FedpressReplyError",
    "FedpressStrategy",
    "fedpress_mod",
    "pack_blob",
    "unpack_blob",
    "update_seed",
]

STYPE = f"fedpress/{WIRE_VERSION}"
"""``Array.stype`` of a fedpress blob; ``Array.data`` holds the blob, byte for byte."""

# Train-config keys the strategy sends and the mod reads.
KEY_CODEC = "fedpress-codec"
KEY_SEED = "fedpress-seed"
KEY_ROUND = "fedpress-round"
KEY_DOWN = "fedpress-down"  # "full" or "delta"; absent: plain Flower arrays
KEY_DOWN_CODEC = "fedpress-down-codec"
KEY_DOWN_BASE = "fedpress-down-base"  # version of the broadcast model the deltas apply to
KEY_DOWN_VERSION = "fedpress-down-version"  # version of the broadcast model they produce
KEY_DOWN_DIGEST = "fedpress-down-digest"  # digest of the model after the deltas
KEY_DOWN_DTYPES = "fedpress-down-dtypes"  # dtypes to cast the held model to before the deltas

# Records the mod keeps in ``context.state``.
STATE_CODEC = "fedpress-codec-state"
STATE_BASE = "fedpress-down-model"
STATE_META = "fedpress-meta"

_UP_KEY = "fedpress"
_SEED_SPACE = 1 << 63


class FedpressReplyError(ValueError):
    """A train reply the strategy cannot use (not a fedpress blob, a corrupt blob, wrong shape)."""


# ----------------------------------------------------------------------------- small helpers
def pack_blob(blob: bytes) -> Array:
    """Wrap a fedpress blob as a Flower ``Array`` (``stype=STYPE``; ``data`` is the blob itself).

    >>> import fedpress, numpy as np
    >>> a = pack_blob(fedpress.compress(np.ones(10, np.float32), "q:bits=8"))
    >>> a.stype, a.shape == (len(a.data),), fedpress.decompress(unpack_blob(a)).shape
    ('fedpress/1', True, (10,))
    """
    blob = bytes(blob)
    return Array(dtype="uint8", shape=(len(blob),), stype=STYPE, data=blob)


def unpack_blob(array: Array) -> bytes:
    """The blob inside ``array``; :class:`FedpressReplyError` when it is not a fedpress Array.

    >>> import numpy as np
    >>> unpack_blob(Array(np.zeros(3, np.float32)))
    Traceback (most recent call last):
    ...
    fedpress.integrations.flower.FedpressReplyError: Array stype 'numpy.ndarray' is not 'fedpress/1': the sender did not compress with fedpress (ClientApp(mods=[fedpress_mod]))
    """
    if not isinstance(array, Array):
        raise FedpressReplyError(f"expected a flwr Array, got {type(array).__name__}")
    if array.stype != STYPE:
        hint = (
            "a different fedpress wire version: upgrade client and server together"
            if str(array.stype).startswith("fedpress/")
            else "the sender did not compress with fedpress (ClientApp(mods=[fedpress_mod]))"
        )
        raise FedpressReplyError(f"Array stype {array.stype!r} is not {STYPE!r}: {hint}")
    return bytes(array.data)


def update_seed(seed: int, server_round: int, node_id: int) -> int:
    """The seed the mod encodes a node's update with: ``derive_seed(seed, round - 1, node, 3)``,
    the derivation :class:`fedpress.Simulation` uses for (round index, client).

    >>> update_seed(0, 1, 5) == derive_seed(0, 0, 5, 3), update_seed(0, 2, 5) == update_seed(0, 1, 5)
    (True, False)
    """
    return derive_seed(int(seed), int(server_round) - 1, int(node_id), 3)


def _is_float(t: torch.Tensor) -> bool:
    return t.is_floating_point()


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def _to_torch(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(a.numpy())) for k, a in record.items()}


def _to_record(sd: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v.detach().cpu().numpy())) for k, v in sd.items()})


def _digest(sd: dict[str, torch.Tensor]) -> str:
    h = hashlib.blake2b(digest_size=8, person=b"fedpress-flwr")
    for k, v in sd.items():
        a = np.ascontiguousarray(v.detach().cpu().numpy())
        h.update(k.encode() + b"\0" + str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _single(records, kind: str, where: str):
    if len(records) != 1:
        raise FedpressReplyError(f"{where}: expected exactly one {kind}, found {len(records)}")
    return next(iter(records.items()))


def _payload_bytes(content: RecordDict) -> int:
    return sum(len(a.data) for rec in content.array_records.values() for a in rec.values())


def _mod_error(msg: Message, reason: str) -> Message:
    log(ERROR, "fedpress_mod: %s", reason)
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=f"fedpress_mod: {reason}"),
                   reply_to=msg)


# ----------------------------------------------------------------------------- client side
def _load_state(ctx: Context) -> dict[str, np.ndarray]:
    rec = ctx.state.array_records.get(STATE_CODEC)
    return {k: a.numpy() for k, a in rec.items()} if rec is not None else {}


def _save_state(ctx: Context, state: dict) -> None:
    ctx.state[STATE_CODEC] = ArrayRecord(
        {k: Array(np.ascontiguousarray(np.asarray(v))) for k, v in state.items()}
    )


def _meta(ctx: Context) -> ConfigRecord:
    if STATE_META not in ctx.state.config_records:
        ctx.state[STATE_META] = ConfigRecord()
    return ctx.state.config_records[STATE_META]


def _receive_downlink(record: ArrayRecord, cfg: ConfigRecord, ctx: Context) -> dict[str, torch.Tensor]:
    """Rebuild the broadcast model from a compressed downlink and remember it in ``ctx.state``."""
    mode = cfg[KEY_DOWN]
    blobs = [unpack_blob(a) for a in record.values()]
    if mode == "full":
        if len(blobs) != 1:
            raise FedpressReplyError(f"full downlink carries {len(blobs)} blobs, expected 1")
        model = decompress(blobs[0])
        if not isinstance(model, dict):
            raise FedpressReplyError("full downlink is not a dict of tensors")
    elif mode == "delta":
        have = _meta(ctx).get("down-version")
        base = int(cfg[KEY_DOWN_BASE])
        if have != base or STATE_BASE not in ctx.state.array_records:
            raise FedpressReplyError(
                f"downlink deltas apply to broadcast model #{base}, this node holds "
                f"{'none' if have is None else f'#{have}'}; the server will resend the full model"
            )
        model = _to_torch(ctx.state.array_records[STATE_BASE])
        dtypes = list(cfg.get(KEY_DOWN_DTYPES, [_dtype_name(v) for v in model.values()]))
        if len(dtypes) != len(model):
            raise FedpressReplyError(f"{len(dtypes)} dtypes for a {len(model)}-tensor model")
        casts = [getattr(torch, str(dt), None) for dt in dtypes]
        if not all(isinstance(c, torch.dtype) for c in casts):
            raise FedpressReplyError(f"bad dtypes in the downlink config: {dtypes}")
        model = {k: v.to(c) for (k, v), c in zip(model.items(), casts, strict=True)}
        structure = Structure.of(model)
        spec = str(cfg[KEY_DOWN_CODEC])
        for blob in blobs:
            d = decompress(blob, structures=[structure], specs=[spec])
            model = {k: (v + d[k] if _is_float(v) else d[k]) for k, v in model.items()}
    else:
        raise FedpressReplyError(f"unknown downlink mode {mode!r}")
    want = cfg.get(KEY_DOWN_DIGEST)
    if want is not None and _digest(model) != want:
        raise FedpressReplyError("rebuilt model differs from the server's broadcast (digest mismatch)")
    ctx.state[STATE_BASE] = _to_record(model)
    _meta(ctx)["down-version"] = int(cfg[KEY_DOWN_VERSION])
    return model


def fedpress_mod(msg: Message, ctx: Context, call_next: ClientAppCallable) -> Message:
    """Flower client mod: compress the train reply's update with the codec the server asked for.

    Acts on train messages that carry ``fedpress-codec`` in their config (sent by
    :class:`FedpressStrategy`); other messages pass through untouched. The reply's single
    ``ArrayRecord`` (same key) then holds one ``Array`` with ``stype=STYPE`` whose data is the blob
    of ``trained − received`` (floating-point tensors; integer buffers are not sent). The codec state
    persists in ``ctx.state`` between rounds. Problems come back as an error reply, never as a
    silently uncompressed model. With a ``clipping_norm`` in the config (Flower's client-side DP
    wrappers) it clips the update to it, as ``fixedclipping_mod`` does, and keeps in the error-feedback
    residual what the server's clip of the decoded update will remove; Flower's clipping mods must
    run inside it, never outside (:mod:`fedpress.integrations.flower_dp`).

    >>> import fedpress, numpy as np
    >>> from flwr.app import Metadata
    >>> meta = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=5, reply_to_message_id="",
    ...                 group_id="1", created_at=0.0, ttl=60.0, message_type="train")
    >>> arrays = ArrayRecord({"w": Array(np.zeros(100, np.float32))})
    >>> cfg = ConfigRecord({"fedpress-codec": "q:bits=8", "fedpress-seed": 0, "fedpress-round": 1})
    >>> msg = Message(metadata=meta, content=RecordDict({"arrays": arrays, "config": cfg}))
    >>> ctx = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})
    >>> def train(m, c):  # adds 1 to every weight
    ...     new = {k: Array(a.numpy() + 1) for k, a in m.content["arrays"].items()}
    ...     return Message(RecordDict({"arrays": ArrayRecord(new)}), reply_to=m)
    >>> out = fedpress_mod(msg, ctx, train)
    >>> a = out.content["arrays"]["fedpress"]
    >>> update = fedpress.decompress(a.data, structures=[Structure.of({"w": torch.zeros(100)})],
    ...                              specs=["q:bits=8"])  # the server knows both
    >>> a.stype, len(a.data) < 100 * 4, float(update["w"].mean())  # 8 bits a weight, not 32
    ('fedpress/1', True, 1.0)
    """
    if msg.metadata.message_type.split(".")[0] != MessageType.TRAIN:
        return call_next(msg, ctx)
    cfgs = msg.content.config_records
    cfg = next((c for c in cfgs.values() if KEY_CODEC in c), None)
    if cfg is None:
        log(WARNING, "fedpress_mod: no %r in the train config (is the server strategy wrapped in "
            "FedpressStrategy?); sending the model uncompressed", KEY_CODEC)
        return call_next(msg, ctx)
    outer = dp.enclosing_array_mod()
    if outer is not None:  # it would fail on the blob after training; say so now, with the fix
        clips = "" if outer == "LocalDpMod" else "; fedpress_mod also clips to clipping_norm itself"
        return _mod_error(msg, f"it runs inside {outer}, which reads the model arrays of the reply "
                          f"and cannot read a compressed one: run {outer} inside fedpress_mod, "
                          f"ClientApp(mods=[fedpress_mod]) with @app.train(mods=[{outer}]) (or "
                          f"ClientApp(mods=[fedpress_mod, {outer}])){clips}")
    try:
        codec = Codec(str(cfg[KEY_CODEC]))
        # A client-side DP wrapper's clip C (the server clips the decoded update to it as well).
        clip = dp.clipping_norm(msg.content)
        in_key, record = _single(msg.content.array_records, "ArrayRecord", "train message")
        if KEY_DOWN in cfg:
            base = _receive_downlink(record, cfg, ctx)
            msg.content[in_key] = _to_record(base)
        else:
            base = _to_torch(record)
    except (ValueError, KeyError, TypeError) as e:  # WireError and SpecError are ValueErrors
        return _mod_error(msg, str(e))

    out = call_next(msg, ctx)
    if out.has_error():
        return out
    try:
        out_key, trained = _single(out.content.array_records, "ArrayRecord", "train reply")
        new = _to_torch(trained)
        if list(new) != list(base):
            raise FedpressReplyError(
                f"the reply's arrays {sorted(new)} differ from the received ones {sorted(base)}")
        update = {}
        for k, b in base.items():
            if not _is_float(b):
                continue
            if new[k].shape != b.shape:
                raise FedpressReplyError(f"{k!r} came back with shape {tuple(new[k].shape)}, "
                                         f"received {tuple(b.shape)}")
            update[k] = new[k].to(b.dtype) - b
        seed = update_seed(int(cfg.get(KEY_SEED, 0)), int(cfg[KEY_ROUND]), ctx.node_id)
        if clip is not None:  # as fixedclipping_mod does (float tensors: the ones sent)
            dp.clip_update(update, clip)
        e = codec.encode_ex(update, _load_state(ctx), seed=seed, structure="fingerprint",
                            spec_ref=True)
        new_state = e.state
        if clip is not None and codec.error_feedback:  # the server clips the decoded update again
            new_state = dp.feed_back_clip(new_state, e.recon, codec, clip)
    except (ValueError, KeyError, TypeError) as err:
        return _mod_error(msg, str(err))
    if codec.stateful:
        _save_state(ctx, new_state)
    out.content[out_key] = ArrayRecord({_UP_KEY: pack_blob(e.blob)})
    return out


# ----------------------------------------------------------------------------- server side
class FedpressStrategy(Strategy):
    """Wrap a Flower strategy so that model updates travel as fedpress blobs.

    Parameters
    ----------
    strategy : the Flower strategy that samples nodes and aggregates (FedAvg, FedAdam, FedProx...).
    codec : uplink codec spec, e.g. ``"ef+topk:ratio=0.01+q:bits=8"``.
    down_codec : optional downlink codec spec. Nodes holding the previous broadcast get the
        compressed ``G − B`` deltas (their missed ones, while cheaper than the model); the others get
        the full broadcast model ``B`` as a lossless fedpress blob. ``None``: plain Flower arrays.
    seed : run seed; every node's codec seed derives from (seed, round, node id).
    on_bad_reply : ``"drop"`` (log an error, aggregate the rest) or ``"raise"``
        (:class:`FedpressReplyError`) for replies that are not valid fedpress blobs.

    ``aggregate_train`` adds to the metrics: ``fedpress-uplink-bytes`` and ``fedpress-downlink-bytes``
    (this round's totals), ``fedpress-uplink-bytes-per-node`` (one entry per decoded reply, in
    ascending node-id order), ``fedpress-clients`` and ``fedpress-rejected``. ``history`` keeps one
    dict per round with the same numbers keyed by node id, and each node's own train metrics
    (``client_metrics``), which the wrapped strategy only reports averaged. Under a client-side DP
    wrapper each decoded update is clipped to the ``clipping_norm`` the wrapper sent that node (read
    from the message rather than set here: one setting, which follows the adaptive wrapper's changes
    and whichever way the two wrappers nest), and the row gains ``dp``: the clip, each decoded
    update's norm, and the nodes whose update the clip shortened.

    >>> from flwr.serverapp.strategy import FedAdam
    >>> s = FedpressStrategy(FedAdam(), codec="topk:ratio=0.05+q:bits=4", down_codec="q:bits=8")
    >>> s.codec.spec, s.down_codec.spec, s.history
    ('topk:ratio=0.05+q:bits=4', 'q:bits=8', [])
    """

    def __init__(self, strategy: Strategy, codec: str, *, down_codec: str | None = None,
                 seed: int = 0, on_bad_reply: str = "drop") -> None:
        super().__init__()
        if not isinstance(strategy, Strategy):
            raise TypeError(f"strategy must be a flwr Strategy, got {type(strategy).__name__}")
        if on_bad_reply not in ("drop", "raise"):
            raise ValueError(f"on_bad_reply must be 'drop' or 'raise', got {on_bad_reply!r}")
        if not isinstance(seed, int) or not 0 <= seed < _SEED_SPACE:
            raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
        self.strategy = strategy
        self.codec = Codec(codec)
        self.down_codec = Codec(down_codec) if down_codec and down_codec != "none" else None
        self.seed = seed
        self.on_bad_reply = on_bad_reply
        self.history: list[dict[str, Any]] = []
        self._G: dict[str, torch.Tensor] = {}
        self._sent: dict[int, int] = {}  # node -> downlink bytes, this round
        # Downlink state: the broadcast model B (what in-sync nodes hold), its version (one step per
        # broadcast), the server's codec state (error feedback), the broadcasts a lagging node may
        # still replay, and the version each node is known to hold.
        self._B: dict[str, torch.Tensor] | None = None
        self._B_version = 0
        self._down_state: dict = {}
        self._bcast: list[tuple[int, bytes]] = []
        self._full_blob = b""
        self._B_digest = ""
        self._node_version: dict[int, int] = {}
        self._clip: dict[int, float] = {}  # node -> the DP clip C its train config carried

    def __repr__(self) -> str:
        down = f", down_codec={self.down_codec.spec!r}" if self.down_codec else ""
        return f"FedpressStrategy({self.strategy!r}, codec={self.codec.spec!r}{down})"

    @property
    def round_model(self) -> dict[str, torch.Tensor]:
        """The model this round's nodes train from, hence the base of their updates: the broadcast
        model they rebuild from compressed downlink deltas with a ``down_codec``, the global model
        otherwise. Set by ``configure_train``; empty before the first round."""
        if self.down_codec is not None and self._B is not None:
            return {k: v.clone() for k, v in self._B.items()}
        return {k: v.clone() for k, v in self._G.items()}

    def summary(self) -> None:
        """Log the codec settings, then the wrapped strategy's summary."""
        log(INFO, "\t├──> fedpress: uplink codec %s", self.codec.spec)
        log(INFO, "\t│\t└── downlink codec %s", self.down_codec.spec if self.down_codec else "(none)")
        self.strategy.summary()

    # -- train
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Let the wrapped strategy configure the round, then add the codec settings (and, with a
        downlink codec, replace each message's model by compressed broadcasts)."""
        config[KEY_CODEC] = self.codec.spec
        config[KEY_SEED] = self.seed
        config[KEY_ROUND] = int(server_round)
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._G = _to_torch(arrays)
        self._sent = {}
        # A client-side DP wrapper, inside or outside this one, tells the nodes their clip in the
        # config: read it from the messages, so it is exactly what each node was told this round
        # (the adaptive wrapper changes it every round).
        self._clip = {int(m.metadata.dst_node_id): c for m in messages
                      if (c := dp.clipping_norm(m.content)) is not None}
        if self.down_codec is not None and messages:
            self._broadcast(server_round)
        for m in messages:
            node = int(m.metadata.dst_node_id)
            if self.down_codec is not None:
                m.content = self._downlink_content(m.content, arrays, node)
            self._sent[node] = _payload_bytes(m.content)
        return messages

    def _broadcast(self, server_round: int) -> None:
        """Advance the broadcast model B one version (compressing G − B with error feedback)."""
        G, B = self._G, self._B
        if B is None or list(B) != list(G) or any(B[k].shape != v.shape for k, v in G.items()):
            # First round, or the model changed shape: everyone starts again from the full model.
            self._B = {k: v.clone() for k, v in G.items()}
            self._bcast, self._node_version, self._down_state = [], {}, {}
        else:
            if any(B[k].dtype != v.dtype for k, v in G.items()):
                # Stock strategies change dtypes (FedAvg turns integer buffers into float64,
                # FedAdam float32 into float64). In-sync nodes cast their copy as the server does
                # (KEY_DOWN_DTYPES); older broadcasts were for the old dtypes, so drop them.
                B = self._B = {k: b.to(G[k].dtype) for k, b in B.items()}
                self._bcast = []
            payload = {k: (v - B[k] if _is_float(v) else v) for k, v in G.items()}
            e = self.down_codec.encode_ex(payload, self._down_state,
                                          seed=derive_seed(self.seed, server_round - 1, 1 << 20),
                                          structure="fingerprint", spec_ref=True)
            self._down_state = e.state
            self._B = {k: (b + e.recon[k] if _is_float(b) else e.recon[k].clone())
                       for k, b in B.items()}
            self._bcast.append((self._B_version + 1, e.blob))
        self._B_version += 1
        self._full_blob = Codec("none").encode_ex(self._B).blob
        self._B_digest = _digest(self._B)
        # Keep only the broadcasts a lagging node could still use more cheaply than the full model.
        while self._bcast and sum(len(b) for _, b in self._bcast) > len(self._full_blob):
            self._bcast.pop(0)

    def _downlink_content(self, content: RecordDict, arrays: ArrayRecord, node: int) -> RecordDict:
        have = self._node_version.get(node)
        missed = [b for v, b in self._bcast if have is not None and v > have]
        # The kept broadcasts are consecutive versions ending at B's: usable if they start right
        # after the node's version.
        chain_ok = have is not None and any(v == have + 1 for v, _ in self._bcast)
        cfg_extra: dict[str, Any] = {KEY_DOWN_DIGEST: self._B_digest,
                                     KEY_DOWN_VERSION: self._B_version}
        if chain_ok and sum(len(b) for b in missed) < len(self._full_blob):
            rec = ArrayRecord({f"{_UP_KEY}-{i}": pack_blob(b) for i, b in enumerate(missed)})
            cfg_extra.update({KEY_DOWN: "delta", KEY_DOWN_BASE: int(have),
                              KEY_DOWN_CODEC: self.down_codec.spec,
                              KEY_DOWN_DTYPES: [_dtype_name(v) for v in self._B.values()]})
        else:
            rec = ArrayRecord({_UP_KEY: pack_blob(self._full_blob)})
            cfg_extra[KEY_DOWN] = "full"
        out = RecordDict()
        for key, value in content.items():
            if isinstance(value, ArrayRecord) and (value is arrays or len(content.array_records) == 1):
                out[key] = rec
            elif isinstance(value, ConfigRecord) and KEY_CODEC in value:
                out[key] = ConfigRecord({**dict(value), **cfg_extra})
            else:
                out[key] = value
        return out

    def _decode_reply(self, reply: Message, structure: Structure) -> dict[str, torch.Tensor]:
        node = int(reply.metadata.src_node_id)
        where = f"train reply from node {node}"
        if node not in self._sent:
            raise FedpressReplyError(f"{where}: this node was not sent a train message this round")
        _key, record = _single(reply.content.array_records, "ArrayRecord", where)
        try:
            for array in record.values():  # name a foreign stype before counting arrays
                unpack_blob(array)
            _akey, array = _single(record, "Array", where)
            update = decompress(array.data, structures=[structure], specs=[self.codec.spec])
        except (FedpressReplyError, WireError) as e:
            raise FedpressReplyError(f"{where}: {e}") from None
        return update

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Decode every reply into ``global model + update``, then let the wrapped strategy
        aggregate; add the measured bytes to the returned metrics."""
        replies = list(replies)
        structure = Structure.of({k: v for k, v in self._G.items() if _is_float(v)})
        good: list[Message] = []
        decoded: list[tuple[Message, dict[str, np.ndarray]]] = []
        up: dict[int, int] = {}
        rejected: dict[int, str] = {}
        norms: dict[int, float] = {}
        reclipped: list[int] = []
        for reply in replies:  # decode everything first: a raise leaves the replies untouched
            node = int(reply.metadata.src_node_id)
            if reply.has_error():
                good.append(reply)  # the wrapped strategy logs and skips it
                continue
            try:
                update = self._decode_reply(reply, structure)
            except FedpressReplyError as e:
                if self.on_bad_reply == "raise":
                    raise
                log(ERROR, "fedpress: dropping %s", e)
                rejected[node] = str(e)
                continue
            if node in self._clip:
                # Client-side DP: the noise is sized for updates of norm <= C, but the node's clip
                # came before compression, which can lengthen the update (quantisation, the EF
                # residual). Clip what is actually averaged, exactly.
                norms[node], scale = dp.clip_update(update, self._clip[node])
                if scale < 1.0:
                    reclipped.append(node)
            decoded.append((reply, {k: (v + update[k] if k in update else v).numpy()
                                    for k, v in self._G.items()}))
        client_metrics: dict[int, dict[str, Any]] = {}
        for reply, model in decoded:
            node = int(reply.metadata.src_node_id)
            key, record = next(iter(reply.content.array_records.items()))
            up[node] = sum(len(a.data) for a in record.values())
            client_metrics[node] = {k: v for rec in reply.content.metric_records.values()
                                    for k, v in rec.items()}
            reply.content[key] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in model.items()})
            good.append(reply)
        for node in self._sent:  # nodes whose state we cannot vouch for get the full model next
            if node in up:
                self._node_version[node] = self._B_version
            else:
                self._node_version.pop(node, None)
        arrays, metrics = self.strategy.aggregate_train(server_round, good)
        row = {
            "round": int(server_round),
            "uplink_bytes": sum(up.values()),
            "downlink_bytes": sum(self._sent.values()),
            "client_uplink_bytes": dict(sorted(up.items())),
            "client_downlink_bytes": dict(sorted(self._sent.items())),
            "rejected": rejected,
            "client_metrics": dict(sorted(client_metrics.items())),
        }
        if self._clip:
            # Kept here, on the server, and not in the returned metrics: each node's update norm
            # is exactly what central DP keeps from being released unnoised.
            row["dp"] = {"clipping_norm": dict(sorted(self._clip.items())),
                         "update_norms": dict(sorted(norms.items())), "reclipped": sorted(reclipped)}
        self.history.append(row)
        metrics = MetricRecord() if metrics is None else metrics
        metrics["fedpress-uplink-bytes"] = row["uplink_bytes"]
        metrics["fedpress-downlink-bytes"] = row["downlink_bytes"]
        metrics["fedpress-uplink-bytes-per-node"] = list(row["client_uplink_bytes"].values())
        metrics["fedpress-clients"] = len(up)
        metrics["fedpress-rejected"] = len(rejected)
        log(INFO, "fedpress: round %d uplink %d B from %d nodes, downlink %d B", server_round,
            row["uplink_bytes"], len(up), row["downlink_bytes"])
        return arrays, metrics

    # -- evaluate: the model travels as the wrapped strategy sends it
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Delegate to the wrapped strategy (evaluation messages are not compressed)."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Delegate to the wrapped strategy."""
        return self.strategy.aggregate_evaluate(server_round, replies)
