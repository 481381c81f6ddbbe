"""Streaming, stackable aggregators (in the style of TensorFlow Federated's aggregation factories).

A *factory* makes one *process* per round. The process sees client contributions one at a time
(``accept``) and never keeps them: it folds each into running sums, so the server holds O(model)
memory whatever the number of clients. Wrappers stack by taking an inner factory — decoding blobs,
clipping and noising for differential privacy, secure summation — and each layer adds what it
measured to the round's measurements.

>>> import torch
>>> proc = DecodingFactory(MeanFactory()).create()
>>> import fedpress
>>> for w, v in [(1.0, 1.0), (3.0, 2.0)]:
...     proc.accept(fedpress.compress({"w": torch.full((2,), v)}, "none"), weight=w)
>>> mean, meas = proc.result()
>>> mean["w"].tolist(), meas["clients_aggregated"]
([1.75, 1.75], 2)
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Process(Protocol):
    def accept(self, value: Any, weight: float = 1.0, client: int | None = None) -> None: ...

    def result(self) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]: ...


class Factory(Protocol):
    def create(self) -> Process: ...


class MeanFactory:
    """Weighted mean of dicts of tensors, accumulated in float64 so the order of arrival barely
    matters; ``result`` returns ``None`` when nothing was accepted."""

    def create(self) -> _MeanProcess:
        return _MeanProcess()


class _MeanProcess:
    """Running weighted sums; subclasses change only how a value is folded in and how the sums
    become the result (``_fold`` / ``_finish``), never the bookkeeping around them."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] | None = None
        self.total = 0.0
        self.count = 0

    def accept(self, value: dict[str, torch.Tensor], weight: float = 1.0, client: int | None = None) -> None:
        if weight <= 0:
            return
        if self.sums is None:
            self.sums = {k: torch.zeros(v.shape, dtype=torch.float64) for k, v in value.items()}
        elif value.keys() != self.sums.keys():
            raise ValueError("update keys differ from the first update of the round")
        for k, v in value.items():
            self._fold(k, v.detach().to(torch.float64), weight)
        self.total += weight
        self.count += 1

    def _fold(self, k: str, v: torch.Tensor, weight: float) -> None:
        self.sums[k].add_(v, alpha=weight)

    def _finish(self, k: str, s: torch.Tensor) -> torch.Tensor:
        return s / self.total

    def result(self):
        meas = {"clients_aggregated": self.count, "weight_total": self.total}
        if self.sums is None:
            return None, meas
        return {k: self._finish(k, s).to(torch.float32) for k, s in self.sums.items()}, meas


class SparseMeanFactory:
    """Coordinate-wise weighted mean over the clients that *sent* each coordinate.

    With sparsified uplinks (top-k, threshold) a plain mean divides each coordinate by the weight of
    every client, although only a few sent it, shrinking the step by roughly the inverse of the
    keep ratio; error feedback eventually delivers the rest, but slowly. Averaging each coordinate
    over its contributors keeps the step size of dense FedAvg. A coordinate counts as sent when
    its decoded value is non-zero (a kept value that quantises to exactly 0 is rare and then simply
    not averaged in). Biased for unbiased sparsifiers (use ``MeanFactory`` with ``randk:unbiased=1``)
    and not a DP mechanism: its sensitivity is not bounded by the clip.

    ``only`` (a predicate on a tensor's name and shape) limits this to the tensors it accepts, the
    rest get the plain mean: with per-tensor codec rules only some tensors are sparsified, and a
    dense code with exact zeros (ternary, low-bit q, a raw zero) must not be divided by fewer
    clients than sent it.

    >>> import torch
    >>> p = SparseMeanFactory().create()
    >>> p.accept({"w": torch.tensor([1.0, 0.0, 4.0])}, weight=1.0)
    >>> p.accept({"w": torch.tensor([3.0, 0.0, 0.0])}, weight=1.0)
    >>> p.result()[0]["w"].tolist()
    [2.0, 0.0, 4.0]
    """

    def __init__(self, only=None):
        self.only = only

    def create(self) -> _SparseMeanProcess:
        return _SparseMeanProcess(self.only)


