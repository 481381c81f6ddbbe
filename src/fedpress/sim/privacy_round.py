"""The privacy side of :class:`~fedpress.sim.runner.Simulation`: DP settings and state, and one
round of secure aggregation.

Kept apart from the runner so that its round reads as a sequence of steps. Everything here takes
what it needs as arguments and returns what it computes; the run state it reads (the accountant)
is handed in, and what it adds to the run state is returned for the runner to store, so ``st``
stays the one place a checkpoint saves.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PrivacySettings:
    """The DP, sampling and secure-aggregation settings a simulation runs with, once resolved."""

    dropout: float
    dp_clip: float | None
    dp_noise: float | None
    dp_delta: float
    dp_adaptive: bool
    target_epsilon: float | None
    sampling: str  # fixed | poisson
    sample_rate: float  # per_round / clients
    acct_kw: dict  # the accountant's sampling model
    secagg: bool
    secagg_threshold: int | None
    secagg_neighbors: int | None
    sa_codec: Any  # SharedRangeCodec under secure aggregation, else None
    dp_mode: str = "central"  # central (the server adds the noise) | distributed (clients do)


def settle_privacy(*, clients: int, per_round: int, rounds: int, codec_spec: str, policy, aggregate: str,
                   sampling: str | None, clip: float | None, noise: float | None, delta: float,
                   adaptive: bool, target_eps: float | None, secagg: bool, threshold: int | None,
                   neighbors: int | None, dropout: float, dp_mode: str = "central") -> PrivacySettings:
    """Check the privacy arguments (one clear ValueError each) and resolve their defaults."""
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if (noise is not None or target_eps is not None) and clip is None:
        raise ValueError("differential privacy needs dp_clip (the L2 clip C)")
    if dp_mode not in ("central", "distributed"):
        raise ValueError(f"dp_mode must be 'central' or 'distributed', got {dp_mode!r}")
    if dp_mode == "distributed":
        if clip is None or not secagg:
            raise ValueError("dp_mode='distributed' needs dp_clip and secure aggregation (the clients' "
                             "noise only protects inside a masked sum)")
        if adaptive:
            raise ValueError("adaptive clipping is not implemented for distributed DP")
        if noise is None and target_eps is not None:
            from fedpress.privacy.ddp import ddp_noise_for_target

            noise = ddp_noise_for_target(target_eps, float(delta), rounds)
    sample_rate = per_round / clients
    # Under DP the default is Poisson sampling (each client joins with probability
    # per_round/clients), the assumption of DP-FedAvg's accountant; "fixed" draws exactly
    # per_round clients and is accounted as sampling without replacement (replace-one).
    # Distributed DP is accounted without amplification by sampling (the server sees who takes
    # part), so it gains nothing from Poisson sampling's varying round sizes: fixed by default.
    sampling = sampling or ("poisson" if clip is not None and dp_mode == "central" else "fixed")
    if sampling not in ("fixed", "poisson"):
        raise ValueError(f"sampling must be 'fixed' or 'poisson', got {sampling!r}")
    acct_kw = {"sampling": sampling, "population": clients}
    if clip is not None and noise is None:
        if target_eps is not None:
            from fedpress.privacy.dp import noise_for_target

            noise = noise_for_target(target_eps, float(delta), sample_rate, rounds, **acct_kw)
        else:
            noise = 0.0
    if aggregate != "mean" and (clip is not None or secagg):
        # DP's noise is calibrated to a mean of clipped updates, and secure aggregation reveals
        # only the sum: no other rule is defined on top of either.
        raise ValueError(f"aggregate={aggregate!r} works neither with DP nor with secure aggregation")
    sa_codec = None
    if secagg:
        from fedpress.privacy.codes import SharedRangeCodec

        sa_codec = SharedRangeCodec(codec_spec)  # refuses incompatible codecs
        if policy is not None:
            raise ValueError("secure aggregation needs one shared codec: no per-client policy")
    return PrivacySettings(
        dropout=float(dropout), dp_clip=clip, dp_noise=noise, dp_delta=float(delta), dp_adaptive=bool(adaptive),
        target_epsilon=target_eps, sampling=sampling, sample_rate=sample_rate, acct_kw=acct_kw,
        secagg=bool(secagg), secagg_threshold=threshold, secagg_neighbors=neighbors, sa_codec=sa_codec,
        dp_mode=dp_mode)


def privacy_state(*, clip: float | None, noise: float | None, sample_rate: float, delta: float,
                  acct_kw: dict, secagg: bool, adaptive: bool, expected_clients: int, seed: int,
                  dp_mode: str = "central") -> dict:
    """The run state's ``dp`` (the DP aggregator; None under secure aggregation, which adds its
    noise to the sum instead) and ``accountant`` (None without DP)."""
    if clip is None:
        return {"dp": None, "accountant": None}
    if dp_mode == "distributed":
        from fedpress.privacy.ddp import DistributedAccountant

        return {"dp": None, "accountant": DistributedAccountant(delta)}
    from fedpress.privacy.dp import Accountant, DPFactory

    acc = Accountant(noise, sample_rate, delta, **acct_kw)
    if secagg:
        return {"dp": None, "accountant": acc}
    dp = DPFactory(None, clip=clip, noise_multiplier=noise, seed=seed, expected_clients=expected_clients,
                   adaptive=adaptive, accountant=acc)
    return {"dp": dp, "accountant": acc}


class SecureRound:
    """One round of secure aggregation among the clients online this round (two at least: one
    alone would expose its update). Built before training, it gives each client its setup bytes
    and masks its upload; afterwards the server unmasks only the sum of the kept uploads.

    ``codec`` must already carry this round's range (:meth:`SharedRangeCodec.set_range`).

    With ``distributed=(clip, z)`` each client adds discrete Gaussian noise to its codes before
    masking (:mod:`fedpress.privacy.ddp`): sized so that the fewest clients the protocol can unmask
    (its threshold) carry noise z·Δ₂ together, on a modulus sized for the noisy sum.

    With ``ef+sketch`` (:attr:`SharedRangeCodec.server_ef`, FetchSGD's server-side error feedback)
    the sketch's hashes come from ``sketch_seed``, fixed for the run (the error sketch adds sketches
    of different rounds), instead of ``round_seed``; the masks stay per round (``seed``).
    :meth:`aggregate` then takes the error sketch kept from the last round and leaves the new one
    in :attr:`sketch_error` for the runner to store.
    """

    def __init__(self, codec, online: list[int], template: dict[str, tuple], *, threshold: int | None,
                 neighbors: int | None, seed: int, round_seed: int,
                 distributed: tuple[float, float] | None = None, sketch_seed: int | None = None):
        from fedpress.privacy.secagg import SecAggRound

        if getattr(codec, "server_ef", False):
            if sketch_seed is None:
                raise ValueError("ef+sketch under secure aggregation needs a sketch_seed fixed for the run")
            round_seed = sketch_seed  # the codec's only use of the round seed is the sketch's hashes
        #: The error sketch after :meth:`aggregate` (``ef+sketch``), else None.
        self.sketch_error = None
        #: The momentum sketch after :meth:`aggregate` (``ef+sketch:...,momentum=ρ``), else None.
        self.sketch_velocity = None

        n_on = len(online)
        holders = n_on if neighbors is None else min(n_on, neighbors + 1)
        thr = min(threshold or (holders // 2 + 1), holders)
        self.codec, self.online, self.template, self.round_seed = codec, list(online), template, round_seed
        dim = codec.vector_len(template)
        self.noise = None
        bits, k = codec.bits, None
        if distributed is not None:
            from fedpress.privacy.ddp import DistributedNoise

            # Unmasking needs at least thr survivors, so every unmasked sum holds thr clients' noise.
            self.noise = DistributedNoise(clip=distributed[0], noise_multiplier=distributed[1], min_clients=thr,
                                          scale=codec.scale, lo=codec.lo, dim=dim, bits=codec.bits, n=n_on)
            bits = k = self.noise.width
        self.sa = SecAggRound(online, threshold=thr, bits=bits, vector_len=dim, seed=seed, neighbors=neighbors,
                              k=k)
        self.setup = self.sa.setup_bytes()  # client -> (setup bytes up, setup bytes down)

    def upload(self, client: int, update: dict, *, encode_seed: int, state,
               clip: float | None = None) -> tuple[bytes, Any]:
        """The client's masked codes (noisy under distributed DP), and its codec state for next
        time. ``clip``: the DP clip, applied to what is quantised (update + EF residual)."""
        codes, state = self.codec.encode(update, round_seed=self.round_seed, client_seed=encode_seed,
                                         state=state, clip=clip)
        if self.noise is not None:
            codes = self.noise.noisy(codes, np.random.default_rng([encode_seed & 0xFFFFFFFFFFFFFFFF, 0xDD9]))
        return self.sa.mask(client, codes), state

    def aggregate(self, received: dict[int, bytes], rnd: int, *, accountant, clip: float | None,
                  noise: float | None, denominator: int, dp_seed: int, sketch_error: np.ndarray | None = None,
                  sketch_velocity: np.ndarray | None = None):
        """The mean of the ``received`` uploads (clients of :attr:`online` missing from it dropped),
        with DP noise added to the sum when ``clip`` is set.

        With ``ef+sketch`` the "mean" is FetchSGD's step instead: the mean sketch (noisy under DP,
        central or distributed: the noise is in it before anything else) is added to
        ``sketch_error`` and the top-k of the result applied (:meth:`SharedRangeCodec.accumulate`),
        post-processing of the noisy mean; the new error sketch is left in :attr:`sketch_error`
        (unchanged when unmasking fails).

        Returns (mean or None when unmasking failed, the row's privacy fields, (unmasking bytes up,
        unmasking bytes down), overhead bytes of this round). ``accountant`` steps once under DP.
        """
        from fedpress.privacy.masking import SecAggError

        self.sketch_error = sketch_error
        self.sketch_velocity = sketch_velocity
        dropped = set(self.online) - set(received)
        priv: dict[str, Any] = {}
        try:
            total, meas = self.sa.unmask_sum(received, dropped)
        except SecAggError as e:
            warnings.warn(f"round {rnd + 1}: secure aggregation failed ({e}); round skipped", stacklevel=3)
            return None, {"secagg_failed": True}, (0, 0), 0
        # Setup bytes and the masked payloads are already in each client's counts; add the unmasking
        # phase (survivors' shares up, the server's requests down).
        extra = (int(meas["secagg_unmask_uplink_bytes"]), int(meas["secagg_unmask_downlink_bytes"]))
        over = int(meas.get("secagg_overhead_bytes", 0))
        priv["secagg_overhead_bytes"] = over
        priv["secagg_modulus_bits"] = int(meas["secagg_modulus_bits"])
        codec, template, n = self.codec, self.template, len(received)
        dn = self.noise
        # Everything is done in code space (the summed values as quantised: kept positions, rotated,
        # or the sketch), where the sensitivity holds; DP noise goes there, and mapping back to the
        # model (scatter and randk's n/k rescaling, the inverse rotation, unsketching, FetchSGD's
        # step) is post-processing. (Noise added after the n/k rescaling was calibrated to a
        # sensitivity n/k times too small.)
        vec = codec.code_space_sum(total if dn is None else dn.centred_sum(total, n), n, template)
        if dn is not None:
            # Distributed DP: the clients' noise is already in the sum; divide by the (public)
            # number of uploads.
            vec = vec / n
            accountant.step(dn.zcdp())
            priv.update(dp_mode="distributed", dp_epsilon=accountant.epsilon(), dp_min_clients=dn.min_clients,
                        dp_local_sigma_codes=dn.sigma, dp_sensitivity=dn.l2 * codec.scale,
                        dp_noise_std=dn.sigma * n ** 0.5 * codec.scale,
                        dp_noise_std_mean=dn.sigma * n ** 0.5 * codec.scale / n,
                        dp_noise_multiplier=dn.noise_multiplier, ddp_dim=dn.dim)
        elif clip is not None:
            import torch

            from fedpress.privacy.dp import dp_mean_from_sum, secagg_sensitivity

            sens = secagg_sensitivity(clip, codec.error_bound(), codec.vector_len(template))
            m, dpm = dp_mean_from_sum({"codes": torch.from_numpy(vec)}, sensitivity=sens, noise_multiplier=noise,
                                      denominator=denominator, seed=dp_seed, round=rnd + 1)
            vec = m["codes"].double().numpy()
            accountant.step()
            priv.update(dpm)
            priv["dp_epsilon"] = accountant.epsilon()
        else:
            vec = vec / n
        if codec.server_ef:
            mean = self._step(vec)
        else:
            mean = codec.from_code_space(vec, template, round_seed=self.round_seed)
        return mean, priv, extra, over

    def _step(self, mean_codes: np.ndarray) -> dict:
        """FetchSGD's server step from the round's mean sketch; keeps the new error sketch."""
        delta, self.sketch_error, self.sketch_velocity = self.codec.accumulate(
            mean_codes, self.sketch_error, self.template, sketch_seed=self.round_seed,
            velocity=self.sketch_velocity)
        return delta


def next_shared_range(codec, mean: dict | None, *, clip: float | None, current: float) -> float:
    """The range of next round's shared scale (q under secure aggregation): 4x the largest
    coordinate of this round's aggregate (as quantised: rotated with ``rht``); under DP it is set
    from the clip instead (:meth:`~fedpress.privacy.codes.SharedRangeCodec.dp_range`)."""
    if codec.shared_scale and mean and not clip:
        peak = codec.peak(mean)
        if peak > 0:
            return 4.0 * peak
    return current
