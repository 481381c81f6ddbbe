"""Spec strings: ``stage[:key=value,...]`` joined by ``+`` in encode order.

>>> [str(s) for s in parse_spec("ef+topk:ratio=0.01+q:bits=4+zstd")]
['ef', 'topk:ratio=0.01', 'q:bits=4', 'zstd']
>>> parse_spec("topk:ratio=2")
Traceback (most recent call last):
...
fedpress.codecs.spec.SpecError: bad codec spec 'topk:ratio=2': in 'topk:ratio=2', ratio must be in (0, 1], got 2
"""

from __future__ import annotations

from fedpress.codecs.base import Stage

REGISTRY: dict[str, type[Stage]] = {}


class SpecError(ValueError):
    """A codec spec that cannot be parsed; the message names the bad part."""


def register(cls: type[Stage]) -> type[Stage]:
    REGISTRY[cls.name] = cls
    return cls


def _ensure_loaded() -> None:
    # Importing the family modules fills REGISTRY (each class is decorated with @register).
    from fedpress.codecs import (  # noqa: F401
        cast,
        entropy,
        feedback,
        levels,
        lowrank,
        quantize,
        rotate,
        sketch,
        sparsify,
    )


def parse_spec(spec: str) -> list[Stage]:
    """Parse and validate a spec string into stage objects (in encode order)."""
    _ensure_loaded()
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"bad codec spec {spec!r}: empty")
    stages: list[Stage] = []
    parts = [p.strip() for p in spec.strip().split("+")]
    for part in parts:
        if not part:
            raise SpecError(f"bad codec spec {spec!r}: empty stage (stray '+')")
        name, _, args = part.partition(":")
        name = name.strip().lower()
        if name not in REGISTRY:
            known = ", ".join(sorted(REGISTRY))
            raise SpecError(f"bad codec spec {spec!r}: unknown stage {name!r} (known: {known})")
        cls = REGISTRY[name]
        kw = {}
        if args.strip():
            for item in args.split(","):
                key, eq, raw = item.partition("=")
                key = key.strip()
                if not eq:
                    raise SpecError(f"bad codec spec {spec!r}: in {part!r}, expected key=value, got {item!r}")
                if key not in cls.params:
                    ok = ", ".join(cls.params) or "none"
                    raise SpecError(f"bad codec spec {spec!r}: {name} has no parameter {key!r} (it takes: {ok})")
                if key in kw:
                    raise SpecError(f"bad codec spec {spec!r}: {key!r} given twice in {part!r}")
                try:
                    kw[key] = cls.params[key].parse(raw.strip())
                except ValueError as e:
                    raise SpecError(f"bad codec spec {spec!r}: in {part!r}, {key} {e}") from None
        st = cls(**kw)
        st.given = kw
        try:
            st.validate()
        except ValueError as e:
            raise SpecError(f"bad codec spec {spec!r}: in {part!r}, {e}") from None
        stages.append(st)
    _check_order(spec, stages)
    return stages


def _check_order(spec: str, stages: list[Stage]) -> None:
    names = [s.name for s in stages]
    for i, st in enumerate(stages):
        if st.name == "ef" and i != 0:
            raise SpecError(f"bad codec spec {spec!r}: 'ef' must come first (it wraps the rest)")
        if st.role == "lossless" and i != len(stages) - 1:
            raise SpecError(f"bad codec spec {spec!r}: {st.name!r} is lossless and must come last")
        if st.name == "none" and len([s for s in stages if s.role != "lossless"]) > 1:
            raise SpecError(f"bad codec spec {spec!r}: 'none' cannot be combined with lossy stages")
        if st.role == "terminal" and i + 1 < len(stages) and stages[i + 1].role != "lossless":
            raise SpecError(
                f"bad codec spec {spec!r}: {st.name!r} produces final codes; "
                f"only a lossless stage may follow it, not {stages[i + 1].name!r}"
            )
    if names[0] == "ef" and not any(s.role in ("transform", "terminal") and s.name != "none" for s in stages):
        raise SpecError(f"bad codec spec {spec!r}: 'ef' needs a lossy stage after it")


def canonical(stages: list[Stage]) -> str:
    return "+".join(str(s) for s in stages)
