"""The fedpress wire format (version 1).

A blob describes itself, so ``decompress`` needs no spec::

    magic "FP" | version u8 | flags u8 | spec (varint len + utf-8, or a 4-byte digest) | seed (varint)
    | structure (full, or an 8-byte fingerprint agreed once per run) | [mask digest, 8 bytes]
    | body: field table (varint count, varint lengths) + field data, optionally zstd-framed;
      or, with the ``ans`` stage, each field entropy-coded on its own (layout in fedpress.wire.ans)
    | crc32 of everything before it (u32, little endian)

The *structure* lists every tensor: name, dtype and shape. On a small model a full structure can cost
more than a 1 % top-k payload, so a run can agree the structure once and then send only its 8-byte
fingerprint (``structure="fingerprint"`` when encoding, ``structures=[...]`` when decoding).

Every length read from the wire is checked against :class:`Limits` *before* anything is allocated,
and every failure is a :class:`~fedpress.wire.WireError`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from fedpress.wire.errors import WireError

try:
    # The same CRC-32 as zlib.crc32 (same polynomial, same values), computed with ISA-L's
    # carry-less-multiply code at ~15 GB/s instead of zlib's ~1-2 GB/s: on a 10 MB blob that is the
    # difference between a rounding error and a third of the encode time.
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal is a dependency, but the format must not need it
    from zlib import crc32

MAGIC = b"FP"
WIRE_VERSION = 1

FLAG_FINGERPRINT = 1
FLAG_ZSTD = 2
FLAG_DICT = 4
FLAG_MASKED = 8
FLAG_SPEC_REF = 16
#: The body is fedpress.wire.ans's per-field rANS layout. Still version 1: a reader that predates it
#: rejects the unknown flag with a clean WireError, which is the right answer for it.
FLAG_ANS = 32
#: Decoded (zstd/ans) bodies may hold at most this many bytes per value of the structure, plus
#: BODY_SLACK: twice the most any codec writes (see read_blob).
BODY_BYTES_PER_VALUE = 32
BODY_SLACK = 1 << 20
_KNOWN_FLAGS = FLAG_FINGERPRINT | FLAG_ZSTD | FLAG_DICT | FLAG_MASKED | FLAG_SPEC_REF | FLAG_ANS


def spec_digest(spec: str) -> bytes:
    """4 bytes naming a spec agreed in advance (``spec_ref=True``): saves ~20-40 bytes per blob."""
    return hashlib.blake2b(spec.encode("utf-8"), digest_size=4, person=b"fedpress-spec").digest()
_TORCH_BIT = 0x80

# dtype codes on the wire; bfloat16 only exists for torch tensors.
DTYPES = ["float32", "float64", "float16", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "bool"]
_DTYPE_CODE = {name: i for i, name in enumerate(DTYPES)}
FLOAT_DTYPES = frozenset({"float32", "float64", "float16", "bfloat16"})


@dataclass(frozen=True)
class Limits:
    """Decoding limits: untrusted bytes can never make the decoder allocate beyond these.

    >>> Limits().max_elements
    268435456
    """

    max_blob_bytes: int = 1 << 31
    max_elements: int = 1 << 28
    max_tensors: int = 1 << 16
    max_fields: int = 1 << 20
    max_ndim: int = 8
    max_name_bytes: int = 4096
    max_spec_bytes: int = 1024
    max_body_bytes: int = 1 << 31


DEFAULT_LIMITS = Limits()


# ----------------------------------------------------------------------------- scalar varints
def put_varint(out: bytearray, v: int) -> None:
    """Append an unsigned LEB128 varint."""
    if v < 0:
        raise ValueError("varint must be non-negative")
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return


class ByteReader:
    """Bounds-checked reader over untrusted bytes; every failure is a WireError."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytes | memoryview, pos: int = 0, end: int | None = None):
        self.buf = memoryview(buf)
        self.pos = pos
        self.end = len(self.buf) if end is None else end

    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int, what: str = "data") -> memoryview:
        if n < 0 or self.pos + n > self.end:
            raise WireError(f"truncated blob: {what} needs {n} bytes, {self.remaining()} left")
        mv = self.buf[self.pos : self.pos + n]
        self.pos += n
        return mv

    def u8(self, what: str = "byte") -> int:
        return self.take(1, what)[0]

    def varint(self, what: str = "varint", max_value: int = (1 << 64) - 1) -> int:
        shift = 0
        v = 0
        for _ in range(10):
            if self.pos >= self.end:
                raise WireError(f"truncated blob while reading {what}")
            b = self.buf[self.pos]
            self.pos += 1
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                if v > max_value:
                    raise WireError(f"{what} = {v} exceeds the limit {max_value}")
                return v
            shift += 7
        raise WireError(f"malformed varint in {what}")


