"""Round robin: objective = step mod N, the sequential multi-objective scheme. The seed plays no part."""
from __future__ import annotations

import torch

from .base import Sampler
from .registry import register_sampler


@register_sampler("round_robin")
class RoundRobinSampler(Sampler):
    def __init__(self, num_objectives: int, seed: int = 0, interval: int = 100):
        super().__init__(num_objectives, seed, interval)
        self._probs = torch.full((self.num_objectives,), 1.0 / self.num_objectives, dtype=torch.float64)

    @property
    def probs(self) -> torch.Tensor:
        """The long-run share of each objective (uniform); the draw itself is not random."""
        return self._probs.clone()

    def _draw(self, step: int) -> int:
        return step % self.num_objectives
