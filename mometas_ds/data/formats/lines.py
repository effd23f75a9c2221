"""What the line-based readers share: opening a file (gzip or not), its lines numbered from a part's start,
and the errors that mean a damaged file."""
from __future__ import annotations

import gzip
import zlib
from typing import Iterator, Optional, Tuple

from mometas_ds.data.formats.base import Part


def open_binary(path: str):
    return gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb")


READ_ERRORS = (OSError, EOFError, zlib.error)  # gzip.BadGzipFile is an OSError


def numbered_lines(f, part: Optional[Part]) -> Iterator[Tuple[int, bytes, bool]]:
    """(line number, raw line, whether it lies past the part's end) from the file's or the part's start."""
    # Each line is handed over without a reference kept here, so that a huge one is freed once read.
    if part is None:
        for lineno, raw in enumerate(f, 1):
            box = [raw]
            raw = None
            yield lineno, box.pop(), False
        return
    f.seek(part.start)
    position = part.start
    for lineno, raw in enumerate(f, part.first_line):
        box, size = [raw], len(raw)
        raw = None
        yield lineno, box.pop(), position >= part.stop
        position += size


def no_line_read(part: Optional[Part], any_line: bool) -> bool:
    """Whether the file is empty of text (reported once: by the whole file, or by a part, from the pre-scan)."""
    return not any_line if part is None else part.index == 0 and not part.file_has_text


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False
