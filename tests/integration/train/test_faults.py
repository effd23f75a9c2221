"""Faults lose nothing but the steps since the last checkpoint (issue 8).

Every run here is a real 2-rank CPU pre-training run whose ranks the test starts itself as two
processes (RANK/WORLD_SIZE/MASTER_* as torchrun sets them), so it can SIGKILL or signal one rank,
or give one rank a fault hook (mometas_ds/train/faults.py, test-only environment variables). After each
fault the next run resumes, and the objectives, losses and sampler states logged must equal those
of an uninterrupted run.
"""
import json
import math
import os
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch

from mometas_ds import checkpoint as ckpt
from tests.pretrain_helpers import (
    CPU_CONFIG, REPO_ROOT, free_port, make_corpus_and_tokenizer, pretrain_args, read_jsonl, read_trace, run_pretrain,
    subprocess_env,
)

MAX_STEPS = 16
SAVE_STEPS = 4
_LAUNCHER_VARS = ("SLURM_", "OMPI_", "PMI_", "MPI_", "CROSS_", "TORCHELASTIC", "MASTER_", "MOMETAS_FAULT_",
                  "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE")


class TwoRanks:
    """One run: rank 0 and rank 1 as separate processes, each logging to OUT.TAG.rankR.log."""

    def __init__(self, assets, out, extra=(), faults=({}, {}), tag="run"):
        args = pretrain_args(assets["corpus"], assets["tokenizer"], out, assets["cache"], max_steps=MAX_STEPS,
                             extra=["--save_steps", str(SAVE_STEPS)] + list(extra))
        port = str(free_port())
        self.out = out
        self.logs = [f"{out}.{tag}.rank{r}.log" for r in range(2)]
        self.procs = []
        for rank in range(2):
            env = {k: v for k, v in subprocess_env().items() if not k.startswith(_LAUNCHER_VARS)}
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
            env.update(faults[rank])
            with open(self.logs[rank], "w") as log:
                self.procs.append(subprocess.Popen([sys.executable, "-m", "mometas_ds.pretrain"] + args, env=env,
                                                   cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT))

    def log(self, rank: int) -> str:
        with open(self.logs[rank], encoding="utf-8", errors="replace") as f:
            return f.read()

    def steps_logged(self) -> int:
        path = os.path.join(self.out, "metrics.jsonl")
        if not os.path.exists(path):
            return 0
        with open(path, "rb") as f:
            return f.read().count(b"\n")

    def wait_until(self, condition, what: str, timeout: float = 240):
        deadline = time.monotonic() + timeout
        while not condition():
            for rank, proc in enumerate(self.procs):
                if proc.poll() is not None:
                    pytest.fail(f"rank {rank} exited ({proc.returncode}) while waiting for {what}:\n"
                                f"{self.log(rank)[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}:\n{self.log(0)[-3000:]}")
            time.sleep(0.05)

    def wait(self, timeout: float = 240) -> list:
        for rank, proc in enumerate(self.procs):
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pytest.fail(f"rank {rank} did not end within {timeout} s:\n{self.log(rank)[-3000:]}")
        return [proc.returncode for proc in self.procs]

    def kill_left(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def runs():
    """Starts runs; whatever a failing test leaves running is killed (by pid)."""
    started = []

    def start(*args, **kwargs):
        run = TwoRanks(*args, **kwargs)
        started.append(run)
        return run

    yield start
    for run in started:
        run.kill_left()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("fault_assets"))
    corpus, tokenizer_dir = make_corpus_and_tokenizer(root)
    return {"root": root, "corpus": corpus, "tokenizer": tokenizer_dir, "cache": os.path.join(root, "cache")}


@pytest.fixture(scope="module")
def reference(assets):
    """The uninterrupted run every faulty one must end up equal to."""
    out = os.path.join(assets["root"], "reference")
    run = TwoRanks(assets, out)
    try:
        assert run.wait() == [0, 0], run.log(0)[-3000:] + run.log(1)[-3000:]
    finally:
        run.kill_left()
    return out


def _ok(run):
    codes = run.wait()
    assert codes == [0, 0], f"exit codes {codes}\n{run.log(0)[-3000:]}\n{run.log(1)[-3000:]}"


def _latest(out):
    return ckpt.latest_complete_tag(os.path.join(out, "checkpoints"))


def _step_of(tag):
    return int(tag[len("step"):])


