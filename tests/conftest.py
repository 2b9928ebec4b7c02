import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest (and do not fight other jobs) on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
