"""Pre-training objectives: corruption, head and loss, one module each, behind a registry."""
from mometas_ds.objectives.base import IGNORE_INDEX, Objective, SpecialTokens
from mometas_ds.objectives.registry import (
    available_objectives, build_objective, objective_class, objective_names_problem, register_objective,
)

# Built-ins register in this order; available_objectives() keeps it.
from mometas_ds.objectives import mlm, gmlm, atd, dtd, cse  # noqa: E402,F401

from mometas_ds.config.choices import DEFAULT_OBJECTIVES  # defined there: --help reads it without importing torch

__all__ = [
    "IGNORE_INDEX", "Objective", "SpecialTokens", "available_objectives", "build_objective",
    "objective_class", "objective_names_problem", "register_objective", "DEFAULT_OBJECTIVES",
]
