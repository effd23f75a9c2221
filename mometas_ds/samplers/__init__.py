"""Objective samplers: MOMETAS (the default), its credit-assigning variant, rule-based and bandit baselines.

    from mometas_ds.samplers import build_sampler, available_samplers
    s = build_sampler("mometas", num_objectives=5, seed=1234, lr=0.1, gamma=2.0)
    k = s.sample(step)            # int in [0, num_objectives); same on every rank
    info = s.update(val_losses)   # one meta-validation loss per objective, every --meta_interval steps

Samplers deal in objective indices; the trainer maps them to objective names.
"""
from mometas_ds.samplers.base import Sampler, inverse_cdf, relative_loss_drop, uniform_from
from mometas_ds.samplers.registry import available_samplers, build_sampler, register_sampler, sampler_options

# Built-ins register in this order; available_samplers() keeps it.
from mometas_ds.samplers.mometas import MometasSampler  # noqa: E402
from mometas_ds.samplers.uniform import UniformSampler  # noqa: E402
from mometas_ds.samplers.round_robin import RoundRobinSampler  # noqa: E402
from mometas_ds.samplers.fixed import FixedSampler  # noqa: E402
from mometas_ds.samplers.temperature import TemperatureSampler  # noqa: E402
from mometas_ds.samplers.exp3 import Exp3Sampler  # noqa: E402
from mometas_ds.samplers.credit import MometasCreditSampler  # noqa: E402
from mometas_ds.samplers.transfer import MometasTransferSampler  # noqa: E402
from mometas_ds.samplers.distributed import meta_update_distributed, shard_range  # noqa: E402

DEFAULT_SAMPLER = "mometas"

__all__ = [
    "Sampler", "build_sampler", "available_samplers", "register_sampler", "sampler_options",
    "meta_update_distributed", "shard_range", "relative_loss_drop", "uniform_from", "inverse_cdf",
    "MometasSampler", "UniformSampler", "RoundRobinSampler", "FixedSampler", "TemperatureSampler", "Exp3Sampler",
    "MometasCreditSampler", "MometasTransferSampler",
    "DEFAULT_SAMPLER",
]
