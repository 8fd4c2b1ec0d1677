"""pytest set-up for the tests of benchmark-side code (``benchmarks/test_*.py``)."""

import os
import sys

import torch

# The experimental kernels here are imported as plain modules.
sys.path.insert(0, os.path.dirname(__file__))

# Without a CUDA device, Triton's interpreter runs triton_fused's kernel on CPU tensors (it reads this at
# kernel definition, so before triton_fused is imported); with one, the tests run the compiled kernel.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
