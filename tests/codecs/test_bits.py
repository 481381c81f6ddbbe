"""Bit packing, varints and trits: exact sizes, round trips, and WireError on bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedpress import WireError
from fedpress.codecs._bits import (
    pack_codes,
    pack_trits,
    packed_len,
    unpack_codes,
    unpack_trits,
    varint_decode,
    varint_encode,
)
from fedpress.wire.format import put_varint


@settings(max_examples=200)
@given(bits=st.integers(1, 8), data=st.data())
def test_pack_codes_roundtrip(bits, data):
    codes = data.draw(hnp.arrays(np.uint8, st.integers(0, 70), elements=st.integers(0, (1 << bits) - 1)))
    buf = pack_codes(codes, bits)
    assert len(buf) == packed_len(codes.size, bits) == -(-codes.size * bits // 8)
    np.testing.assert_array_equal(unpack_codes(buf, codes.size, bits), codes)


def test_pack_codes_layout():
    # code j of a group sits at bit j*bits, little endian
    assert pack_codes(np.array([1, 0, 0, 0], np.uint8), 2) == b"\x01"
    assert pack_codes(np.array([0, 1], np.uint8), 4) == b"\x10"
    assert pack_codes(np.array([0, 0, 1], np.uint8), 3) == b"\x40\x00"  # 9 bits: 2 bytes
    assert pack_codes(np.array([7] * 8, np.uint8), 3) == b"\xff\xff\xff"


def test_unpack_codes_checks_length():
    with pytest.raises(WireError, match="expected 2 bytes"):
        unpack_codes(b"\x00", 5, 3)
    with pytest.raises(WireError):
        unpack_codes(b"\x00\x00\x00", 5, 3)
    assert unpack_codes(b"", 0, 5).size == 0


@given(st.lists(st.integers(0, 2**63 - 1), max_size=50))
def test_varints_roundtrip_and_match_the_scalar_encoder(values):
    buf = varint_encode(np.array(values, dtype=np.uint64))
    ref = bytearray()
    for v in values:
        put_varint(ref, v)
    assert buf == bytes(ref)
    out = varint_decode(buf, len(values))
    assert out.tolist() == values


def test_varint_decode_errors():
    with pytest.raises(WireError, match="truncated"):
        varint_decode(b"\x01\x80")
    with pytest.raises(WireError, match="expected 3"):
        varint_decode(b"\x01\x02", 3)
    with pytest.raises(WireError, match="expected 2"):
        varint_decode(b"", 2)
    with pytest.raises(WireError, match="too long"):
        varint_decode(b"\x80" * 9 + b"\x01")
    with pytest.raises(WireError, match="out of range"):
        varint_decode(b"\x0b", max_value=10)
    assert varint_decode(b"").size == 0


@given(hnp.arrays(np.uint8, st.integers(0, 60), elements=st.integers(0, 2)))
def test_trits_roundtrip(t):
    buf = pack_trits(t)
    assert len(buf) == -(-t.size // 5)  # five trits per byte: 1.6 bits per value
    np.testing.assert_array_equal(unpack_trits(buf, t.size), t)


def test_trits_errors():
    with pytest.raises(WireError, match="out of range"):
        unpack_trits(b"\xf3", 5)
    with pytest.raises(WireError, match="expected 1"):
        unpack_trits(b"\x00\x00", 3)
    assert unpack_trits(b"\xf2", 5).tolist() == [2, 2, 2, 2, 2]
