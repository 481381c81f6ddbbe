"""Order-0 rANS coding of a blob's fields (the ``ans`` stage, wire flag ``FLAG_ANS``).

zstd codes the whole body with one adaptive model and LZ matches; on quantiser codes, which are
close to i.i.d. symbols with a skewed histogram, it stays ~20 % above their order-0 entropy.
Here each field is coded on its own, with a model built from that field's exact byte histogram,
by `constriction <https://bamler-lab.github.io/constriction/>`_'s stack ANS coder, which reaches
that entropy to within a fraction of a percent.

Body layout (replaces the field table and fields; the blob's crc32 still covers it)::

    varint field_count
    ceil(field_count / 2) bytes     each field's 4-bit mode, field i in the low nibble of byte
                                    i // 2 when i is even, the high nibble when odd (a spare
                                    nibble is 0)
    field_count varints n           each field's decoded length in bytes
    then each field's payload, in order, by mode:
        0 raw:        n bytes, verbatim
        1 const:      1 byte; the field is that byte n times (n >= 1)
        2 ans:        u8 k - 2      k = distinct byte values in the field, 2..256
                      symbols       k <= 32: the k values, strictly increasing;
                                    k >  32: a 32-byte bitmap (bit v of byte v // 8, LSB first)
                      k varint counts of those values, in order, each >= 1, summing to n
                      varint w >= 1, then w little-endian uint32 words (constriction's data)
        2 + b packed: (b = 1..7) ceil(n * b / 8) bytes: every byte of the field in b bits, laid out
                      as fedpress.codecs._bits.pack_codes lays out b-bit codes
        10-15:        invalid

The table costs what the plain body's table costs (a varint per field) plus half a byte per field.

The coder's alphabet is the *present* values only (the k symbols, in increasing order): no value
missing from the histogram can ever be decoded, whatever the words say. Both sides build the model
from the same float64 probabilities ``counts / n`` (``Categorical(p, perfect=False)``), so it is
bit-identical; the counts cost a few bytes per field and are exact, so nothing is approximated.
The model's quantisation belongs to constriction, so its version is pinned (``==0.5.0``).

Each field takes the smallest mode. *packed* exists because quantisers store odd-width codes one
per byte when an entropy stage follows: where coding cannot win (a tiny tensor, near-uniform codes)
the field still costs what the plain spec's bit-packing costs. Float fields (scales, norms) gain
little: their low mantissa bytes are near uniform. And :func:`fedpress.wire.format.write_blob` keeps
the plain body whenever the coded body as a whole is not smaller: the blob never grows.

Decoding is hardened like the rest of the wire format (law 5): every varint is checked against
:class:`~fedpress.wire.format.Limits` before anything is allocated, the decoded lengths together
may not exceed ``max_body_bytes``, counts must sum to ``n``, the word count must fit the bytes
left, the coder must be exactly empty afterwards (no trailing words) and the decoded histogram
must equal the declared counts. Every failure, including any error constriction raises on a
garbage word stream, is a :class:`~fedpress.wire.WireError`. As with a zstd frame, a short body can
honestly describe up to ``max_body_bytes`` of output (a near-certain symbol costs almost no bits):
decoding time and memory are linear in that, and bounded by it.
"""

from __future__ import annotations

import math

import numpy as np

from fedpress.codecs._bits import pack_codes, packed_len, unpack_codes
from fedpress.wire.errors import WireError
from fedpress.wire.format import DEFAULT_LIMITS, ByteReader, Limits, put_varint

RAW, CONST, ANS = 0, 1, 2  # and 2 + b: packed at b bits, b = 1..7
_MODES = 10
#: alphabets up to this size list their symbols (k bytes); larger ones send a 32-byte bitmap
_LIST_MAX = 32
#: symbols per constriction call (and values per pack/unpack call; a multiple of 8): bounds the
#: scratch arrays (int32 indices, uint64 packing words) to a few MiB whatever the field's size
_CHUNK = 1 << 18
#: fields shorter than this are never ANS-coded: the model alone costs more than coding saves
_MIN_CODED = 16


def _constriction():
    # Imported on first use only, like zstandard: importing fedpress must not pay for it.
    import constriction

    return constriction


def _model(counts: np.ndarray):
    """The coder's model for a histogram; encoder and decoder must call exactly this."""
    p = counts.astype(np.float64) / float(counts.sum())
    return _constriction().stream.model.Categorical(p, perfect=False)


def _model_header(present: np.ndarray, counts: np.ndarray) -> bytearray:
    """u8 k-2, the symbol list or bitmap, and the counts (the word count is appended later)."""
    k = len(present)
    out = bytearray([k - 2])
    if k <= _LIST_MAX:
        out += present.astype(np.uint8).tobytes()
    else:
        bits = np.zeros(256, np.uint8)
        bits[present] = 1
        out += np.packbits(bits, bitorder="little").tobytes()
    for c in counts.tolist():
        put_varint(out, c)
    return out


