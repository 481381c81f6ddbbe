"""Vectorised bit-level packing shared by the codecs: n-bit codes, varints, trits.

All decoders take untrusted bytes and raise :class:`~fedpress.wire.WireError` on any inconsistency.
"""

from __future__ import annotations

import numpy as np

from fedpress.wire.errors import WireError


def packed_len(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Pack unsigned codes (< 2**bits, bits in 1..8) into exactly ceil(n*bits/8) bytes.

    Eight codes fill ``bits`` bytes; code j of a group sits at bit ``j*bits`` (little endian).

    >>> pack_codes(np.array([1, 2, 3], np.uint8), 2).hex()
    '39'
    >>> unpack_codes(pack_codes(np.arange(8, dtype=np.uint8), 3), 8, 3).tolist()
    [0, 1, 2, 3, 4, 5, 6, 7]
    """
    n = codes.size
    if n == 0:
        return b""
    if bits == 8:
        return codes.astype(np.uint8, copy=False).tobytes()
    if bits == 1:
        return np.packbits(codes.astype(np.uint8, copy=False), bitorder="little").tobytes()
    groups = -(-n // 8)
    c = np.zeros(groups * 8, np.uint64)
    c[:n] = codes
    c = c.reshape(groups, 8)
    shifts = (np.arange(8, dtype=np.uint64) * np.uint64(bits))
    val = np.bitwise_or.reduce(c << shifts, axis=1).astype("<u8")
    out = val.view(np.uint8).reshape(groups, 8)[:, :bits].reshape(-1)
    return out[: packed_len(n, bits)].tobytes()


def unpack_codes(buf, n: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`; checks the byte count."""
    need = packed_len(n, bits)
    if len(buf) != need:
        raise WireError(f"packed codes: expected {need} bytes for {n}x{bits} bits, got {len(buf)}")
    if n == 0:
        return np.zeros(0, np.uint8)
    raw = np.frombuffer(buf, np.uint8)
    if bits == 8:
        return raw.copy()
    if bits == 1:
        return np.unpackbits(raw, count=n, bitorder="little")
    groups = -(-n // 8)
    b = np.zeros((groups, 8), np.uint8)
    flat = np.zeros(groups * bits, np.uint8)
    flat[:need] = raw
    b[:, :bits] = flat.reshape(groups, bits)
    val = b.view("<u8").reshape(groups, 1)
    shifts = (np.arange(8, dtype=np.uint64) * np.uint64(bits)).reshape(1, 8)
    codes = ((val >> shifts) & np.uint64((1 << bits) - 1)).astype(np.uint8).reshape(-1)
    return codes[:n]


def varint_encode(v: np.ndarray) -> bytes:
    """LEB128-encode an array of non-negative integers.

    >>> varint_encode(np.array([1, 300])).hex()
    '01ac02'
    """
    v = np.asarray(v, dtype=np.uint64)
    if v.size == 0:
        return b""
    nbytes = np.ones(v.size, np.int64)
    t = v >> np.uint64(7)
    while True:
        more = t > 0
        if not more.any():
            break
        nbytes += more
        t >>= np.uint64(7)
    ends = np.cumsum(nbytes)
    starts = ends - nbytes
    out = np.zeros(int(ends[-1]), np.uint8)
    for j in range(int(nbytes.max())):
        sel = nbytes > j
        chunk = (v[sel] >> np.uint64(7 * j)) & np.uint64(0x7F)
        cont = (nbytes[sel] > j + 1).astype(np.uint64) << np.uint64(7)
        out[starts[sel] + j] = (chunk | cont).astype(np.uint8)
    return out.tobytes()


def varint_decode(buf, count: int | None = None, max_value: int = (1 << 63) - 1) -> np.ndarray:
    """Decode a whole buffer of LEB128 varints (optionally checking how many)."""
    b = np.frombuffer(buf, np.uint8)
    if b.size == 0:
        if count:
            raise WireError(f"varints: expected {count} values, got 0")
        return np.zeros(0, np.uint64)
    term = b < 0x80
    if not term[-1]:
        raise WireError("varints: truncated last value")
    ends = np.flatnonzero(term)
    if count is not None and ends.size != count:
        raise WireError(f"varints: expected {count} values, got {ends.size}")
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lens = ends - starts + 1
    if lens.max() > 9:
        raise WireError("varints: value too long")
    out = np.zeros(ends.size, np.uint64)
    for j in range(int(lens.max())):
        sel = lens > j
        out[sel] |= (b[starts[sel] + j].astype(np.uint64) & np.uint64(0x7F)) << np.uint64(7 * j)
    if out.size and int(out.max()) > max_value:
        raise WireError("varints: value out of range")
    return out


_POW3 = np.array([1, 3, 9, 27, 81], np.uint8)


def pack_trits(t: np.ndarray) -> bytes:
    """Five base-3 digits (0, 1, 2) per byte: 1.6 bits per ternary value.

    >>> unpack_trits(pack_trits(np.array([2, 0, 1, 1, 2, 2], np.uint8)), 6).tolist()
    [2, 0, 1, 1, 2, 2]
    """
    n = t.size
    g = -(-n // 5)
    p = np.zeros(g * 5, np.uint8)
    p[:n] = t
    return (p.reshape(g, 5) * _POW3).sum(axis=1, dtype=np.uint16).astype(np.uint8).tobytes()


def unpack_trits(buf, n: int) -> np.ndarray:
    g = -(-n // 5)
    if len(buf) != g:
        raise WireError(f"trits: expected {g} bytes for {n} values, got {len(buf)}")
    b = np.frombuffer(buf, np.uint8)
    if b.size and b.max() >= 243:
        raise WireError("trits: byte out of range")
    out = (b.reshape(-1, 1) // _POW3.reshape(1, 5)) % 3
    return out.reshape(-1)[:n].astype(np.uint8)
