"""Pipelines: a parsed spec applied tensor by tensor, producing and reading real blobs.

>>> import fedpress, torch
>>> sd = {"w": torch.randn(64, 32), "b": torch.zeros(64)}
>>> c = fedpress.codec("ef+topk:ratio=0.05+q:bits=8")
>>> state = c.init()
>>> blob, state = c.encode(sd, state, seed=1)      # state now holds the EF residual
>>> out = fedpress.decompress(blob)
>>> sorted(out), out["w"].shape, out["w"].dtype
(['b', 'w'], torch.Size([64, 32]), torch.float32)
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from fedpress import kernels
from fedpress.codecs.base import Ctx, Stage, f32_field, not_finite_message, numel
from fedpress.codecs.feedback import residual_key
from fedpress.codecs.spec import SpecError, canonical_rules, parse_rules
from fedpress.wire.errors import WireError
from fedpress.wire.format import (
    DEFAULT_LIMITS,
    Limits,
    Structure,
    TensorSpec,
    _is_torch,
    from_numpy,
    read_blob,
    to_numpy,
    write_blob,
)


@dataclass
class Encoded:
    """Everything one encode produced: the blob, the new codec state, what the decoder will see
    (``recon``, same structure as the input; None when encoded with ``recon=False``) and how many
    of the blob's bytes are header."""

    blob: bytes
    state: dict
    recon: object
    header_bytes: int

    @property
    def nbytes(self) -> int:
        return len(self.blob)


def _native(ts: TensorSpec) -> np.dtype:
    return np.dtype("<f4") if ts.dtype == "bfloat16" else np.dtype(ts.dtype).newbyteorder("<")


def mask_digest(masks: Mapping[str, np.ndarray]) -> bytes:
    h = hashlib.blake2b(digest_size=8, person=b"fedpress-masks")
    for name in sorted(masks):
        m = np.asarray(masks[name], bool).ravel()
        h.update(name.encode() + b"\0" + m.size.to_bytes(8, "little"))
        h.update(np.packbits(m).tobytes())
    return h.digest()


def _encode_chain(stages: list[Stage], i: int, x, ctx: Ctx):
    # x is a float32 ndarray, or a float32 torch tensor on the Triton path (fedpress.kernels.gpu):
    # it stays on its device while the stages have an ``encode_device``, then moves to the host.
    on_device = not isinstance(x, np.ndarray)
    if on_device and (i == len(stages) or not hasattr(stages[i], "encode_device")):
        x, on_device = to_numpy(x), False
    if i == len(stages):  # end of chain: whatever is left travels as float32
        ctx.write(f32_field(x))
        return np.asarray(x, np.float32) if ctx.recon else None
    nxt = stages[i]
    if not ctx.recon and not nxt.recon_optional:
        ctx = ctx.wanting_recon()  # it needs its sub-tensors' reconstructions to finish

    def rest(subs):
        return [
            _encode_chain(stages, i + 1, s if _is_torch(s) else np.ascontiguousarray(s, np.float32),
                          ctx.child(j))
            for j, s in enumerate(subs)
        ]

    return (nxt.encode_device if on_device else nxt.encode)(x, ctx, rest)


def _decode_chain(stages: list[Stage], i: int, shape, ctx: Ctx, device=None):
    # With a device (Triton path), stages with a ``decode_device`` may return torch tensors there.
    if i == len(stages):
        return ctx.read_f32(numel(shape), "values").reshape(shape)

    def rest(shapes):
        return [_decode_chain(stages, i + 1, tuple(s), ctx.child(j), device)
                for j, s in enumerate(shapes)]

    st = stages[i]
    if device is not None and hasattr(st, "decode_device"):
        return st.decode_device(tuple(shape), ctx, rest, device)
    return st.decode(tuple(shape), ctx, rest)


class Pipeline:
    """One chain of stages (a spec without rules), and what the encoder needs to know about it."""

    def __init__(self, stages: list[Stage]):
        self.stages = stages
        self.error_feedback = stages[0].name == "ef"
        self.lossy = [s for s in stages if s.role in ("transform", "terminal")]
        self.raw = not self.lossy or [s.name for s in self.lossy] == ["none"]
        self.needs_seed = any(s.needs_seed for s in self.lossy)

    @property
    def unbiased(self) -> bool:
        return self.raw or (not self.error_feedback and all(s.unbiased for s in self.lossy))

    @property
    def sparse(self) -> bool:
        return bool(self.lossy) and self.lossy[0].name in ("topk", "threshold")


