"""Round robin: objective = step mod N, the sequential multi-objective scheme. The seed plays no part."""
from __future__ import annotations

from mometas_ds.samplers.registry import register_sampler
from mometas_ds.samplers.uniform import UniformSampler


@register_sampler("round_robin")
class RoundRobinSampler(UniformSampler):
    """``probs`` is the long-run share of each objective (uniform); the draw itself is not random."""

    def _draw(self, step: int) -> int:
        return step % self.num_objectives
