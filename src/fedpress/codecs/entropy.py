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
