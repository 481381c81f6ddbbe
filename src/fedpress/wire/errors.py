"""The one exception untrusted bytes may raise."""


class WireError(ValueError):
    """Malformed, truncated, tampered or over-limit bytes given to :func:`fedpress.decompress`.

    A subclass of ``ValueError`` so callers that already guard against bad values keep working.
    """
