import os
import sys

import torch

# Tests import the NumPy reference in tests/reference.py as a plain module.
sys.path.insert(0, os.path.dirname(__file__))

# Two cores: with pytest-xdist each worker gets one thread, so workers don't fight.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
