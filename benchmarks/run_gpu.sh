#!/usr/bin/env bash
# The GPU measurements of issue 6, for a lent CUDA machine whose python3 has PyTorch and Triton (no install: the
# package runs from src/). Writes a log, the bench records and plots under $OUT (default /tmp/sepconv-gpu).
# Each step has its own time limit, so one that hangs or fails leaves the others' results.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 MPLBACKEND=Agg
OUT=${OUT:-/tmp/sepconv-gpu}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv
    python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'triton', triton.__version__)"
    echo "== tests on CUDA"
    timeout 150 python3 -m pytest -q -p no:cacheprovider ${SEPCONV_GPU_TESTS-tests/test_fused_triton.py} \
        tests/test_bench.py::test_bench_on_cuda_times_the_triton_kernel_as_the_fused_engine \
        tests/test_bench.py::test_bench_device_and_dtype_errors tests/test_compare.py::test_cuda_mixed_precision_run
    echo "== bench float32 (TF32 as PyTorch's convolutions default to), the suites at their batch sizes"
    timeout 150 python3 -m sepconv bench --device cuda --rounds 5 --out "$OUT/fp32"
    echo "== bench bfloat16, the suites at their batch sizes"
    timeout 120 python3 -m sepconv bench --device cuda --dtype bfloat16 --rounds 5 --out "$OUT/bf16"
    echo "== bench float32, MobileNetV1 at batch 32"
    timeout 100 python3 -m sepconv bench --device cuda --suite mobilenet_v1 --suite-batch 32 --rounds 5 --out "$OUT/mbv1b32"
    date -u
} 2>&1 | tee "$LOG"
