#!/bin/bash
# Continual pre-training of BERT-large with mometas_ds on SLURM: N nodes x G GPUs, one task per GPU.
#
#   mkdir -p logs          # sbatch does not create the --output directory; a missing one loses the log
#   TRAIN_FILES="data/*.jsonl" MODEL=/models/bert-large-uncased sbatch slurm/pretrain_large.sh [pretrain flags]
#
# Submit from the repository root (relative paths below resolve against the submit directory).
# sbatch command-line options override the #SBATCH lines, e.g. `sbatch --nodes=2 --time=12:00:00 ...`.
# Arguments after the script name go to `python -m mometas_ds.pretrain` after the ones built here,
# so they win (argparse keeps the last value), e.g. `sbatch slurm/pretrain_large.sh --meta_interval 50`.
#
# Environment variables (sbatch passes the submitting shell's environment to the job):
#   TRAIN_FILES       required: corpus files or globs, space-separated (.jsonl[.gz], .txt, .parquet, save_to_disk dirs)
#   MODEL             a local HF BERT checkpoint dir (continual pre-training, --model_name_or_path) or a preset /
#                     BertConfig JSON (--model_config: tiny|mini|base|large|file.json)          [large]
#   TOKENIZER         local HF tokenizer dir (default: the MODEL checkpoint's own tokenizer)
#   TRAIN_TOKENIZER   train a WordPiece tokenizer of this vocabulary size instead (from-scratch presets)
#   DS_CONFIG         DeepSpeed JSON config                              [ds_configs/bert_large_zero2.json]
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
#                          keep it above the --signal time plus 60 s (Slurm may signal up to 60 s early)  [900]
#   DRY_RUN           1 = print the srun command and exit (checks the settings without running); with PHASES=2
#                     outside a job, print the two sbatch commands instead of submitting them
#   STEPS_THIS_RUN    --steps_this_run (stop after this many steps, saved; a later job resumes)   [empty]
#
# Two-phase BERT recipe (PHASES=2; docs/checkpoints.md "Phases"): phase 1 trains at PHASE1_SEQ_LEN for
# PHASE1_STEPS of the MAX_STEPS schedule, phase 2 resumes from phase 1's checkpoint (--resume auto: weights,
# optimizer moments, LR schedule, sampler and data position carry over) at PHASE2_SEQ_LEN with PHASE2_DS_CONFIG
# (a smaller micro-batch, more accumulation) to MAX_STEPS. Run the script with bash, outside a job, and it
# submits both jobs, phase 2 chained with --dependency=afterok:<phase-1 job id>:
#
#   PHASES=2 TRAIN_FILES="data/*.jsonl" MAX_STEPS=100000 bash slurm/pretrain_large.sh [pretrain flags]
#
# Both phases run inside one --max_steps schedule (WarmupDecayLR spans MAX_STEPS; phase 1 stops at its end
# step by --steps_this_run, recomputed from the saved step on every start, so a requeued phase 1 still stops
# at PHASE1_STEPS). Phase 2 is cancelled if phase 1 fails (--kill-on-invalid-dep=yes): fix it and submit
# again; both resume. Each job also takes the requeue on timeout described below.
#   PHASES            1 = one run (the default, as before); 2 = the two-phase recipe above             [1]
#   PHASE             set by the submission: 1 or 2 (the phase a job runs)
#   PHASE1_STEPS      the step phase 1 ends at                           [90% of MAX_STEPS]
#   PHASE1_SEQ_LEN    --seq_len of phase 1                               [128]
#   PHASE2_SEQ_LEN    --seq_len of phase 2                               [512]
#   PHASE2_DS_CONFIG  DeepSpeed config of phase 2                        [ds_configs/bert_large_zero2_phase2.json]
#   SBATCH_ARGS       sbatch options for both submissions, split on whitespace (e.g. "--nodes=2 --time=24:00:00")
#
# Signals and requeue: `--signal=USR1@600` (no `B:` prefix) makes Slurm send USR1 to every task of the job's
# steps -- the srun-started pretrain ranks, not this batch shell -- 600 s (up to 660 s) before the time limit.
# Each rank finishes its optimizer step, all save one checkpoint together and exit 0. If that happened
# near the limit this script runs `scontrol requeue`; the requeued job (same id, same environment, same
# OUTPUT_DIR) resumes from the checkpoint. `scancel --signal=USR1 JOBID` stops a run the same way without
# a requeue (plenty of time left); `sbatch` the script again to resume. SIGTERM (time limit, scancel) also
# saves, if the save fits in KillWait.
#
#SBATCH --job-name=pretrain_large
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=48:00:00
#SBATCH --signal=USR1@600
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out

