"""Fixtures shared by the unit tests."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread for the test, restored after: on a shared, oversubscribed 2-core machine two
    threads measured 10x slower for the small models of the extrapolation tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
