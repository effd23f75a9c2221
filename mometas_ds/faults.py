"""Fault injection for tests/test_faults.py. TEST-ONLY: each hook reads an environment variable that
real runs never set, and does nothing without it.

The tests start every rank as its own process, so a fault can be given to one rank only.

  MOMETAS_FAULT_NONFINITE_LOSS=5,6,12-   micro-steps (the sampler's clock, from 0) whose loss this rank
                                         turns into NaN; "12-" means 12 and every later one
  MOMETAS_FAULT_NONFINITE_GRAD=9         micro-steps whose gradients this rank turns into NaN (loss stays finite)
  MOMETAS_FAULT_SLEEP_IN_SAVE=60         seconds rank 0 sleeps inside a checkpoint save, after every rank
                                         wrote its shards and before the tag is published
  MOMETAS_FAULT_SLEEP_IN_SETUP=20        seconds rank 0 sleeps in data preparation while the others wait
  MOMETAS_FAULT_HANG_AT_STEP=6           this rank stops answering (sleeps an hour) when optimizer step 6 is done
  MOMETAS_FAULT_KILL_SHARD_WORKER=1/3)   the --num_proc worker building the shard whose label ends so (here:
                                         "FILE (part 1/3)") kills itself; read in data.shards (no torch there)
  MOMETAS_FAULT_BLOCK_SHARD_WORKER=.jsonl  the --num_proc worker building such a shard prints "fault injection:
                                         shard worker PID blocks" and sleeps for good; read in data.shards

Each hook logs a line starting with "fault injection:" when it fires, so a test can wait for it.
"""
from __future__ import annotations

import logging
import math
import os
import time

import torch

logger = logging.getLogger("mometas_ds")

ENV_PREFIX = "MOMETAS_FAULT_"


def _steps(var: str, step: int) -> bool:
    """Whether ``step`` is in the set the variable names: "5,6,9-11,20-"."""
    spec = os.environ.get(var, "").strip()
    if not spec:
        return False
    for part in spec.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not dash:
            if step == int(lo):
                return True
        elif int(lo) <= step and (not hi or step <= int(hi)):
            return True
    return False


def nonfinite_loss(loss: torch.Tensor, micro_step: int) -> torch.Tensor:
    if not _steps(ENV_PREFIX + "NONFINITE_LOSS", micro_step):
        return loss
    logger.warning("fault injection: NaN loss at micro-step %d", micro_step)
    return loss * math.nan


class _NaNGradient(torch.autograd.Function):
    """Identity forward; NaN gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.nan


def nonfinite_grad(loss: torch.Tensor, micro_step: int) -> torch.Tensor:
    if not _steps(ENV_PREFIX + "NONFINITE_GRAD", micro_step):
        return loss
    logger.warning("fault injection: NaN gradients at micro-step %d", micro_step)
    return _NaNGradient.apply(loss)


def sleep_in_save(step: int) -> None:
    seconds = float(os.environ.get(ENV_PREFIX + "SLEEP_IN_SAVE", "0") or 0)
    if seconds > 0:
        logger.warning("fault injection: sleeping %.0f s before publishing checkpoint step%d", seconds, step)
        time.sleep(seconds)


def sleep_in_setup() -> None:
    """Rank 0's data preparation takes this long (a large corpus being tokenized) while the others wait."""
    seconds = float(os.environ.get(ENV_PREFIX + "SLEEP_IN_SETUP", "0") or 0)
    if seconds > 0:
        logger.warning("fault injection: sleeping %.0f s in data preparation", seconds)
        time.sleep(seconds)


def hang_at_step(step: int) -> None:
    at = os.environ.get(ENV_PREFIX + "HANG_AT_STEP", "").strip()
    if at and int(at) == step:
        logger.warning("fault injection: hanging after step %d", step)
        time.sleep(3600)
