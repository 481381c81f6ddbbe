"""Building blocks of a codec pipeline: parameters, stages and the per-tensor context.

A *stage* is a small object with two mirror-image methods. ``encode`` receives a float32 array,
writes its own fields, hands any *sub-tensors* (top-k's kept values, PowerSGD's factors) to the
rest of the chain through ``rest`` and returns its reconstruction; ``decode`` reads the same fields
in the same order, asks ``rest`` to decode the sub-tensors and rebuilds the array. Returning the
reconstruction from ``encode`` is what lets error feedback know exactly what the server will see
without decoding the blob again.

State (error-feedback residuals, PowerSGD's warm-start factor) is never hidden in a stage: it lives
in a plain dict passed in and returned by :meth:`fedpress.codecs.Codec.encode`, like optax.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fedpress.wire.errors import WireError
from fedpress.wire.format import DEFAULT_LIMITS, Limits

Rest = Callable[[list], list]


@dataclass(frozen=True)
class Param:
    """One ``key=value`` of a stage: its type, default, a range check and one line of help."""

    type: type
    default: Any
    help: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    choices: tuple | None = None

    def parse(self, raw: str) -> Any:
        t = self.type
        if t is bool:
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"expected a boolean (0/1), got {raw!r}")
        try:
            if t is int:
                f = float(raw)
                if f != int(f):
                    raise ValueError
                v = int(f)
            else:
                v = t(raw)
        except (ValueError, OverflowError):
            raise ValueError(f"expected {t.__name__}, got {raw!r}") from None
        return self.check(v)

    def check(self, v: Any) -> Any:
        if self.choices is not None and v not in self.choices:
            raise ValueError(f"must be one of {', '.join(map(str, self.choices))}, got {v!r}")
        if isinstance(v, float) and not np.isfinite(v):
            raise ValueError(f"must be finite, got {v!r}")
        bad_lo = self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo))
        bad_hi = self.hi is not None and v > self.hi
        if bad_lo or bad_hi:
            left = "(" if self.lo_open else "["
            lo = "-inf" if self.lo is None else f"{self.lo:g}"
            hi = "inf" if self.hi is None else f"{self.hi:g}"
            raise ValueError(f"must be in {left}{lo}, {hi}], got {v:g}")
        return v


class Stage:
    """Base class of every stage. Subclasses set the class attributes and implement the pair."""

    name: ClassVar[str]
    help: ClassVar[str]
    params: ClassVar[dict[str, Param]] = {}
    #: "transform" hands sub-tensors on; "terminal" turns values into bytes; "lossless" works on
    #: the finished body (zstd); "wrapper" wraps the whole chain (ef).
    role: ClassVar[str] = "terminal"
    stateful: ClassVar[bool] = False
    #: Whether ``encode`` honours ``ctx.recon = False`` by returning None instead of building the
    #: reconstruction (a full-size array nobody reads when only the blob is wanted). Stages that
    #: need their sub-tensors' reconstructions to finish (low-rank factors) leave it False.
    recon_optional: ClassVar[bool] = False
    #: Whether ``encode`` raises :func:`require_finite`'s error itself for NaN or inf input, from
    #: block statistics it computes anyway (min/max, sums, which NaN and inf always reach): the
    #: pipeline then skips its own pass over the tensor when this stage comes first.
    checks_finite: ClassVar[bool] = False

    def __init__(self, **kw):
        for key, p in self.params.items():
            # __dict__ directly: a parameter may share its name with a property (randk's unbiased).
            self.__dict__[key] = p.check(kw.pop(key)) if key in kw else p.default
        if kw:
            raise TypeError(f"unknown parameter(s) {sorted(kw)} for {self.name}")
        self.given: dict[str, Any] = {}

    @property
    def unbiased(self) -> bool:
        return False

    @property
    def needs_seed(self) -> bool:
        """Whether encode or decode draws from ``ctx.rng()`` (otherwise the blob stores seed 0)."""
        return False

    def validate(self) -> None:
        """Cross-parameter checks; raise ValueError naming the problem."""

    def __str__(self) -> str:
        if not self.given:
            return self.name
        parts = []
        for k, v in self.given.items():
            if isinstance(v, bool):
                v = int(v)
            parts.append(f"{k}={v}")
        return f"{self.name}:{','.join(parts)}"

    def encode(self, x: np.ndarray, ctx: Ctx, rest: Rest) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def decode(self, shape: tuple[int, ...], ctx: Ctx, rest: Rest) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


class Ctx:
    """Per-tensor context of one encode or decode: fields, randomness, state, limits.

    ``path`` identifies where in the chain a stage sits, so every stage gets its own random stream
    and its own state slot, derived from (seed, tensor index, path): same seed, same bytes.
    ``recon`` says whether the caller wants the reconstruction (see :attr:`Stage.recon_optional`).
    """

    __slots__ = (
        "seed", "tensor_index", "name", "path", "fields", "pos", "state_in", "state_out",
        "entropy_follows", "limits", "recon",
    )

    def __init__(self, *, seed: int, tensor_index: int, name: str, fields: list,
                 state_in: dict | None = None, state_out: dict | None = None,
                 entropy_follows: bool = False, limits: Limits = DEFAULT_LIMITS, path=(), pos=None,
                 recon: bool = True):
        self.seed = seed
        self.tensor_index = tensor_index
        self.name = name
        self.path = path
        self.fields = fields
        self.pos = pos if pos is not None else [0]
        self.state_in = state_in if state_in is not None else {}
        self.state_out = state_out if state_out is not None else {}
        self.entropy_follows = entropy_follows
        self.limits = limits
        self.recon = recon

    def _copy(self) -> Ctx:
        c = Ctx.__new__(Ctx)
        for s in Ctx.__slots__:
            setattr(c, s, getattr(self, s))
        return c

    def child(self, i: int) -> Ctx:
        c = self._copy()
        c.path = self.path + (i,)
        return c

    def wanting_recon(self) -> Ctx:
        """The same context, asking for reconstructions (same path: same randomness and state)."""
        c = self._copy()
        c.recon = True
        return c

    def deeper(self) -> Ctx:
        """The context of the next stage on the same tensor."""
        return self.child(-1)

    def rng(self, salt: int = 0) -> np.random.Generator:
        words = [self.seed & 0xFFFFFFFFFFFFFFFF, self.tensor_index, len(self.path), salt]
        words += [p + 2 for p in self.path]
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))

    @property
    def state_key(self) -> str:
        return f"{self.name}@{'.'.join(map(str, self.path))}"

    # -- writing (encode)
    def write(self, b) -> None:
        """Append one field: bytes, or an array whose raw bytes are the field (kept without a copy:
        the blob is assembled right after encoding, and no stage touches an array it wrote)."""
        if isinstance(b, np.ndarray):
            self.fields.append(np.ascontiguousarray(b).reshape(-1).view(np.uint8))
        else:
            self.fields.append(bytes(b))

    # -- reading (decode)
    def read(self, expected: int | None = None, what: str = "field") -> memoryview:
        i = self.pos[0]
        if i >= len(self.fields):
            raise WireError(f"missing {what} for tensor {self.name!r}")
        f = self.fields[i]
        self.pos[0] = i + 1
        if expected is not None and len(f) != expected:
            raise WireError(f"{what} of tensor {self.name!r}: expected {expected} bytes, got {len(f)}")
        return f

    def read_f32(self, count: int, what: str) -> np.ndarray:
        return np.frombuffer(self.read(4 * count, what), "<f4").astype(np.float32)


def require_finite(ok, ctx: Ctx) -> None:
    """Raise the pipeline's ValueError for a tensor holding NaN or inf unless ``ok``."""
    if not ok:
        raise ValueError(not_finite_message(ctx.name))


