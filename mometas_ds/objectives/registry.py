"""Name -> objective class. Built-ins register on import; users call register_objective."""
from __future__ import annotations

from typing import List, Optional, Type

from mometas_ds.registry import Registry
from mometas_ds.objectives.base import Objective, SpecialTokens

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


def objective_names_problem(names: List[str]) -> Optional[str]:
    """What is wrong with a list of objective names (empty, unknown, repeated), or None."""
    if not names:
        return "no objective given"
    unknown = [name for name in names if name not in available_objectives()]
    if unknown:
        return f"unknown objective(s) {', '.join(unknown)}; available: {', '.join(available_objectives())}"
    if len(set(names)) != len(names):
        return f"duplicate names in {','.join(names)}"
    return None
