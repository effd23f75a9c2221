"""Ctrl-C (SIGINT), SIGTERM and SIGUSR1: finish the step, save a checkpoint, exit 0.

- The first of any of them asks the run to stop at the next step boundary (all ranks agree on the
  step through the trainer's all-reduce), save, and exit 0 with a line saying so.
- A second Ctrl-C (outside a save) exits at once with code 130, without saving; the last complete
  checkpoint is untouched (a checkpoint is published only once every rank wrote it).
- Any signal during a checkpoint save or the HF export changes nothing: the save finishes, the
  run exits 0.
- Once the run's work is done, the signals are ignored, so one landing while the process tears
  down (the interpreter restores the default action, "killed" = 143) cannot change the exit code.

SLURM sends USR1 (``--signal``) before the time limit and TERM at it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from typing import Callable, Optional

logger = logging.getLogger("mometas_ds")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
EXIT_AT_ONCE = 128 + signal.SIGINT  # the shell's code for a process ended by Ctrl-C


class StopSignals:
    """The run's signal handlers; ``on_stop`` is called once, at the first signal."""

    def __init__(self, rank: int, on_stop: Callable[[], None]):
        self.rank = rank
        self.on_stop = on_stop
        self.first: Optional[int] = None  # the signal that asked to stop
        self.interrupts = 0
        self._saving = 0

    def install(self) -> "StopSignals":
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        return self

    @property
    def signal_name(self) -> Optional[str]:
        return signal.Signals(self.first).name if self.first is not None else None

    @contextlib.contextmanager
    def saving(self):
        """A checkpoint save or export: signals are noted, never acted on, until it is done."""
        self._saving += 1
        try:
            yield
        finally:
            self._saving -= 1

    def _handle(self, signum, frame):
        name = f"signal {signum} ({signal.Signals(signum).name})"
        if signum == signal.SIGINT:
            self.interrupts += 1
        if self._saving:
            self._note(signum)
            logger.warning("rank %d: got %s during a checkpoint save: the save goes on, and the run stops at the "
                           "end of a step with a complete checkpoint", self.rank, name)
            return
        if self.first is None:
            self._note(signum)
            logger.warning("rank %d: got %s: will save a checkpoint at the end of this step and exit 0%s",
                           self.rank, name, " (Ctrl-C again to exit at once, without saving)"
                           if signum == signal.SIGINT else "")
            return
        if signum == signal.SIGINT and self.interrupts >= 2:
            # A second Ctrl-C: what a user means is "now". Nothing half-written is published.
            sys.stderr.write(f"mometas-pretrain: rank {self.rank}: second Ctrl-C: exiting at once without saving; "
                             "the last complete checkpoint is intact (continue with --resume)\n")
            sys.stderr.flush()
            os._exit(EXIT_AT_ONCE)
        logger.warning("rank %d: got %s: already stopping at the end of this step", self.rank, name)

    def _note(self, signum) -> None:
        if self.first is None:
            self.first = signum
            self.on_stop()


def install(rank: int, on_stop: Callable[[], None]) -> StopSignals:
    return StopSignals(rank, on_stop).install()


def ignore_from_now() -> None:
    """The run's work is saved: a signal from now on must not turn exit 0 into 'killed'."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
