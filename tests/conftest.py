import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    # Test models are tiny: one thread is as fast as two, and far faster when the machine is busy.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