class _SparseMeanProcess(_MeanProcess):
    def __init__(self, only=None):
        super().__init__()
        self.only = only
        self._sparse: dict[str, bool] = {}
        self.weights: dict[str, torch.Tensor] = {}  # per coordinate: weight of the clients that sent it

    def _fold(self, k: str, v: torch.Tensor, weight: float) -> None:
        super()._fold(k, v, weight)
        if self.only is not None:
            if k not in self._sparse:  # the same answer for every client: asked once per tensor
                self._sparse[k] = bool(self.only(k, tuple(v.shape)))
            if not self._sparse[k]:
                return
        if k not in self.weights:
            self.weights[k] = torch.zeros(v.shape, dtype=torch.float64)
        self.weights[k].add_((v != 0).to(torch.float64), alpha=weight)

    def _finish(self, k: str, s: torch.Tensor) -> torch.Tensor:
        if k not in self.weights:
            return s / self.total
        return s / self.weights[k].clamp(min=1e-300)


def auto_aggregator(codecs, *, private: bool) -> tuple[str, Factory]:
    """``aggregate="auto"``: biased sparsifiers (top-k, threshold) send few coordinates per
    client, so a tensor one of ``codecs`` sparsifies is averaged over its senders
    (:class:`SparseMeanFactory` limited to those tensors); everything else, and anything private,
    is the plain mean. Returns (the rule's name, its factory)."""
    codecs = list(codecs)
    if private or not any(c.sparse for c in codecs):
        return "mean", MeanFactory()
    return "sparse_mean", SparseMeanFactory(only=lambda name, shape: any(c.sparse_for(name, shape) for c in codecs))


class SumFactory:
    """Unweighted sum (what secure aggregation computes); the mean is left to the caller."""

    def create(self) -> _SumProcess:
        return _SumProcess()


class _SumProcess(_MeanProcess):
    def accept(self, value, weight: float = 1.0, client: int | None = None) -> None:
        super().accept(value, 1.0, client)

    def _finish(self, k: str, s: torch.Tensor) -> torch.Tensor:
        return s


class DecodingFactory:
    """Accepts blobs: decodes each (``fedpress.decompress``) and hands the tensors to the inner
    process, then lets the decoded update go. Measures the bytes it decoded.

    ``observe(client, weight, update) -> update``, when given, sees every decoded update first and
    returns the part to aggregate: what a strategy needs per client (SCAFFOLD's control variates)
    is taken from the one decode, not from a second one.
    """

    def __init__(self, inner: Factory, *, structures=None, masks=None, specs=None, observe=None):
        self.inner = inner
        self.structures = structures
        self.masks = masks
        self.specs = specs
        self.observe = observe

    def create(self) -> _DecodingProcess:
        return _DecodingProcess(self.inner.create(), self.structures, self.masks, self.specs, self.observe)


class _DecodingProcess:
    def __init__(self, inner: Process, structures, masks, specs=None, observe=None):
        self.inner = inner
        self.structures = structures
        self.masks = masks
        self.specs = specs
        self.observe = observe
        self.nbytes = 0

    def accept(self, blob: bytes, weight: float = 1.0, client: int | None = None) -> None:
        from fedpress.codecs import decompress

        update = decompress(blob, structures=self.structures, masks=self.masks, specs=self.specs)
        self.nbytes += len(blob)
        if self.observe is not None:
            update = self.observe(client, weight, update)
        self.inner.accept(update, weight, client)

    def result(self):
        value, meas = self.inner.result()
        return value, {**meas, "decoded_bytes": self.nbytes}


