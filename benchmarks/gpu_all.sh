#!/usr/bin/env bash
# Every check that needs a GPU, as run for docs/benchmarks.md (about 6 minutes on one H200):
#   1. benchmarks/gpu_kernels.sh: kernel tests under real Triton + MLM head memory/time
#   2. benchmarks/bench_corruption.py --device cuda: corrupt() of the paper's batch on the GPU
#   3. benchmarks/gpu_bench.sh: mometas-bench on BERT-base, bf16, ZeRO-2 (MOMETAS overhead)
# Run from the repository root with a Python that has torch (CUDA), triton, transformers and deepspeed:
#   OUT=runs/gpu bash benchmarks/gpu_all.sh
set -uo pipefail
OUT="${OUT:-runs/gpu}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="$OUT" PYTHON="$PYTHON" bash benchmarks/gpu_kernels.sh > "$OUT/kernels.log" 2>&1; kernels=$?
timeout 120 "$PYTHON" benchmarks/bench_corruption.py --device cuda --json "$OUT/corruption_gpu.json" > "$OUT/corruption.log" 2>&1; corruption=$?
OUT="$OUT" PYTHON="$PYTHON" bash benchmarks/gpu_bench.sh > "$OUT/bench.log" 2>&1; bench=$?
echo "kernels exit=$kernels corruption exit=$corruption bench exit=$bench (logs in $OUT)"
[ "$kernels" -eq 0 ] && [ "$corruption" -eq 0 ] && [ "$bench" -eq 0 ]
