"""Error feedback (EF-SGD, Seide et al. 2014; Karimireddy et al. 2019).

The residual ``e`` of what compression dropped is added to the next update before compressing:
``y = x + e; send C(y); e' = y - D(C(y))``. It turns biased compressors (top-k, sign, PowerSGD) into
ones that converge like SGD. The residual lives in the codec state, keyed by tensor name, so it
survives rounds a client sits out and codec changes between rounds.
"""

from __future__ import annotations

from fedpress.codecs.base import Stage
from fedpress.codecs.spec import register


@register
class ErrorFeedback(Stage):
    """Marker stage: :class:`fedpress.codecs.Codec` applies the residual around the rest."""

    name = "ef"
    help = "error feedback: keep what compression dropped and add it next round (must be first)"
    role = "wrapper"
    stateful = True


def residual_key(name: str) -> str:
    return f"ef/{name}"
