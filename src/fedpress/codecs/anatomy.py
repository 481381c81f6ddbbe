"""Where a blob's bytes go: envelope, and per tensor its pipeline and payload (``fedpress inspect``).

A blob is decoded once, fully checked, while the fields each tensor reads are counted; so the
breakdown is of bytes that exist, and a malformed blob is the usual :class:`~fedpress.WireError`.
Payload sizes are counted *before* a lossless ``zstd``/``ans`` stage, which codes the whole body;
the envelope says how long the body travelled.

>>> import fedpress, torch
>>> sd = {"fc.weight": torch.randn(64, 100), "fc.bias": torch.randn(64)}
>>> info = fedpress.inspect_blob(fedpress.compress(sd, "q:bits=8; *.bias=none"))
>>> [(t.name, t.pipeline, t.payload_bytes) for t in info.tensors]
[('fc.weight', 'q:bits=8', 6600), ('fc.bias', 'none', 256)]
>>> info.total_bytes == info.envelope_bytes + info.body_bytes
True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from fedpress.codecs.combine import _decode_tensors, _open
from fedpress.codecs.spec import canonical
from fedpress.wire.format import FLAG_ANS, FLAG_MASKED, FLAG_SPEC_REF, FLAG_ZSTD


@dataclass
class TensorBytes:
    name: str
    dtype: str
    shape: tuple[int, ...]
    #: the pipeline that encoded it (a per-tensor rule's, or the default); "raw" for non-floats
    pipeline: str
    fields: int
    #: bytes of its fields (before a lossless stage over the whole body)
    payload_bytes: int

    @property
    def bits_per_value(self) -> float:
        n = int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1
        return 8 * self.payload_bytes / n if n else 0.0


@dataclass
class BlobInfo:
    total_bytes: int
    #: magic, version, flags, spec (or its digest), seed, structure (or its fingerprint), mask
    #: digest and checksum: everything but the body
    envelope_bytes: int
    #: the body as it travelled (field table and fields, after zstd or ans)
    body_bytes: int
    spec: str
    seed: int
    lossless: str | None
    structure_by_fingerprint: bool
    spec_by_digest: bool
    masked: bool
    tensors: list[TensorBytes] = field(default_factory=list)

    @property
    def payload_bytes(self) -> int:
        return sum(t.payload_bytes for t in self.tensors)

    def to_dict(self) -> dict:
        d = asdict(self)
        for t, td in zip(self.tensors, d["tensors"], strict=True):
            td["shape"] = list(t.shape)
            td["bits_per_value"] = t.bits_per_value
        d["payload_bytes"] = self.payload_bytes
        return d


def inspect_blob(blob: bytes, *, structures=None, specs=None, masks=None, limits=None) -> BlobInfo:
    """The anatomy of ``blob`` (the same arguments as :func:`fedpress.decompress` for blobs that
    name their structure or spec by fingerprint or digest, or were encoded with pruning masks).

    Raises :class:`fedpress.WireError` on anything malformed, like decoding does.
    """
    p, c, mk, lim = _open(blob, structures, masks, limits, specs)
    spans: list[int] = []
    with np.errstate(all="ignore"):
        _decode_tensors(p, c, mk, lim, spans=spans)
    tensors = []
    for i, ts in enumerate(p.structure.tensors):
        a, b = spans[i], spans[i + 1]
        pl = c.pipeline_for(ts.name, ts.shape)
        tensors.append(TensorBytes(ts.name, ts.dtype, tuple(ts.shape),
                                   canonical(pl.stages) if ts.is_float else "raw", b - a,
                                   sum(len(f) for f in p.fields[a:b])))
    lossless = "zstd" if p.flags & FLAG_ZSTD else "ans" if p.flags & FLAG_ANS else None
    return BlobInfo(total_bytes=len(blob), envelope_bytes=len(blob) - p.body_bytes, body_bytes=p.body_bytes,
                    spec=p.spec, seed=p.seed, lossless=lossless, structure_by_fingerprint=p.by_fingerprint,
                    spec_by_digest=bool(p.flags & FLAG_SPEC_REF), masked=bool(p.flags & FLAG_MASKED),
                    tensors=tensors)
