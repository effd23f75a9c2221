"""Corpus formats, one module each behind a registry (``base``): a reader and how a file splits into parts.
Built-ins register on import, in this order; a format of yours: docs/data-formats.md."""
from mometas_ds.data.formats.base import (
    SPLITS, CorpusFormat, Part, available_formats, format_of, get_format, is_gzip, register_format,
)
from mometas_ds.data.formats import jsonl, txt, parquet  # noqa: E402,F401  (registration order)

__all__ = ["SPLITS", "CorpusFormat", "Part", "available_formats", "format_of", "get_format", "is_gzip",
           "register_format"]