class Codec:
    """A parsed pipeline with explicit state, for multi-round use.

    ``encode(obj, state, seed=...)`` returns ``(blob, new_state)``; the state is a plain dict of
    numpy arrays (error-feedback residuals, PowerSGD factors) that can be checkpointed. Decoding
    needs no state and no spec: :func:`fedpress.decompress` reads both from the blob.

    With per-tensor rules (``"ef+topk:ratio=0.01+q:bits=8; *.bias,numel<1024=none"``) each tensor
    is encoded by the pipeline :meth:`pipeline_for` picks from its name and shape; the decoder picks
    the same from the structure, so the blob needs nothing more than the spec.

    >>> import fedpress, torch
    >>> c = fedpress.codec("topk:ratio=0.01+q:bits=8; *.bias=none")
    >>> sd = {"fc.weight": torch.randn(100, 100), "fc.bias": torch.randn(100)}
    >>> out = fedpress.decompress(c.encode(sd)[0])
    >>> bool((out["fc.bias"] == sd["fc.bias"]).all()), int((out["fc.weight"] != 0).sum())
    (True, 100)
    """

    def __init__(self, spec: str):
        default, rules = parse_rules(spec)
        self.default = Pipeline(default)
        self.rules = [(r, Pipeline(list(r.stages))) for r in rules]
        self.pipelines = [self.default, *(p for _, p in self.rules)]
        self.spec = canonical_rules(default, rules)
        if len(self.spec.encode()) > DEFAULT_LIMITS.max_spec_bytes:
            # the blob carries the spec: a decoder would refuse it
            raise SpecError(f"bad codec spec {spec[:60]!r}...: {len(self.spec.encode())} bytes in canonical "
                            f"form, more than a blob may carry ({DEFAULT_LIMITS.max_spec_bytes})")
        # The default pipeline's stages; a rule's are in ``self.rules``.
        self.stages = default
        self.lossy = self.default.lossy
        #: Any pipeline keeps error feedback (its residuals are per tensor, in the state).
        self.error_feedback = any(p.error_feedback for p in self.pipelines)
        # The lossless stage (zstd or ans), if any: it works on the finished fields of the whole
        # blob (so only the default pipeline may end with it), and its presence tells the
        # quantisers to store odd-width codes one per byte (whole symbols).
        self.lossless = default[-1].name if default[-1].role == "lossless" else None
        self.zstd_level = default[-1].level if self.lossless == "zstd" else None
        self.entropy_follows = self.lossless is not None
        self.raw = all(p.raw for p in self.pipelines)
        # Deterministic pipelines store seed 0: same bytes whatever seed the caller passes, and a
        # 1-byte varint instead of up to 9.
        self.needs_seed = any(p.needs_seed for p in self.pipelines)

    def __repr__(self) -> str:
        return f"Codec({self.spec!r})"

    def pipeline_for(self, name: str, shape: tuple[int, ...]) -> Pipeline:
        """The pipeline for a tensor: the first rule that matches it, else the default."""
        for rule, pipe in self.rules:
            if rule.matches(name, shape):
                return pipe
        return self.default

    @property
    def unbiased(self) -> bool:
        """True when E[decode(encode(x))] = x: every lossy stage is unbiased (and no ef)."""
        return all(p.unbiased for p in self.pipelines)

    @property
    def sparse(self) -> bool:
        """Whether some pipeline starts with a biased sparsifier (top-k, threshold): each client
        then sends few coordinates, and the server should average a coordinate over its senders
        (for the tensors :meth:`sparse_for` names)."""
        return any(p.sparse for p in self.pipelines)

    def sparse_for(self, name: str, shape: tuple[int, ...]) -> bool:
        """Whether the pipeline of this tensor starts with a biased sparsifier."""
        return self.pipeline_for(name, shape).sparse

    @property
    def stateful(self) -> bool:
        return any(s.stateful for p in self.pipelines for s in p.stages)

    def init(self) -> dict:
        """An empty state; slots are created on first use, per tensor name."""
        return {}

    def encode(self, obj, state: dict | None = None, *, seed: int = 0, **kw) -> tuple[bytes, dict]:
        # The reconstruction is built only when the new state needs it (error feedback).
        kw.setdefault("recon", self.error_feedback)
        e = self.encode_ex(obj, state, seed=seed, **kw)
        return e.blob, e.state

    def encode_ex(
        self,
        obj,
        state: dict | None = None,
        *,
        seed: int = 0,
        structure: str = "full",
        masks: Mapping[str, np.ndarray] | None = None,
        spec_ref: bool = False,
        recon: bool = True,
    ) -> Encoded:
        """Encode and also return the reconstruction the decoder will produce.

        ``structure="fingerprint"`` sends an 8-byte fingerprint instead of names, dtypes and shapes
        (the receiver passes the agreed structure to ``decompress``); ``spec_ref=True`` likewise sends
        a 4-byte digest of the spec (the receiver passes ``specs=``). ``masks`` (name → bool array,
        True = kept) skips pruned coordinates entirely; the decoder needs the same masks.
        ``recon=False`` skips building the reconstruction (``Encoded.recon`` is None): the blob is
        the same, and :func:`compress` saves a full-size write. Error feedback always builds it.
        """
        if structure not in ("full", "fingerprint"):
            raise ValueError(f"structure must be 'full' or 'fingerprint', got {structure!r}")
        if not isinstance(seed, int | np.integer) or not 0 <= int(seed) < 1 << 64:
            raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
        seed = int(seed) if self.needs_seed else 0
        recon = recon or self.error_feedback
        st = Structure.of(obj)
        values = [obj[t.name] for t in st.tensors] if st.is_dict else [obj]
        state_in = dict(state) if state else {}
        state_out: dict = {}
        masks = _check_masks(masks, st)
        fields: list = []
        outs: list = []
        for ti, (ts, v) in enumerate(zip(st.tensors, values, strict=True)):
            pl = self.pipeline_for(ts.name, ts.shape)
            if ts.is_float and not pl.raw and _on_device(pl, v, ts, masks):
                # The Triton path: the tensor stays on its device; only the blob's fields (and the
                # reconstruction, when wanted) come to the host. Same bytes as below.
                x = v.detach().to(dtype=_torch_f32()).contiguous()
                if not pl.lossy[0].checks_finite and not kernels.gpu().all_finite(x):
                    raise ValueError(not_finite_message(ts.name))
                ctx = Ctx(seed=seed, tensor_index=ti, name=ts.name, fields=fields,
                          state_in=state_in, state_out=state_out,
                          entropy_follows=self.entropy_follows, recon=recon)
                r = _encode_chain(pl.lossy, 0, x, ctx)
                outs.append(from_numpy(_host(r), ts) if recon else None)
                continue
            a = to_numpy(v)
            if not ts.is_float or pl.raw:
                m = masks.get(ts.name) if masks and ts.is_float else None
                if m is None:
                    # The array's own bytes become the field: write_blob copies them once, into
                    # the blob (a .tobytes() here was a second full copy).
                    fields.append(np.ascontiguousarray(a, _native(ts)).reshape(-1).view(np.uint8))
                    outs.append(from_numpy(a, ts) if recon else None)
                else:
                    # Pruned coordinates cost no bytes in every pipeline, the raw baseline included
                    # (they used to travel in full under "none" although the blob declared masks).
                    flat = np.ascontiguousarray(a, _native(ts)).ravel()
                    fields.append(flat[m].tobytes())
                    kept = np.zeros_like(flat)
                    kept[m] = flat[m]
                    outs.append(from_numpy(kept.reshape(a.shape), ts))
                continue
            x = a.astype(np.float32, copy=False)
            m = masks.get(ts.name) if masks else None
            # A first stage that sees the whole tensor and checks it on its own (q, sign, qsgd,
            # ternary: their min/max or sums see every NaN and inf) saves a full pass here.
            delegated = m is None and not pl.error_feedback and pl.lossy[0].checks_finite
            if not delegated and not _all_finite(x):
                raise ValueError(not_finite_message(ts.name))
            if pl.error_feedback:
                e = state_in.get(residual_key(ts.name))
                x = x + e if e is not None and e.shape == x.shape else x.copy()
            ctx = Ctx(seed=seed, tensor_index=ti, name=ts.name, fields=fields, state_in=state_in,
                      state_out=state_out, entropy_follows=self.entropy_follows, recon=recon)
            if m is None:
                r = _encode_chain(pl.lossy, 0, x, ctx)
            else:
                kept = _encode_chain(pl.lossy, 0, x.ravel()[m], ctx)
                r = None
                if kept is not None:
                    r = np.zeros(x.size, np.float32)
                    r[m] = kept
                    r = r.reshape(x.shape)
            if not recon:
                outs.append(None)
                continue
            rec = from_numpy(r, ts)
            if pl.error_feedback:
                # The server sees the reconstruction cast back to the tensor's dtype (fp16, bf16,
                # float64), so the residual must be taken against that, not against the float32 r:
                # otherwise the cast's rounding is silently lost instead of fed back.
                seen = r if ts.dtype == "float32" else to_numpy(rec).astype(np.float32)
                state_out[residual_key(ts.name)] = (x - seen).astype(np.float32)
            outs.append(rec)
        blob, header = write_blob(
            self.spec, seed, st, fields, by_fingerprint=structure == "fingerprint",
            zstd_level=self.zstd_level, ans=self.lossless == "ans",
            mask_digest=mask_digest(masks) if masks else None, spec_ref=spec_ref,
        )
        if not recon:
            out = None
        elif st.is_dict:
            out = dict(zip([t.name for t in st.tensors], outs, strict=True))
        else:
            out = outs[0]
        return Encoded(blob, {**state_in, **state_out}, out, header)

    def decode(self, blob: bytes, **kw):
        return decompress(blob, **kw)


