"""The run's log files, one line per event: metrics.jsonl (one per optimizer step, rank 0), sampler.jsonl (one
per sampler update, rank 0) and trace/rank<N>.txt (one objective name per micro-step, every rank); also the
progress bar and DeepSpeed's monitor (TensorBoard, W&B, CSV, as its config asks)."""
from __future__ import annotations

import json
import math
import os
from typing import Optional, Sequence

from tqdm.auto import tqdm

from mometas_ds.train.state import TrainState
from mometas_ds.config.paths import RunPaths


class RunLogs:
    def __init__(self, output_dir: str, rank: int, objective_names: Sequence[str], monitor=None):
        self.output_dir, self.rank, self.objective_names = output_dir, rank, objective_names
        self._monitor_backend = monitor
        self.metrics = self.sampler = self.trace = self.progress = None

    def rewind(self, state: TrainState) -> None:
        """Cut the run's logs back to the resumed state, so steps redone after a crash are logged once.

        Every step writes one metrics line, every sampler update one sampler line, every micro-step
        one trace line; a kill may also have left half a line.
        """
        out = RunPaths(self.output_dir)
        keep_first_lines(out.trace(self.rank), state.micro_step)
        if self.rank == 0:
            keep_first_lines(out.metrics, state.step)
            keep_first_lines(out.sampler, state.num_updates)

    def open(self, state: TrainState, max_steps: int) -> "RunLogs":
        out = RunPaths(self.output_dir)
        if self.rank == 0:
            self.metrics = open(out.metrics, "a")
            self.sampler = open(out.sampler, "a")
            self.progress = tqdm(total=max_steps, initial=state.step, desc="pre-training", mininterval=1.0)
        self.trace = open(out.trace(self.rank), "a")
        return self

    def close(self) -> None:
        for f in (self.metrics, self.sampler, self.trace):
            if f is not None:
                f.close()
        if self.progress is not None:
            self.progress.close()

    def step(self, record: dict, show_progress: bool) -> None:
        """One optimizer step's metrics line (rank 0)."""
        if self.metrics is None:
            return
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        self.monitor([("Train/loss", record["loss"]), ("Train/lr", record["lr"])], record["step"])
        self.progress.update(1)
        if show_progress:
            self.progress.set_postfix(loss=f"{record['loss']:.3f}", objective=record["objective"],
                                      samples_s=f"{record['samples_per_s']:.1f}")

    def sampler_update(self, step: int, probs, info: dict) -> None:
        """One sampler update's line (rank 0): the probabilities after it, and what the update measured."""
        if self.sampler is None:
            return
        names = self.objective_names
        val_losses = info.get("val_losses")
        record = {
            "step": step,
            "probs": dict(zip(names, [float(p) for p in probs.tolist()])),
            "reward": as_float(info.get("reward")),
            "val_losses": dict(zip(names, [as_float(v) for v in val_losses])) if val_losses is not None else None,
            "policy_loss": as_float(info.get("policy_loss")),
            "skipped": bool(info.get("skipped", False)),
        }
        self.sampler.write(json.dumps(record) + "\n")
        self.sampler.flush()
        self.monitor([(f"Sampler/p_{name}", p) for name, p in record["probs"].items()], step)

    def monitor(self, events, step: int) -> None:
        monitor = self._monitor_backend
        if monitor is not None and getattr(monitor, "enabled", False):
            monitor.write_events([(tag, value, step) for tag, value in events])


def keep_first_lines(path: str, count: int) -> None:
    """Truncate a text file after its first ``count`` complete lines (a half-written last line goes too)."""
    if not os.path.isfile(path):
        return
    size = 0
    with open(path, "rb") as f:
        for _ in range(count):
            line = f.readline()
            if not line.endswith(b"\n"):
                break
            size += len(line)
    os.truncate(path, size)


def as_float(value) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
