"""Ctrl-C saves like SIGTERM; a second Ctrl-C exits at once; signals during a save change nothing (issue 21).

Real single-rank CPU runs (``python -m mometas_ds.pretrain``), signalled by the test. The save is
slowed with the test-only fault hook MOMETAS_FAULT_SLEEP_IN_SAVE so signals land inside it, and a
step is held with MOMETAS_FAULT_HANG_AT_STEP so the second Ctrl-C lands outside any save.
"""
import os
import signal
import subprocess
import sys
import time

import pytest

from mometas_ds import checkpoint as ckpt
from mometas_ds.train.signals import EXIT_AT_ONCE, StopSignals
from tests.pretrain_helpers import REPO_ROOT, pretrain_args, read_jsonl, subprocess_env

MAX_STEPS = 60
# No periodic save before the signals: a tiny step takes ~30 ms, so a signal meant for "mid-step" could
# otherwise land in a periodic save (that case is covered by test_stop_signal_bookkeeping_without_a_run).
SAVE_STEPS = 1000

pytestmark = pytest.mark.integration  # every test here runs real pre-training or the demo


class Run:
    def __init__(self, assets, out, extra=(), env=None, tag="run"):
        args = pretrain_args(assets["corpus"], assets["tokenizer"], out, assets["cache"], max_steps=MAX_STEPS,
                             extra=["--save_steps", str(SAVE_STEPS)] + list(extra))
        self.out, self.log_path = out, f"{out}.{tag}.log"
        full_env = {k: v for k, v in subprocess_env().items() if not k.startswith("MOMETAS_FAULT_")}
        full_env.update(env or {})
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "mometas_ds.pretrain"] + args, env=full_env,
                                         cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def steps_logged(self) -> int:
        path = os.path.join(self.out, "metrics.jsonl")
        if not os.path.exists(path):
            return 0
        with open(path, "rb") as f:
            return f.read().count(b"\n")

    def wait_until(self, condition, what, timeout=240):
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"exited ({self.proc.returncode}) while waiting for {what}:\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}:\n{self.log()[-4000:]}")
            time.sleep(0.05)

    def wait(self, timeout=240) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"did not end within {timeout} s:\n{self.log()[-4000:]}")

    def kill_left(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def runs():
    started = []

    def start(*args, **kwargs):
        run = Run(*args, **kwargs)
        started.append(run)
        return run

    yield start
    for run in started:
        run.kill_left()


def test_ctrl_c_saves_and_exits_0_a_second_one_exits_at_once_and_resume_continues(assets, runs, tmp_path):
    out = str(tmp_path / "run")
    checkpoints = os.path.join(out, "checkpoints")

    # 1. Ctrl-C mid-run: the step finishes, a checkpoint is saved, exit 0 with a line saying so.
    #    TERM, USR1, INT and TERM again while that save is under way change nothing.
    run = runs(assets, out, env={"MOMETAS_FAULT_SLEEP_IN_SAVE": "5"}, tag="int")
    run.wait_until(lambda: run.steps_logged() >= 3, "step 3")
    run.proc.send_signal(signal.SIGINT)
    marker = "got signal 2 (SIGINT): will save a checkpoint at the end of this step and exit 0"
    run.wait_until(lambda: marker in run.log(), "the first Ctrl-C to be noted")
    run.wait_until(lambda: "fault injection: sleeping" in run.log().split(marker, 1)[1], "the final save")
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGTERM):
        run.proc.send_signal(sig)
        time.sleep(0.3)
    code = run.wait()
    log = run.log()
    assert code == 0, log[-4000:]
    assert "Traceback" not in log
    assert log.count("during a checkpoint save: the save goes on") == 4, log[-4000:]
    stop = len(read_jsonl(os.path.join(out, "metrics.jsonl")))
    assert 3 <= stop < MAX_STEPS
    assert f"stopped at step {stop} (signal)" in log
    saved = os.path.join(checkpoints, f"step{stop}")
    line = f"mometas-pretrain: stopped by SIGINT at step {stop}: checkpoint {saved} saved; continue with --resume"
    assert line in log
    assert ckpt.latest_complete_tag(checkpoints) == f"step{stop}" and ckpt.is_complete(checkpoints, f"step{stop}")

    # 2. The resume continues from there; a second Ctrl-C while a step is held exits at once (130)
    #    without saving, and the checkpoint of step `stop` stays the latest, complete.
    run = runs(assets, out, extra=["--resume"], env={"MOMETAS_FAULT_HANG_AT_STEP": str(stop + 1)}, tag="int_int")
    run.wait_until(lambda: f"fault injection: hanging after step {stop + 1}" in run.log(), f"step {stop + 1}")
    assert f"resumed from {os.path.join(checkpoints, f'step{stop}')} at step {stop}" in run.log()
    run.proc.send_signal(signal.SIGINT)
    run.wait_until(lambda: "got signal 2 (SIGINT): will save" in run.log(), "the first Ctrl-C to be noted")
    started = time.monotonic()
    run.proc.send_signal(signal.SIGINT)
    code = run.wait(timeout=30)
    assert code == EXIT_AT_ONCE and time.monotonic() - started < 30, run.log()[-4000:]
    assert "second Ctrl-C: exiting at once without saving; the last complete checkpoint is intact" in run.log()
    assert ckpt.latest_complete_tag(checkpoints) == f"step{stop}" and ckpt.is_complete(checkpoints, f"step{stop}")
    assert not os.path.exists(os.path.join(checkpoints, f"step{stop + 1}"))

    # 3. The next resume runs to the end: every step logged once.
    run = runs(assets, out, extra=["--resume"], tag="final")
    code = run.wait()
    assert code == 0, run.log()[-4000:]
    assert f"resumed from {os.path.join(checkpoints, f'step{stop}')} at step {stop}" in run.log()
    assert [m["step"] for m in read_jsonl(os.path.join(out, "metrics.jsonl"))] == list(range(1, MAX_STEPS + 1))
    assert ckpt.latest_complete_tag(checkpoints) == f"step{MAX_STEPS}"
    assert os.path.isfile(os.path.join(out, "hf_model", "model.safetensors"))


