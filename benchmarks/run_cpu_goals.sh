#!/usr/bin/env bash
# The CPU speed goals' measurements on this machine, in one script: bench_isa.py (the forward pass per suite shape
# against the roofline ceiling and ONNX Runtime alone) and bench_fused_training.py (the training step against its
# GEMM ceiling) with each thread count of $THREADS, then speed_goals.py on the records. The records are named as the
# committed ones, with this machine's name (speed_goals.py --machine-name: zen3-avx2, zen4-avx512, ...) and the
# suffix $SUFFIX: copy them from $OUT to benchmarks/results/ to keep them. CAPS=1 on an AVX-512 machine adds the
# same runs with every library capped at AVX2 (benchmarks/README.md; named <core>-avx2cap).
#
#     OUT=/tmp/sepconv-cpu-goals THREADS="1 2" PASSES=3 SUFFIX=goals bash benchmarks/run_cpu_goals.sh
#
# Run it on an otherwise idle machine, in the environment the README's Quick start makes (with the experiments
# extra: ONNX Runtime). Each run has its own time limit, so one that hangs or fails leaves the others' records.
# One thread and two, three passes each: about ten minutes on a 2-core AMD EPYC; CAPS=1 doubles that.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${OUT:-/tmp/sepconv-cpu-goals}
THREADS=${THREADS:-1 2}
PASSES=${PASSES:-3}
SUFFIX=${SUFFIX:-goals}
LIMIT=${LIMIT:-900}  # seconds per benchmark run
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
mkdir -p "$OUT"

measure() {  # $1: the machine name the records take; the caller's environment sets any caps
    local name=$1 threads
    for threads in $THREADS; do
        echo "== forward, $name, $threads thread(s)"
        timeout "$LIMIT" "$PYTHON" benchmarks/bench_isa.py --threads "$threads" --rounds 7 --parts --keep-freed-memory \
            --shuffle --passes "$PASSES" --out "$OUT/isa-$name-${threads}thread-$SUFFIX"
        echo "== training, $name, $threads thread(s)"
        timeout "$LIMIT" "$PYTHON" benchmarks/bench_fused_training.py --threads "$threads" --rounds 21 \
            --passes "$PASSES" --out "$OUT/fused-training-$name-${threads}thread-$SUFFIX"
    done
}

{
    date -u
    git log -1 --format='commit %h %s' 2>/dev/null || true
    NAME=$("$PYTHON" benchmarks/speed_goals.py --machine-name) || exit 1
    echo "machine: $NAME"
    measure "$NAME"
    if [ "${CAPS:-0}" = 1 ]; then
        ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 SEPCONV_ISA=avx2 \
            measure "${NAME%%-*}-avx2cap"
    fi
    echo "== goals"
    shopt -s nullglob  # a run that failed left no record
    records=("$OUT"/isa-*-"$SUFFIX" "$OUT"/fused-training-*-"$SUFFIX")
    "$PYTHON" benchmarks/speed_goals.py "${records[@]}" --out "$OUT/speed_goals.json"
    date -u
} 2>&1 | tee "$OUT/run_cpu_goals-log.txt"