def not_finite_message(name: str) -> str:
    return f"tensor {name or '(top level)'!r} holds NaN or inf; lossy codecs need finite values"


def numel(shape) -> int:
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


def f32_bytes(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype="<f4").tobytes()


def f32_field(a: np.ndarray) -> np.ndarray:
    """``a`` as little-endian float32 for :meth:`Ctx.write`, copied only if it must be converted."""
    return np.ascontiguousarray(a, dtype="<f4")


def blocks_of(flat: np.ndarray, block: int) -> tuple[np.ndarray, int]:
    """View ``flat`` as (n_blocks, block), padding the tail by repeating its last value (so block
    statistics such as min, max and absmax are unchanged). ``block=0`` means one block."""
    n = flat.size
    if n == 0:
        # Zero blocks of width 1 (not (0, 0)): per-block reductions such as q's min/max over
        # axis 1 must see an empty *batch*, not an empty axis, or numpy raises on empty tensors.
        return flat.reshape(0, 1), 0
    if block <= 0 or block >= n:
        return flat.reshape(1, n), n
    nb = -(-n // block)
    if nb * block == n:
        return flat.reshape(nb, block), n
    pad = np.empty(nb * block, flat.dtype)
    pad[:n] = flat
    pad[n:] = flat[-1]
    return pad.reshape(nb, block), n


def n_blocks(n: int, block: int) -> int:
    if n == 0:
        return 0
    if block <= 0 or block >= n:
        return 1
    return -(-n // block)
