"""Name -> sampler class. Built-ins register on import; users call register_sampler."""
from __future__ import annotations

import inspect
from typing import List, Type

from mometas_ds.registry import Registry
from mometas_ds.samplers.base import Sampler

SAMPLERS: Registry[Sampler] = Registry("sampler", Sampler)
_SHARED_ARGS = ("num_objectives", "seed")


def register_sampler(name: str, cls: Type[Sampler] = None, *, overwrite: bool = False):
    """Register ``cls`` under ``name``; usable as ``@register_sampler("name")``."""
    return SAMPLERS.register(name, cls, overwrite=overwrite)


def available_samplers() -> List[str]:
    """Registered names, built-ins first, then user samplers."""
    return SAMPLERS.names()


def sampler_options(name: str) -> List[str]:
    """The keyword options ``name`` accepts beyond (num_objectives, seed)."""
    params = inspect.signature(SAMPLERS.get(name).__init__).parameters
    return [p for p in params if p != "self" and p not in _SHARED_ARGS and params[p].kind is not params[p].VAR_KEYWORD]


def build_sampler(name: str, num_objectives: int, seed: int = 0, **hyper) -> Sampler:
    """Build sampler ``name``; hyper-parameters are checked here and a bad one raises ValueError naming it."""
    cls = SAMPLERS.get(name)
    accepted = sampler_options(name)
    unknown = sorted(set(hyper) - set(accepted))
    if "fixed_meta_set" in unknown:
        raise ValueError("fixed_meta_set is a meta-validation setting now: give --meta_fixed_set on (or off), not "
                         "--sampler_args")
    if unknown:
        raise ValueError(
            f"sampler {name!r} got unknown option(s) {', '.join(unknown)}; it accepts: {', '.join(accepted) or 'none'}"
        )
    return cls(num_objectives, seed=seed, **hyper)