# ----------------------------------------------------------------------------- structure
@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one tensor in an update."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    torch: bool = False

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


def _dtype_name(t) -> str:
    name = str(t.dtype).replace("torch.", "")
    if name not in _DTYPE_CODE:
        raise TypeError(f"unsupported dtype {name!r}; fedpress handles {', '.join(DTYPES)}")
    return name


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


@dataclass(frozen=True)
class Structure:
    """The tensors of an update: a single tensor (``is_dict=False``) or an ordered dict of tensors.

    >>> import numpy as np
    >>> s = Structure.of({"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)})
    >>> [t.shape for t in s.tensors], len(s.fingerprint())
    ([(2, 3), (3,)], 8)
    """

    tensors: tuple[TensorSpec, ...]
    is_dict: bool = True
    _fp: bytes = field(default=b"", compare=False, repr=False)

    @staticmethod
    def of(obj) -> Structure:
        if isinstance(obj, Mapping):
            specs = []
            for k, v in obj.items():
                if not isinstance(k, str):
                    raise TypeError(f"state_dict keys must be str, got {type(k).__name__}")
                specs.append(_spec_of(k, v))
            return Structure(tuple(specs), True)
        return Structure((_spec_of("", obj),), False)

    @property
    def numel(self) -> int:
        return sum(t.numel for t in self.tensors)

    def to_bytes(self) -> bytes:
        out = bytearray()
        put_varint(out, len(self.tensors))
        for t in self.tensors:
            name = t.name.encode("utf-8")
            put_varint(out, len(name))
            out += name
            out.append(_DTYPE_CODE[t.dtype] | (_TORCH_BIT if t.torch else 0))
            out.append(len(t.shape))
            for d in t.shape:
                put_varint(out, d)
        return bytes(out)

    def fingerprint(self) -> bytes:
        """8 bytes identifying this structure (blake2b of its wire form and container kind).

        Computed once per object: every encode and every fingerprint-mode decode asks for it."""
        if not self._fp:
            h = hashlib.blake2b(self.to_bytes(), digest_size=8, person=b"fedpress-struct")
            h.update(b"d" if self.is_dict else b"t")
            object.__setattr__(self, "_fp", h.digest())
        return self._fp

    @staticmethod
    def read(r: ByteReader, is_dict: bool, limits: Limits) -> Structure:
        n = r.varint("tensor count", limits.max_tensors)
        if not is_dict and n != 1:
            raise WireError(f"a single-tensor blob must list 1 tensor, lists {n}")
        specs = []
        total = 0
        for _ in range(n):
            ln = r.varint("name length", limits.max_name_bytes)
            try:
                name = bytes(r.take(ln, "tensor name")).decode("utf-8")
            except UnicodeDecodeError as e:
                raise WireError("tensor name is not valid utf-8") from e
            code = r.u8("dtype")
            torch_flag = bool(code & _TORCH_BIT)
            code &= ~_TORCH_BIT
            if code >= len(DTYPES):
                raise WireError(f"unknown dtype code {code}")
            dtype = DTYPES[code]
            if dtype == "bfloat16" and not torch_flag:
                raise WireError("bfloat16 tensor not marked as torch")
            ndim = r.u8("ndim")
            if ndim > limits.max_ndim:
                raise WireError(f"ndim {ndim} exceeds the limit {limits.max_ndim}")
            shape = tuple(r.varint("dimension", limits.max_elements) for _ in range(ndim))
            numel = math.prod(shape)  # exact Python ints (no overflow), and far cheaper than np.prod
            total += numel
            if total > limits.max_elements:
                raise WireError(f"structure holds more than max_elements={limits.max_elements}")
            specs.append(TensorSpec(name, dtype, shape, torch_flag))
        if is_dict and len({s.name for s in specs}) != len(specs):
            raise WireError("duplicate tensor names in structure")
        return Structure(tuple(specs), is_dict)


def _spec_of(name: str, v) -> TensorSpec:
    if _is_torch(v):
        return TensorSpec(name, _dtype_name(v), tuple(int(d) for d in v.shape), True)
    if isinstance(v, np.ndarray):
        return TensorSpec(name, _dtype_name(v), tuple(int(d) for d in v.shape), False)
    raise TypeError(
        f"cannot compress {type(v).__name__} at {name or 'top level'!r}: "
        "expected a torch.Tensor, a numpy.ndarray, or a dict of them"
    )


def to_numpy(v) -> np.ndarray:
    """A C-contiguous numpy view/copy of a tensor or array (bfloat16 becomes float32 exactly)."""
    if _is_torch(v):
        import torch

        t = v.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return np.ascontiguousarray(t.numpy())
    return np.ascontiguousarray(v)


