"""The ans body (fedpress.wire.ans): per-field modes, the rANS coder, and its hardening."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fedpress
from fedpress import Limits, Structure, WireError
from fedpress.wire import ans
from fedpress.wire.format import FLAG_ANS, FLAG_ZSTD, put_varint, read_blob, write_blob

RNG = np.random.default_rng(7)


def _skewed(n: int, alphabet=(3, 4, 2, 5, 1, 6, 0, 7), seed: int = 0) -> bytes:
    """Bytes with a geometric-ish histogram over ``alphabet`` (quantiser codes look like this)."""
    r = np.random.default_rng(seed)
    p = 0.5 ** np.arange(1, len(alphabet) + 1)
    return bytes(np.asarray(alphabet, np.uint8)[r.choice(len(alphabet), size=n, p=p / p.sum())])


def _mode(packed: bytes) -> int:
    """The mode of a single-field body: varint count 1, then the mode nibble byte."""
    assert packed[0] == 1
    return packed[1] & 15


def _ans_record(
    n: int,
    syms: bytes | None,
    counts: list[int],
    words: list[int],
    *,
    k: int | None = None,
    bitmap: bytes | None = None,
    w: int | None = None,
) -> bytes:
    """A single-field ans body, built by hand (so each part can lie)."""
    out = bytearray([1, ans.ANS])
    put_varint(out, n)
    out.append((len(counts) if k is None else k) - 2)
    out += bitmap if bitmap is not None else syms
    for c in counts:
        put_varint(out, c)
    put_varint(out, len(words) if w is None else w)
    out += np.asarray(words, "<u4").tobytes()
    return bytes(out)


def _valid_record() -> tuple[bytes, bytes]:
    data = _skewed(2000)
    packed = ans.pack(data)
    assert _mode(packed) == ans.ANS
    return data, packed


def _words_of(packed: bytes) -> tuple[int, np.ndarray]:
    """(offset of the words, the words) in a single-field ans body made by ``pack``."""
    data_syms = sorted(set(ans.unpack(packed)))
    r = ans.ByteReader(packed)
    r.varint()
    r.u8()
    r.varint()
    k = r.u8() + 2
    assert k == len(data_syms)
    r.take(k)
    for _ in range(k):
        r.varint()
    w = r.varint()
    return r.pos, np.frombuffer(r.take(4 * w), "<u4").copy()


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "data, mode",
    [
        (b"", ans.RAW),
        (b"\x07", ans.RAW),
        (b"\x05" * 1000, ans.CONST),
        (b"\x00\x00", ans.CONST),
        (bytes(range(8)) * 2, 2 + 3),  # tiny 3-bit codes: bit-packed
        (_skewed(5000), ans.ANS),
        (_skewed(3000, alphabet=range(32)), ans.ANS),  # 32 symbols: listed
        (_skewed(3000, alphabet=range(0, 99, 3)), ans.ANS),  # 33 symbols: bitmap
        (bytes(RNG.integers(0, 256, 4000, dtype=np.uint8)), ans.RAW),  # incompressible
        (bytes(RNG.integers(0, 8, 4000, dtype=np.uint8)), 2 + 3),  # uniform 3-bit: packing wins
        (bytes(RNG.integers(0, 2, 40000, dtype=np.uint8) * 200), ans.ANS),  # two symbols, far apart
    ],
)
def test_pack_roundtrip_and_mode(data, mode):
    packed = ans.pack(data)
    assert ans.unpack(packed) == data
    assert _mode(packed) == mode
    assert len(packed) <= len(data) + 2 + len(_varint(len(data)))  # count, mode, length


def _varint(v: int) -> bytes:
    out = bytearray()
    put_varint(out, v)
    return bytes(out)


def test_coding_reaches_the_order0_entropy():
    data = _skewed(200_000)
    counts = np.bincount(np.frombuffer(data, np.uint8))
    p = counts[counts > 0] / len(data)
    entropy_bytes = -(p * np.log2(p)).sum() * len(data) / 8
    assert len(ans.pack(data)) < 1.01 * entropy_bytes + 64


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=600),
        st.builds(
            lambda alpha, idx: bytes(alpha[i % len(alpha)] for i in idx),
            st.lists(st.integers(0, 255), min_size=1, max_size=40, unique=True),
            st.lists(st.integers(0, 1000), max_size=3000),
        ),
    )
)
def test_field_coder_roundtrip_property(data):
    packed = ans.pack(data)
    assert ans.unpack(packed) == data
    assert len(packed) <= len(data) + 2 + len(_varint(len(data)))
    assert ans.pack(data) == packed  # deterministic


def test_chunked_coding_is_one_stream(monkeypatch):
    """Chunks (bounded scratch memory) change nothing: the same bytes as coding in one go."""
    data = [
        _skewed(5001, seed=1),
        bytes(RNG.integers(0, 8, 999, dtype=np.uint8)),
        _skewed(77, seed=2),
    ]
    whole = b"".join(ans.encode_body(data)[0])
    monkeypatch.setattr(ans, "_CHUNK", 64)
    assert b"".join(ans.encode_body(data)[0]) == whole
    assert [bytes(f) for f in ans.decode_body(whole)] == data


def test_body_of_many_fields_and_header_accounting():
    fields = [
        b"",
        b"\x01" * 9,
        _skewed(3000),
        bytes(RNG.integers(0, 256, 64, dtype=np.uint8)),
        np.frombuffer(bytes(range(6)) * 9, np.uint8),
        b"z",
    ]
    parts, header = ans.encode_body(fields)
    body = b"".join(parts)
    assert [bytes(f) for f in ans.decode_body(body)] == [bytes(f) for f in fields]
    data = sum(ans.encode_field(f)[2] for f in fields)
    assert header == len(body) - data > 0
    s = Structure.of({"w": np.zeros(3, np.float32)})
    blob, hb = write_blob("none", 0, s, fields, ans=True)
    assert blob[3] & FLAG_ANS
    assert len(blob) - hb == data  # header_bytes: everything but the fields' data
    assert [bytes(f) for f in read_blob(blob).fields] == [bytes(f) for f in fields]


def test_write_blob_never_grows_and_takes_one_lossless_stage():
    s = Structure.of({"w": np.zeros(3, np.float32)})
    rnd = [RNG.bytes(300), RNG.bytes(5)]
    assert write_blob("none", 0, s, rnd, ans=True) == write_blob("none", 0, s, rnd)
    assert write_blob("none", 0, s, [], ans=True) == write_blob("none", 0, s, [])
    with pytest.raises(ValueError, match="zstd or ans"):
        write_blob("none", 0, s, rnd, ans=True, zstd_level=3)


# ----------------------------------------------------------------------------- malformed bodies


def _bad(body: bytes, match: str | None = None, limits: Limits | None = None):
    with pytest.raises(WireError, match=match):
        ans.decode_body(body, limits or Limits())


def test_every_truncation_raises():
    body = b"".join(ans.encode_body([_skewed(700), b"\x02" * 30, bytes(range(8)) * 3, b"abc"])[0])
    for cut in range(len(body)):
        _bad(body[:cut])
    _bad(body + b"\0", "trailing")


def test_bad_tables():
    _bad(b"\x01\x0a\x05" + b"x" * 5, "mode 10")
    _bad(b"\x01\x0f\x05" + b"x" * 5, "mode")
    _bad(b"\x01\x10\x05" + b"x" * 5, "spare")  # the unused high nibble of a lone field
    _bad(b"\x01\x01\x00\x07", "length 0")  # const of nothing
    _bad(b"\x01\x00\x05abc", "truncated")  # raw shorter than its length
    # two fields within the limit each, over it together
    _bad(b"\x02\x00\x05\x05" + b"x" * 10, "field length", Limits(max_body_bytes=9))
    _bad(b"\x01\x00\x0a" + b"x" * 10, "field length", Limits(max_body_bytes=9))
    _bad(b"\x03\x00\x00\x00\x00\x00", "field count", Limits(max_fields=2))
    # a const field as long as the limit allows is fine; one byte more is refused before allocating
    assert len(ans.decode_body(b"\x01\x01\x80\x08\x07", Limits(max_body_bytes=1024))[0]) == 1024
    _bad(b"\x01\x01\x81\x08\x07", "field length", Limits(max_body_bytes=1024))


def test_bad_models():
    _bad(_ans_record(4, None, [1] * 257, [1], bitmap=b"\xff" * 32), "alphabet")  # k = 257
    _bad(_ans_record(4, b"\x05\x01", [3, 1], [1]), "increasing")
    _bad(_ans_record(4, b"\x05\x05", [3, 1], [1]), "increasing")
    _bad(_ans_record(40, None, [1] * 40, [1], k=40, bitmap=b"\xff" * 4 + b"\0" * 28), "bitmap")
    _bad(_ans_record(4, b"\x01\x05", [4, 0], [1]), "zero")
    _bad(_ans_record(4, b"\x01\x05", [2, 1], [1]), "sum")  # counts short of n
    _bad(_ans_record(4, b"\x01\x05", [3, 2], [1]), "count")  # counts past n
    _bad(_ans_record(4, b"\x01\x05", [3, 1], []), "without words")
    _bad(_ans_record(4, b"\x01\x05", [3, 1], [1], w=2), "word count")  # more words than bytes
    _bad(_ans_record(4, b"\x01\x05", [3, 1], [5, 0]), "word stream")  # constriction refuses it


def test_garbage_and_trailing_words():
    data, packed = _valid_record()
    off, words = _words_of(packed)
    head = packed[: off - len(_varint(len(words)))]

    def with_words(ws) -> bytes:
        return head + _varint(len(ws)) + np.asarray(ws, "<u4").tobytes()

    assert ans.unpack(with_words(words)) == data
    r = np.random.default_rng(3)
    for _ in range(50):
        g = r.integers(1, 2**32, size=len(words), dtype=np.uint64)
        _bad(with_words(g))
    _bad(with_words(np.concatenate([[12345], words])), "left over")  # bottom of the stack: extra
    _bad(with_words(np.concatenate([words, [777]])))  # top of the stack: garbage state
    flipped = words.copy()
    flipped[len(flipped) // 2] ^= 1 << 9
    _bad(with_words(flipped))


def test_only_declared_symbols_in_declared_counts_are_ever_decoded():
    """The coder's alphabet is the present symbols, so no other value can come out; and a valid
    word stream whose symbols disagree with the declared counts is refused."""
    import constriction

    counts = np.array([6, 4, 2])
    model = constriction.stream.model.Categorical(counts / 12, perfect=False)
    r = np.random.default_rng(11)
    seen = {"ok": 0, "refused": 0}
    for i in range(60):
        idx = r.choice(3, size=12, p=counts / 12).astype(np.int32)
        if i == 0:
            idx = np.repeat(np.arange(3, dtype=np.int32), counts)  # at least one honest stream
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(idx, model)
        body = _ans_record(12, b"\x02\x09\xf0", counts.tolist(), coder.get_compressed())
        try:
            out = np.frombuffer(ans.unpack(body), np.uint8)
        except WireError as e:
            assert "histogram" in str(e)
            seen["refused"] += 1
            continue
        assert np.array_equal(np.bincount(idx, minlength=3), counts)
        assert np.array_equal(out, np.array([2, 9, 240], np.uint8)[idx])
        seen["ok"] += 1
    assert seen["ok"] and seen["refused"]


class PanicException(BaseException):
    """Stands in for pyo3's PanicException (a Rust panic), which is not an Exception."""