def _pack(a: np.ndarray, b: int) -> list:
    # pack_codes on chunks of a multiple of 8 values concatenates to exactly the whole packing.
    return [pack_codes(a[s : s + _CHUNK], b) for s in range(0, a.size, _CHUNK)]


def _unpack(buf: memoryview, n: int, b: int) -> np.ndarray:
    out = np.empty(n, np.uint8)
    step = _CHUNK * b // 8  # bytes per full chunk
    for i, s in enumerate(range(0, n, _CHUNK)):
        m = min(_CHUNK, n - s)
        out[s : s + m] = unpack_codes(buf[i * step : i * step + packed_len(m, b)], m, b)
    return out


def _ans_words(a: np.ndarray, present: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The coder's words (little-endian uint32) for field ``a`` over the alphabet ``present``."""
    lut = np.zeros(256, np.int32)
    lut[present] = np.arange(len(present), dtype=np.int32)
    model = _model(counts)
    coder = _constriction().stream.stack.AnsCoder()
    # A stack coder decodes in the reverse order of encoding: encode the chunks back to front
    # (encode_reverse reverses within each), so the decoder pops them front to back. The words are
    # the same as one encode_reverse over the whole field, without an n-element int32 copy.
    for s in range((a.size - 1) // _CHUNK * _CHUNK, -1, -_CHUNK):
        coder.encode_reverse(lut.take(a[s : s + _CHUNK]), model)
    return coder.get_compressed().astype("<u4", copy=False)


def encode_field(data) -> tuple[int, list, int]:
    """One field: ``(mode, payload parts, data_bytes)``.

    ``data_bytes`` is how many payload bytes are data (raw or packed bytes, the constant byte, the
    coder's words) rather than model. The smallest mode wins, raw on ties, then packed, so the
    choice is deterministic: the same bytes always give the same payload.
    """
    a = (
        data.reshape(-1).view(np.uint8)
        if isinstance(data, np.ndarray)
        else np.frombuffer(data, np.uint8)
    )
    n = a.size
    if n == 0:
        return RAW, [], 0
    if n < _MIN_CODED:
        present, hist = np.unique(a), None
    else:
        hist = np.bincount(a, minlength=256)
        present = np.flatnonzero(hist)
    if len(present) == 1 and n > 1:
        return CONST, [bytes(a[:1])], 1
    # Bit-packing at the width of the largest value: odd-width codes (stored one per byte because
    # an entropy stage follows) cost what the plain spec's packing costs whenever coding cannot
    # win, e.g. in a tiny tensor or on near-uniform codes.
    b = int(present[-1]).bit_length()
    packed = packed_len(n, b) if 0 < b < 8 else n
    best = min(n, packed)
    if hist is not None:
        counts = hist[present]
        model = _model_header(present, counts)
        # The order-0 entropy is a lower bound on the coded size (ANS lands within a word or so of
        # it): when even that plus the model cannot beat the best so far, coding is not attempted.
        c = counts.astype(np.float64)
        bound = math.ceil(float((c * np.log2(n / c)).sum()) / 8)
        if len(model) + 1 + bound < best:
            words = _ans_words(a, present, counts)
            put_varint(model, len(words))
            if len(model) + 4 * len(words) < best:
                return ANS, [bytes(model), words.view(np.uint8)], 4 * len(words)
    if packed < n:
        return 2 + b, _pack(a, b), packed
    return RAW, [a], n


def encode_body(fields) -> tuple[list, int]:
    """The ``FLAG_ANS`` body for ``fields``: ``(parts, header_bytes)``, where ``header_bytes``
    counts the bytes that are not field data: field count, modes, lengths, each coded field's
    model and word count."""
    table = bytearray()
    put_varint(table, len(fields))
    modes = bytearray((len(fields) + 1) // 2)
    payload: list = []
    data = 0
    for i, f in enumerate(fields):
        mode, parts, d = encode_field(f)
        modes[i // 2] |= mode << (4 * (i % 2))
        payload += parts
        data += d
    table += modes
    for f in fields:
        put_varint(table, memoryview(f).nbytes)
    total = len(table) + sum(memoryview(p).nbytes for p in payload)
    return [bytes(table), *payload], total - data


def _coder_error(e: BaseException) -> bool:
    # constriction is Rust behind pyo3: its errors arrive as ValueError/KeyError/TypeError, and a
    # Rust panic as pyo3's PanicException, which derives from BaseException (not Exception). Anything
    # else (KeyboardInterrupt, a test watchdog's alarm exception) must pass through untouched.
    return (
        isinstance(
            e,
            ValueError
            | KeyError
            | TypeError
            | IndexError
            | OverflowError
            | RuntimeError
            | AssertionError,
        )
        or type(e).__name__ == "PanicException"
    )


def _decode_ans(r: ByteReader, n: int) -> np.ndarray:
    k = r.u8("ans alphabet size") + 2
    if k > 256:
        raise WireError(f"ans alphabet of {k} symbols (at most 256)")
    if k <= _LIST_MAX:
        syms = np.frombuffer(r.take(k, "ans symbols"), np.uint8)
        if not (np.diff(syms.astype(np.int16)) > 0).all():
            raise WireError("ans symbols are not strictly increasing")
    else:
        bits = np.unpackbits(
            np.frombuffer(r.take(32, "ans symbol bitmap"), np.uint8), bitorder="little"
        )
        syms = np.flatnonzero(bits).astype(np.uint8)
        if len(syms) != k:
            raise WireError(f"ans bitmap holds {len(syms)} symbols, header says {k}")
    counts = np.empty(k, np.int64)
    left = n
    for i in range(k):
        c = r.varint("ans symbol count", left)  # never above what is left: the sum cannot pass n
        if c == 0:
            raise WireError("ans symbol count of zero")
        counts[i] = c
        left -= c
    if left:
        raise WireError(f"ans counts sum to {n - left}, field length is {n}")
    w = r.varint("ans word count", r.remaining() // 4)
    if w == 0:
        raise WireError("ans field without words")
    # A copy: native uint32 for constriction, independent of the blob's buffer.
    words = np.frombuffer(r.take(4 * w, "ans words"), "<u4").astype(np.uint32)
    out = np.empty(n, np.uint8)
    hist = np.zeros(k, np.int64)
    try:
        model = _model(counts)
        coder = _constriction().stream.stack.AnsCoder(words)
        for s in range(0, n, _CHUNK):
            m = min(_CHUNK, n - s)
            idx = coder.decode(model, m)
            # The model's alphabet is 0..k-1, so idx is always in range; clip is belt and braces
            # (an index out of range would lengthen the histogram, and fail the check below).
            np.take(syms, idx, out=out[s : s + m], mode="clip")
            h = np.bincount(idx, minlength=k)
            if len(h) != k:
                raise WireError("ans decoder produced a symbol outside the alphabet")
            hist += h
        empty = coder.is_empty()
    except WireError:
        raise
    except BaseException as e:
        if not _coder_error(e):
            raise
        raise WireError(f"bad ans word stream: {e}") from None
    # A stream that decodes n symbols but leaves words behind (or was padded) is not one the
    # encoder made; neither is one whose symbols disagree with the counts it declared.
    if not empty:
        raise WireError("ans words left over after decoding the field")
    if not np.array_equal(hist, counts):
        raise WireError("ans field decodes to a different histogram than it declares")
    return out


def decode_body(body, limits: Limits = DEFAULT_LIMITS) -> list[memoryview]:
    """The fields of a ``FLAG_ANS`` body. Raises :class:`WireError` on anything malformed."""
    r = ByteReader(body)
    nf = r.varint("field count", limits.max_fields)
    mb = np.frombuffer(r.take((nf + 1) // 2, "field modes"), np.uint8)
    modes = np.empty(2 * mb.size, np.uint8)
    modes[0::2], modes[1::2] = mb & 15, mb >> 4
    if nf % 2 and modes[-1]:
        raise WireError("spare field-mode nibble is not zero")
    if (modes[:nf] >= _MODES).any():
        raise WireError(f"unknown field mode {int(modes[:nf].max())}")
    # Decoded bytes in all, never beyond max_body_bytes, whatever each length says; all checked
    # before any field is decoded.
    budget = limits.max_body_bytes
    lens = []
    for _ in range(nf):
        n = r.varint("field length", budget)
        budget -= n
        lens.append(n)
    fields: list[memoryview] = []
    for mode, n in zip(modes[:nf].tolist(), lens, strict=True):
        if mode == RAW:
            fields.append(r.take(n, "raw field"))
        elif mode == CONST:
            if n == 0:
                raise WireError("constant field of length 0")
            fields.append(memoryview(np.full(n, r.u8("constant byte"), np.uint8)))
        elif mode == ANS:
            fields.append(memoryview(_decode_ans(r, n)))
        else:
            b = mode - 2
            fields.append(memoryview(_unpack(r.take(packed_len(n, b), "packed field"), n, b)))
    if r.remaining():
        raise WireError(f"{r.remaining()} trailing bytes after the ans fields")
    return fields


def pack(data: bytes) -> bytes:
    """One field coded on its own (a single-field ``ans`` body).

    >>> from fedpress.wire.ans import pack, unpack
    >>> data = bytes([3, 3, 4, 3, 2, 3, 4, 3] * 1000)   # 8000 bytes, 1.5 bits of entropy each
    >>> packed = pack(data)
    >>> len(packed) < len(data) // 5, unpack(packed) == data
    (True, True)
    """
    parts, _ = encode_body([data])
    return b"".join(parts)


def unpack(buf, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The inverse of :func:`pack`; raises :class:`WireError` on anything malformed."""
    fields = decode_body(memoryview(buf), limits)
    if len(fields) != 1:
        raise WireError(f"expected one ans field, found {len(fields)}")
    return bytes(fields[0])
