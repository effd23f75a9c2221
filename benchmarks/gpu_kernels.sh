#!/usr/bin/env bash
# GPU check of mometas_ds.kernels, self-contained: run from the repository root on a CUDA machine
# whose Python has torch + triton (+ pytest; transformers optional: without it the tied-BERT
# training-step test is skipped).
#
#   OUT=/path/to/dir bash benchmarks/gpu_kernels.sh
#
# 1. tests/unit/kernels/test_kernels.py under real Triton (TRITON_INTERPRET unset), its CUDA cases and the
#    device-free ones (-k "not cpu"; the CPU cases are what CI runs, through the interpreter).
#    Log: $OUT/kernels_gpu_pytest.txt
# 2. benchmarks/bench_kernels.py --device cuda: MLM head + loss at 32 x 256 tokens, 15% masked,
#    hidden 1024, vocab 30522; dense / sparse / fused (triton and torch backends); fp32 and bf16;
#    peak torch.cuda.max_memory_allocated above the inputs, median of 20 CUDA-event timings.
#    JSON: $OUT/kernels_gpu.json; a second run with a 256 MiB chunk budget (one chunk at this shape,
#    fp32 and bf16) goes to $OUT/kernels_gpu_budget256.json, to see what the chunking costs in time.
# 3. benchmarks/profile_mlm_head.py: torch.profiler table of the sparse and fused heads (bf16),
#    $OUT/profile_mlm_head.txt (informational; its exit status does not fail the script).
# About 1-2 minutes on an H100 (most of it Triton compiling the kernel's variants once).
set -uo pipefail

OUT="${OUT:-runs/gpu_kernels}"
PYTHON="${PYTHON:-python}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" - <<'EOF' || { echo "gpu_kernels.sh: torch with CUDA and triton are required" >&2; exit 2; }
import torch, triton
assert torch.cuda.is_available(), "no CUDA device visible"
print(f"torch {torch.__version__} (cuda {torch.version.cuda}), triton {triton.__version__}, {torch.cuda.get_device_name()}")
EOF

tests_status=0
if "$PYTHON" -c "import pytest" 2>/dev/null; then
    echo "== tests/unit/kernels/test_kernels.py (real Triton) =="
    timeout 150 "$PYTHON" -m pytest tests/unit/kernels/test_kernels.py -k "not cpu" -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/kernels_gpu_pytest.txt"
    tests_status=${PIPESTATUS[0]}
else
    echo "gpu_kernels.sh: pytest is not importable by $PYTHON; correctness tests NOT run" | tee "$OUT/kernels_gpu_pytest.txt"
    tests_status=3
fi

echo "== benchmark: MLM head + loss, forward + backward =="
timeout 150 "$PYTHON" benchmarks/bench_kernels.py --device cuda --json "$OUT/kernels_gpu.json"
bench_status=$?
timeout 90 "$PYTHON" benchmarks/bench_kernels.py --device cuda --dtypes fp32,bf16 --variants sparse,fused_triton \
    --chunk-budget-mib 256 --json "$OUT/kernels_gpu_budget256.json"
budget_status=$?

echo "== profile: where the sparse and fused heads spend their time (bf16) =="
timeout 120 "$PYTHON" benchmarks/profile_mlm_head.py --variants sparse,fused_triton --dtype bf16 > "$OUT/profile_mlm_head.txt" 2>&1
echo "profile exit=$? ($OUT/profile_mlm_head.txt)"

echo "tests exit=$tests_status benchmark exit=$bench_status budget-256 exit=$budget_status"
[ "$tests_status" -eq 0 ] && [ "$bench_status" -eq 0 ] && [ "$budget_status" -eq 0 ]
