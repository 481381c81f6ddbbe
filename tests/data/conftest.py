import pytest
import torch


@pytest.fixture
def one_thread():
    # Tiny models run fastest on one thread; with the 2 shared cores busy, torch's default
    # intra-op pool spin-waits and a sub-second loop can take tens of seconds.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
