#!/usr/bin/env bash
# mometas-bench on one CUDA GPU: BERT-base at the paper's ratios (seq_len 256, micro-batch 32,
# interval 100, 128 meta-validation sequences per objective, 5 objectives), bf16 ZeRO-2
# (ds_configs/bert_base_zero2.json, the default config on a GPU) with torch's AdamW
# (--torch_adam: no JIT build of DeepSpeed's FusedAdam, which needs nvcc). Run from the repository
# root with a Python that has torch (CUDA), deepspeed and transformers (the benchmark needs no corpus):
#
#   OUT=/path/to/dir bash benchmarks/gpu_bench.sh
#
# 1. $OUT/mometas_base_gpu.json (+ .txt): 1 rank evaluating the whole meta-validation batch
#    (128 per objective), as the published code does on every rank.
# 2. $OUT/mometas_base_gpu_meta16.json (+ .txt): --meta_batch_size 16, one rank's share of 128 on
#    8 ranks: what each rank's meta-validation costs at 8 ranks, measured rather than extrapolated
#    (a forward of 16 rows is not half the time of 32 on a GPU). The step it is compared with lacks
#    the 8-rank gradient all-reduce, so this overestimates the 8-rank overhead percentage.
# About 3-5 minutes on an H100 (5 + 3 rounds of 3 x 100 steps, model set-up, Triton compiles).
set -uo pipefail

OUT="${OUT:-runs/bench_gpu}"
PYTHON="${PYTHON:-python}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" - <<'EOF' || { echo "gpu_bench.sh: torch with CUDA, deepspeed and transformers are required" >&2; exit 2; }
import torch, deepspeed, transformers
assert torch.cuda.is_available(), "no CUDA device visible"
print(f"torch {torch.__version__} (cuda {torch.version.cuda}), deepspeed {deepspeed.__version__}, "
      f"transformers {transformers.__version__}, {torch.cuda.get_device_name()}")
EOF

COMMON=(--model base --seq_len 256 --micro_batch 32 --interval 100 --torch_adam)

echo "== mometas-bench: BERT-base, 128 meta-validation sequences per objective on this rank =="
timeout 300 "$PYTHON" -m mometas_ds.cli.bench "${COMMON[@]}" --meta_batch_size 128 --rounds 5 \
    --json "$OUT/mometas_base_gpu.json" 2>&1 | tee "$OUT/mometas_base_gpu.txt"
full_status=${PIPESTATUS[0]}

echo "== mometas-bench: BERT-base, 16 per objective (one rank's share of 128 on 8 ranks) =="
timeout 200 "$PYTHON" -m mometas_ds.cli.bench "${COMMON[@]}" --meta_batch_size 16 --rounds 3 \
    --json "$OUT/mometas_base_gpu_meta16.json" 2>&1 | tee "$OUT/mometas_base_gpu_meta16.txt"
share_status=${PIPESTATUS[0]}

echo "full exit=$full_status 8-rank-share exit=$share_status"
[ "$full_status" -eq 0 ] && [ "$share_status" -eq 0 ]
