"""Temperature: a distribution annealed linearly from ``start_weights`` to ``end_weights`` over training.

Schedule: with t = min(step / total_steps, 1),
    p(step) = (1 - t) * start + t * end        (start, end normalised to sum to 1),
so step 0 draws from ``start``, steps >= total_steps from ``end``. A linear mix (rather than
a geometric one) keeps objectives with weight 0 at one end well defined. ``start_weights``
defaults to uniform; ``end_weights`` and ``total_steps`` are required. ``probs`` reports
p at the most recently sampled step.
"""
from __future__ import annotations

import bisect
from typing import List, Optional, Sequence

import torch

from mometas_ds.samplers.base import Sampler, check_int, check_weights, inverse_cdf, uniform_from
from mometas_ds.samplers.registry import register_sampler


@register_sampler("temperature")
class TemperatureSampler(Sampler):
    def __init__(self, num_objectives: int, seed: int = 0, *,
                 start_weights: Optional[Sequence[float]] = None, end_weights: Optional[Sequence[float]] = None,
                 total_steps: Optional[int] = None):
        super().__init__(num_objectives, seed)
        owner = self._owner()
        n = self.num_objectives
        if end_weights is None:
            raise ValueError(f"{owner}: end_weights is required (one non-negative number per objective)")
        if total_steps is None:
            raise ValueError(f"{owner}: total_steps is required (the step at which end_weights is reached)")
        self.start = check_weights(owner, "start_weights", [1.0] * n if start_weights is None else start_weights, n)
        self.end = check_weights(owner, "end_weights", end_weights, n)
        self.total_steps = check_int(owner, "total_steps", total_steps, minimum=1)
        self.config.update(start_weights=self.start.tolist(), end_weights=self.end.tolist(),
                           total_steps=self.total_steps)
        self._start_list, self._end_list = self.start.tolist(), self.end.tolist()
        self.last_step = 0

    def probs_at(self, step: int) -> torch.Tensor:
        t = min(step / self.total_steps, 1.0)
        return (1.0 - t) * self.start + t * self.end

    @property
    def probs(self) -> torch.Tensor:
        return self.probs_at(self.last_step)

    def _draw(self, step: int) -> int:
        # Same numbers as probs_at(step), in Python floats: a tensor per step would cost more than the draw.
        t = min(step / self.total_steps, 1.0)
        probs = [(1.0 - t) * s + t * e for s, e in zip(self._start_list, self._end_list)]
        return bisect.bisect_right(inverse_cdf(probs), uniform_from(self.seed, step))

    def sample(self, step: int) -> int:
        objective = super().sample(step)
        self.last_step = step
        return objective

    def _policy_state(self) -> List[float]:
        return [float(self.last_step)]

    def _load_policy_state(self, values: List[float]) -> None:
        if len(values) != 1:
            raise ValueError(f"{self._owner()}: policy state needs 1 value, got {len(values)}")
        self.last_step = int(values[0])
