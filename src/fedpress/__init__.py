"""fedpress: communication-efficient federated learning, with every byte measured.

>>> import fedpress, numpy as np
>>> x = np.random.default_rng(0).normal(size=10_000).astype(np.float32)
>>> blob = fedpress.compress(x, "topk:ratio=0.01+q:bits=8")
>>> len(blob) < 0.02 * x.nbytes
True
>>> fedpress.decompress(blob).shape
(10000,)
"""

from fedpress.codecs import Codec, SpecError, codec, compress, decompress
from fedpress.codecs.anatomy import inspect_blob
from fedpress.wire import Limits, Structure, WireError

__version__ = "0.1.0"

__all__ = [
    "AsyncSimulation",
    "Codec",
    "Simulation",
    "Limits",
    "SpecError",
    "Structure",
    "WireError",
    "__version__",
    "codec",
    "compress",
    "decompress",
    "inspect_blob",
]


def __getattr__(name: str):
    # The simulator pulls in torch; keep `import fedpress` light for codec-only users.
    if name == "Simulation":
        from fedpress.sim.runner import Simulation

        return Simulation
    if name == "AsyncSimulation":
        from fedpress.sim.fedbuff import AsyncSimulation

        return AsyncSimulation
    raise AttributeError(f"module 'fedpress' has no attribute {name!r}")