def test_stop_signal_bookkeeping_without_a_run():
    """The handler's decisions, called directly (no handler is installed in the test process)."""
    stops = []
    signals = StopSignals(rank=0, on_stop=lambda: stops.append(1))
    signals._handle(signal.SIGUSR1, None)
    signals._handle(signal.SIGTERM, None)  # already stopping: nothing more
    assert stops == [1] and signals.signal_name == "SIGUSR1"
    with signals.saving():
        for _ in range(3):
            signals._handle(signal.SIGINT, None)  # in a save: never exits, whatever the count
    assert stops == [1] and signals.interrupts == 3

    fresh = StopSignals(rank=0, on_stop=lambda: stops.append(2))
    with fresh.saving():
        fresh._handle(signal.SIGTERM, None)  # a first signal during a periodic save still asks to stop
    assert stops == [1, 2] and fresh.signal_name == "SIGTERM"


def test_ctrl_c_in_the_demo_reaches_the_ranks_only_they_save_and_keep_continues(tmp_path):
    """The demo runs pre-training under DeepSpeed's launcher, whose runner would die of the Ctrl-C with a
    traceback and whose launch.py would kill the ranks: the demo passes the signal to the ranks only."""
    out = str(tmp_path / "demo")
    log_path = str(tmp_path / "demo.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mometas_ds.cli.demo", "--ranks", "1", "--max_steps", "300",
                                 "--output_dir", out], env=subprocess_env(), cwd=str(tmp_path), stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        metrics = os.path.join(out, "metrics.jsonl")
        while not (os.path.exists(metrics) and open(metrics).read().count("\n") >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, open(log_path).read()[-4000:]
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=240) == 0, open(log_path).read()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = open(log_path).read()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-4000:]
    assert "mometas-pretrain: stopped by SIGINT at step" in text
    assert "run the demo again with --keep" in text
    assert "fine-tuning skipped" in text
    checkpoints = os.path.join(out, "checkpoints")
    stop = len(read_jsonl(metrics))
    assert ckpt.latest_complete_tag(checkpoints) == f"step{stop}" and stop < 300

    # --keep continues that run (here to a shorter end, to keep the test short).
    result = subprocess.run([sys.executable, "-m", "mometas_ds.cli.demo", "--ranks", "1", "--max_steps", str(stop + 3),
                             "--output_dir", out, "--keep"], env=subprocess_env(), cwd=str(tmp_path),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert f"resumed from {os.path.join(checkpoints, f'step{stop}')} at step {stop}" in result.stdout + result.stderr
    assert [m["step"] for m in read_jsonl(metrics)] == list(range(1, stop + 4))
