"""JSON Lines (``.jsonl`` / ``.json``, optionally ``.gz``): one JSON object per line, the text under ``text_field``."""
from __future__ import annotations

import json
from typing import Iterator, Optional, Tuple

from mometas_ds.data.formats.base import CorpusFormat, Part, register_format
from mometas_ds.data.formats.lines import READ_ERRORS, encodable, no_line_read, numbered_lines, open_binary
from mometas_ds.data.report import CorpusReport


def read_jsonl(path: str, text_field: str, report: CorpusReport,
                part: Optional[Part] = None) -> Iterator[Tuple[str, int]]:
    lineno = 0
    any_line = False
    try:
        with open_binary(path) as f:
            for lineno, raw, beyond in numbered_lines(f, part):
                if beyond:
                    break
                if not raw.strip():
                    continue
                any_line = True
                where = f"{path}:{lineno}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    report.skip("non_utf8", where)
                    continue
                if lineno == 1:
                    line = line.lstrip("\ufeff")
                try:
                    record = json.loads(line)
                except (ValueError, RecursionError):  # RecursionError: pathologically nested brackets
                    report.skip("malformed_json", where)
                    continue
                if not isinstance(record, dict):
                    report.skip("malformed_json", f"{where} (not a JSON object)")
                    continue
                text = record.get(text_field)
                if text is None:
                    report.skip("missing_text_field", where)
                elif not isinstance(text, str):
                    report.skip("non_string_text", f"{where} ({type(text).__name__})")
                elif "\\u" in line and not encodable(text):
                    # A \ud800-style escape decodes to a lone surrogate, which Arrow cannot store.
                    report.skip("non_utf8", f"{where} (lone surrogate escape)")
                else:
                    raw = line = record = None  # only the text stays referenced while it is tokenized
                    yield text, lineno
    except READ_ERRORS as err:
        report.skip("unreadable_file", f"{path}:{lineno + 1} ({type(err).__name__}: {err})")
        return
    if no_line_read(part, any_line):
        report.skip("empty_file", path)


JSONL = register_format(CorpusFormat("jsonl", (".jsonl", ".json"), read_jsonl, split="lines", gzip=True))
