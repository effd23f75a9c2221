"""Plain text (``.txt``, optionally ``.gz``): every non-blank line a document, or, when a blank line sits between
two non-blank lines, every block of consecutive non-blank lines (a paragraph, joined with newlines)."""
from __future__ import annotations

from typing import Iterator, List, Optional, Tuple

from mometas_ds.data.formats.base import CorpusFormat, Part, register_format
from mometas_ds.data.formats.lines import READ_ERRORS, no_line_read, numbered_lines, open_binary
from mometas_ds.data.report import CorpusReport


def txt_is_paragraphs(path: str) -> bool:
    """True when a blank line sits between two non-blank lines (see the module docstring)."""
    seen_text = pending_blank = False
    try:
        with open_binary(path) as f:
            for raw in f:
                if raw.strip():
                    if pending_blank:
                        return True
                    seen_text = True
                elif seen_text:
                    pending_blank = True
    except READ_ERRORS:
        pass  # the reading pass reports the damage
    return False


def read_txt(path: str, text_field: str, report: CorpusReport,
              part: Optional[Part] = None) -> Iterator[Tuple[str, int]]:
    paragraphs = txt_is_paragraphs(path) if part is None else part.paragraphs
    # A part whose first lines continue a paragraph begun before it leaves them to the part that began it.
    continuing = paragraphs and part is not None and not part.prev_blank
    in_paragraph = False  # (paragraphs) since the last blank line, a non-blank one was read
    lineno = 0
    any_line = False
    block: List[str] = []
    block_start = 0
    try:
        with open_binary(path) as f:
            for lineno, raw, beyond in numbered_lines(f, part):
                if beyond and not in_paragraph:  # past the part's end, only to finish the paragraph it began
                    break
                if not raw.strip():
                    continuing = in_paragraph = False
                    if block:
                        yield "\n".join(block), block_start
                        block = []
                    continue
                if continuing:
                    continue
                in_paragraph = paragraphs
                any_line = True
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError:
                    report.skip("non_utf8", f"{path}:{lineno}")
                    continue
                if lineno == 1:
                    line = line.lstrip("\ufeff")
                if not paragraphs:
                    raw = None  # only the text stays referenced while it is tokenized
                    yield line, lineno
                    continue
                if not block:
                    block_start = lineno
                block.append(line)
    except READ_ERRORS as err:
        report.skip("unreadable_file", f"{path}:{lineno + 1} ({type(err).__name__}: {err})")
    if block:
        yield "\n".join(block), block_start
    if no_line_read(part, any_line):
        report.skip("empty_file", path)


TXT = register_format(CorpusFormat("txt", (".txt",), read_txt, split="lines", gzip=True, paragraphs=True))
