"""Motion tests run torch on one thread: the CI machine's 2 cores are shared, and oversubscribed intra-op threads
make the small test models 50x slower."""

import torch

torch.set_num_threads(1)
