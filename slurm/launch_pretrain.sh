# The part of slurm/pretrain_*.sh after their own defaults: the defaults they share, master address,
# the pretrain command, srun, and the requeue after a pre-timeout save. Sourced by those scripts (with
# their "$@"); not run alone. Their headers document every variable.
: "${TRAIN_FILES:?set TRAIN_FILES to the corpus files or globs (space-separated)}"
SEQ_LEN=${SEQ_LEN:-512}
MAX_STEPS=${MAX_STEPS:-50000}
SAVE_STEPS=${SAVE_STEPS:-1000}
RESUME=${RESUME-auto}
DIST_TIMEOUT_MINUTES=${DIST_TIMEOUT_MINUTES:-30}
PYTHON=${PYTHON:-python}
REQUEUE_ON_TIMEOUT=${REQUEUE_ON_TIMEOUT:-1}

# The last step saved under OUTPUT_DIR (its latest_complete pointer, "step<N>"), 0 without one.
saved_step() {
    local tag
    tag=$(cat "$OUTPUT_DIR/checkpoints/latest_complete" 2>/dev/null)
    if [[ $tag =~ ^step([0-9]+)$ ]]; then echo $(( 10#${BASH_REMATCH[1]} )); else echo 0; fi
}

# PHASE_END_STEP (set by pretrain_large.sh's phase 1): stop at that absolute step of the --max_steps schedule,
# whatever step a requeued job resumes at (--steps_this_run counts from the resume).
steps_this_run=${STEPS_THIS_RUN:-}
if [ -n "${PHASE_END_STEP:-}" ]; then
    steps_this_run=$(( PHASE_END_STEP - $(saved_step) ))
    if [ "$steps_this_run" -le 0 ]; then
        echo "$OUTPUT_DIR is at step $(saved_step), the end of this phase (step $PHASE_END_STEP): nothing to run"
        exit 0
    fi
fi

export MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)}
if [ -z "$MASTER_ADDR" ]; then
    echo "cannot resolve the first node of SLURM_JOB_NODELIST='${SLURM_JOB_NODELIST:-}'; set MASTER_ADDR" >&2
    exit 1
fi
export MASTER_PORT=${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 10000))}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}

args=(--deepspeed_config "$DS_CONFIG" --output_dir "$OUTPUT_DIR" --seq_len "$SEQ_LEN"
      --max_steps "$MAX_STEPS" --save_steps "$SAVE_STEPS" --dist_timeout_minutes "$DIST_TIMEOUT_MINUTES")
read -r -a train_files <<< "$TRAIN_FILES"  # `read` splits without expanding globs: pretrain expands them
args+=(--train_files "${train_files[@]}")
if [ -d "$MODEL" ]; then args+=(--model_name_or_path "$MODEL"); else args+=(--model_config "$MODEL"); fi
if [ -n "${TOKENIZER:-}" ]; then args+=(--tokenizer "$TOKENIZER"); fi
if [ -n "${TRAIN_TOKENIZER:-}" ]; then args+=(--train_tokenizer "$TRAIN_TOKENIZER"); fi
if [ -n "$RESUME" ]; then args+=(--resume "$RESUME"); fi
if [ -n "${SAVE_TOTAL_LIMIT:-}" ]; then args+=(--save_total_limit "$SAVE_TOTAL_LIMIT"); fi
if [ -n "$steps_this_run" ]; then args+=(--steps_this_run "$steps_this_run"); fi
read -r -a extra_args <<< "${EXTRA_ARGS:-}"

# One task per GPU; srun takes the task layout from the allocation. --kill-on-bad-exit ends the
# other ranks when one fails instead of leaving them blocked in a collective until the timeout.
# --cpus-per-task is passed on explicitly: srun in Slurm 22.05-23.02 does not inherit sbatch's.
srun_args=(--kill-on-bad-exit=1)
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then srun_args+=(--cpus-per-task="$SLURM_CPUS_PER_TASK"); fi
# ${a[@]+...}: an empty array under `set -u` is an "unbound variable" in bash < 4.4 (RHEL/CentOS 7).
cmd=(srun "${srun_args[@]}" "$PYTHON" -u -m mometas_ds.pretrain "${args[@]}" ${extra_args[@]+"${extra_args[@]}"} "$@")

echo "job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0}: ${SLURM_JOB_NUM_NODES:-?} node(s) [${SLURM_JOB_NODELIST:-?}]," \
     "${SLURM_NTASKS:-?} task(s), master ${MASTER_ADDR}:${MASTER_PORT}, OMP_NUM_THREADS=${OMP_NUM_THREADS}"
echo "running: ${cmd[*]}"
if [ "${DRY_RUN:-0}" = 1 ]; then exit 0; fi

started=$(mktemp)  # hf_model/ newer than this = the schedule finished in this run
"${cmd[@]}"
rc=$?

# Seconds before the time limit, from squeue's %L ([D-]HH:MM:SS, MM:SS, or UNLIMITED/NOT_SET).
seconds_left() {
    local left days=0 h=0 m=0 s=0
    left=$(squeue -h -j "$SLURM_JOB_ID" -o %L 2>/dev/null)
    if [[ ! $left =~ ^([0-9]+-)?([0-9]+:)?([0-9]+:)?[0-9]+$ ]]; then echo 999999999; return; fi
    if [[ $left == *-* ]]; then days=${left%%-*}; left=${left#*-}; fi
    IFS=: read -r -a parts <<< "$left"
    case ${#parts[@]} in
        3) h=${parts[0]}; m=${parts[1]}; s=${parts[2]} ;;
        2) m=${parts[0]}; s=${parts[1]} ;;
        1) s=${parts[0]} ;;
    esac
    echo $(( ((10#$days * 24 + 10#$h) * 60 + 10#$m) * 60 + 10#$s ))
}

finished=0
if [ "$OUTPUT_DIR/hf_model/config.json" -nt "$started" ]; then finished=1; fi
# A phase that reached its end step is finished too: a requeue would only find nothing to run.
if [ -n "${PHASE_END_STEP:-}" ] && [ "$(saved_step)" -ge "$PHASE_END_STEP" ]; then finished=1; fi
rm -f "$started"
if [ "$rc" -eq 0 ] && [ "$finished" = 0 ] && [ "$REQUEUE_ON_TIMEOUT" = 1 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    left=$(seconds_left)
    if [ "$left" -le "$REQUEUE_WITHIN_SECONDS" ]; then
        echo "stopped with ${left}s left before the time limit: requeueing job $SLURM_JOB_ID to resume from the checkpoint"
        scontrol requeue "$SLURM_JOB_ID"
    fi
fi
exit "$rc"
