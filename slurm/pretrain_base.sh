#!/bin/bash
# Continual pre-training of BERT-base with mometas_ds on SLURM: N nodes x G GPUs, one task per GPU.
#
#   mkdir -p logs          # sbatch does not create the --output directory; a missing one loses the log
#   TRAIN_FILES="data/*.jsonl" MODEL=/models/bert-base-uncased sbatch slurm/pretrain_base.sh [pretrain flags]
#
# Submit from the repository root (relative paths below resolve against the submit directory).
# sbatch command-line options override the #SBATCH lines, e.g. `sbatch --nodes=2 --time=12:00:00 ...`.
# Arguments after the script name go to `python -m mometas_ds.pretrain` after the ones built here,
# so they win (argparse keeps the last value), e.g. `sbatch slurm/pretrain_base.sh --meta_interval 50`.
#
# Environment variables (sbatch passes the submitting shell's environment to the job):
#   TRAIN_FILES       required: corpus files or globs, space-separated (.jsonl[.gz], .txt, .parquet, save_to_disk dirs)
#   MODEL             a local HF BERT checkpoint dir (continual pre-training, --model_name_or_path) or a preset /
#                     BertConfig JSON (--model_config: tiny|mini|base|large|file.json)          [base]
#   TOKENIZER         local HF tokenizer dir (default: the MODEL checkpoint's own tokenizer)
#   TRAIN_TOKENIZER   train a WordPiece tokenizer of this vocabulary size instead (from-scratch presets)
#   DS_CONFIG         DeepSpeed JSON config                              [ds_configs/bert_base_zero2.json]
#   OUTPUT_DIR        metrics, traces, checkpoints, hf_model; keep it fixed across requeues   [runs/$SLURM_JOB_NAME]
#   SEQ_LEN           tokens per packed sequence                         [512]
#   MAX_STEPS         optimizer steps of the whole schedule              [50000]
#   SAVE_STEPS        checkpoint interval in optimizer steps             [1000]
#   SAVE_TOTAL_LIMIT  keep only the newest N checkpoints (--save_total_limit)  [empty: keep all]
#   RESUME            --resume value: `auto` = latest checkpoint in OUTPUT_DIR/checkpoints; empty = start afresh [auto]
#   DIST_TIMEOUT_MINUTES  collective timeout before a hung/dead rank ends the job   [30]
#   EXTRA_ARGS        more pretrain flags, split on whitespace (use the "$@" pass-through for values with spaces)
#   PYTHON            the interpreter that has mometas_ds installed      [python]
#   MASTER_PORT       rendezvous port on the first node                  [20000 + SLURM_JOB_ID % 10000]
#   OMP_NUM_THREADS   threads per task                                   [--cpus-per-task]
#   REQUEUE_ON_TIMEOUT     1 = requeue the job after the pre-timeout save (needs --requeue)   [1]
#   REQUEUE_WITHIN_SECONDS the run counts as stopped by the time limit when it ends with this little time left;
#                          keep it above the --signal time plus 60 s (Slurm may signal up to 60 s early)  [600]
#   DRY_RUN           1 = print the srun command and exit (checks the settings without running)
#   STEPS_THIS_RUN    --steps_this_run (stop after this many steps, saved; a later job resumes)   [empty]
#
# Signals and requeue: `--signal=USR1@300` (no `B:` prefix) makes Slurm send USR1 to every task of the job's
# steps -- the srun-started pretrain ranks, not this batch shell -- 300 s (up to 360 s) before the time limit.
# Each rank finishes its optimizer step, all save one checkpoint together and exit 0. If that happened
# near the limit this script runs `scontrol requeue`; the requeued job (same id, same environment, same
# OUTPUT_DIR) resumes from the checkpoint. `scancel --signal=USR1 JOBID` stops a run the same way without
# a requeue (plenty of time left); `sbatch` the script again to resume. SIGTERM (time limit, scancel) also
# saves, if the save fits in KillWait.
#
#SBATCH --job-name=pretrain_base
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out

set -uo pipefail

# This script's own defaults; those shared with the other pretrain script are in launch_pretrain.sh.
MODEL=${MODEL:-base}
DS_CONFIG=${DS_CONFIG:-ds_configs/bert_base_zero2.json}
OUTPUT_DIR=${OUTPUT_DIR:-runs/${SLURM_JOB_NAME:-pretrain_base}}
REQUEUE_WITHIN_SECONDS=${REQUEUE_WITHIN_SECONDS:-600}

# sbatch runs a copy of this script from its spool directory: find the shared part in the submit
# directory's slurm/ (submit from the repository root), else beside this file (run with bash).
slurm_dir=${SLURM_SUBMIT_DIR:-}/slurm
[ -f "$slurm_dir/launch_pretrain.sh" ] || slurm_dir=$(dirname "${BASH_SOURCE[0]}")
# shellcheck source=slurm/launch_pretrain.sh
source "$slurm_dir/launch_pretrain.sh" "$@"
