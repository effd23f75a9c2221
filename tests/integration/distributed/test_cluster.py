"""Cluster launch for real (issue 5): slurm/pretrain_large.sh on a live one-node SLURM, the USR1 save and
resume, mpirun through MPI discovery, and the deepspeed launcher's slurm runner with a hostfile.

Every job is a tiny 2-rank CPU pre-training; the checks read what the ranks wrote (logs, traces,
metrics, checkpoints), never the job's exit state alone (a broken plugin can still report success).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.pretrain_helpers import CPU_CONFIG, make_corpus_and_tokenizer, read_jsonl, read_trace
from tests.slurm_cluster import REPO_ROOT, clean_launch_env, free_port

LARGE_SCRIPT = REPO_ROOT / "slurm" / "pretrain_large.sh"
BASE_SCRIPT = REPO_ROOT / "slurm" / "pretrain_base.sh"
# sbatch options that turn the BERT-large script into a 1-node, 2-task CPU job. --time stays above the
# script's --signal=USR1@600 (a shorter limit would signal the job as soon as it starts).
TINY_JOB = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=20"]
GAS = json.loads(Path(CPU_CONFIG).read_text()).get("gradient_accumulation_steps", 1)
JOB_TIMEOUT_S = 600  # the first DeepSpeed job of a CI run JIT-builds its CPU comm op (~90 s)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster_corpus")
    corpus, tokenizer = make_corpus_and_tokenizer(str(root), num_docs=300)
    return {"corpus": corpus, "tokenizer": tokenizer, "cache": str(root / "cache")}


def script_env(corpus: dict, output_dir: Path, max_steps: int) -> dict:
    """The environment overrides of slurm/pretrain_*.sh for a tiny CPU run."""
    return clean_launch_env(
        PYTHON=sys.executable,
        DS_CONFIG="ds_configs/cpu_demo.json",  # relative: resolved in the submit dir (the repo root)
        MODEL="tiny",
        TOKENIZER=corpus["tokenizer"],
        TRAIN_FILES=corpus["corpus"],
        OUTPUT_DIR=str(output_dir),
        SEQ_LEN="32",
        MAX_STEPS=str(max_steps),
        SAVE_STEPS="1000",
        EXTRA_ARGS=f"--cache_dir {corpus['cache']} --meta_interval 5 --meta_batch_size 8 --seed 3 --log_steps 1",
    )


def assert_ranks_agree(output_dir: Path, steps: int) -> None:
    """Both ranks trained every micro-step of `steps` optimizer steps and drew the same objectives."""
    rank0, rank1 = read_trace(str(output_dir), 0), read_trace(str(output_dir), 1)
    assert len(rank0) == steps * GAS
    assert rank0 == rank1, "ranks drew different objectives"


def checkpoint_tag(output_dir: Path) -> str:
    ckpt = output_dir / "checkpoints"
    tag = (ckpt / "latest_complete").read_text().strip()
    assert (ckpt / tag / "COMPLETE").exists()
    return tag


@pytest.mark.integration
def test_sbatch_large_script_two_tasks(slurm_cluster, corpus, tmp_path):
    out, log = tmp_path / "run", tmp_path / "job.log"
    job = slurm_cluster.sbatch([*TINY_JOB, f"--output={log}", str(LARGE_SCRIPT)],
                               env=script_env(corpus, out, max_steps=12), cwd=REPO_ROOT)
    result = slurm_cluster.wait(job, JOB_TIMEOUT_S)
    text = log.read_text()
    assert (result.state, result.exit_code) == ("COMPLETED", "0:0"), text
    assert "launcher: srun, 2 rank(s)" in text
    assert f"master {slurm_cluster.hostname}:" in text  # MASTER_ADDR from scontrol show hostnames
    assert "stopped at step 12 (finished)" in text
    assert [r["step"] for r in read_jsonl(str(out / "metrics.jsonl"))] == list(range(1, 13))
    assert_ranks_agree(out, 12)
    assert checkpoint_tag(out) == "step12"
    assert (out / "hf_model" / "config.json").exists()
    assert "requeueing" not in text


@pytest.mark.integration
def test_usr1_saves_and_resubmit_resumes(slurm_cluster, corpus, tmp_path):
    out, log1, log2 = tmp_path / "run", tmp_path / "job1.log", tmp_path / "job2.log"
    env = script_env(corpus, out, max_steps=5000)  # far more than runs before the signal
    job = slurm_cluster.sbatch([*TINY_JOB, f"--output={log1}", str(LARGE_SCRIPT)], env=env, cwd=REPO_ROOT)

    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):  # handlers are installed
        assert slurm_cluster.job_state(job) in ("PENDING", "RUNNING"), log1.read_text()
        assert time.monotonic() < deadline, "pre-training did not start"
        time.sleep(0.5)
    # As Slurm's --signal=USR1@600 does before the time limit: to the job's steps, not the batch shell.
    subprocess.run(["scancel", "--signal=USR1", job], env=slurm_cluster.env(), check=True)
    result = slurm_cluster.wait(job, 120)
    text = log1.read_text()
    assert (result.state, result.exit_code) == ("COMPLETED", "0:0"), text
    assert text.count("got signal 10") == 2, text  # both ranks
    stopped = [line for line in text.splitlines() if "(signal)" in line]
    assert len(stopped) == 1, text
    stop_step = int(stopped[0].split("stopped at step ")[1].split()[0])
    assert 3 <= stop_step < 5000
    assert checkpoint_tag(out) == f"step{stop_step}"
    assert [r["step"] for r in read_jsonl(str(metrics))] == list(range(1, stop_step + 1))
    assert_ranks_agree(out, stop_step)
    assert "requeueing" not in text  # plenty of time was left: a manual stop is not requeued

    # Resubmit the same script (same OUTPUT_DIR): RESUME=auto picks up the signal's checkpoint.
    job2 = slurm_cluster.sbatch([*TINY_JOB, f"--output={log2}", str(LARGE_SCRIPT), "--steps_this_run", "4"],
                                env=env, cwd=REPO_ROOT)
    result2 = slurm_cluster.wait(job2, JOB_TIMEOUT_S)
    text2 = log2.read_text()
    assert (result2.state, result2.exit_code) == ("COMPLETED", "0:0"), text2
    assert f"resumed from {out / 'checkpoints' / f'step{stop_step}'} at step {stop_step}" in text2
    assert [r["step"] for r in read_jsonl(str(metrics))] == list(range(1, stop_step + 5))
    assert checkpoint_tag(out) == f"step{stop_step + 4}"
    assert_ranks_agree(out, stop_step + 4)


@pytest.mark.integration
def test_two_phase_recipe_chains_phase_2_after_phase_1_on_slurm(slurm_cluster, corpus, tmp_path):
    """PHASES=2 submits both phases to a live SLURM: phase 2 waits for phase 1 (afterok), then resumes its
    checkpoint at twice the --seq_len with its own DeepSpeed config (half the micro-batch, twice the
    accumulation: the same global batch) and trains to --max_steps."""
    import re

    out = tmp_path / "run"
    config = json.loads(Path(CPU_CONFIG).read_text())
    config.update(train_micro_batch_size_per_gpu=config["train_micro_batch_size_per_gpu"] // 2,
                  gradient_accumulation_steps=2 * GAS)
    phase2 = tmp_path / "phase2.json"
    phase2.write_text(json.dumps(config))
    env = slurm_cluster.env(script_env(corpus, out, max_steps=8))
    env.update(PHASES="2", PHASE1_STEPS="4", PHASE1_SEQ_LEN="32", PHASE2_SEQ_LEN="64", PHASE2_DS_CONFIG=str(phase2),
               SBATCH_ARGS=" ".join([*TINY_JOB, f"--output={tmp_path}/job-%j.log"]))
    submitted = subprocess.run(["bash", str(LARGE_SCRIPT)], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    first, second = re.search(r"submitted phase 1 as job (\d+), phase 2 as job (\d+) \(after \1 succeeds\)",
                              submitted.stdout).groups()
    results = [slurm_cluster.wait(job, JOB_TIMEOUT_S) for job in (first, second)]
    logs = [(tmp_path / f"job-{job}.log").read_text() for job in (first, second)]
    for result, text in zip(results, logs):
        assert (result.state, result.exit_code) == ("COMPLETED", "0:0"), text
    assert "phase 1 of 2: --seq_len 32" in logs[0] and "stopped at step 4" in logs[0]
    assert f"phase 2 of 2: --seq_len 64, {phase2}" in logs[1]
    assert f"resumed from {out / 'checkpoints' / 'step4'} at step 4" in logs[1]
    assert "--seq_len changed from 32 to 64" in logs[1] and "stopped at step 8 (finished)" in logs[1]
    # One schedule: phase 1's 4 steps of 32 tokens per row, then phase 2's 4 of 64.
    metrics = read_jsonl(str(out / "metrics.jsonl"))
    assert [m["step"] for m in metrics] == list(range(1, 9))
    assert [round(m["tokens_per_s"] / m["samples_per_s"]) for m in metrics] == [32] * 4 + [64] * 4
    assert checkpoint_tag(out) == "step8"
    identity = json.loads((out / "checkpoints" / "step8" / "run_identity.json").read_text())
    micro = config["train_micro_batch_size_per_gpu"]
    assert (identity["--seq_len"], identity["train_micro_batch_size_per_gpu"]) == (64, micro)


@pytest.mark.integration
def test_mpirun_two_ranks_pretrain(corpus, tmp_path):
    assert shutil.which("mpirun"), "mpirun missing: run .ci/install_system_deps.sh"
    out = tmp_path / "run"
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2",
           sys.executable, "-m", "mometas_ds.pretrain",
           "--deepspeed_config", CPU_CONFIG, "--train_files", corpus["corpus"], "--tokenizer", corpus["tokenizer"],
           "--cache_dir", corpus["cache"], "--output_dir", str(out), "--model_config", "tiny", "--seq_len", "32",
           "--meta_interval", "5", "--meta_batch_size", "8", "--max_steps", "6", "--save_steps", "1000"]
    proc = subprocess.run(cmd, env=clean_launch_env(MASTER_PORT=str(free_port())), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert "launcher: mpirun, 2 rank(s)" in text
    assert "stopped at step 6 (finished)" in text
    assert_ranks_agree(out, 6)
    assert checkpoint_tag(out) == "step6"


@pytest.mark.integration
def test_deepspeed_launcher_slurm_runner_with_hostfile(slurm_cluster, corpus, tmp_path):
    """`deepspeed --hostfile H --launcher slurm` inside an allocation: DeepSpeed's SlurmRunner runs
    `srun -n <slots> python -u SCRIPT ...`, so mometas_ds sees srun tasks. That runner ignores --module
    and --master_addr: it needs a script path (the `mometas-pretrain` console script; here an equivalent
    file) and MASTER_ADDR/MASTER_PORT exported by the batch script."""
    out, log = tmp_path / "run", tmp_path / "job.log"
    (tmp_path / "hostfile").write_text("localhost slots=2\n")
    entry = tmp_path / "mometas_pretrain_entry.py"
    entry.write_text("import sys\nfrom mometas_ds.pretrain import main\nsys.exit(main())\n")
    batch = tmp_path / "ds_job.sh"
    batch.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        export MASTER_ADDR=$(hostname -s) MASTER_PORT={free_port()}
        {sys.executable} -m deepspeed.launcher.runner --hostfile {tmp_path / 'hostfile'} --launcher slurm \\
            --force_multi --no_ssh_check --master_addr "$MASTER_ADDR" {entry} \\
            --deepspeed_config ds_configs/cpu_demo.json --train_files {corpus['corpus']} \\
            --tokenizer {corpus['tokenizer']} --cache_dir {corpus['cache']} --output_dir {out} \\
            --model_config tiny --seq_len 32 --meta_interval 5 --meta_batch_size 8 --max_steps 6 --save_steps 1000
        """))
    job = slurm_cluster.sbatch(["--nodes=1", "--ntasks=2", "--cpus-per-task=1", "--time=20", f"--output={log}",
                                str(batch)], env=clean_launch_env(), cwd=REPO_ROOT)
    result = slurm_cluster.wait(job, JOB_TIMEOUT_S)
    text = log.read_text()
    assert (result.state, result.exit_code) == ("COMPLETED", "0:0"), text
    assert "cmd = srun -n 2" in text  # DeepSpeed's slurm runner, not its local launcher
    assert "launcher: srun, 2 rank(s)" in text
    assert "stopped at step 6 (finished)" in text
    assert_ranks_agree(out, 6)
    assert checkpoint_tag(out) == "step6"