def from_numpy(a: np.ndarray, spec: TensorSpec):
    """Back to the dtype, shape and framework recorded in ``spec``."""
    if spec.dtype == "bfloat16":
        import torch

        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).reshape(spec.shape).to(torch.bfloat16)
    a = np.ascontiguousarray(a.astype(spec.dtype, copy=False)).reshape(spec.shape)
    if spec.torch:
        import torch

        return torch.from_numpy(a)
    return a


# ----------------------------------------------------------------------------- blobs
@dataclass
class Parsed:
    """A checked, parsed blob: what :func:`read_blob` returns."""

    spec: str
    seed: int
    structure: Structure
    fields: list[memoryview]
    by_fingerprint: bool
    mask_digest: bytes | None = None
    #: The envelope's flags byte, and the body's length as it travelled (after zstd or ans).
    flags: int = 0
    body_bytes: int = 0


def write_blob(
    spec: str,
    seed: int,
    structure: Structure,
    fields: list[bytes],
    *,
    by_fingerprint: bool = False,
    zstd_level: int | None = None,
    ans: bool = False,
    mask_digest: bytes | None = None,
    spec_ref: bool = False,
) -> tuple[bytes, int]:
    """Assemble a blob; returns ``(blob, header_bytes)``.

    ``header_bytes`` counts everything that is not field data: prefix, field table (when not
    compressed) and checksum. With zstd the table travels compressed inside the body. With ``ans``
    (per-field rANS, :mod:`fedpress.wire.ans`) it counts the ans table (field count, mode nibbles,
    lengths) and each coded field's model (alphabet, counts, word count) instead: the payload is
    the raw, packed and constant fields' bytes and the coded fields' words.
    """
    if ans and zstd_level is not None:
        raise ValueError("one lossless stage per blob: zstd or ans, not both")
    flags = (FLAG_FINGERPRINT if by_fingerprint else 0) | (FLAG_DICT if structure.is_dict else 0)
    if mask_digest is not None:
        flags |= FLAG_MASKED
    if spec_ref:
        flags |= FLAG_SPEC_REF
    table = bytearray()
    put_varint(table, len(fields))
    for f in fields:
        put_varint(table, len(f))
    parts = [bytes(table), *fields]
    table_in_header = len(table)
    if zstd_level is not None:
        import zstandard

        body = b"".join(parts)
        packed = zstandard.ZstdCompressor(level=zstd_level, write_content_size=True).compress(body)
        # zstd is a stage the user asked for, but never let it grow the blob.
        if len(packed) < len(body):
            body = packed
            flags |= FLAG_ZSTD
            table_in_header = 0
        parts = [body]
    elif ans:
        from fedpress.wire import ans as _ans

        coded, coded_header = _ans.encode_body(fields)
        # Like zstd: never let the stage grow the blob (the plain body wins ties).
        if sum(memoryview(p).nbytes for p in coded) < sum(memoryview(p).nbytes for p in parts):
            parts = coded
            flags |= FLAG_ANS
            table_in_header = coded_header
    head = bytearray(MAGIC)
    head.append(WIRE_VERSION)
    head.append(flags)
    if spec_ref:
        head += spec_digest(spec)
    else:
        sb = spec.encode("utf-8")
        put_varint(head, len(sb))
        head += sb
    put_varint(head, seed)
    head += structure.fingerprint() if by_fingerprint else structure.to_bytes()
    if mask_digest is not None:
        head += mask_digest
    # One checksum pass over the parts and one copy into the blob: the payload can be hundreds of
    # MB, and concatenating head + body and then body + crc copied it twice more.
    parts.insert(0, bytes(head))
    crc = 0
    for part in parts:
        crc = crc32(part, crc)
    parts.append(struct.pack("<I", crc))
    return b"".join(parts), len(head) + table_in_header + 4


def _registry(structures) -> dict[bytes, Structure]:
    if structures is None:
        return {}
    if isinstance(structures, Structure):
        structures = [structures]
    if isinstance(structures, Mapping):
        return dict(structures)
    return {s.fingerprint(): s for s in structures}


