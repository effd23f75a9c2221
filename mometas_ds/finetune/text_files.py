"""How every fine-tuning reader opens a text file: one policy for what a user's file may hold.

- A UTF-8 byte-order mark (Excel's "CSV UTF-8", MRPC's raw Microsoft file) is dropped, so a header's first
  column is named as written.
- Bytes that are not UTF-8 stop the run: DataError ``file:line: not UTF-8 ...`` (exit 2), never a silent
  U+FFFD replacement.
- A file with no bytes (or only whitespace) is named as empty.
- A text longer than ``TEXT_CHARS_PER_TOKEN`` characters per token of ``--max_seq_len`` is cut to that length
  before tokenizing (:func:`bound_text`): the tokenizer would otherwise build offsets for every character of a
  10 MB line only to keep the first ``max_seq_len`` tokens.
"""
from __future__ import annotations

import os
from typing import Iterator, Tuple

from mometas_ds.config import DataError

BOM = b"\xef\xbb\xbf"

# A WordPiece token covers at least one character, and a word over 100 characters (its
# max_input_chars_per_word) is one [UNK]: 128 characters per token keep at least max_seq_len tokens of any
# text, so the cut changes no token the model sees.
TEXT_CHARS_PER_TOKEN = 128


def _not_utf8(path: str, line: int, data: bytes, err: UnicodeDecodeError) -> DataError:
    start = data.rfind(b"\n", 0, err.start) + 1
    return DataError(f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x} at byte {err.start - start + 1} "
                     f"of the line); save the file as UTF-8")


def _exists(path: str) -> None:
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found" if not os.path.exists(path) else f"{path}: not a file")


def _empty(path: str) -> DataError:
    return DataError(f"{path}: the file is empty")


def read_utf8(path: str) -> str:
    """The whole file as text (BOM dropped); DataError for a missing, empty or non-UTF-8 file."""
    _exists(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None
    if data.startswith(BOM):
        data = data[len(BOM):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _not_utf8(path, data.count(b"\n", 0, err.start) + 1, data, err) from None
    if not text.strip():
        raise _empty(path)
    return text


def _blank(path: str) -> bool:
    """Whether the file holds only whitespace (and a BOM): read until its first other byte."""
    with open(path, "rb") as handle:
        head = handle.read(len(BOM))
        rest = head[len(BOM):] if head == BOM else head
        if rest.strip():
            return False
        for block in iter(lambda: handle.read(1 << 16), b""):
            if block.strip():
                return False
    return True


def utf8_lines(path: str) -> Iterator[str]:
    """The file's lines as text, each with its line end (only ``\\n`` ends a line, as ``newline=""``), read
    one at a time; the BOM is dropped from the first. DataError for a missing or empty file (at once) and for
    a line that is not UTF-8 (naming its number, when the reading gets there)."""
    _exists(path)
    try:
        if _blank(path):
            raise _empty(path)
        handle = open(path, "rb")
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None
    return _lines(path, handle)


def _lines(path: str, handle) -> Iterator[str]:
    with handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise _not_utf8(path, number, raw, err) from None


def bound_text(text: str, max_seq_len: int) -> Tuple[str, bool]:
    """``text`` cut to ``TEXT_CHARS_PER_TOKEN * max_seq_len`` characters, and whether it was cut."""
    limit = TEXT_CHARS_PER_TOKEN * max(int(max_seq_len), 1)
    if len(text) <= limit:
        return text, False
    return text[:limit], True
