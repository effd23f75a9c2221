#!/bin/bash
# Tokenize and pack a pre-training corpus on a CPU node, before any GPU job (docs/data.md).
#
#   mkdir -p logs          # sbatch does not create the --output directory; a missing one loses the log
#   TRAIN_FILES="data/*.jsonl" TOKENIZER=/models/bert-base-uncased CACHE_DIR=/scratch/mometas_cache \
#       sbatch slurm/prepare_data.sh [more mometas-prepare flags]
#
# One task; mometas-prepare runs one process per core of it (--num_proc $SLURM_CPUS_PER_TASK), each building
# one shard: a file, or a --shard_size_mb part of a larger file or save_to_disk dataset, so one big input uses
# every core too (a .gz file stays one shard: many .gz files, as C4 ships, use every core).
# Files already in CACHE_DIR are reused: resubmitting after adding files processes only the new ones, and a
# job that hit its time limit keeps the shards it finished. Then point the training job at the same corpus
# flags and --cache_dir (the script prints them): it starts without tokenizing.
# Submit from the repository root; `sbatch --cpus-per-task=64 --time=8:00:00 ...` overrides the lines below.
# Arguments after the script name go to mometas-prepare after the ones built here, so they win.
#
# Environment variables (sbatch passes the submitting shell's environment to the job):
#   TRAIN_FILES  required: corpus files or globs, space-separated (.jsonl[.gz], .txt[.gz], .parquet, save_to_disk dirs)
#   CACHE_DIR    required: the cache directory the training runs will be given (--cache_dir)
#   TOKENIZER    local HF tokenizer dir; or MODEL, a local HF BERT checkpoint dir whose tokenizer is used
#   SEQ_LEN      tokens per row (--seq_len; must match the training run's)               [128]
#   PACKING      packed | per_document (--packing)                                        [packed]
#   SHARD_SIZE_MB  inputs larger than this are split into shards this size (--shard_size_mb) [64]
#   TEXT_FIELD   JSON/parquet field holding the text (--text_field)                       [text]
#   NUM_PROC     processes                                              [$SLURM_CPUS_PER_TASK, else nproc]
#   PYTHON       the interpreter that has mometas_ds installed                             [python]
#   DRY_RUN      1 = print the command and exit (checks the settings without running)
#
#SBATCH --job-name=prepare_data
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=32
#SBATCH --mem=0
#SBATCH --time=12:00:00
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out

set -euo pipefail

: "${TRAIN_FILES:?set TRAIN_FILES to the corpus files or globs}"
: "${CACHE_DIR:?set CACHE_DIR to the cache directory the training runs will use}"
PYTHON=${PYTHON:-python}
NUM_PROC=${NUM_PROC:-${SLURM_CPUS_PER_TASK:-$(nproc)}}

if [ -n "${TOKENIZER:-}" ]; then
    source_flags=(--tokenizer "$TOKENIZER")
elif [ -n "${MODEL:-}" ]; then
    source_flags=(--model_name_or_path "$MODEL")
else
    echo "prepare_data.sh: error: set TOKENIZER (a tokenizer dir) or MODEL (a checkpoint dir with its tokenizer)" >&2
    exit 2
fi

# Globs stay unexpanded: mometas-prepare expands them itself (sorted), as mometas-pretrain does.
read -r -a files <<< "$TRAIN_FILES"
cmd=("$PYTHON" -m mometas_ds.cli.prepare --train_files "${files[@]}" "${source_flags[@]}"
     --seq_len "${SEQ_LEN:-128}" --packing "${PACKING:-packed}" --shard_size_mb "${SHARD_SIZE_MB:-64}"
     --text_field "${TEXT_FIELD:-text}"
     --cache_dir "$CACHE_DIR" --num_proc "$NUM_PROC" "$@")

export TOKENIZERS_PARALLELISM=false  # the processes are the parallelism
export OMP_NUM_THREADS=1
if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "${cmd[@]}"
    echo
    exit 0
fi
exec "${cmd[@]}"
