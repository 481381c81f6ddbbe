"""Lossless stages applied to the finished body of a blob."""

from __future__ import annotations

from fedpress.codecs.base import Param, Stage
from fedpress.codecs.spec import register


@register
class Zstd(Stage):
    """Zstandard over the whole body (field table and fields). Quantisers that precede it store
    odd-width codes (3, 5, 6, 7 bits) one per byte so that zstd's entropy coder sees whole symbols;
    the blob never grows (the body stays raw when zstd would not shrink it)."""

    name = "zstd"
    help = "lossless zstandard entropy coding of the payload (must be last)"
    role = "lossless"
    params = {"level": Param(int, 3, "zstd level", lo=1, hi=22)}


@register
class Ans(Stage):
    """Order-0 rANS (constriction's stack ANS coder) on each field separately, with a model from
    that field's exact byte histogram (:mod:`fedpress.wire.ans`). On quantiser codes it lands at
    their order-0 entropy, where zstd stays ~20 % above it; odd-width codes are stored one per byte
    as for zstd, so each byte is one symbol. Fields that would not shrink (float scales, short
    fields) stay raw, and the blob never grows.

    >>> import fedpress, numpy as np
    >>> x = np.random.default_rng(0).normal(size=100_000).astype(np.float32)
    >>> coded, zstd = fedpress.compress(x, "q:bits=3+ans"), fedpress.compress(x, "q:bits=3+zstd")
    >>> len(coded) < len(zstd), np.array_equal(fedpress.decompress(coded),
    ...                                        fedpress.decompress(fedpress.compress(x, "q:bits=3")))
    (True, True)
    """

    name = "ans"
    help = "lossless rANS entropy coding of each field at its order-0 entropy (must be last)"
    role = "lossless"
