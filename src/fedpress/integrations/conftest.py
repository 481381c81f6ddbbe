"""Doctest collection: the Flower integration needs the optional ``flwr`` dependency."""

try:
    import flwr  # noqa: F401

    collect_ignore: list[str] = []
except ImportError:
    collect_ignore = ["flower.py"]
