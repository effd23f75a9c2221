"""Name -> sampler class. Built-ins register on import; users call register_sampler."""
from __future__ import annotations

import inspect
from typing import Dict, List, Type

from .base import Sampler

_REGISTRY: Dict[str, Type[Sampler]] = {}
_SHARED_ARGS = ("num_objectives", "seed", "interval")


def register_sampler(name: str, cls: Type[Sampler] = None, *, overwrite: bool = False):
    """Register ``cls`` under ``name``; usable as ``@register_sampler("name")``."""

    def _register(sampler_cls):
        if not (isinstance(sampler_cls, type) and issubclass(sampler_cls, Sampler)):
            raise TypeError(f"register_sampler({name!r}): {sampler_cls!r} is not a Sampler subclass")
        if name in _REGISTRY and _REGISTRY[name] is not sampler_cls and not overwrite:
            raise ValueError(f"sampler {name!r} is already registered ({_REGISTRY[name].__name__})")
        sampler_cls.name = name
        _REGISTRY[name] = sampler_cls
        return sampler_cls

    if not isinstance(name, str) or not name:
        raise ValueError(f"sampler name must be a non-empty string, got {name!r}")
    return _register if cls is None else _register(cls)


def available_samplers() -> List[str]:
    """Registered names, built-ins first, then user samplers."""
    return list(_REGISTRY)


def sampler_options(name: str) -> List[str]:
    """The keyword options ``name`` accepts beyond (num_objectives, seed, interval)."""
    params = inspect.signature(_lookup(name).__init__).parameters
    return [p for p in params if p != "self" and p not in _SHARED_ARGS and params[p].kind is not params[p].VAR_KEYWORD]


def build_sampler(name: str, num_objectives: int, seed: int = 0, interval: int = 100, **hyper) -> Sampler:
    """Build sampler ``name``; hyper-parameters are checked here and a bad one raises ValueError naming it."""
    cls = _lookup(name)
    accepted = sampler_options(name)
    unknown = sorted(set(hyper) - set(accepted))
    if unknown:
        raise ValueError(
            f"sampler {name!r} got unknown option(s) {', '.join(unknown)}; it accepts: {', '.join(accepted) or 'none'}"
        )
    return cls(num_objectives, seed=seed, interval=interval, **hyper)


def _lookup(name: str) -> Type[Sampler]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown sampler {name!r}; available: {', '.join(available_samplers())}")
    return _REGISTRY[name]
