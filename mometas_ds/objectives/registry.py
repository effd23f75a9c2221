"""Name -> objective class. Built-ins register on import; users call register_objective."""
from __future__ import annotations

from typing import Dict, List, Type

from .base import Objective, SpecialTokens

_REGISTRY: Dict[str, Type[Objective]] = {}


def register_objective(name: str, cls: Type[Objective] = None, *, overwrite: bool = False):
    """Register ``cls`` under ``name``; usable as ``@register_objective("name")``."""

    def _register(objective_cls):
        if not (isinstance(objective_cls, type) and issubclass(objective_cls, Objective)):
            raise TypeError(f"register_objective({name!r}): {objective_cls!r} is not an Objective subclass")
        if name in _REGISTRY and _REGISTRY[name] is not objective_cls and not overwrite:
            raise ValueError(f"objective {name!r} is already registered ({_REGISTRY[name].__name__})")
        objective_cls.name = name
        _REGISTRY[name] = objective_cls
        return objective_cls

    if not isinstance(name, str) or not name or "," in name:
        raise ValueError(f"objective name must be a non-empty string without commas, got {name!r}")
    return _register if cls is None else _register(cls)


def available_objectives() -> List[str]:
    """Registered names, built-ins first in their canonical order, then user objectives."""
    return list(_REGISTRY)


def objective_class(name: str) -> Type[Objective]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown objective {name!r}; available: {', '.join(available_objectives())}")
    return _REGISTRY[name]


def build_objective(name: str, special: SpecialTokens, **kwargs) -> Objective:
    return objective_class(name)(special, **kwargs)
