"""Codecs: quantise, sparsify, reduce rank, entropy-code, with error feedback, on real bytes."""

from fedpress.codecs.combine import Codec, Encoded, codec, compress, decompress
from fedpress.codecs.spec import REGISTRY, SpecError, parse_spec


def registry() -> dict[str, str]:
    """Stage name → one-line help, for every registered stage."""
    parse_spec("none")  # loads the families
    return {name: cls.help for name, cls in sorted(REGISTRY.items())}


__all__ = ["Codec", "Encoded", "SpecError", "codec", "compress", "decompress", "parse_spec", "registry"]