set -uo pipefail

# This script's own defaults; those shared with the other pretrain script are in launch_pretrain.sh.
MODEL=${MODEL:-large}
DS_CONFIG=${DS_CONFIG:-ds_configs/bert_large_zero2.json}
OUTPUT_DIR=${OUTPUT_DIR:-runs/${SLURM_JOB_NAME:-pretrain_large}}
REQUEUE_WITHIN_SECONDS=${REQUEUE_WITHIN_SECONDS:-900}

PHASES=${PHASES:-1}
if [ "$PHASES" = 2 ]; then
    MAX_STEPS=${MAX_STEPS:-50000}
    PHASE1_STEPS=${PHASE1_STEPS:-$(( MAX_STEPS * 9 / 10 ))}
    PHASE1_SEQ_LEN=${PHASE1_SEQ_LEN:-128}
    PHASE2_SEQ_LEN=${PHASE2_SEQ_LEN:-512}
    PHASE2_DS_CONFIG=${PHASE2_DS_CONFIG:-ds_configs/bert_large_zero2_phase2.json}
    if ! [ "$PHASE1_STEPS" -gt 0 ] 2>/dev/null || [ "$PHASE1_STEPS" -ge "$MAX_STEPS" ]; then
        echo "PHASE1_STEPS=$PHASE1_STEPS must be a whole number of steps between 1 and MAX_STEPS=$MAX_STEPS" >&2
        exit 1
    fi
    if [ -z "${SLURM_JOB_ID:-}" ]; then
        # Submitting: phase 1, then phase 2 once phase 1 has ended with exit 0 (requeues included).
        : "${TRAIN_FILES:?set TRAIN_FILES to the corpus files or globs (space-separated)}"
        script=${BASH_SOURCE[0]}
        read -r -a sbatch_args <<< "${SBATCH_ARGS:-}"
        first=(sbatch --parsable ${sbatch_args[@]+"${sbatch_args[@]}"} "$script" "$@")
        second=(sbatch --parsable --kill-on-invalid-dep=yes ${sbatch_args[@]+"${sbatch_args[@]}"} "$script" "$@")
        echo "phase 1: steps 1-$PHASE1_STEPS at --seq_len $PHASE1_SEQ_LEN ($DS_CONFIG);" \
             "phase 2: steps $(( PHASE1_STEPS + 1 ))-$MAX_STEPS at --seq_len $PHASE2_SEQ_LEN ($PHASE2_DS_CONFIG), in $OUTPUT_DIR"
        if [ "${DRY_RUN:-0}" = 1 ]; then
            echo "PHASE=1 ${first[*]}"
            echo "PHASE=2 ${second[*]:0:3} --dependency=afterok:<phase-1 job id> ${second[*]:3}"
            exit 0
        fi
        export PHASES MAX_STEPS PHASE1_STEPS PHASE1_SEQ_LEN PHASE2_SEQ_LEN PHASE2_DS_CONFIG OUTPUT_DIR DS_CONFIG
        first_id=$(PHASE=1 "${first[@]}") || exit 1
        first_id=${first_id%%;*}  # --parsable prints "id[;cluster]"
        second_id=$(PHASE=2 "${second[@]:0:3}" --dependency=afterok:"$first_id" "${second[@]:3}") || exit 1
        echo "submitted phase 1 as job $first_id, phase 2 as job ${second_id%%;*} (after $first_id succeeds)"
        exit 0
    fi
    case "${PHASE:-}" in
        1) SEQ_LEN=$PHASE1_SEQ_LEN; PHASE_END_STEP=$PHASE1_STEPS ;;
        2) SEQ_LEN=$PHASE2_SEQ_LEN; DS_CONFIG=$PHASE2_DS_CONFIG; RESUME=auto ;;
        *) echo "PHASES=2: PHASE must be 1 or 2 (the submission sets it), got '${PHASE:-}'" >&2; exit 1 ;;
    esac
    echo "phase $PHASE of 2: --seq_len $SEQ_LEN, $DS_CONFIG"
fi

# sbatch runs a copy of this script from its spool directory: find the shared part in the submit
# directory's slurm/ (submit from the repository root), else beside this file (run with bash).
slurm_dir=${SLURM_SUBMIT_DIR:-}/slurm
[ -f "$slurm_dir/launch_pretrain.sh" ] || slurm_dir=$(dirname "${BASH_SOURCE[0]}")
# shellcheck source=slurm/launch_pretrain.sh
source "$slurm_dir/launch_pretrain.sh" "$@"