# ---- the scripts' own logic, without a cluster --------------------------------------------------------
def run_script(script: Path, tmp_path: Path, squeue_left: str = "1-00:00:00", srun_also: str = "", args=(),
               **env_extra: str):
    """Runs the batch script outside SLURM with stand-ins for srun/squeue/scontrol that record their
    arguments: checks the command it builds and its requeue decision, nothing else."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    for name, body in {
        "srun": f'echo "srun $*" >> {calls}\n{srun_also}',
        "squeue": f'echo "{squeue_left}"',
        "scontrol": f'echo "scontrol $*" >> {calls}',
    }.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = clean_launch_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", TRAIN_FILES="data/*.jsonl more.txt",
                           SLURM_JOB_ID="4242", MASTER_ADDR="node001", **env_extra)
    if "OMP_NUM_THREADS" not in env_extra:
        del env["OMP_NUM_THREADS"]  # so the script derives it from SLURM_CPUS_PER_TASK
    proc = subprocess.run(["bash", str(script), *args], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=30)
    return proc, calls.read_text().splitlines() if calls.exists() else []


@pytest.mark.parametrize("script, ds_config, model", [
    (LARGE_SCRIPT, "ds_configs/bert_large_zero2.json", "large"),
    (BASE_SCRIPT, "ds_configs/bert_base_zero2.json", "base"),
])
def test_script_builds_pretrain_command(script, ds_config, model, tmp_path):
    proc, calls = run_script(script, tmp_path, args=["--meta_interval", "50"], EXTRA_ARGS="--seed 7",
                             SLURM_CPUS_PER_TASK="6")
    assert proc.returncode == 0, proc.stderr
    assert len(calls) == 1
    words = calls[0].split()
    # Slurm 22.05-23.02's srun does not inherit sbatch's --cpus-per-task: the script passes it on.
    assert words[:7] == ["srun", "--kill-on-bad-exit=1", "--cpus-per-task=6", "python", "-u", "-m",
                         "mometas_ds.pretrain"]
    flags = " ".join(words[7:])
    assert f"--deepspeed_config {ds_config} " in flags
    assert f"--model_config {model} " in flags
    assert "--train_files data/*.jsonl more.txt " in flags  # globs reach pretrain unexpanded
    assert "--resume auto" in flags
    assert flags.endswith("--seed 7 --meta_interval 50")  # EXTRA_ARGS, then "$@" last (argparse: last wins)
    assert "master node001:24242, OMP_NUM_THREADS=6" in proc.stdout  # port 20000 + job id % 10000


def test_script_model_dir_resume_python_and_missing_train_files(tmp_path):
    model_dir = tmp_path / "bert-large-local"
    model_dir.mkdir()
    proc, calls = run_script(LARGE_SCRIPT, tmp_path, MODEL=str(model_dir), RESUME="", PYTHON="/opt/py/bin/python")
    assert proc.returncode == 0, proc.stderr
    assert f"--model_name_or_path {model_dir}" in calls[0] and "--model_config" not in calls[0]
    assert "--resume" not in calls[0]
    assert " /opt/py/bin/python -u " in calls[0]
    assert "--cpus-per-task" not in calls[0]  # no SLURM_CPUS_PER_TASK: srun keeps its default

    env = clean_launch_env(SLURM_JOB_ID="1", MASTER_ADDR="node001")
    proc = subprocess.run(["bash", str(LARGE_SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "set TRAIN_FILES" in proc.stderr


@pytest.mark.parametrize("left, finished, requeued", [
    ("08:00", False, True),        # 480 s left, within REQUEUE_WITHIN_SECONDS=900: the pre-timeout signal
    ("1:08:00", False, False),     # over an hour left: a manual stop, not requeued
    ("UNLIMITED", False, False),
    ("08:00", True, False),        # the schedule finished (fresh hf_model/): nothing to resume
])
def test_requeue_decision_after_srun_returns(tmp_path, left, finished, requeued):
    out = tmp_path / "run"
    # A finished pretrain writes hf_model/ during the run (after the script's start stamp).
    finish = f"sleep 1; mkdir -p {out}/hf_model; touch {out}/hf_model/config.json" if finished else ""
    proc, calls = run_script(LARGE_SCRIPT, tmp_path, squeue_left=left, srun_also=finish, OUTPUT_DIR=str(out))
    assert proc.returncode == 0, proc.stderr
    assert ("scontrol requeue 4242" in calls) == requeued, (calls, proc.stdout)
