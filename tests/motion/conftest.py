"""Motion tests run torch on one thread: the CI machine's 2 cores are shared, and oversubscribed intra-op threads
make the small test models 50x slower. The setting is restored after each test: other tests compare frames made in
this process with frames made by worker processes, which use the default thread count, and float sums depend on it."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