# ----------------------------------------------------------------------------- robust rules
class _StackProcess:
    """Keeps every accepted update (O(clients × model) memory, unlike the streaming means: an order
    statistic or a distance between clients needs all of them) and combines them at the end;
    subclasses say how (``_combine``), never the bookkeeping around it."""

    def __init__(self, name: str):
        self.name = name
        self.values: dict[str, list[torch.Tensor]] = {}  # per tensor: each client's flat float32
        self.shapes: dict[str, torch.Size] = {}
        self.weights: list[float] = []

    @property
    def total(self) -> float:
        return sum(self.weights)

    def accept(self, value: dict[str, torch.Tensor], weight: float = 1.0, client: int | None = None) -> None:
        if weight <= 0:
            return
        if not self.weights:
            self.values = {k: [] for k in value}
            self.shapes = {k: v.shape for k, v in value.items()}
        elif value.keys() != self.values.keys():
            raise ValueError("update keys differ from the first update of the round")
        for k, v in value.items():
            self.values[k].append(v.detach().to(torch.float32).reshape(-1))
        self.weights.append(float(weight))

    def result(self):
        n = len(self.weights)
        meas = {"clients_aggregated": n, "weight_total": self.total, "aggregate": self.name}
        if not n:
            return None, meas
        return self._combine(meas), meas

    def _combine(self, meas: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class _CoordinateProcess(_StackProcess):
    """A coordinate-wise rule: ``reduce`` maps each tensor's (clients, values) stack to values."""

    def __init__(self, reduce, name: str):
        super().__init__(name)
        self.reduce = reduce

    def _combine(self, meas):
        out = {}
        for k, vs in self.values.items():
            stacked = torch.stack(vs) if vs[0].numel() else torch.zeros((len(vs), 0))
            # Sorted in float32 (the decoded values' own precision: the order is exact); only the
            # values averaged go to float64. A float64 copy of clients × model doubled peak memory.
            out[k] = self.reduce(stacked).to(torch.float32).reshape(self.shapes[k])
        return out


def _trimmed(stacked: torch.Tensor, cut: int) -> torch.Tensor:
    s = torch.sort(stacked, dim=0).values
    return s[cut : s.shape[0] - cut].to(torch.float64).mean(dim=0)


class MedianFactory:
    """Coordinate-wise median of the client updates (Yin et al., 2018): a minority of arbitrary
    (faulty or malicious) updates cannot move a coordinate beyond the honest clients' values.
    Unweighted; an even count averages the two middle values.

    >>> import torch
    >>> p = MedianFactory().create()
    >>> for v in ([1.0, 0.0], [2.0, 1.0], [1e9, -1e9]):
    ...     p.accept({"w": torch.tensor(v)})
    >>> p.result()[0]["w"].tolist()
    [2.0, 0.0]
    """

    def create(self) -> _StackProcess:
        def median(s):
            n = s.shape[0]
            return _trimmed(s, (n - 1) // 2)  # the middle one (odd n) or the middle two (even n)

        return _CoordinateProcess(median, "median")


def _sender_median(stacked: torch.Tensor) -> torch.Tensor:
    # Per coordinate, the median of the non-zero values (the clients that sent it); 0 where none did.
    # Sorting with zeros mapped to +inf puts the k senders first; their middle one (or two) is picked.
    sent = stacked != 0
    k = sent.sum(dim=0)
    s = torch.sort(torch.where(sent, stacked, torch.full_like(stacked, float("inf"))), dim=0).values
    lo = ((k - 1).clamp(min=0) // 2).unsqueeze(0)
    hi = (k // 2).clamp(max=max(stacked.shape[0] - 1, 0)).unsqueeze(0)
    med = (s.gather(0, lo).double() + s.gather(0, hi).double()).squeeze(0) / 2
    return torch.where(k > 0, med, torch.zeros_like(med))


class SparseMedianFactory:
    """Coordinate-wise median over the clients that *sent* each coordinate (non-zero values), the
    robust counterpart of :class:`SparseMeanFactory` for sparsified uplinks: a plain median of top-k
    updates is mostly zero, since most clients did not send most coordinates.

    >>> import torch
    >>> p = SparseMedianFactory().create()
    >>> for v in ([1.0, 0.0, 0.0], [3.0, 0.0, 2.0], [1e9, 5.0, 0.0]):
    ...     p.accept({"w": torch.tensor(v)})
    >>> p.result()[0]["w"].tolist()
    [3.0, 5.0, 2.0]
    """

    def create(self) -> _StackProcess:
        return _CoordinateProcess(_sender_median, "sparse_median")


class TrimmedMeanFactory:
    """Coordinate-wise β-trimmed mean: per coordinate, drop the ⌊β·n⌋ largest and smallest client
    values and average the rest (Yin et al., 2018). Unweighted; β = 0 is the plain mean.

    >>> import torch
    >>> p = TrimmedMeanFactory(beta=0.25).create()
    >>> for v in (1.0, 2.0, 3.0, 1e9):
    ...     p.accept({"w": torch.tensor([v])})
    >>> p.result()[0]["w"].tolist()
    [2.5]
    """

    def __init__(self, beta: float = 0.1):
        if not 0 <= beta < 0.5:
            raise ValueError(f"trimmed_mean beta must be in [0, 0.5), got {beta}")
        self.beta = float(beta)

    def create(self) -> _StackProcess:
        return _CoordinateProcess(lambda s: _trimmed(s, int(self.beta * s.shape[0])), f"trimmed_mean:beta={self.beta:g}")


class KrumFactory:
    """(Multi-)Krum (Blanchard et al., 2017): score each update by the sum of squared distances to
    its n − f − 2 nearest others and average the ``m`` best-scored updates (m = 1: Krum picks one).
    ``f`` is the number of Byzantine clients tolerated (default: ⌊(n − 3) / 2⌋, at most what Krum's
    n > 2f + 2 allows). Unweighted; needs every update of the round (O(n² · model) work).

    >>> import torch
    >>> p = KrumFactory(f=1).create()
    >>> for v in (1.0, 1.1, 0.9, 1.05, 50.0):
    ...     p.accept({"w": torch.tensor([v])})
    >>> p.result()[0]["w"].tolist()
    [1.0499999523162842]
    """

    def __init__(self, f: float | None = None, m: float = 1):
        if f is not None and (f < 0 or f != int(f)):
            raise ValueError(f"krum f must be a whole number >= 0, got {f:g}")
        if m < 1 or m != int(m):
            raise ValueError(f"krum m must be a whole number >= 1, got {m:g}")
        self.f = None if f is None else int(f)
        self.m = int(m)

    def create(self) -> _KrumProcess:
        return _KrumProcess(self.f, self.m)


class _KrumProcess(_StackProcess):
    def __init__(self, f, m):
        super().__init__("krum" + (f":f={f}" if f is not None else "") + (f",m={m}" if m > 1 else ""))
        self.f, self.m = f, m

    def _combine(self, meas):
        n = len(self.weights)
        # Pairwise squared distances over the whole update (all tensors), in float64.
        flat = [torch.cat([self.values[k][i].double() for k in self.values]) if self.values
                else torch.zeros(0, dtype=torch.float64) for i in range(n)]
        x = torch.stack(flat) if flat[0].numel() else torch.zeros((n, 0), dtype=torch.float64)
        d2 = torch.cdist(x, x).pow(2)
        f = self.f if self.f is not None else max((n - 3) // 2, 0)
        near = max(n - f - 2, 1)
        scores = torch.sort(d2, dim=1).values[:, 1 : near + 1].sum(dim=1) if n > 1 else torch.zeros(1)
        chosen = torch.argsort(scores, stable=True)[: min(self.m, n)]
        meas["krum_selected"] = int(len(chosen))
        return {k: torch.stack([vs[int(i)] for i in chosen]).double().mean(0).float().reshape(self.shapes[k])
                for k, vs in self.values.items()}


class NormClipFactory:
    """Mean of the updates after clipping each one's L2 norm (over all its tensors) to ``factor`` ×
    the median norm of the round's updates: a boosted or flipped-and-scaled update counts no more
    than a typical one (norm bounding, Sun et al., 2019). Unlike the coordinate-wise rules it leaves
    sparse updates sparse, so it combines with top-k. Weighted like the mean.

    >>> import torch
    >>> p = NormClipFactory().create()
    >>> for v in ([2.0, 0.0], [0.0, 1.0], [-8.0, 0.0]):   # norms 2, 1, 8: the median is 2
    ...     p.accept({"w": torch.tensor(v)})
    >>> [round(x, 4) for x in p.result()[0]["w"].tolist()]     # (2 + 0 - 2) / 3, (0 + 1 + 0) / 3
    [0.0, 0.3333]
    """

    def __init__(self, factor: float = 1.0):
        if not factor > 0:
            raise ValueError(f"norm_clip factor must be > 0, got {factor:g}")
        self.factor = float(factor)

    def create(self) -> _StackProcess:
        return _NormClipProcess(self.factor)


class _NormClipProcess(_StackProcess):
    def __init__(self, factor: float):
        super().__init__(f"norm_clip:factor={factor:g}")
        self.factor = factor

    def _combine(self, meas):
        n = len(self.weights)
        norms = torch.stack([torch.sqrt(sum((self.values[k][i].double() ** 2).sum() for k in self.values))
                             for i in range(n)]) if self.values else torch.zeros(n, dtype=torch.float64)
        bound = self.factor * float(torch.median(norms))  # the lower middle for an even count
        scale = [min(1.0, bound / float(v)) if float(v) > 0 else 1.0 for v in norms]
        meas["clients_clipped"] = sum(s < 1.0 for s in scale)
        total = self.total
        out = {}
        for k, vs in self.values.items():
            acc = torch.zeros(vs[0].shape, dtype=torch.float64)
            for v, w, c in zip(vs, self.weights, scale, strict=True):
                acc.add_(v.double(), alpha=w * c)
            out[k] = (acc / total).float().reshape(self.shapes[k])
        return out


class MajorityVoteFactory:
    """signSGD with majority vote (Bernstein et al., 2019), for sign-compressed uplinks: each
    coordinate moves in the direction most clients' updates point (weighted vote; a tie is 0), by
    the clients' weighted mean magnitude of that coordinate. Streaming, like the means.

    >>> import torch
    >>> p = MajorityVoteFactory().create()
    >>> for v in ([0.5, -0.5, 0.1], [0.5, 0.5, -0.1], [0.5, -0.5, 0.0]):
    ...     p.accept({"w": torch.tensor(v)})
    >>> [round(x, 4) for x in p.result()[0]["w"].tolist()]
    [0.5, -0.5, 0.0]
    """

    def create(self) -> _MajorityProcess:
        return _MajorityProcess()


class _MajorityProcess(_MeanProcess):
    def __init__(self):
        super().__init__()
        self.mags: dict[str, torch.Tensor] = {}

    def _fold(self, k: str, v: torch.Tensor, weight: float) -> None:
        if k not in self.mags:
            self.mags[k] = torch.zeros(v.shape, dtype=torch.float64)
        self.sums[k].add_(torch.sign(v), alpha=weight)
        self.mags[k].add_(v.abs(), alpha=weight)

    def _finish(self, k: str, s: torch.Tensor) -> torch.Tensor:
        return torch.sign(s) * self.mags[k] / self.total


#: Names accepted by :func:`make_aggregator` (and ``--aggregate``), "auto" aside.
AGGREGATES = ("mean", "sparse_mean", "median", "sparse_median", "trimmed_mean[:beta=B]", "krum[:f=F,m=M]",
              "norm_clip[:factor=F]", "majority")


def make_aggregator(spec: str) -> Factory:
    """The aggregation rule named by ``spec``: ``mean``, ``sparse_mean``, ``median``, ``sparse_median``,
    ``trimmed_mean[:beta=B]`` (default β = 0.1), ``krum[:f=F,m=M]`` or ``majority``; anything else is
    one ValueError.

    >>> type(make_aggregator("trimmed_mean:beta=0.2")).__name__, make_aggregator("trimmed_mean:beta=0.2").beta
    ('TrimmedMeanFactory', 0.2)
    """
    name, _, args = str(spec).strip().partition(":")
    takes = {"trimmed_mean": ("beta",), "krum": ("f", "m"), "norm_clip": ("factor",)}.get(name, ())
    kw: dict[str, float] = {}
    for item in filter(None, (a.strip() for a in args.split(","))):
        k, eq, v = item.partition("=")
        k = k.strip()
        if k not in takes or not eq:
            raise ValueError(f"bad aggregate {spec!r}: unexpected {item!r} (trimmed_mean takes beta=B, "
                             "krum f=F,m=M)")
        try:
            kw[k] = float(v)
        except ValueError:
            raise ValueError(f"bad aggregate {spec!r}: {k} must be a number, got {v!r}") from None
    makers = {"mean": MeanFactory, "sparse_mean": SparseMeanFactory, "median": MedianFactory,
              "sparse_median": SparseMedianFactory, "krum": KrumFactory, "norm_clip": NormClipFactory,
              "trimmed_mean": TrimmedMeanFactory, "majority": MajorityVoteFactory}
    if name not in makers:
        raise ValueError(f"bad aggregate {spec!r}: expected one of auto, {', '.join(AGGREGATES)}")
    try:
        return makers[name](**kw)
    except ValueError as e:
        raise ValueError(f"bad aggregate {spec!r}: {e}") from None
