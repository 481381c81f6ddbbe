"""Compressed updates that secure aggregation can sum: integer codes on a range shared by all.

Masking works on integers mod 2ᵏ, and the server only ever decodes the *sum*. That is possible
exactly when decoding is affine with the same parameters for every client: with the shared range
[lo, hi] of ``fixed``, a code c means c·scale + lo (scale = (hi − lo)/2ⁿ), so

    Σ_clients value = (Σ_clients c)·scale + n_survivors·lo.

Codes from per-client scales (``q``'s block ranges, ``qsgd``'s norms, ``sign``'s means) or
per-client positions (``topk``, ``threshold``) do not add up this way; :func:`secagg_compatible`
says which specs work and why the others do not. ``randk`` works when every client keeps the
*same* positions, drawn from a seed shared for the round. ``sketch`` works because a count sketch
is linear: with shared hashes, the sum of the clients' sketches is the sketch of the sum of their
updates, which the server unsketches (FetchSGD; see :class:`SharedRangeCodec`; ``ef+sketch`` means
FetchSGD's *server-side* error feedback, kept in sketch space). ``ef`` works with the other specs
too: the residual never leaves the client. Stochastic rounding keeps every client's
codes unbiased, so the decoded mean is unbiased for values inside the range; values outside are
clipped to it (a bias: pick R, or clip the update's L2 norm first, so that clipping is rare).

>>> import numpy as np, torch
>>> codec = SharedRangeCodec("fixed:bits=8,lo=-1,hi=1,rounding=stochastic")
>>> ups = [{"w": torch.tensor([0.25, -0.5, 0.9])}, {"w": torch.tensor([0.75, 0.5, -0.1])}]
>>> codes = [codec.encode(u, round_seed=7, client_seed=i)[0] for i, u in enumerate(ups)]
>>> mean = codec.decode_mean(sum(c.astype(np.int64) for c in codes), 2, ups[0], round_seed=7)
>>> bool((mean["w"] - torch.tensor([0.5, 0.0, 0.4])).abs().max() <= codec.error_bound())
True
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from fedpress.codecs.quantize import fixed_quantize
from fedpress.codecs.sparsify import keep_count
from fedpress.codecs.spec import SpecError, parse_spec

#: Under DP with ``rht``, the shared range in standard deviations of a rotated coordinate.
RHT_RANGE_SIGMAS = 4.0

_FLOATS = "float values do not add modulo 2^k; quantise on a shared range: fixed:lo=-R,hi=R"
_LOWRANK = "low-rank factors multiply: a sum of factorisations is not a factorisation of the sum"
_REFUSE = {
    "none": _FLOATS,
    "fp16": _FLOATS,
    "bf16": _FLOATS,
    "qsgd": "qsgd scales by each client's own bucket norms, so codes do not add (a norm shared by "
    "all clients is not implemented); use fixed on a shared range",
    "sign": "sign scales by each client's own mean |g|, so the bits do not add; use fixed",
    "ternary": "ternary scales by each client's own max |g|, so the trits do not add; use fixed",
    "topk": "top-k keeps different positions on each client, so the kept values do not line up in "
    "a masked sum; use randk (positions from a seed shared for the round)",
    "threshold": "threshold keeps a different set of positions per client, so the kept values "
    "do not line up in a masked sum; use randk",
    "svd": _LOWRANK,
    "powersgd": _LOWRANK,
    "zstd": "masked vectors are uniformly random and do not compress; drop the entropy stage",
    "ans": "masked vectors are uniformly random and do not compress; drop the entropy stage",
}


def secagg_compatible(spec: str) -> tuple[bool, str]:
    """Whether codes of codec ``spec`` can be summed under secure aggregation, and why (not).

    Compatible: ``[ef+][randk:...+][rht+]fixed:bits=n,lo=a,hi=b[,rounding=...]`` (randk with
    positions shared per round, rht with a rotation shared per round), and
    ``[ef+][randk:...+][rht+]q:bits=n`` *with a shared scale*: instead of per-block ranges, every
    client quantises stochastically on one range [−R, R] that the server agrees for the round
    (:meth:`SharedRangeCodec.set_range`); and ``[ef+]sketch:...+(q|fixed)``, a count sketch of the
    whole update with hashes shared per round, or with ``ef`` FetchSGD's server-side error
    feedback (hashes fixed for the run, the error accumulated in sketch space by the server; the
    clients keep no residual). Everything else is refused with the reason.

    >>> secagg_compatible("q:bits=8")
    (True, '8-bit stochastic codes on a range [-R, R] shared per round (q with a shared scale)')

    >>> secagg_compatible("fixed:bits=8,lo=-0.1,hi=0.1,rounding=stochastic")[0]
    True
    >>> secagg_compatible("ef+randk:ratio=0.1+fixed:bits=4,rounding=stochastic")[0]
    True
    >>> ok, why = secagg_compatible("topk:ratio=0.01+q:bits=8")
    >>> ok, why[:52]
    (False, 'topk: top-k keeps different positions on each client')
    >>> ok, why = secagg_compatible("ef+sketch:cols=2000,k=100+q:bits=8")
    >>> ok, "server-side error feedback" in why, "no residual" in why
    (True, True, True)
    """
    if isinstance(spec, str) and ";" in spec:
        # Secure aggregation sums one code vector over the whole update, on one shared range and
        # one set of shared positions; a pipeline per tensor would need one secure sum per group.
        return False, ("per-tensor rules (';'): secure aggregation sums one shared-range code vector "
                       "over the whole update, so every tensor must use the same pipeline")
    try:
        stages = parse_spec(spec)
    except SpecError as e:
        return False, str(e)
    names = [s.name for s in stages]
    body = names[1:] if names[0] == "ef" else names
    for name in body:
        if name in _REFUSE:
            return False, f"{name}: {_REFUSE[name]}"
        if name not in ("randk", "rht", "sketch", "fixed", "q"):
            return False, f"{name}: no shared-range integer form; use fixed on a shared range"
    if "sketch" in body:
        sk0 = next(s for s in stages if s.name == "sketch")
        if sk0.momentum and names[0] != "ef":
            return False, ("sketch: momentum is FetchSGD's server-side momentum in sketch space; it needs "
                           "the server's error sketch: ef+sketch:...,momentum=ρ+q:bits=n")
        if body not in (["sketch", "q"], ["sketch", "fixed"]):
            return False, ("sketch: use [ef+]sketch:...+q:bits=n or [ef+]sketch:...+fixed:... (the sketch "
                           "of the whole update right before the quantiser, without randk or rht)")
        sk, fx = stages[-2], stages[-1]
        topk = f", the server keeps the top {sk.k} of the summed sketch's estimates" if sk.k else ""
        what = (f"{fx.bits}-bit stochastic codes on a range [-R, R] shared per round (q with a shared scale)"
                if fx.name == "q" else f"{fx.bits}-bit codes on the shared range [{fx.lo:g}, {fx.hi:g}]")
        note = ("" if fx.name == "q" or fx.rounding == "stochastic" else
                f"; rounding={fx.rounding} is biased and the bias adds up over clients: prefer stochastic")
        size = f"{sk.rows}x{sk.cols or f'(ratio={sk.ratio:g})'}"
        if names[0] == "ef":
            return True, (f"{what} of a {size} count sketch with hashes fixed for the run, and server-side error "
                          f"feedback (FetchSGD): the server adds the mean sketch to an error sketch it keeps, "
                          f"applies its unsketched top {sk.k or 'all'} and subtracts their sketch; the clients "
                          f"keep no residual{note}")
        return True, (f"{what} of a {size} count sketch with hashes "
                      f"shared per round (sketch: linear, the server unsketches the sum{topk}){note}")
    # A rotation shared by the round is linear: the sum of rotated updates is the rotated sum.
    rot = ", rotated by a rotation shared per round (rht)" if "rht" in body else ""
    pos = ", positions shared per round (randk)" if "randk" in body else ""
    core = [n for n in body if n != "rht"]
    if "rht" in body and (body.count("rht") > 1 or len(body) < 2 or body[-2] != "rht"):
        return False, "rht: put it right before the final fixed/q stage ([ef+][randk+]rht+q:...)"
    if core in (["q"], ["randk", "q"]):
        q = stages[-1]
        return True, (f"{q.bits}-bit stochastic codes on a range [-R, R] shared per round "
                      f"(q with a shared scale){pos}{rot}")
    if core not in (["fixed"], ["randk", "fixed"]):
        if core == ["randk"]:
            return False, "randk alone sends floats; follow it with fixed:lo=-R,hi=R"
        return False, "expected [ef+][randk:...+]fixed:... (one fixed stage, last)"
    fx = stages[-1]
    note = (
        ""
        if fx.rounding == "stochastic"
        else (
            f"; rounding={fx.rounding} is biased and the bias adds up over clients: "
            "prefer stochastic"
        )
    )
    return True, f"{fx.bits}-bit codes on the shared range [{fx.lo:g}, {fx.hi:g}]{pos}{rot}{note}"


def _flat(v) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    return np.asarray(v, np.float64).ravel()


def _shape(v) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, tuple | list) else tuple(v.shape)


@functools.lru_cache(maxsize=4)
def _shared_rotation(round_seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The round's permutation and random signs for n values: the same for every client of the
    round and for the server, so drawn once per round here rather than once per upload."""
    rng = np.random.default_rng([round_seed & 0xFFFFFFFFFFFFFFFF, 0x0A7])
    perm = rng.permutation(n)
    signs = np.frombuffer(rng.bytes((n + 7) // 8), np.uint8)
    perm.flags.writeable = False
    return perm, signs


class SharedRangeCodec:
    """Maps a float update dict to shared-range integer codes and a sum of codes back to floats.

    ``spec`` must pass :func:`secagg_compatible`. Per round, every client uses the same
    ``round_seed`` (randk positions, rht's rotation, the sketch's hashes) and its own
    ``client_seed`` (stochastic rounding: independent rounding noise per client, so the errors
    average out in the mean). With ``ef`` the state returned by :meth:`encode` carries the client's
    residual to its next round.

    >>> c = SharedRangeCodec("randk:ratio=0.5+fixed:bits=4,lo=-1,hi=1,rounding=stochastic")
    >>> c.vector_len({"a": (10,), "b": (3, 2)}), c.bits
    (8, 4)

    **Count sketch** (``[ef+]sketch:cols=C[,rows=R,k=K]+q|fixed``, FetchSGD, Rothchild et al. 2020).
    Each client sends the codes of one R×C count sketch of its *whole* update (the tensors
    concatenated in dict order, as FetchSGD sketches the flattened gradient; ``ratio=r`` means
    C = ⌈r·d⌉ of the d values, ``k`` the top k of the whole model), hashed with tables drawn from
    ``round_seed``, so :meth:`vector_len` is R·C whatever the model's size (d when d ≤ R·C: the
    values then travel as they are, as in the ``sketch`` stage). The sketch is linear, so the
    server's Σ codes is the quantised sketch of Σ updates, and :meth:`decode_sum` unsketches it
    (median over rows, top-k with ``k``): the heavy coordinates of the *sum* come back, which
    top-k, whose positions differ per client, cannot give under secure aggregation.

    - ``ef``: FetchSGD's *server-side* error feedback (Rothchild et al. 2020, Algorithm 1, without
      its momentum), :attr:`server_ef`. The clients keep no residual: they send the sketch of their
      update as without ``ef``. The server keeps an error sketch S_e (run state) and every round
      adds the mean sketch to it, S_e ← S_e + Σ S_i / n, applies Δ = top-k(unsketch(S_e)) and
      zeroes the buckets of Δ's coordinates in S_e (:meth:`accumulate`; FetchSGD's code does the
      same, the paper's S_e − S(Δ) diverges), so what top-k did not reach is carried to the next
      round. The error sketch adds sketches of different rounds, so the hashes
      must be the same every round: they come from a seed fixed for the run (``sketch_seed``)
      instead of the round's. That costs secure aggregation nothing (its masks and keys stay per
      round); it only means a coordinate collides with the same others all run long, as in
      FetchSGD. A client-side residual (kept x − what its sketch alone would decode to, before)
      diverged: each client fed back collision noise and a top-k the server never applied (digits,
      3 seeds: 0.15 final accuracy against 0.84 without ``ef``). Server-side, on the same runs
      (``benchmarks/sketch_secagg.py``): 0.79 ± 0.06 against 0.84 ± 0.02 without ``ef`` at 240
      codes (3×80, k=240: no gain), 0.90 ± 0.01 against 0.89 ± 0.02 at 900 codes (3×300, k=480).
      Momentum in sketch space (FetchSGD's ρ) is not implemented; the server strategy's momentum
      acts on Δ instead.
    - Under DP (central or distributed) the noise is in the summed sketch before it reaches the
      error sketch; accumulating, unsketching and zeroing are post-processing of the noisy mean.
    - DP: ``clip`` bounds the L2 norm of the sketch itself, the quantity that is quantised and
      summed, so the sensitivities (:func:`~fedpress.privacy.dp.secagg_sensitivity` with
      dim = R·C, :class:`~fedpress.privacy.ddp.DistributedNoise`) hold in sketch space. Clipping x
      would not do: ‖sketch(x)‖₂ is about √R·‖x‖₂ on average and can be larger still (coordinates
      of one sign sharing a bucket). Central DP noise is added in code space (here: the sketch),
      before :meth:`from_code_space`, for every shared-range codec: unsketching, like randk's n/k
      rescaling, is post-processing, while noise added after it would be calibrated to the wrong
      sensitivity.
    """

    def __init__(self, spec: str):
        ok, why = secagg_compatible(spec)
        if not ok:
            raise ValueError(f"codec spec {spec!r} cannot be used with secure aggregation: {why}")
        stages = parse_spec(spec)
        self.spec = spec
        #: The count-sketch stage (``sketch``: rows, cols or ratio, k, est), or None.
        self.sketch = next((s for s in stages if s.name == "sketch"), None)
        #: ``ef+sketch``: FetchSGD's server-side error feedback (:meth:`accumulate`), no client residual.
        self.server_ef = stages[0].name == "ef" and self.sketch is not None
        #: Client-side error feedback: the residual in :meth:`encode`'s state.
        self.ef = stages[0].name == "ef" and not self.server_ef
        rk = next((s for s in stages if s.name == "randk"), None)
        self.ratio = rk.ratio if rk is not None else None
        rh = next((s for s in stages if s.name == "rht"), None)
        #: Chunk length of the round's shared rotation (``rht``), or None.
        self.rht_block = rh.block if rh is not None else None
        self.rescale = bool(rk is not None and rk.__dict__["unbiased"])
        fx = stages[-1]
        #: True for ``q`` with a shared scale: the range is agreed per round with set_range().
        self.shared_scale = fx.name == "q"
        if self.shared_scale:
            self.bits, self.lo, self.hi, self.rounding = fx.bits, -1.0, 1.0, "stochastic"
        else:
            self.bits, self.lo, self.hi, self.rounding = (
                fx.bits,
                float(fx.lo),
                float(fx.hi),
                fx.rounding,
            )
        self.scale = (self.hi - self.lo) / float(1 << self.bits)

    def set_range(self, r: float) -> None:
        """Agree this round's range [−r, r] (``q`` with a shared scale); encode and decode of one
        round must use the same r. Clipping to an L2 norm C makes r = C lossless."""
        if not self.shared_scale:
            raise ValueError(f"{self.spec!r} has a fixed range; set_range is for q with a shared scale")
        if not r > 0 or not np.isfinite(r):
            raise ValueError(f"range must be a positive finite number, got {r!r}")
        self.lo, self.hi = -float(r), float(r)
        self.scale = (self.hi - self.lo) / float(1 << self.bits)

    def dp_range(self, clip: float, dim: int) -> float:
        """The shared range under DP with clip C for ``dim`` codes a client: C (nothing is ever
        clamped), or with ``rht`` min(C, 4·C/√dim). The rotation spreads a norm-C vector into
        near-Gaussian coordinates of standard deviation ≤ C/√dim, so the range, and with it the
        step and the rounding term √dim·step of the sensitivity, shrinks √dim/4-fold; a
        coordinate beyond 4 standard deviations (rare) is clamped, which only shrinks the norm."""
        r = float(clip)
        if self.rht_block is not None and dim > 0:
            r = min(r, RHT_RANGE_SIGMAS * r / np.sqrt(dim))
        return r

    def peak(self, values: dict[str, Any]) -> float:
        """The largest |coordinate| of ``values`` as this codec quantises it: rotated with ``rht``
        (by a fixed rotation: any one gives the same spread), as is otherwise."""
        flat = [_flat(v) for v in values.values()]
        vec = np.concatenate(flat) if flat else np.zeros(0)
        if self.rht_block is not None:
            vec = self._rotate(vec, 0, forward=True)
        if self.sketch is not None:
            vec = self._sketch(vec, 0)  # any round's hashes: the buckets' spread is the same
        return float(np.abs(vec).max(initial=0.0))

    # -- count sketch (shared hashes per round)
    def _sketch_len(self, d: int) -> int:
        sk = self.sketch
        return sk.rows * sk.columns(d) if sk.sketched(d) else d

    def _tables(self, round_seed: int) -> np.ndarray:
        from fedpress.codecs.sketch import hash_tables

        rng = np.random.default_rng([int(round_seed) & 0xFFFFFFFFFFFFFFFF, 0x5C7])
        return hash_tables(rng, self.sketch.rows)

    def _sketch(self, vec: np.ndarray, round_seed: int) -> np.ndarray:
        """The round's sketch of the whole update, flat (R·C values, float64), or the values
        themselves when d ≤ R·C."""
        from fedpress.codecs.sketch import sketch_of

        d = vec.size
        if not self.sketch.sketched(d):
            return np.array(vec, np.float64)
        return sketch_of(vec, self._tables(round_seed), self.sketch.columns(d)).reshape(-1)

    def _unsketch(self, vals: np.ndarray, d: int, round_seed: int) -> np.ndarray:
        """The d estimates from a (summed) flat sketch, top-k'd with ``k`` (float64)."""
        from fedpress.codecs.sketch import keep_top, unsketch

        sk = self.sketch
        vals = np.array(vals, np.float64)
        if not sk.sketched(d):
            return keep_top(vals, sk.k)
        return unsketch(vals.reshape(sk.rows, -1), d, self._tables(round_seed), sk.est, sk.k)

    def _rotate(self, vec: np.ndarray, round_seed: int, *, forward: bool) -> np.ndarray:
        """The round's shared rotation of the concatenated kept values (or its inverse): a seeded
        permutation, which spreads every tensor over all chunks (a layer whose coordinates are
        larger than the rest would otherwise keep them within its own chunks), then ``rht``'s
        random signs and chunked Hadamard transform. Computed in float32 as ``rht`` is."""
        from fedpress.codecs.rotate import rotate

        n = vec.size
        perm, signs = _shared_rotation(int(round_seed), n)
        if forward:
            return rotate(vec.astype(np.float32)[perm], signs, self.rht_block, True).astype(np.float64)
        out = np.empty(n, np.float64)
        out[perm] = rotate(vec.astype(np.float32), signs, self.rht_block, False)
        return out

    def error_bound(self) -> float:
        """Per-coordinate bound on |decoded − value| for a value inside [lo, hi] (before any randk
        rescaling); it also bounds the error of the decoded mean, an average of such errors."""
        return self.scale / 2 if self.rounding == "nearest" else self.scale

    def _positions(self, n: int, t: int, round_seed: int) -> np.ndarray | None:
        if self.ratio is None:
            return None
        k = keep_count(n, self.ratio)
        if k >= n:
            return None
        rng = np.random.default_rng([int(round_seed) & 0xFFFFFFFFFFFFFFFF, t, 0x7E5A])
        return np.sort(rng.choice(n, size=k, replace=False))

    def vector_len(self, template: dict[str, Any]) -> int:
        """Codes per client for updates shaped like ``template`` (tensors, arrays or shapes)."""
        total = 0
        for v in template.values():
            n = int(np.prod(_shape(v), dtype=np.int64))
            total += n if self.ratio is None else keep_count(n, self.ratio)
        return total if self.sketch is None else self._sketch_len(total)

    def encode(
        self,
        update: dict[str, Any],
        *,
        round_seed: int,
        client_seed: int,
        state: dict | None = None,
        clip: float | None = None,
    ) -> tuple[np.ndarray, dict]:
        """Client-side: the update's codes (one flat integer array, tensors in dict order) and the
        codec state for this client's next round (``{"residual": ...}`` with ``ef``).

        ``clip``: scale what is quantised (the update plus the ``ef`` residual; with ``sketch``, its
        sketch) to L2 norm ≤ clip first. Under DP this clip is the one that bounds sensitivity: the
        residual can carry an earlier round's clipped-off mass, so clipping the update alone would
        not bound the codes; what this clip removes stays in the residual.
        """
        residual = (state or {}).get("residual") if self.ef else None
        xs = {}
        for name, v in update.items():
            x = _flat(v)
            if residual is not None and name in residual:
                x = x + residual[name]
            xs[name] = x
        if self.sketch is not None:
            return self._encode_sketch(xs, round_seed, client_seed, clip)
        # The new residual is measured against the unclipped values: what the clip removes is
        # sent in a later round.
        wanted = xs
        if clip is not None:
            norm = float(np.sqrt(sum(float(np.dot(x, x)) for x in xs.values())))
            if norm > clip:
                xs = {k: x * (clip / norm) for k, x in xs.items()}
        picks = [self._positions(x.size, t, round_seed) for t, x in enumerate(xs.values())]
        kept = [x if idx is None else x[idx] for x, idx in zip(xs.values(), picks, strict=True)]
        sizes = [k.size for k in kept]
        if self.rht_block is not None and sum(sizes):
            kept = np.split(self._rotate(np.concatenate(kept), round_seed, forward=True), np.cumsum(sizes)[:-1])
        parts, recs = [], []
        for t, seg in enumerate(kept):
            lev, rec = self._quantise(seg, t, client_seed)
            parts.append(lev)
            recs.append(rec)
        codes = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
        if not self.ef:
            return codes, {}
        if self.rht_block is not None and sum(sizes):
            recs = np.split(self._rotate(np.concatenate(recs), round_seed, forward=False), np.cumsum(sizes)[:-1])
        new_res = {}
        for (name, x), idx, rec in zip(xs.items(), picks, recs, strict=True):
            full = np.zeros_like(x)
            gain = x.size / max(rec.size, 1) if self.rescale else 1.0
            if idx is None:
                full[:] = rec * gain
            else:
                full[idx] = rec * gain
            new_res[name] = wanted[name] - full
        return codes, {"residual": new_res}

    def _quantise(self, seg: np.ndarray, t: int, client_seed: int) -> tuple[np.ndarray, np.ndarray]:
        u = None
        if self.rounding == "stochastic":
            u = np.random.default_rng([int(client_seed) & 0xFFFFFFFFFFFFFFFF, t, 0x5EC]).random(seg.size)
        return fixed_quantize(seg, self.bits, self.lo, self.hi, self.rounding, u)

    def _encode_sketch(self, xs: dict, round_seed: int, client_seed: int, clip: float | None):
        vec = np.concatenate(list(xs.values())) if xs else np.zeros(0)
        s = self._sketch(vec, round_seed)
        if clip is not None:
            # The clip bounds what is quantised and summed: the sketch (see the class doc).
            norm = float(np.sqrt(np.dot(s, s)))
            if norm > clip:
                s = s * (clip / norm)
        codes, _ = self._quantise(s, 0, client_seed)
        return codes, {}  # no client residual: with ef the server keeps the error (accumulate)

    def code_space_sum(self, sum_codes: np.ndarray, n_clients: int, template: dict[str, Any]) -> np.ndarray:
        """Server-side: Σ values = Σ codes · scale + n_clients · lo, as they were quantised (kept
        positions, rotated, or the sketch), float64. :meth:`from_code_space` maps it to tensors."""
        s = np.asarray(sum_codes)
        if s.shape != (self.vector_len(template),):
            raise ValueError(
                f"expected {self.vector_len(template)} summed codes, got shape {s.shape}"
            )
        return s.astype(np.float64) * self.scale + n_clients * self.lo

    def decode_sum(
        self, sum_codes: np.ndarray, n_clients: int, template: dict[str, Any], *, round_seed: int
    ) -> dict:
        """Server-side: Σ values = Σ codes · scale + n_clients · lo on the kept positions (zero
        elsewhere; × n/k with ``randk:unbiased=1``; unsketched with ``sketch``), as float32 torch
        tensors shaped like ``template``."""
        return self.from_code_space(self.code_space_sum(sum_codes, n_clients, template), template,
                                    round_seed=round_seed)

    def from_code_space(self, every: np.ndarray, template: dict[str, Any], *, round_seed: int) -> dict:
        """Summed values in code space (:meth:`code_space_sum`, possibly with DP noise added there)
        back to float32 torch tensors shaped like ``template``: rht's inverse rotation, the sketch's
        unsketching, randk's scatter (× n/k with ``unbiased=1``)."""
        import torch

        every = np.array(every, np.float64)  # a copy: randk's rescaling below works in place
        if every.shape != (self.vector_len(template),):
            raise ValueError(f"expected {self.vector_len(template)} values, got shape {every.shape}")
        if self.sketch is not None:
            d = sum(int(np.prod(_shape(v), dtype=np.int64)) for v in template.values())
            every = self._unsketch(every, d, round_seed)
        if self.rht_block is not None and every.size:
            every = self._rotate(every, round_seed, forward=False)  # linear: the sum's inverse
        out, pos = {}, 0
        for t, (name, v) in enumerate(template.items()):
            shape = _shape(v)
            n = int(np.prod(shape, dtype=np.int64))
            idx = self._positions(n, t, round_seed)
            m = n if idx is None else idx.size
            vals = every[pos : pos + m]
            pos += m
            if self.rescale and m:
                vals *= n / m
            full = vals if idx is None else np.zeros(n, np.float64)
            if idx is not None:
                full[idx] = vals
            out[name] = torch.from_numpy(full.reshape(shape).astype(np.float32))
        return out

    def accumulate(self, mean: np.ndarray, error: np.ndarray | None, template: dict[str, Any], *,
                   sketch_seed: int, velocity: np.ndarray | None = None) -> tuple[dict, np.ndarray, np.ndarray | None]:
        """Server-side error feedback of ``ef+sketch`` (FetchSGD, Algorithm 1, with the reference
        implementation's error reset).

        ``mean``: this round's mean in code space (:meth:`code_space_sum` / n, with any DP noise
        already in it); ``error``: the error sketch S_e kept from the last round (None at first);
        ``velocity``: the momentum sketch S_u (None at first; only with ``sketch:...,momentum=ρ``).
        S_u ← ρ·S_u + mean (without momentum S_u = mean); S_e ← S_e + S_u;
        Δ = top-k(unsketch(S_e)) (hashes from the run's ``sketch_seed``), as float32, the step
        applied; then every bucket that a coordinate of Δ hashes to is zeroed in S_e and S_u
        (:meth:`applied_buckets`), in every row, as FetchSGD's code zeroes both. Returns (Δ as float32
        tensors shaped like ``template``, the new S_e, the new S_u or None, float64). Everything
        here is post-processing of ``mean``.

        The paper writes the last step S_e ← S_e − S(Δ), which keeps the error exact; FetchSGD's own
        code zeroes the buckets instead, noting that the subtraction diverges, and so it did here
        (digits and the toy task of the tests): when several kept coordinates share a bucket, each
        carries the bucket's whole value, so S(Δ) takes that value out several times over and flips
        the bucket's sign, and Δ drifts in directions the sketch cannot see. Zeroing never grows a
        bucket; the price is that the other coordinates' mass in a zeroed bucket is dropped, not
        fed back. With d ≤ R·C (values sent as they are) zeroing is exactly subtracting Δ.
        """
        if not self.server_ef:
            raise ValueError(f"{self.spec!r} has no server-side error feedback (it needs ef+sketch)")
        n = self.vector_len(template)
        mean = np.asarray(mean, np.float64)
        if mean.shape != (n,):
            raise ValueError(f"expected {n} values, got shape {mean.shape}")
        rho = self.sketch.momentum
        vel = None
        if rho:
            vel = mean.copy() if velocity is None else rho * np.asarray(velocity, np.float64) + mean
            if vel.shape != (n,):
                raise ValueError(f"momentum sketch of shape {vel.shape}, expected ({n},): another codec or model?")
        step = mean if vel is None else vel
        err = step.copy() if error is None else np.asarray(error, np.float64) + step
        if err.shape != (n,):
            raise ValueError(f"error sketch of shape {err.shape}, expected ({n},): another codec or model?")
        d = sum(int(np.prod(_shape(v), dtype=np.int64)) for v in template.values())
        delta = self._unsketch(err, d, sketch_seed).astype(np.float32)
        applied = self.applied_buckets(np.flatnonzero(delta), d, sketch_seed)
        err[applied] = 0.0
        if vel is not None:
            vel[applied] = 0.0
        out, pos = {}, 0
        import torch

        for name, v in template.items():
            shape = _shape(v)
            m = int(np.prod(shape, dtype=np.int64))
            out[name] = torch.from_numpy(delta[pos : pos + m].reshape(shape).copy())
            pos += m
        return out, err, vel

    def applied_buckets(self, idx: np.ndarray, d: int, sketch_seed: int) -> np.ndarray:
        """Flat indices (into the R·C sketch) of the buckets that coordinates ``idx`` of a d-value
        update hash to, in every row (``idx`` itself when d ≤ R·C: the values travel as they are)."""
        from fedpress.codecs.sketch import Hashes

        sk = self.sketch
        idx = np.asarray(idx, np.intp)
        if not sk.sketched(d):
            return idx
        cols = sk.columns(d)
        hs = Hashes(self._tables(sketch_seed), d)
        return np.concatenate([r * cols + hs.row(r, 0, d, cols)[0][idx] for r in range(sk.rows)])

    def decode_mean(
        self, sum_codes: np.ndarray, n_clients: int, template: dict[str, Any], *, round_seed: int
    ) -> dict:
        """:meth:`decode_sum` divided by ``n_clients`` (an unweighted mean: secure aggregation
        sums; a weighted mean needs clients to pre-scale their updates within the range)."""
        if n_clients < 1:
            raise ValueError("n_clients must be >= 1")
        return {
            k: v / n_clients
            for k, v in self.decode_sum(
                sum_codes, n_clients, template, round_seed=round_seed
            ).items()
        }
