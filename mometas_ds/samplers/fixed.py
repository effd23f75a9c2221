"""Fixed: user weights, normalised once (``weights=[...]``, one non-negative number per objective)."""
from __future__ import annotations

from typing import Sequence

import torch

from mometas_ds.samplers.base import Sampler, check_weights
from mometas_ds.samplers.registry import register_sampler


@register_sampler("fixed")
class FixedSampler(Sampler):
    def __init__(self, num_objectives: int, seed: int = 0, *, weights: Sequence[float] = None):
        super().__init__(num_objectives, seed)
        if weights is None:
            raise ValueError(f"{self._owner()}: weights is required (one non-negative number per objective)")
        self._probs = check_weights(self._owner(), "weights", weights, self.num_objectives)
        self.config.update(weights=self._probs.tolist())

    @property
    def probs(self) -> torch.Tensor:
        return self._probs.clone()