def _assert_equals_reference(out, reference):
    """Objectives drawn, losses logged and sampler states after all restarts equal the uninterrupted run's."""
    got, want = read_jsonl(os.path.join(out, "metrics.jsonl")), read_jsonl(os.path.join(reference, "metrics.jsonl"))
    assert [m["step"] for m in got] == list(range(1, MAX_STEPS + 1)), "each step logged once, up to the end"
    assert [m["objective"] for m in got] == [m["objective"] for m in want]
    assert [m["loss"] for m in got] == [m["loss"] for m in want]
    for rank in range(2):
        assert read_trace(out, rank) == read_trace(reference, 0)
    got_s, want_s = read_jsonl(os.path.join(out, "sampler.jsonl")), read_jsonl(os.path.join(reference, "sampler.jsonl"))
    assert [(u["step"], u["probs"]) for u in got_s] == [(u["step"], u["probs"]) for u in want_s]
    assert _latest(out) == ckpt.tag_for(MAX_STEPS)
    assert os.path.isfile(os.path.join(out, "hf_model", "config.json"))


@pytest.mark.integration
def test_killed_dead_and_hung_ranks_cost_only_the_steps_since_the_last_checkpoint(assets, reference, runs, tmp_path):
    out = str(tmp_path / "run")

    # 1. One rank is SIGKILLed during a step: the other ends by itself, with a message.
    run = runs(assets, out, tag="kill1")
    run.wait_until(lambda: run.steps_logged() >= SAVE_STEPS + 1, "a step after the first checkpoint")
    run.procs[1].send_signal(signal.SIGKILL)
    codes = run.wait(timeout=120)
    assert codes[1] == -signal.SIGKILL and codes[0] not in (0, None)
    assert "another rank died or hangs" in run.log(0) and "--resume" in run.log(0)
    resume_from = _latest(out)
    assert resume_from is not None and _step_of(resume_from) % SAVE_STEPS == 0

    # 2. Both ranks are SIGKILLed in a save, after every shard is written but before it is published.
    run = runs(assets, out, extra=["--resume"], faults=({"MOMETAS_FAULT_SLEEP_IN_SAVE": "600"}, {}), tag="kill2")
    run.wait_until(lambda: "fault injection: sleeping" in run.log(0), "rank 0 to sleep in a save")
    for proc in run.procs:
        proc.send_signal(signal.SIGKILL)
    run.wait()
    assert f"resumed from {os.path.join(out, 'checkpoints', resume_from)} " in run.log(0)
    half_saved = os.path.join(out, "checkpoints", ckpt.tag_for(_step_of(resume_from) + SAVE_STEPS))
    assert os.path.isfile(os.path.join(half_saved, "zero_pp_rank_1_mp_rank_00_optim_states.pt"))
    assert not ckpt.is_complete(os.path.join(out, "checkpoints"), os.path.basename(half_saved))
    assert _latest(out) == resume_from, "a checkpoint caught mid-save is never taken as the latest"

    # 3. A rank hangs: the other gives up after --dist_timeout_minutes (9 s) instead of waiting forever.
    # Rank 0's data preparation takes longer than that (12 s): waiting for it is not bound by that timeout.
    hang_at = _step_of(resume_from) + 2
    run = runs(assets, out, extra=["--resume", "--dist_timeout_minutes", "0.15"],
               faults=({"MOMETAS_FAULT_SLEEP_IN_SETUP": "12"}, {"MOMETAS_FAULT_HANG_AT_STEP": str(hang_at)}),
               tag="hang")
    codes = [run.procs[0].wait(timeout=180), run.procs[1].poll()]
    assert codes[1] is None, "rank 1 is still hanging"
    assert codes[0] != 0
    log0 = run.log(0)
    assert f"resumed from {os.path.join(out, 'checkpoints', resume_from)} " in log0
    assert "Timed out" in log0 and "--dist_timeout_minutes 0.15" in log0, log0[-3000:]
    assert "fault injection: sleeping 12 s in data preparation" in log0
    assert f"stopped at step {hang_at} " in log0
    run.kill_left()  # what the launcher or srun does to the rest of a failed job

    # 4. The restart from the last complete checkpoint finishes exactly like the uninterrupted run.
    run = runs(assets, out, extra=["--resume"], tag="final")
    _ok(run)
    assert f"resumed from {os.path.join(out, 'checkpoints', resume_from)} " in run.log(0)
    _assert_equals_reference(out, reference)


