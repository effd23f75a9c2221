"""Fault injection for tests/integration/train/test_faults.py. TEST-ONLY: each hook reads an environment variable that
real runs never set, and does nothing without it.

The tests start every rank as its own process, so a fault can be given to one rank only.

  MOMETAS_FAULT_NONFINITE_LOSS=5,6,12-   micro-steps (the sampler's clock, from 0) whose loss this rank
                                         turns into NaN; "12-" means 12 and every later one
  MOMETAS_FAULT_NONFINITE_GRAD=9         micro-steps whose gradients this rank turns into NaN (loss stays finite)
  MOMETAS_FAULT_SLEEP_IN_SAVE=60         seconds rank 0 sleeps inside a checkpoint save, after every rank
                                         wrote its shards and before the tag is published; "60@4": in
                                         the save of step 4 only
  MOMETAS_FAULT_SLEEP_IN_SETUP=20        seconds rank 0 sleeps in data preparation while the others wait
  MOMETAS_FAULT_HANG_AT_STEP=6           this rank stops answering (sleeps an hour) when optimizer step 6 is done
  MOMETAS_FAULT_KILL_SHARD_WORKER=1/3)   the --num_proc worker building the shard whose label ends so (here:
                                         "FILE (part 1/3)") kills itself; read in data.shards (no torch there)
  MOMETAS_FAULT_BLOCK_SHARD_WORKER=.jsonl  the --num_proc worker building such a shard prints "fault injection:
                                         shard worker PID blocks" and sleeps for good; read in data.shards

Each hook logs a line starting with "fault injection:" when it fires, so a test can wait for it.

The variables are read once, when the trainer starts (``Faults.from_env``): a run without any gets None, and
its loop makes no fault call at all (one ``if`` per micro-step). The hooks ship in the package because the
tests inject them into real pre-training processes.
"""
from __future__ import annotations

import logging
import math
import os
import time
from typing import Mapping, Optional

import torch

logger = logging.getLogger("mometas_ds")

ENV_PREFIX = "MOMETAS_FAULT_"


def _step_set(spec: str):
    """A predicate for the steps a spec names: "5,6,9-11,20-"."""
    ranges = []
    for part in spec.split(","):
        lo, dash, hi = part.strip().partition("-")
        ranges.append((int(lo), int(lo) if not dash else (int(hi) if hi else None)))
    return lambda step: any(lo <= step and (hi is None or step <= hi) for lo, hi in ranges)


class _NaNGradient(torch.autograd.Function):
    """Identity forward; NaN gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.nan


class Faults:
    """The faults this process's MOMETAS_FAULT_* variables ask for."""

    def __init__(self, environ: Mapping[str, str]):
        def spec(name):
            return environ.get(ENV_PREFIX + name, "").strip()

        self._nan_loss = _step_set(spec("NONFINITE_LOSS")) if spec("NONFINITE_LOSS") else None
        self._nan_grad = _step_set(spec("NONFINITE_GRAD")) if spec("NONFINITE_GRAD") else None
        seconds, _, at = (spec("SLEEP_IN_SAVE") or "0").partition("@")
        self._sleep_in_save, self._sleep_in_save_at = float(seconds), int(at) if at else None
        self._sleep_in_setup = float(spec("SLEEP_IN_SETUP") or 0)
        self._hang_at = int(spec("HANG_AT_STEP")) if spec("HANG_AT_STEP") else None

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> Optional["Faults"]:
        """The faults asked for, or None when no MOMETAS_FAULT_ variable is set (every real run)."""
        environ = os.environ if environ is None else environ
        if not any(key.startswith(ENV_PREFIX) and value.strip() for key, value in environ.items()):
            return None
        return cls(environ)

    def nonfinite_loss(self, loss: torch.Tensor, micro_step: int) -> torch.Tensor:
        if self._nan_loss is None or not self._nan_loss(micro_step):
            return loss
        logger.warning("fault injection: NaN loss at micro-step %d", micro_step)
        return loss * math.nan

    def nonfinite_grad(self, loss: torch.Tensor, micro_step: int) -> torch.Tensor:
        if self._nan_grad is None or not self._nan_grad(micro_step):
            return loss
        logger.warning("fault injection: NaN gradients at micro-step %d", micro_step)
        return _NaNGradient.apply(loss)

    def sleep_in_save(self, step: int) -> None:
        if self._sleep_in_save > 0 and self._sleep_in_save_at in (None, step):
            logger.warning("fault injection: sleeping %.0f s before publishing checkpoint step%d",
                           self._sleep_in_save, step)
            time.sleep(self._sleep_in_save)

    def sleep_in_setup(self) -> None:
        """Rank 0's data preparation takes this long (a large corpus being tokenized) while the others wait."""
        if self._sleep_in_setup > 0:
            logger.warning("fault injection: sleeping %.0f s in data preparation", self._sleep_in_setup)
            time.sleep(self._sleep_in_setup)

    def hang_at_step(self, step: int) -> None:
        if self._hang_at is not None and self._hang_at == step:
            logger.warning("fault injection: hanging after step %d", step)
            time.sleep(3600)
