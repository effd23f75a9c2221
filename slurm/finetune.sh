#!/bin/bash
# Downstream evaluation on SLURM: one array task per (task, seed), one GPU each, then a summary job.
#
#   mkdir -p logs
#   MODEL=runs/mometas/hf_model DATA_DIR=glue_data OUTPUT_DIR=runs/mometas/eval TASKS=glue SEEDS=1,2,3,4,5 \
#       bash slurm/finetune.sh            # submits the array and the summary job (afterany), prints their ids
#
# Each array task runs `python -m mometas_ds.cli.finetune --tasks T --seeds S` into OUTPUT_DIR/parts/T_seedS
# (every learning rate of LRS; a requeued or resubmitted task redoes only the runs missing from its
# results.jsonl); the summary job merges the parts into OUTPUT_DIR/results.jsonl, predictions/, summary.md
# and summary.csv. Submit from the repository root.
#
# Environment variables:
#   MODEL        required: local HF BERT directory (a run's hf_model/, or mometas-export's output)
#   OUTPUT_DIR   required: the eval directory (mometas-compare takes it)
#   DATA_DIR     task data root (GLUE layout, squad/, swag/, hellaswag/, conll2003/)
#   TASKS        comma-separated tasks; glue = the eight GLUE tasks                       [glue]
#   SEEDS        comma-separated seeds                                                     [1,2,3,4,5]
#   LRS          comma-separated learning rates                                            [1e-5,2e-5,3e-5]
#   EPOCHS, BATCH_SIZE, MAX_SEQ_LEN                                                        [3, 32, 128]
#   DS_CONFIG    DeepSpeed config for the Trainer (BERT-large: ds_configs/finetune.json)   [none]
#   BF16         1 = --bf16                                                                [1]
#   EXTRA_ARGS   more mometas-finetune flags, split on whitespace
#   PYTHON       interpreter with mometas_ds installed                                     [python]
#   DRY_RUN      1 = print the commands instead of submitting / running them
#
#SBATCH --job-name=finetune
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail

: "${MODEL:?set MODEL to a local HF BERT directory}"
: "${OUTPUT_DIR:?set OUTPUT_DIR to the eval directory}"
TASKS=${TASKS:-glue}
SEEDS=${SEEDS:-1,2,3,4,5}
LRS=${LRS:-1e-5,2e-5,3e-5}
PYTHON=${PYTHON:-python}
run() { if [ "${DRY_RUN:-0}" = 1 ]; then echo "$*"; else "$@"; fi; }

# Expand `glue` the way mometas-finetune does, so the array has one index per (task, seed).
IFS=, read -r -a TASK_LIST <<< "$("$PYTHON" -c 'import sys; from mometas_ds.finetune.tasks import parse_task_names; print(",".join(parse_task_names(sys.argv[1])))' "$TASKS")"
IFS=, read -r -a SEED_LIST <<< "$SEEDS"
N=$(( ${#TASK_LIST[@]} * ${#SEED_LIST[@]} ))

if [ "${MODE:-}" = summary ]; then
    run "$PYTHON" -m mometas_ds.cli.finetune --output_dir "$OUTPUT_DIR" --merge "$OUTPUT_DIR"/parts/*
    exit 0
fi

if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
    # Submitting: the array, then the summary once every array task has ended (afterany: the parts that
    # finished are summarised even if one failed; resubmit to fill the gaps).
    if [ "${DRY_RUN:-0}" = 1 ]; then
        echo "sbatch --parsable --array=0-$((N - 1)) $0"
        echo "MODE=summary sbatch --dependency=afterany:ARRAY_ID --gpus-per-task=0 --job-name=finetune-summary $0"
        exit 0
    fi
    ARRAY_ID=$(sbatch --parsable --array=0-$((N - 1)) "$0")
    SUMMARY_ID=$(MODE=summary sbatch --parsable --dependency=afterany:"$ARRAY_ID" --gpus-per-task=0 \
                 --job-name=finetune-summary "$0")
    echo "array job $ARRAY_ID ($N tasks), summary job $SUMMARY_ID -> $OUTPUT_DIR/summary.md"
    exit 0
fi

TASK=${TASK_LIST[$(( SLURM_ARRAY_TASK_ID / ${#SEED_LIST[@]} ))]}
SEED=${SEED_LIST[$(( SLURM_ARRAY_TASK_ID % ${#SEED_LIST[@]} ))]}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
ARGS=(--model_name_or_path "$MODEL" --tasks "$TASK" --seeds "$SEED" --learning_rates "$LRS"
      --output_dir "$OUTPUT_DIR/parts/${TASK}_seed${SEED}"
      --epochs "${EPOCHS:-3}" --batch_size "${BATCH_SIZE:-32}" --max_seq_len "${MAX_SEQ_LEN:-128}")
[ -n "${DATA_DIR:-}" ] && ARGS+=(--data_dir "$DATA_DIR")
[ "${BF16:-1}" = 1 ] && ARGS+=(--bf16)
[ -n "${DS_CONFIG:-}" ] && ARGS+=(--deepspeed "$DS_CONFIG")
# shellcheck disable=SC2206
[ -n "${EXTRA_ARGS:-}" ] && ARGS+=(${EXTRA_ARGS})
run "$PYTHON" -m mometas_ds.cli.finetune "${ARGS[@]}" "$@"
