"""The error types every module raises, and JSON reading: a leaf that imports nothing of mometas_ds."""
from __future__ import annotations

import json


class ConfigError(ValueError):
    """A bad flag or config field; the message names it. Raised before any training work."""


class DataError(ValueError):
    """The corpus cannot feed a run (no usable document, too few sequences for the meta split)."""


def read_json_object(path: str, flag: str, error: type = None) -> dict:
    """A JSON file holding an object; otherwise ``error`` (ConfigError) naming the flag and the file."""
    error = error or ConfigError
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise error(f"{flag}: cannot read {path} ({exc})") from None
    if not isinstance(value, dict):
        raise error(f"{flag}: {path} must hold a JSON object")
    return value
