"""Privacy for compressed federated learning: secure aggregation of shared-range integer codes
(:mod:`~fedpress.privacy.secagg`, :mod:`~fedpress.privacy.codes`) and client-level differential
privacy, central (:mod:`~fedpress.privacy.dp`: the server adds the noise) or distributed
(:mod:`~fedpress.privacy.ddp`: each client adds discrete Gaussian noise inside the secure sum).

Heavy dependencies load lazily: ``import fedpress.privacy`` pulls in neither ``cryptography`` nor
``dp-accounting`` until a name that needs them is used.

>>> from fedpress.privacy import secagg_compatible
>>> secagg_compatible("qsgd:levels=16")[0]
False
"""

from __future__ import annotations

import importlib

_WHERE = {
    "SecAggRound": "secagg",
    "SecAggError": "secagg",
    "SecAggClient": "secagg",
    "SecAggServer": "secagg",
    "modulus_bits": "secagg",
    "SharedRangeCodec": "codes",
    "secagg_compatible": "codes",
    "DPFactory": "dp",
    "Accountant": "dp",
    "clip_update": "dp",
    "noise_for_target": "dp",
    "local_dp": "dp",
    "update_norm": "dp",
    "secagg_sensitivity": "dp",
    "dp_mean_from_sum": "dp",
    "DistributedAccountant": "ddp",
    "DistributedNoise": "ddp",
    "discrete_gaussian": "ddp",
    "ddg_zcdp": "ddp",
    "ddp_noise_for_target": "ddp",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"fedpress.privacy.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'fedpress.privacy' has no attribute {name!r}")
