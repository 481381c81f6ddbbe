"""Spec strings: ``stage[:key=value,...]`` joined by ``+`` in encode order.

>>> [str(s) for s in parse_spec("ef+topk:ratio=0.01+q:bits=4+zstd")]
['ef', 'topk:ratio=0.01', 'q:bits=4', 'zstd']
>>> parse_spec("topk:ratio=2")
Traceback (most recent call last):
...
fedpress.codecs.spec.SpecError: bad codec spec 'topk:ratio=2': in 'topk:ratio=2', ratio must be in (0, 1], got 2

**Per-tensor rules.** A spec may add rules after ``;``, each ``SELECTOR[,SELECTOR...]=PIPELINE``:
the first rule whose selector matches a tensor picks its pipeline, and tensors no rule matches take
the first part (the default). Selectors are a glob on the tensor's name (``*.bias``, ``conv1.*``),
``numel<N`` (fewer than N values) or ``ndim<N``. This is the usual practice of leaving biases,
norms and other small layers uncompressed (TFF compresses only tensors above a size threshold; DGC
and PowerSGD skip small layers): they cost little bytes and their error costs much accuracy.

>>> default, rules = parse_rules("ef+topk:ratio=0.01+q:bits=8; *.bias,numel<1000=none")
>>> canonical_rules(default, rules)
'ef+topk:ratio=0.01+q:bits=8; *.bias,numel<1000=none'
>>> [r.matches("fc.bias", (10,)) for r in rules], rules[0].matches("fc.weight", (100, 100))
([True], False)
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

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
        vq,
    )


def parse_spec(spec: str) -> list[Stage]:
    """Parse and validate a one-pipeline spec string into stage objects (in encode order).

    A spec with per-tensor rules (``;``) is not one pipeline: :func:`parse_rules` reads it.
    """
    _ensure_loaded()
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"bad codec spec {spec!r}: empty")
    if ";" in spec:
        raise SpecError(f"bad codec spec {spec!r}: per-tensor rules (';') are not allowed here, "
                        "only a single pipeline")
    return _parse_pipeline(spec, spec)


def _parse_pipeline(spec: str, shown: str) -> list[Stage]:
    # ``shown`` is the whole spec as the user wrote it, for the error messages (a rule's pipeline
    # is only part of it).
    spec = spec.strip()
    if not spec:
        raise SpecError(f"bad codec spec {shown!r}: empty pipeline")
    stages: list[Stage] = []
    parts = [p.strip() for p in spec.strip().split("+")]
    for part in parts:
        if not part:
            raise SpecError(f"bad codec spec {shown!r}: empty stage (stray '+')")
        name, _, args = part.partition(":")
        name = name.strip().lower()
        if name not in REGISTRY:
            known = ", ".join(sorted(REGISTRY))
            raise SpecError(f"bad codec spec {shown!r}: unknown stage {name!r} (known: {known})")
        cls = REGISTRY[name]
        kw = {}
        if args.strip():
            for item in args.split(","):
                key, eq, raw = item.partition("=")
                key = key.strip()
                if not eq:
                    raise SpecError(f"bad codec spec {shown!r}: in {part!r}, expected key=value, got {item!r}")
                if key not in cls.params:
                    ok = ", ".join(cls.params) or "none"
                    raise SpecError(f"bad codec spec {shown!r}: {name} has no parameter {key!r} (it takes: {ok})")
                if key in kw:
                    raise SpecError(f"bad codec spec {shown!r}: {key!r} given twice in {part!r}")
                try:
                    kw[key] = cls.params[key].parse(raw.strip())
                except ValueError as e:
                    raise SpecError(f"bad codec spec {shown!r}: in {part!r}, {key} {e}") from None
        st = cls(**kw)
        st.given = kw
        try:
            st.validate()
        except ValueError as e:
            raise SpecError(f"bad codec spec {shown!r}: in {part!r}, {e}") from None
        stages.append(st)
    _check_order(shown, stages)
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


@dataclass(frozen=True)
class Selector:
    """Which tensors a rule takes: a glob on the name, or a size bound (``numel<N``, ``ndim<N``)."""

    kind: str  # "glob" | "numel" | "ndim"
    value: str | int
    # The glob compiled once, held by this selector (so by its cached Codec): fnmatch's own cache
    # keeps up to 32 768 patterns, which blobs from untrusted clients could fill.
    _match: object = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.kind == "glob":
            object.__setattr__(self, "_match", re.compile(fnmatch.translate(self.value)).fullmatch)

    def matches(self, name: str, shape: tuple[int, ...]) -> bool:
        if self.kind == "glob":
            return self._match(name) is not None
        if self.kind == "numel":
            n = 1
            for d in shape:
                n *= int(d)
            return n < self.value
        return len(shape) < self.value

    def __str__(self) -> str:
        return self.value if self.kind == "glob" else f"{self.kind}<{self.value}"


@dataclass(frozen=True)
class Rule:
    """``SELECTOR[,SELECTOR...]=PIPELINE``: a tensor any selector matches is encoded by ``stages``."""

    selectors: tuple[Selector, ...]
    stages: tuple[Stage, ...]

    def matches(self, name: str, shape: tuple[int, ...]) -> bool:
        return any(s.matches(name, shape) for s in self.selectors)

    def __str__(self) -> str:
        return ",".join(map(str, self.selectors)) + "=" + canonical(list(self.stages))


def _is_rule(part: str) -> bool:
    # A pipeline has no '=' before its first ':' (parameters only follow a stage name and its
    # colon), and no '+' there either; a rule's selector never contains ':' or '+'.
    head, eq, _ = part.partition("=")
    return bool(eq) and ":" not in head and "+" not in head


_BOUND = re.compile(r"(numel|ndim)\s*<\s*(.*)")


def _parse_selector(raw: str, shown: str, part: str) -> Selector:
    sel = raw.strip()
    if not sel:
        raise SpecError(f"bad codec spec {shown!r}: empty selector in rule {part!r}")
    m = _BOUND.fullmatch(sel)
    if m:
        kind, bound = m.groups()
        n = int(bound) if bound.isdigit() else 0
        if n < 1:
            raise SpecError(f"bad codec spec {shown!r}: in rule {part!r}, {kind}< needs a positive "
                            f"integer, got {bound!r}")
        return Selector(kind, n)
    if any(c in sel for c in "<>= "):
        raise SpecError(f"bad codec spec {shown!r}: in rule {part!r}, selector {sel!r} is neither a "
                        "name glob (e.g. '*.bias') nor numel<N / ndim<N")
    if sel.count("[") != sel.count("]"):
        # ',' separates selectors, so a character class [a,b] would be cut in two silently
        raise SpecError(f"bad codec spec {shown!r}: in rule {part!r}, selector {sel!r} has unbalanced "
                        "brackets (',' separates selectors: write [ab], not [a,b])")
    return Selector("glob", sel)


def parse_rules(spec: str) -> tuple[list[Stage], list[Rule]]:
    """Parse a spec with optional per-tensor rules: ``DEFAULT[; SELECTORS=PIPELINE ...]``.

    Every rule's pipeline is validated like a whole spec. Lossless entropy coding (``zstd``,
    ``ans``) works on the whole blob, so it may end the default pipeline only.

    >>> d, rules = parse_rules("q:bits=4+zstd; fc.*=q:bits=8; numel<64=none")
    >>> [str(s) for s in d], [str(r) for r in rules]
    (['q:bits=4', 'zstd'], ['fc.*=q:bits=8', 'numel<64=none'])
    >>> parse_rules("q:bits=4; *.bias=q:bits=8+zstd")
    Traceback (most recent call last):
    ...
    fedpress.codecs.spec.SpecError: bad codec spec 'q:bits=4; *.bias=q:bits=8+zstd': in rule '*.bias=q:bits=8+zstd', 'zstd' codes the whole blob: end the default pipeline (the first part) with it instead
    """
    _ensure_loaded()
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"bad codec spec {spec!r}: empty")
    parts = [p.strip() for p in spec.split(";")]
    if _is_rule(parts[0]):
        raise SpecError(f"bad codec spec {spec!r}: the first part, {parts[0]!r}, must be the default pipeline "
                        "(for every tensor no rule matches); rules SELECTOR=PIPELINE come after ';'")
    default = _parse_pipeline(parts[0], spec)
    rules: list[Rule] = []
    for part in parts[1:]:
        if not part:
            raise SpecError(f"bad codec spec {spec!r}: empty rule (stray ';')")
        if not _is_rule(part):
            raise SpecError(f"bad codec spec {spec!r}: rule {part!r} has no selector (expected "
                            "SELECTOR=PIPELINE, e.g. '*.bias=none' or 'numel<4096=fp16')")
        head, _, pipe = part.partition("=")
        sels = tuple(_parse_selector(s, spec, part) for s in head.split(","))
        if not pipe.strip():
            raise SpecError(f"bad codec spec {spec!r}: rule {part!r} has no pipeline after '='")
        try:
            stages = _parse_pipeline(pipe, spec)
        except SpecError as e:  # say which rule: the same stage may appear in several
            prefix = f"bad codec spec {spec!r}: "
            raise SpecError(f"{prefix}in rule {part!r}: {str(e).removeprefix(prefix)}") from None
        lossless = [s for s in stages if s.role == "lossless"]
        if lossless:
            raise SpecError(f"bad codec spec {spec!r}: in rule {part!r}, {lossless[0].name!r} codes the whole "
                            "blob: end the default pipeline (the first part) with it instead")
        rules.append(Rule(sels, tuple(stages)))
    return default, rules


def canonical_rules(default: list[Stage], rules: list[Rule]) -> str:
    """The canonical spec: the default pipeline, then ``; rule`` for each rule, in order."""
    return "; ".join([canonical(default), *map(str, rules)])