def _on_device(pl: Pipeline, v, ts: TensorSpec, masks) -> bool:
    """Whether tensor ``v`` is encoded by the Triton kernels (fedpress.kernels.routes): not with
    error feedback (its residual state lives on the host) or a pruning mask, and only when the
    first stage has a device implementation."""
    return (not pl.error_feedback and not (masks and ts.name in masks)
            and hasattr(pl.lossy[0], "encode_device") and kernels.routes(v))

def _torch_f32():
    import torch

    return torch.float32


def _host(r):
    """A stage's reconstruction as a float32 ndarray (torch tensors come to the host)."""
    return to_numpy(r) if _is_torch(r) else r


def _to_device(obj, device):
    """A decoded tensor or array as a torch tensor on ``device``."""
    import torch

    if not _is_torch(obj):
        obj = torch.from_numpy(np.ascontiguousarray(obj))
    return obj.to(device)


def _all_finite(x: np.ndarray) -> bool:
    k = kernels.cpu()
    if k is not None:  # one threaded pass testing exponent bits
        return k.all_finite(x)
    # A float32 sum is NaN or inf whenever any value is (NaN and inf propagate through additions),
    # and costs a quarter of np.isfinite(x).all(); only when it overflows on finite values does the
    # exact check run.
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.add.reduce(x.reshape(-1))):
            return True
    return bool(np.isfinite(x).all())


