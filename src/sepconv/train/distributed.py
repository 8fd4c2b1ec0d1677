"""Distributed data parallel helpers: the same training code on one process or under ``torchrun``.

``torchrun --nproc-per-node N -m sepconv compare ...`` sets ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_from_env`
then starts a ``torch.distributed`` process group (``gloo`` on CPU, ``nccl``
on CUDA) and :func:`sepconv.train.fit` wraps the model in
``DistributedDataParallel``, gives each rank an equal shard of every epoch's
shuffled order and all-reduces the metrics. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is running with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0, the process that writes results, checkpoints and progress bars."""
    return rank() == 0


def init_from_env(device: torch.device) -> bool:
    """Start a process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); return whether one runs.

    The backend is ``nccl`` for CUDA devices and ``gloo`` otherwise. Under
    CUDA each process uses the GPU ``LOCAL_RANK``.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed support")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return True


def all_reduce_sum(values: list[float], device: Optional[torch.device] = None) -> list[float]:
    """Sum a list of floats over all ranks (identity when not distributed)."""
    if not is_distributed():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device or "cpu")
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def weights_agree(model: torch.nn.Module) -> bool:
    """Whether every rank holds the same parameters and buffers (True when not distributed).

    Compares, across ranks, a float64 fingerprint of every tensor in the
    state dict (its sum and its sum of squares); DDP keeps replicas
    bit-identical, so any difference means the replicas drifted apart.
    """
    if not is_distributed():
        return True
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    stats = []
    for tensor in model.state_dict().values():
        t = tensor.detach().to(torch.float64)
        stats += [t.sum(), (t * t).sum()]
    local = torch.stack(stats).to(device) if stats else torch.zeros(1, dtype=torch.float64, device=device)
    gathered = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(gathered, local)
    return all(torch.equal(g, gathered[0]) for g in gathered[1:])
