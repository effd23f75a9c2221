"""Uniform: every objective with probability 1/N at every step."""
from __future__ import annotations

import torch

from mometas_ds.samplers.base import Sampler
from mometas_ds.samplers.registry import register_sampler


@register_sampler("uniform")
class UniformSampler(Sampler):
    def __init__(self, num_objectives: int, seed: int = 0):
        super().__init__(num_objectives, seed)
        self._probs = torch.full((self.num_objectives,), 1.0 / self.num_objectives, dtype=torch.float64)

    @property
    def probs(self) -> torch.Tensor:
        return self._probs.clone()