def _device_dtype(t, ts: TensorSpec):
    # float32 -> the tensor's dtype with torch's round-to-nearest-even casts, as from_numpy does
    import torch

    return t if ts.dtype == "float32" else t.to(getattr(torch, ts.dtype))


def _check_masks(masks, st: Structure) -> dict[str, np.ndarray]:
    if not masks:
        return {}
    by_name = {t.name: t for t in st.tensors}
    out = {}
    for name, m in masks.items():
        if name not in by_name:
            raise ValueError(f"mask given for unknown tensor {name!r}")
        m = np.asarray(to_numpy(m), bool).ravel()
        if m.size != by_name[name].numel:
            raise ValueError(f"mask for {name!r} has {m.size} entries, tensor has {by_name[name].numel}")
        out[name] = m
    return out


@functools.lru_cache(maxsize=256)
def cached_codec(spec: str) -> Codec:
    """The parsed :class:`Codec` for ``spec``, shared: a Codec holds no state (that lives in the
    dict passed to ``encode``), so the decoder, the simulator and its backends parse each spec once.
    """
    return Codec(spec)


def _canonical(spec):
    try:
        return cached_codec(spec).spec
    except (SpecError, TypeError):
        return spec  # not a spec this version parses: it can only match a digest as written


def _codec_for_blob(spec: str) -> Codec:
    try:
        return cached_codec(spec)
    except SpecError as e:
        raise WireError(f"blob carries an invalid spec: {e}") from None


def codec(spec: str) -> Codec:
    """A :class:`Codec` for ``spec`` (see DESIGN.md for the grammar)."""
    return Codec(spec)


def compress(obj, spec: str = "none", seed: int = 0, **kw) -> bytes:
    """Compress a tensor, an ndarray or a state_dict into self-describing bytes.

    >>> import fedpress, numpy as np
    >>> x = np.linspace(-1, 1, 1000, dtype=np.float32)
    >>> len(fedpress.compress(x, "none")) > len(fedpress.compress(x, "q:bits=4"))
    True
    """
    kw.setdefault("recon", False)  # only the blob is returned: skip the reconstruction
    return Codec(spec).encode_ex(obj, None, seed=seed, **kw).blob


