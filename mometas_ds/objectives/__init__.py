"""Pre-training objectives: corruption, head and loss, one module each, behind a registry."""
from .base import IGNORE_INDEX, Objective, SpecialTokens
from .registry import available_objectives, build_objective, objective_class, register_objective

# Built-ins register in this order; available_objectives() keeps it.
from . import mlm, gmlm, atd, dtd, cse  # noqa: E402,F401

from ..config.choices import DEFAULT_OBJECTIVES  # defined there: --help reads it without importing torch

__all__ = [
    "IGNORE_INDEX", "Objective", "SpecialTokens", "available_objectives", "build_objective",
    "objective_class", "register_objective", "DEFAULT_OBJECTIVES",
]
