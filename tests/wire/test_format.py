"""The wire format: varints, structures, fingerprints, the envelope and its limits."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fedpress
from fedpress import Limits, Structure, WireError
from fedpress.wire.format import (
    DTYPES,
    MAGIC,
    WIRE_VERSION,
    ByteReader,
    TensorSpec,
    from_numpy,
    put_varint,
    read_blob,
    to_numpy,
    write_blob,
)

# ----------------------------------------------------------------------------- varints


@given(st.integers(0, 2**64 - 1))
def test_varint_roundtrip(v):
    out = bytearray()
    put_varint(out, v)
    assert len(out) == max(1, -(-v.bit_length() // 7))
    r = ByteReader(bytes(out))
    assert r.varint() == v
    assert r.remaining() == 0


def test_varint_errors():
    with pytest.raises(ValueError):
        put_varint(bytearray(), -1)
    with pytest.raises(WireError, match="truncated"):
        ByteReader(b"\x80\x80").varint("x")
    with pytest.raises(WireError, match="malformed"):
        ByteReader(b"\xff" * 11).varint("x")
    with pytest.raises(WireError, match="exceeds the limit 10"):
        ByteReader(b"\x0b").varint("x", max_value=10)
    assert ByteReader(b"\x0a").varint("x", max_value=10) == 10


def test_byte_reader_bounds():
    r = ByteReader(b"abcdef", 1, 4)
    assert r.remaining() == 3
    assert bytes(r.take(2)) == b"bc"
    with pytest.raises(WireError, match="truncated"):
        r.take(2)
    with pytest.raises(WireError):
        r.take(-1)
    assert r.u8() == ord("d")
    with pytest.raises(WireError):
        r.u8()


# ----------------------------------------------------------------------------- structure

_names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_specs = st.lists(
    st.tuples(_names, st.sampled_from(DTYPES), st.lists(st.integers(0, 50), max_size=4), st.booleans()),
    max_size=6, unique_by=lambda t: t[0],
)


@settings(max_examples=100)
@given(_specs)
def test_structure_roundtrip(items):
    s = Structure(tuple(TensorSpec(n, d, tuple(shape), torch_ or d == "bfloat16") for n, d, shape, torch_ in items))
    r = ByteReader(s.to_bytes())
    back = Structure.read(r, True, Limits())
    assert back == s and r.remaining() == 0
    assert back.fingerprint() == s.fingerprint() and len(s.fingerprint()) == 8
    assert s.numel == sum(int(np.prod(t.shape)) for t in s.tensors)


def test_fingerprints_tell_structures_apart():
    base = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}
    variants = [
        {"w": np.zeros((3, 2), np.float32), "b": np.zeros(3, np.float32)},  # shape
        {"w": np.zeros((2, 3), np.float64), "b": np.zeros(3, np.float32)},  # dtype
        {"W": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)},  # name
        {"b": np.zeros(3, np.float32), "w": np.zeros((2, 3), np.float32)},  # order
        {"w": torch.zeros(2, 3), "b": np.zeros(3, np.float32)},  # framework
    ]
    fps = {Structure.of(base).fingerprint()} | {Structure.of(v).fingerprint() for v in variants}
    assert len(fps) == len(variants) + 1
    assert Structure.of(base).fingerprint() == Structure.of(dict(base)).fingerprint()
    t = np.zeros(3, np.float32)
    assert Structure.of(t).fingerprint() != Structure.of({"": t}).fingerprint()  # container kind


def _structure_blob(body: bytes, dict_: bool = True) -> bytes:
    head = bytearray(MAGIC) + bytes([WIRE_VERSION, 4 if dict_ else 0, 4]) + b"none" + b"\x00"
    content = bytes(head) + body + b"\x00"  # field table: zero fields
    return content + struct.pack("<I", zlib.crc32(content))


@pytest.mark.parametrize("body, limits, match", [
    (b"\x05", Limits(max_tensors=4), "tensor count"),
    (b"\x01\x05hello\x00\x00", Limits(max_name_bytes=4), "name length"),
    (b"\x01\x01w\x00\x03\x01\x01\x01", Limits(max_ndim=2), "ndim"),
    (b"\x01\x01w\x00\x02\x10\x10", Limits(max_elements=255), "max_elements"),
    (b"\x01\x01w\x00\x01\x90\x03", Limits(max_elements=255), "dimension"),
    (b"\x02\x01w\x00\x00\x01w\x00\x00", Limits(), "duplicate"),
    (b"\x01\x01\xff\x00\x00", Limits(), "utf-8"),
    (b"\x01\x01w\x03\x00", Limits(), "bfloat16"),
    (b"\x01\x01w\x0f\x00", Limits(), "dtype"),
])
def test_structure_limits(body, limits, match):
    with pytest.raises(WireError, match=match):
        read_blob(_structure_blob(body), limits=limits)


def test_single_tensor_blob_lists_one_tensor():
    with pytest.raises(WireError, match="1 tensor"):
        read_blob(_structure_blob(b"\x02\x00\x00\x00\x00\x00\x00", dict_=False))


# ----------------------------------------------------------------------------- envelope


def test_documented_layout():
    """magic | version | flags | spec (varint len + utf-8) | seed (varint) | structure | body | crc."""
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    blob = fedpress.compress(x, "none", seed=300)
    assert blob[:2] == b"FP" and blob[2] == WIRE_VERSION == 1
    assert blob[3] == 0  # a lone tensor, full structure, no zstd, no masks
    assert blob[4] == 4 and blob[5:9] == b"none"
    assert blob[9] == 0  # a deterministic pipeline stores seed 0, whatever the caller passed
    s = Structure.of(x).to_bytes()
    assert blob[10 : 10 + len(s)] == s
    body = blob[10 + len(s) : -4]
    assert body == b"\x01\x18" + x.tobytes()  # one field of 24 bytes
    assert struct.unpack("<I", blob[-4:])[0] == zlib.crc32(blob[:-4])
    seeded = fedpress.compress(x, "randk:ratio=1", seed=300)  # positions come from the seed
    sb = fedpress.codec("randk:ratio=1").spec.encode()  # the canonical spec travels
    assert seeded[4] == len(sb) and seeded[5 : 5 + len(sb)] == sb
    assert seeded[5 + len(sb) : 7 + len(sb)] == bytes([300 & 0x7F | 0x80, 300 >> 7])
    assert read_blob(seeded).seed == 300
    flags = fedpress.compress({"x": x}, "q:bits=2+zstd", structure="fingerprint",
                              masks={"x": np.ones(6, bool)})[3]
    assert flags & 1 and flags & 4 and flags & 8


def test_header_bytes_accounting():
    fields = [b"abc", b"", b"x" * 200]
    s = Structure.of({"w": np.zeros(3, np.float32)})
    blob, header = write_blob("none", 7, s, fields)
    assert len(blob) - header == sum(map(len, fields))
    p = read_blob(blob)
    assert [bytes(f) for f in p.fields] == fields and p.seed == 7 and p.spec == "none"
    # zstd: only compressible bodies get packed, and then the table travels inside the body
    packed, h2 = write_blob("none", 7, s, fields, zstd_level=3)
    assert packed[3] & 2 and len(packed) < len(blob)
    assert h2 == len(packed) - len(packed[h2 - 4 : -4]) and h2 < header
    rnd = [np.random.default_rng(0).bytes(300)]
    raw_blob, _ = write_blob("none", 7, s, rnd)
    z_blob, _ = write_blob("none", 7, s, rnd, zstd_level=19)
    assert z_blob == raw_blob  # zstd never grows a blob: incompressible bodies stay raw
    assert [bytes(f) for f in read_blob(packed).fields] == fields


def test_envelope_limits():
    s = Structure.of({"w": np.zeros(3, np.float32)})
    blob, _ = write_blob("q:bits=8", 0, s, [b"a"] * 10)
    with pytest.raises(WireError, match="max_blob_bytes"):
        read_blob(blob, limits=Limits(max_blob_bytes=len(blob) - 1))
    with pytest.raises(WireError, match="field count"):
        read_blob(blob, limits=Limits(max_fields=9))
    with pytest.raises(WireError, match="spec length"):
        read_blob(blob, limits=Limits(max_spec_bytes=7))
    big, _ = write_blob("none", 0, s, [b"\0" * 5000], zstd_level=3)
    with pytest.raises(WireError, match="size"):
        read_blob(big, limits=Limits(max_body_bytes=4000))
    assert read_blob(blob, limits=Limits(max_fields=10)).fields


def test_zstd_frame_must_fill_the_body():
    s = Structure.of({"w": np.zeros(3, np.float32)})
    blob, header = write_blob("none", 0, s, [b"\0" * 5000], zstd_level=3)
    assert blob[3] & 2
    extended = blob[:-4] + b"\0"
    with pytest.raises(WireError, match="zstd"):
        read_blob(extended + struct.pack("<I", zlib.crc32(extended)))


def test_non_bytes_and_memoryviews():
    blob = fedpress.compress(np.ones(3, np.float32), "none")
    assert read_blob(memoryview(blob)).spec == "none"
    assert read_blob(bytearray(blob)).spec == "none"
    for bad in ("FP", None, 3, [blob]):
        with pytest.raises(WireError, match="expected bytes"):
            read_blob(bad)


# ----------------------------------------------------------------------------- numpy <-> torch


def test_to_from_numpy():
    t = torch.randn(4, 5).bfloat16()
    a = to_numpy(t)
    assert a.dtype == np.float32 and np.array_equal(a, t.float().numpy())
    back = from_numpy(a, TensorSpec("x", "bfloat16", (4, 5), True))
    assert back.dtype == torch.bfloat16 and torch.equal(back, t)
    nc = torch.randn(6, 4).t()
    assert to_numpy(nc).flags.c_contiguous and np.array_equal(to_numpy(nc), nc.numpy())
    g = torch.randn(3, requires_grad=True)
    assert np.array_equal(to_numpy(g), g.detach().numpy())
    h = from_numpy(np.arange(3, dtype=np.float32), TensorSpec("x", "float16", (3,), False))
    assert isinstance(h, np.ndarray) and h.dtype == np.float16
    with pytest.raises(TypeError, match="unsupported dtype"):
        Structure.of(torch.zeros(2, dtype=torch.complex64))


@pytest.mark.parametrize("coder", [{"zstd_level": 19}, {"ans": True}])
def test_a_tiny_coded_body_cannot_claim_gigabytes(coder):
    # 3 values, and a body of 8 MiB zeros that zstd/ans shrink to a few hundred bytes: refused
    # before anything that size is allocated (the cap scales with the structure's values).
    s = Structure.of({"w": np.zeros(3, np.float32)})
    blob, _ = write_blob("none", 0, s, [bytes(8 << 20)], **coder)
    assert len(blob) < 4096 and blob[3] & (2 | 32)
    with pytest.raises(WireError, match="unacceptable size|exceeds the limit"):
        read_blob(blob)
    # the same body over a structure of 1M values is within the cap, and decodes
    big = Structure.of({"w": np.zeros(1 << 20, np.float32)})
    blob, _ = write_blob("none", 0, big, [bytes(8 << 20)], **coder)
    assert len(read_blob(blob).fields[0]) == 8 << 20