def decompress(
    blob: bytes,
    *,
    structures: Structure | Iterable[Structure] | None = None,
    masks: Mapping[str, np.ndarray] | None = None,
    limits: Limits | None = None,
    specs: Iterable[str] | None = None,
    device=None,
):
    """Decode a blob made by :func:`compress` / :meth:`Codec.encode` (no spec needed).

    ``device`` (a torch device or string, e.g. ``"cuda"``) returns every tensor as a torch tensor
    there; on CUDA the routed stages decode with the Triton kernels (:func:`fedpress.kernels.gpu`),
    the others on the host. The values are the same either way.

    Raises :class:`fedpress.WireError` on anything malformed, and on nothing else.
    """
    p, c, mk, lim = _open(blob, structures, masks, limits, specs)
    # Tampered (checksum-recomputed) blobs may carry inf/NaN scales; the arithmetic on them must not
    # surface as RuntimeWarnings, which become exceptions under ``-W error``: only WireError may.
    with np.errstate(all="ignore"):
        return _decode_tensors(p, c, mk, lim, device)


def _open(blob, structures, masks, limits, specs):
    """The parsed envelope, its codec, the checked masks and the limits of one decode."""
    if isinstance(specs, str):
        specs = [specs]
    if specs is not None:  # the digest is of the canonical spec: accept the spec as the user wrote it
        specs = [_canonical(s) for s in specs]
    p = read_blob(blob, limits=limits or DEFAULT_LIMITS, structures=structures, specs=specs)
    c = _codec_for_blob(p.spec)
    lim = limits or DEFAULT_LIMITS
    if p.mask_digest is not None:
        if not masks:
            raise WireError("blob was encoded with pruning masks; pass the same masks= to decompress")
        try:
            mk = _check_masks(masks, p.structure)
        except ValueError as e:
            raise WireError(str(e)) from None
        if mask_digest(mk) != p.mask_digest:
            raise WireError("pruning masks differ from the ones the blob was encoded with")
    else:
        mk = {}
    return p, c, mk, lim


def _decode_tensors(p, c: Codec, mk: dict, lim: Limits, device=None, spans: list | None = None):
    # ``spans``, when given, receives each tensor's (first field, end field) (fedpress.codecs.anatomy).
    on_device = device is not None and kernels.routes(device)
    pos = [0]
    out = []
    for ti, ts in enumerate(p.structure.tensors):
        if spans is not None:
            spans.append(pos[0])
        pl = c.pipeline_for(ts.name, ts.shape)
        if not ts.is_float or pl.raw:
            dt = _native(ts)
            if pos[0] >= len(p.fields):
                raise WireError(f"missing data for tensor {ts.name!r}")
            f = p.fields[pos[0]]
            pos[0] += 1
            m = mk.get(ts.name) if ts.is_float else None
            count = ts.numel if m is None else int(m.sum())
            if len(f) != count * dt.itemsize:
                raise WireError(f"tensor {ts.name!r}: expected {count * dt.itemsize} bytes, got {len(f)}")
            a = np.frombuffer(f, dt)
            if ts.dtype == "bool" and a.size and a.view(np.uint8).max() > 1:
                raise WireError(f"tensor {ts.name!r}: invalid bool bytes")
            if m is None:
                a = a.copy()
            else:
                full = np.zeros(ts.numel, dt)
                full[m] = a
                a = full
            a = from_numpy(a.reshape(ts.shape), ts)
            out.append(a if device is None else _to_device(a, device))
            continue
        ctx = Ctx(seed=p.seed, tensor_index=ti, name=ts.name, fields=p.fields, pos=pos,
                  entropy_follows=c.entropy_follows, limits=lim)
        m = mk.get(ts.name)
        if m is None and on_device:
            r = _decode_chain(pl.lossy, 0, ts.shape, ctx, device)
            if _is_torch(r):  # already a float32 tensor on the device: only the dtype is left
                out.append(_device_dtype(r.reshape(ts.shape), ts))
                continue
        elif m is None:
            r = _decode_chain(pl.lossy, 0, ts.shape, ctx)
        else:
            r = np.zeros(ts.numel, np.float32)
            r[m] = _decode_chain(pl.lossy, 0, (int(m.sum()),), ctx)
        r = from_numpy(r.reshape(ts.shape), ts)
        out.append(r if device is None else _to_device(r, device))
    if pos[0] != len(p.fields):
        raise WireError(f"{len(p.fields) - pos[0]} unexpected trailing field(s)")
    if spans is not None:
        spans.append(pos[0])
    if p.structure.is_dict:
        return {t.name: v for t, v in zip(p.structure.tensors, out, strict=True)}
    return out[0]
