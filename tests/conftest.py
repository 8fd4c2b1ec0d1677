import os
import sys

import torch

# Tests import the NumPy reference in tests/reference.py as a plain module.
sys.path.insert(0, os.path.dirname(__file__))

# Without a CUDA device, Triton's interpreter runs sepconv.fused_triton's kernel on CPU tensors (it reads this at
# kernel definition, so before sepconv.fused_triton is imported); with one, the tests run the compiled kernel.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Two cores: with pytest-xdist each worker gets one thread, so workers don't fight.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