def read_blob(
    blob: bytes,
    *,
    limits: Limits = DEFAULT_LIMITS,
    structures: Structure | Iterable[Structure] | Mapping[bytes, Structure] | None = None,
    specs: Iterable[str] | None = None,
) -> Parsed:
    """Check and parse a blob's envelope. Raises :class:`WireError` on anything malformed."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise WireError(f"expected bytes, got {type(blob).__name__}")
    mv = memoryview(blob).cast("B") if isinstance(blob, memoryview) else memoryview(blob)
    n = len(mv)
    if n > limits.max_blob_bytes:
        raise WireError(f"blob of {n} bytes exceeds max_blob_bytes={limits.max_blob_bytes}")
    if n < 2 + 1 + 1 + 4:
        raise WireError(f"blob too short ({n} bytes)")
    if bytes(mv[:2]) != MAGIC:
        raise WireError("bad magic: not a fedpress blob")
    if mv[2] != WIRE_VERSION:
        raise WireError(f"unsupported wire version {mv[2]} (this fedpress reads {WIRE_VERSION})")
    (crc,) = struct.unpack("<I", mv[n - 4 :])
    if crc32(mv[: n - 4]) != crc:
        raise WireError("checksum mismatch: blob corrupted or truncated")
    r = ByteReader(mv, 3, n - 4)
    flags = r.u8("flags")
    if flags & ~_KNOWN_FLAGS:
        raise WireError(f"unknown flags 0x{flags:02x}")
    if flags & FLAG_SPEC_REF:
        dig = bytes(r.take(4, "spec digest"))
        known = {spec_digest(s): s for s in (specs or ())}
        if dig not in known:
            raise WireError(f"blob names its codec spec by digest {dig.hex()}; pass the agreed spec(s) "
                            "to decompress(..., specs=...)")
        spec = known[dig]
    else:
        ls = r.varint("spec length", limits.max_spec_bytes)
        try:
            spec = bytes(r.take(ls, "spec")).decode("utf-8")
        except UnicodeDecodeError as e:
            raise WireError("spec is not valid utf-8") from e
    seed = r.varint("seed")
    is_dict = bool(flags & FLAG_DICT)
    if flags & FLAG_FINGERPRINT:
        fp = bytes(r.take(8, "structure fingerprint"))
        reg = _registry(structures)
        if fp not in reg:
            raise WireError(
                f"blob refers to structure {fp.hex()} by fingerprint; pass the agreed structure "
                "to decompress(..., structures=...)"
            )
        structure = reg[fp]
        if structure.is_dict != is_dict:
            raise WireError("container kind disagrees with the agreed structure")
    else:
        structure = Structure.read(r, is_dict, limits)
    mdig = bytes(r.take(8, "mask digest")) if flags & FLAG_MASKED else None
    body = r.take(r.remaining(), "body")
    body_bytes = len(body)
    # A few bytes of zstd or ans can describe a body of max_body_bytes (2 GiB by default). No codec
    # writes more than ~14 bytes of fields per value (q with block=1 after top-k: value, index,
    # lo, scale, code), so a decoded body is capped at BODY_BYTES_PER_VALUE per value of the
    # structure (plus slack for headers of tiny tensors): a tiny blob cannot make a server allocate
    # gigabytes for a model of a few values.
    cap = min(limits.max_body_bytes, BODY_BYTES_PER_VALUE * structure.numel + BODY_SLACK)
    if flags & FLAG_ANS:
        if flags & FLAG_ZSTD:
            raise WireError("blob flags both zstd and ans bodies")
        from fedpress.wire import ans as _ans

        fields = _ans.decode_body(body, dataclasses.replace(limits, max_body_bytes=cap))
        return Parsed(spec, seed, structure, fields, bool(flags & FLAG_FINGERPRINT), mdig, flags, len(body))
    if flags & FLAG_ZSTD:
        import zstandard

        try:
            params = zstandard.get_frame_parameters(body)
        except zstandard.ZstdError as e:
            raise WireError(f"bad zstd frame: {e}") from e
        size = params.content_size
        if size in (0, zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR) or size > cap:
            raise WireError(f"zstd body declares an unacceptable size {size} (at most {cap} for "
                            f"{structure.numel} values)")
        try:
            # allow_extra_data=False: bytes after the frame would make a malformed blob decode.
            raw = zstandard.ZstdDecompressor().decompress(body, max_output_size=size, allow_extra_data=False)
        except zstandard.ZstdError as e:
            raise WireError(f"bad zstd body: {e}") from e
        if len(raw) != size:
            raise WireError("zstd body size mismatch")
        body = memoryview(raw)
    br = ByteReader(body)
    nf = br.varint("field count", limits.max_fields)
    lens = [br.varint("field length", limits.max_body_bytes) for _ in range(nf)]
    if sum(lens) != br.remaining():
        raise WireError(f"field table says {sum(lens)} bytes of fields, body has {br.remaining()}")
    fields = [br.take(ln, "field") for ln in lens]
    return Parsed(spec, seed, structure, fields, bool(flags & FLAG_FINGERPRINT), mdig, flags, body_bytes)
