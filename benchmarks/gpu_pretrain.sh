#!/usr/bin/env bash
# Pre-training throughput on one GPU, in one run so the ratios are side by side (issue 18):
#   1. our step (benchmarks/our_step.py: the run's TrainStep on a DeepSpeed engine, mlm, bf16 ZeRO-2, torch
#      AdamW) and the HF peer step (benchmarks/hf_peer_step.py: BertForMaskedLM, torch fused AdamW, bf16
#      autocast) on the same batch shapes: BERT-large seq 128 at micro-batch 32 and at the largest that fits,
#      BERT-large seq 512 and BERT-base seq 128 at 32; tokens/s, samples/s, MFU, peak memory;
#   2. a torch.profiler summary of our BERT-large seq-128 step (top kernels, idle GPU share);
#   3. MOMETAS against uniform at the paper's ratios (K = 100, 16 meta-validation sequences per objective:
#      one rank's share of 128 at 8 ranks), mometas-bench on BERT-large seq 128;
#   4. the fused vocabulary head against the sparse head (benchmarks/bench_kernels.py);
#   5. $OUT/report.md: the table (benchmarks/gpu_pretrain_report.py).
# On a machine without CUDA (or with SMOKE=1) every step runs in a CPU smoke mode (tiny model, a few steps),
# which the test suite runs, so the script is known to work before a GPU is lent.
#
#   OUT=runs/gpu_pretrain PYTHON=python3 bash benchmarks/gpu_pretrain.sh
#
# Run from the repository root with a Python that has torch, deepspeed, transformers (and triton on a GPU).
set -uo pipefail
OUT="${OUT:-runs/gpu_pretrain}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
if [ "${SMOKE:-}" != 1 ] && "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    SMOKE=0
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
else
    SMOKE=1
    echo "gpu_pretrain.sh: no CUDA device (or SMOKE=1): CPU smoke mode"
fi
rm -f "$OUT/ours.jsonl" "$OUT/peer.jsonl"
failed=0
run() {  # run LABEL TIMEOUT COMMAND...: log to $OUT/LABEL.log, count failures, go on
    local label=$1 limit=$2; shift 2
    echo "== $label"
    timeout "$limit" "$@" > "$OUT/$label.log" 2>&1
    local status=$?
    tail -n 1 "$OUT/$label.log" | cut -c1-300
    [ "$status" -eq 0 ] || { echo "   $label: exit $status (see $OUT/$label.log)"; failed=$((failed + 1)); }
}

if [ "$SMOKE" = 1 ]; then
    OURS=("$PYTHON" benchmarks/our_step.py --quick --steps_per_round 2 --json "$OUT/ours.jsonl")  # micro-batch 4
    PEER=("$PYTHON" benchmarks/hf_peer_step.py --quick --json "$OUT/peer.jsonl")
    run ours_tiny 300 "${OURS[@]}" --micro_batch 4 --profile_steps 2
    run ours_tiny_max 300 "${OURS[@]}" --micro_batch max
    run peer_tiny 120 "${PEER[@]}"
    run peer_tiny_max 120 "${PEER[@]}" --micro_batch max --max_micro_batch 8
    run overhead 600 "$PYTHON" -m mometas_ds.cli.bench --quick --rounds 2 --objectives mlm,atd --json "$OUT/overhead.json"
    run kernels 300 "$PYTHON" benchmarks/bench_kernels.py --device cpu --variants sparse,fused --batch 2 --seq-len 64 \
        --vocab 2048 --json "$OUT/kernels.json"
else
    LARGE=(--deepspeed_config ds_configs/bert_large_zero2.json --torch_adam --warmup_steps 5 --rounds 3)
    BASE=(--deepspeed_config ds_configs/bert_base_zero2.json --torch_adam --warmup_steps 5 --rounds 3)
    OURS=("$PYTHON" benchmarks/our_step.py --json "$OUT/ours.jsonl")
    PEER=("$PYTHON" benchmarks/hf_peer_step.py --rounds 3 --json "$OUT/peer.jsonl")
    run ours_large128 120 "${OURS[@]}" "${LARGE[@]}" --model large --seq_len 128 --micro_batch 32 --profile_steps 3
    run ours_large128_max 240 "${OURS[@]}" "${LARGE[@]}" --model large --seq_len 128 --micro_batch max \
        --start_micro_batch 64 --max_micro_batch 512
    run ours_large512 120 "${OURS[@]}" "${LARGE[@]}" --model large --seq_len 512 --micro_batch 32
    run ours_base128 120 "${OURS[@]}" "${BASE[@]}" --model base --seq_len 128 --micro_batch 32
    run peer_large128 90 "${PEER[@]}" --model large --seq_len 128 --micro_batch 32 --profile_steps 3
    run peer_large128_max 180 "${PEER[@]}" --model large --seq_len 128 --micro_batch max --max_micro_batch 512
    run peer_large512 90 "${PEER[@]}" --model large --seq_len 512 --micro_batch 32
    run peer_base128 90 "${PEER[@]}" --model base --seq_len 128 --micro_batch 32
    run overhead 300 "$PYTHON" -m mometas_ds.cli.bench --model large --seq_len 128 --micro_batch 32 --interval 100 \
        --meta_batch_size 16 --rounds 3 --torch_adam --deepspeed_config ds_configs/bert_large_zero2.json \
        --json "$OUT/overhead.json"
    run kernels 180 "$PYTHON" benchmarks/bench_kernels.py --device cuda --dtypes bf16 --variants sparse,fused \
        --json "$OUT/kernels.json"
fi
run report 60 "$PYTHON" benchmarks/gpu_pretrain_report.py --out "$OUT"
cat "$OUT/report.md" 2>/dev/null
echo "gpu_pretrain.sh: $failed step(s) failed (logs in $OUT)"
[ "$failed" -eq 0 ]
