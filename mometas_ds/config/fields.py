"""Typed checks of JSON fields (a predicate and what the value must be), shared by the DeepSpeed and
BertConfig checks: a string ``"false"`` or a misspelt key is named before any
work. Imports nothing of the package but its errors."""
from __future__ import annotations

import difflib
import math
from typing import Callable, Dict, Iterable, Tuple

from mometas_ds.errors import ConfigError

# A type check: (predicate, what the message says the value must be).
Check = Tuple[Callable[[object], bool], str]


def is_bool(value) -> bool:
    return isinstance(value, bool)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


BOOL: Check = (is_bool, "true or false (a JSON boolean, not a string)")
INT: Check = (is_int, "a whole number")
POSITIVE_INT: Check = (lambda v: is_int(v) and v >= 1, "a positive whole number")
NON_NEGATIVE_INT: Check = (lambda v: is_int(v) and v >= 0, "a whole number >= 0")
NUMBER: Check = (is_number, "a finite number (not a string)")
NON_NEGATIVE: Check = (lambda v: is_number(v) and v >= 0, "a finite number >= 0")
STRING: Check = (lambda v: isinstance(v, str), "a string")
OPTIONAL_STRING: Check = (lambda v: v is None or isinstance(v, str), "a string or null")


def suggestion(name: str, valid: Iterable[str]) -> str:
    """' (did you mean X?)' for the nearest valid name, or ''."""
    close = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def check_fields(section: dict, table: Dict[str, Check], where: str, path: str) -> None:
    for key, (ok, must_be) in table.items():
        if key in section and not ok(section[key]):
            raise ConfigError(f"{path}: {where}{key} must be {must_be}, got {section[key]!r}")
