"""What a recorded measurement must say about the machine it ran on: CPU, vector ISA, threads, load, GPU."""

from __future__ import annotations

import functools
import os
import platform

import torch

from .memory import freed_memory_kept


@functools.lru_cache(maxsize=None)
def cpu_fields() -> dict[str, str]:
    """The first processor's ``key: value`` fields from ``/proc/cpuinfo`` (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


#: Environment variables that cap the vector ISA of the libraries a benchmark runs (PyTorch's own kernels, oneDNN,
#: oneMKL, sepconv's C kernels): set together they run the AVX2 code paths on an AVX-512 host
#: (``benchmarks/README.md``), and a record made so must say it.
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "SEPCONV_ISA")


def machine_info(device: torch.device | str | None = None) -> dict:
    """What a recorded benchmark must say about where it ran.

    ``isa_caps`` names the variables of :data:`ISA_CAPS` that are set, with
    their values (empty: every library runs the CPU's widest ISA). Where CUDA
    is available it adds the GPU (``device``'s, else the current one), the
    CUDA and cuDNN versions and whether cuDNN may use TF32.
    """
    fields = cpu_fields()
    cpu = fields.get("model name", platform.processor() or "")
    flags = set(fields.get("flags", "").split())
    info = {
        "cpu": cpu,
        # the marketing name can hide the generation ("AMD EPYC"): family/model and the vector ISA tell them apart
        "cpu_family_model": f"{fields['cpu family']}/{fields['model']}" if "cpu family" in fields and "model" in fields else None,
        "cpu_isa": torch.backends.cpu.get_cpu_capability(),
        "avx512": ("avx512f" in flags) if flags else None,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "freed_memory_kept": freed_memory_kept(),  # sepconv.keep_freed_memory (glibc malloc settings)
        "isa_caps": {name: os.environ[name] for name in ISA_CAPS if os.environ.get(name)},
    }
    if torch.cuda.is_available():
        cuda = device is not None and torch.device(device).type == "cuda"
        info.update(gpu=torch.cuda.get_device_name(device if cuda else None), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), tf32=bool(torch.backends.cudnn.allow_tf32))
    return info
