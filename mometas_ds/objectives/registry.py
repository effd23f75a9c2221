"""Name -> objective class. Built-ins register on import; users call register_objective."""
from __future__ import annotations

from typing import List, Type

from ..registry import Registry
from .base import Objective, SpecialTokens

OBJECTIVES: Registry[Objective] = Registry("objective", Objective, forbid_commas=True)


def register_objective(name: str, cls: Type[Objective] = None, *, overwrite: bool = False):
    """Register ``cls`` under ``name``; usable as ``@register_objective("name")``."""
    return OBJECTIVES.register(name, cls, overwrite=overwrite)


def available_objectives() -> List[str]:
    """Registered names, built-ins first in their canonical order, then user objectives."""
    return OBJECTIVES.names()


def objective_class(name: str) -> Type[Objective]:
    return OBJECTIVES.get(name)


def build_objective(name: str, special: SpecialTokens, **kwargs) -> Objective:
    return objective_class(name)(special, **kwargs)
