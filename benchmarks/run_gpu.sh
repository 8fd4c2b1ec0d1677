#!/usr/bin/env bash
# The GPU measurements and CUDA tests, in one script, for a CUDA machine whose python3 has PyTorch and Triton (no
# install: the package runs from src/). Writes a log, records and plots under $OUT (default /tmp/sepconv-gpu), named
# as the committed records are: copy them to benchmarks/results/gpu-<card>/ (e.g. gpu-h100/). Each step has its own
# time limit, so one that hangs or fails leaves the others' results; in all at most 675 s. SEPCONV_GPU_TESTS= (empty)
# skips the Triton kernel's tests. The per-call `sepconv bench --device cuda --suite mobilenet_v1 --suite-batch 32`
# is not run here (launch-bound like the VGG one; its record: results/gpu-h100/layers-mbv1-fp32-b32/).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 MPLBACKEND=Agg
OUT=${OUT:-/tmp/sepconv-gpu}
mkdir -p "$OUT"
{
    date -u
    git log -1 --format='commit %h %s' 2>/dev/null || true
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv
    python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'triton', triton.__version__)"
    echo "== tests on CUDA"
    timeout 200 python3 -m pytest -q -p no:cacheprovider ${SEPCONV_GPU_TESTS-benchmarks/test_triton_fused.py} \
        tests/test_cuda_graph.py tests/test_cudnn.py \
        tests/test_bench.py::test_bench_on_cuda_records_the_gpu_and_times_training_on_eager \
        tests/test_bench.py::test_bench_device_and_dtype_errors tests/test_compare.py::test_cuda_mixed_precision_run
    echo "== GPU-side time (CUDA graphs): VGG blocks at batch 32 and 256, MobileNetV1 at batch 32"
    timeout 100 python3 benchmarks/bench_gpu_graphs.py --suite vgg_blocks --batch 32 --batch 256 --out "$OUT/graphs-vgg-fp32-b32-b256.json"
    timeout 100 python3 benchmarks/bench_gpu_graphs.py --suite mobilenet_v1 --batch 32 --out "$OUT/graphs-mbv1-fp32-b32.json"
    echo "== does cuDNN compute the taps on zero padding? (CUDA graphs, batch 32)"
    timeout 45 python3 benchmarks/bench_padding.py --device cuda --batch 32 --out "$OUT/padding-fp32-b32"
    echo "== whole networks on CUDA through sepconv.optimize: eager, cuDNN-fused ReLUs, replayed from CUDA graphs"
    timeout 90 python3 benchmarks/bench_networks.py --device cuda --out "$OUT/networks-fp32-b1-b32"
    echo "== whole networks on CUDA: cuDNN's fused convolution + ReLU vs the separate ReLU (graphs)"
    timeout 60 python3 benchmarks/bench_gpu_conv_relu.py --batch 32 --batch 256 --out "$OUT/conv-relu-fp32-b32-b256.json"
    echo "== sepconv bench, per call as users call: VGG blocks at batch 32 (float32/TF32)"
    timeout 80 python3 -m sepconv bench --device cuda --suite vgg_blocks --rounds 5 --out "$OUT/layers-vgg-fp32-b32"
    date -u
} 2>&1 | tee "$OUT/run_gpu-log.txt"