def _assert_prefix_equals_reference(out, reference, steps):
    got, want = read_jsonl(os.path.join(out, "metrics.jsonl")), read_jsonl(os.path.join(reference, "metrics.jsonl"))
    assert [m["step"] for m in got] == list(range(1, steps + 1))
    assert [(m["objective"], m["loss"]) for m in got] == [(m["objective"], m["loss"]) for m in want[:steps]]
    for rank in range(2):
        assert read_trace(out, rank) == read_trace(reference, 0)[:steps]


@pytest.mark.integration
def test_failed_save_then_graceful_stops_on_one_and_on_every_rank(assets, reference, runs, tmp_path):
    out = str(tmp_path / "run")
    checkpoints = os.path.join(out, "checkpoints")

    # 1. Rank 1's disk fills up mid-run (RLIMIT_FSIZE binds root too; chmod would not): the save of
    # step 8 fails on rank 1, every rank stops with the path, step 4 stays the latest and intact.
    run = runs(assets, out, faults=({"MOMETAS_FAULT_SLEEP_IN_SAVE": "4"}, {}), tag="disk_full")
    run.wait_until(lambda: "fault injection: sleeping 4 s before publishing checkpoint step4" in run.log(0),
                   "the first save")
    resource.prlimit(run.procs[1].pid, resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
    codes = run.wait()
    assert codes == [1, 1], f"{codes}\n{run.log(0)[-3000:]}\n{run.log(1)[-3000:]}"
    for rank in range(2):
        log = run.log(rank)
        assert f"saving checkpoint {os.path.join(checkpoints, 'step8')} failed" in log, log[-3000:]
        shard = os.path.join(checkpoints, 'step8', 'zero_pp_rank_1_mp_rank_00_optim_states.pt')
        assert f"rank 1: writing {shard}" in log
        assert f"{os.path.join(checkpoints, 'step4')}, is intact" in log
    assert _latest(out) == "step4" and not ckpt.is_complete(checkpoints, "step8")

    # 2. SIGUSR1 reaches rank 1 only (as when SLURM's signals land at different steps): both ranks
    # finish the same step, save it and exit 0.
    run = runs(assets, out, extra=["--resume"], tag="usr1_one_rank")
    run.wait_until(lambda: "resumed from" in run.log(0) and run.steps_logged() >= 6, "step 6")
    run.procs[1].send_signal(signal.SIGUSR1)
    _ok(run)
    assert "resumed from " + os.path.join(checkpoints, "step4") + " " in run.log(0)
    assert f"got signal {int(signal.SIGUSR1)}" in run.log(1) and "got signal" not in run.log(0)
    first_stop = len(read_jsonl(os.path.join(out, "metrics.jsonl")))
    assert f"stopped at step {first_stop} (signal)" in run.log(0)
    assert _latest(out) == ckpt.tag_for(first_stop) and first_stop < MAX_STEPS
    _assert_prefix_equals_reference(out, reference, first_stop)

    # 3. SIGTERM reaches both ranks; the resume after the first stop continued exactly.
    run = runs(assets, out, extra=["--resume"], tag="term_both")
    run.wait_until(lambda: "resumed from" in run.log(0) and run.steps_logged() >= first_stop + 2,
                   f"step {first_stop + 2}")
    for proc in run.procs:
        proc.send_signal(signal.SIGTERM)
    _ok(run)
    assert f"resumed from {os.path.join(checkpoints, ckpt.tag_for(first_stop))} " in run.log(0)
    second_stop = len(read_jsonl(os.path.join(out, "metrics.jsonl")))
    assert f"stopped at step {second_stop} (signal)" in run.log(0)
    assert _latest(out) == ckpt.tag_for(second_stop) and first_stop < second_stop < MAX_STEPS
    _assert_prefix_equals_reference(out, reference, second_stop)


@pytest.mark.integration
def test_non_finite_losses_and_gradients_are_skipped_on_every_rank_then_stop_the_run(assets, runs, tmp_path):
    out = str(tmp_path / "run")
    # Rank 1's loss is NaN at micro-steps 5 and 6, then from 13 on; rank 0's gradients at micro-step 9.
    run = runs(assets, out, extra=["--max_skipped_steps", "3"],
               faults=({"MOMETAS_FAULT_NONFINITE_GRAD": "9"}, {"MOMETAS_FAULT_NONFINITE_LOSS": "5,6,13-"}))
    codes = run.wait()
    assert codes == [1, 1], f"{codes}\n{run.log(0)[-3000:]}\n{run.log(1)[-3000:]}"
    # micro-steps 0-4 -> steps 1-5; 5, 6 skipped; 7, 8 -> steps 6, 7; 9 -> step 8 with its update skipped by
    # DeepSpeed (saved: the weights are untouched); 10-12 -> steps 9-11; 13, 14, 15 skipped -> stop.
    checkpoints = os.path.join(out, "checkpoints")
    for rank in range(2):
        log = run.log(rank)
        assert "stopping at step 11: 3 consecutive skips" in log and "--max_skipped_steps 3" in log, log[-3000:]
        assert f"the last good one is {os.path.join(checkpoints, 'step8')}" in log
        for micro_step in (5, 6, 13, 14, 15):
            assert f"non-finite loss at micro-step {micro_step} " in log
        assert "non-finite gradient norm at step 8" in log
    assert _latest(out) == "step8" and not os.path.exists(os.path.join(checkpoints, "step11"))

    metrics = read_jsonl(os.path.join(out, "metrics.jsonl"))
    assert [m["step"] for m in metrics] == list(range(1, 12))
    assert [m["skipped_micro_steps"] for m in metrics] == [0] * 5 + [2] * 6
    assert [m["skipped_updates"] for m in metrics] == [0] * 7 + [1] * 4
    assert metrics[7]["grad_norm"] is None and all(m["grad_norm"] is not None for i, m in enumerate(metrics) if i != 7)
    assert all(m["loss"] == m["loss"] for m in metrics), "no non-finite loss is logged"
    # Both ranks drew the same objective for every micro-step, skipped ones included.
    assert read_trace(out, 0) == read_trace(out, 1) and len(read_trace(out, 0)) == 16

    # The sampler only ever saw finite losses: every update after the baseline got a finite reward.
    updates = read_jsonl(os.path.join(out, "sampler.jsonl"))
    assert [u["step"] for u in updates] == [0, 5, 10]
    assert updates[0]["reward"] is None and all(u["reward"] is not None and not u["skipped"] for u in updates[1:])
    for u in updates:
        assert all(v == v and abs(v) != float("inf") for v in u["val_losses"].values())
        assert abs(sum(u["probs"].values()) - 1) < 1e-9


def test_output_dir_that_cannot_be_written_stops_before_training(assets, tmp_path, capsys):
    import torch.distributed as dist

    from mometas_ds.pretrain import main

    not_a_dir = tmp_path / "a_file"
    not_a_dir.write_text("root can write anywhere, but not below a file\n")
    out = str(not_a_dir / "run")
    assert main(pretrain_args(assets["corpus"], assets["tokenizer"], out, assets["cache"])) == 2
    err = capsys.readouterr().err
    assert "--output_dir" in err and out in err
    assert not dist.is_initialized(), "detected before any process group or work"


@pytest.mark.integration
@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="DeepSpeed refuses fp16 on this CPU (no mkldnn fp16): GPU only")
def test_fp16_loss_scaler_skips_are_not_counted_as_faults(assets, tmp_path, monkeypatch):
    with open(CPU_CONFIG) as f:
        ds_config = json.load(f)
    ds_config["fp16"] = {"enabled": True}
    ds_config["bf16"] = {"enabled": False}
    config = str(tmp_path / "fp16.json")
    with open(config, "w") as f:
        json.dump(ds_config, f)
    out = str(tmp_path / "run")
    # Five overflowing steps in a row: the loss scaler's business, never a stop at --max_skipped_steps 2.
    monkeypatch.setenv("MOMETAS_FAULT_NONFINITE_GRAD", "2-6")
    result = run_pretrain(pretrain_args(assets["corpus"], assets["tokenizer"], out, assets["cache"], max_steps=10,
                                        config=config, extra=["--max_skipped_steps", "2"]))
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = read_jsonl(os.path.join(out, "metrics.jsonl"))
    assert [m["step"] for m in metrics] == list(range(1, 11))
    assert all(m["skipped_updates"] == 0 and m["skipped_micro_steps"] == 0 for m in metrics)
    assert all(m["grad_norm"] is None for m in metrics[2:7]), "DeepSpeed's loss scaler skipped these updates"
    assert all(math.isfinite(m["loss"]) for m in metrics)
