"""Versioned, self-describing wire format for compressed model updates."""

from fedpress.wire.errors import WireError
from fedpress.wire.format import (
    MAGIC,
    WIRE_VERSION,
    Limits,
    Structure,
    TensorSpec,
)

__all__ = ["MAGIC", "WIRE_VERSION", "Limits", "Structure", "TensorSpec", "WireError"]