def _failing_constriction(exc):
    class Coder:
        def __init__(self, *a):
            raise exc

    class Stack:
        AnsCoder = Coder

    class Model:
        @staticmethod
        def Categorical(*a, **k):
            return None

    class Stream:
        stack, model = Stack, Model

    class Mod:
        stream = Stream

    return lambda: Mod


def test_coder_errors_become_wire_errors_and_nothing_else(monkeypatch):
    _, packed = _valid_record()
    for exc in (
        PanicException("rust panicked"),
        ValueError("bad"),
        KeyError("k"),
        RuntimeError("r"),
    ):
        monkeypatch.setattr(ans, "_constriction", _failing_constriction(exc))
        _bad(packed, "word stream")
    monkeypatch.setattr(ans, "_constriction", _failing_constriction(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # never swallowed into a WireError
        ans.unpack(packed)


# ----------------------------------------------------------------------------- whole blobs


def _crc(content: bytes) -> bytes:
    return content + struct.pack("<I", zlib.crc32(content))


def test_blob_flags_and_tampered_bodies():
    x = np.random.default_rng(0).normal(size=(40, 50)).astype(np.float32)
    blob = fedpress.compress(x, "q:bits=3+ans")
    assert blob[3] & FLAG_ANS and not blob[3] & FLAG_ZSTD
    both = bytearray(blob[:-4])
    both[3] |= FLAG_ZSTD
    with pytest.raises(WireError, match="both"):
        fedpress.decompress(_crc(bytes(both)))
    # mutations behind a recomputed checksum: decoded or a WireError, never anything else
    ref = fedpress.decompress(blob)
    body_start = len(blob) - 4 - len(b"".join(ans.encode_body(read_blob(blob).fields)[0]))
    r = np.random.default_rng(5)
    outcomes = {"ok": 0, "wire": 0}
    for _ in range(1500):
        c = bytearray(blob[:-4])
        op = int(r.integers(3))
        j = int(r.integers(body_start, len(c)))
        if op == 0:
            c[j] ^= 1 << int(r.integers(8))
        elif op == 1:
            c[j] = int(r.integers(256))
        else:
            del c[j : j + int(r.integers(1, 9))]
        try:
            out = fedpress.decompress(_crc(bytes(c)))
            assert out.shape == ref.shape
            outcomes["ok"] += 1
        except WireError:
            outcomes["wire"] += 1
    assert outcomes["wire"] > 1000
