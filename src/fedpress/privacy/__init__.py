"""Privacy for compressed federated learning: secure aggregation of shared-range integer codes
(:mod:`~fedpress.privacy.secagg`, :mod:`~fedpress.privacy.codes`) and client-level differential
privacy (:mod:`~fedpress.privacy.dp`).

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
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"fedpress.privacy.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'fedpress.privacy' has no attribute {name!r}")
