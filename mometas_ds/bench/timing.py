"""Seconds per phase of the benchmark, and one arm's share of one round."""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, List


class PhaseTimer:
    """Seconds per named phase. ``sync`` waits for queued device work so that GPU time lands where it is spent."""

    def __init__(self, sync: Callable[[], None]):
        self.sync = sync
        self.totals: Dict[str, float] = defaultdict(float)
        self.phase = "train"  # corruption time is booked to "<phase>_corrupt"

    @contextmanager
    def measure(self, key: str):
        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.totals[key] += time.perf_counter() - start

    def snapshot(self) -> Dict[str, float]:
        return dict(self.totals)


def delta(after: Dict[str, float], before: Dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


@dataclass
class Block:
    """One arm's share of one round: its steps' and sampler updates' timed seconds."""

    arm: str
    round: int
    steps: int = 0
    seconds: float = 0.0
    micro_steps: List[tuple] = field(default_factory=list)  # (objective, seconds) per micro-step
    updates: int = 0
    meta_update_s: float = 0.0
    meta_measure_s: float = 0.0
    meta_corrupt_s: float = 0.0
    train_corrupt_s: float = 0.0
