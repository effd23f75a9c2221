"""The skip report every fine-tuning reader returns: a Counter of skipped records by reason, plus where they were."""
from __future__ import annotations

from collections import Counter
from typing import Dict, List, Optional

from mometas_ds.config import DataError

MAX_PLACES = 10  # places (line numbers, question ids) kept per reason; the count itself is never capped


class SkipCounter(Counter):
    """``Counter`` of skipped records by reason; ``places[reason]`` holds the first ``MAX_PLACES`` places
    (a line number, or a question id for JSON files) where that reason was seen."""

    def __init__(self, iterable=None, /, *, path: Optional[str] = None):
        super().__init__(iterable or ())
        self.path = path
        self.places: Dict[str, List[object]] = {}

    def skip(self, reason: str, place: object = None) -> None:
        self[reason] += 1
        if place is not None:
            kept = self.places.setdefault(reason, [])
            if len(kept) < MAX_PLACES:
                kept.append(place)

    def summary(self) -> str:
        """One line for a log, e.g. ``2 skipped in dev.txt: wrong_column_count x2 (lines 4, 9)``."""
        if not self:
            return f"0 skipped in {self.path}"
        parts = []
        for reason, count in sorted(self.items()):
            where = self.places.get(reason)
            shown = f" ({'lines' if where and isinstance(where[0], int) else 'at'} "\
                    f"{', '.join(map(str, where))}{', ...' if count > len(where) else ''})" if where else ""
            parts.append(f"{reason} x{count}{shown}")
        return f"{sum(self.values())} skipped in {self.path}: " + "; ".join(parts)


def no_examples_error(path: str, skipped: SkipCounter, what: str) -> DataError:
    """The error for a file that yielded no usable example (empty, or every record skipped)."""
    detail = f" ({skipped.summary()})" if skipped else " (the file holds no record)"
    return DataError(f"{path}: no usable {what}{detail}")
