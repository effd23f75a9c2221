"""Where a run stands: its counters (saved with every checkpoint), the random state of each rank, and the
seeds keyed by them."""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from deepspeed.accelerator import get_accelerator


@dataclass
class TrainState:
    step: int = 0               # optimizer steps done
    micro_step: int = 0         # micro-batches drawn
    num_updates: int = 0        # sampler updates done
    skipped_steps: int = 0      # micro-steps skipped for a non-finite loss
    skipped_updates: int = 0    # optimizer updates DeepSpeed skipped for a non-finite gradient norm (not fp16)
    consecutive_skips: int = 0  # both kinds since the last applied update (not saved: a resume starts at 0)

    def state_dict(self) -> dict:
        return {"step": self.step, "micro_step": self.micro_step, "num_updates": self.num_updates,
                "skipped_steps": self.skipped_steps, "skipped_updates": self.skipped_updates}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.micro_step = state["micro_step"]
        self.num_updates = state["num_updates"]
        self.skipped_steps = state.get("skipped_steps", 0)  # checkpoints written before they were counted
        self.skipped_updates = state.get("skipped_updates", 0)


def rng_state() -> dict:
    """This rank's random generators, for a checkpoint."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            # The device's generator drives dropout on a GPU (on the CPU it is the torch one).
            "accelerator": get_accelerator().get_rng_state()}


def set_rng_state(rng: dict) -> None:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if "accelerator" in rng:
        get_accelerator().set_rng_state(rng["accelerator"])


def seeded_rng_state(seed: int, rank: int, step: int) -> None:
    """Seed this rank's generators for a resume that has no saved state for it (more ranks than the run that
    saved): python, numpy, torch and the device from ``seed_for(seed, 17, rank, step)``. Dropout on such a
    rank is then reproducible for a given (--seed, rank, step) but is not a continuation of any saved stream."""
    value = seed_for(seed, 17, rank, step)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)
    get_accelerator().manual_seed_all(value)


def seed_for(*parts: int) -> int:
    """A 63-bit seed from integers, stable across processes (Python's hash() is salted)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 31
    return value & 0x7FFFFFFFFFFFFFFF
