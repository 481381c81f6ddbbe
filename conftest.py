"""Test-wide settings."""

import os

# Tiny models train many times faster on one intra-op thread when the 2 cores are busy.
os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass
