"""Reading corpora: every supported format, one document at a time, with what was skipped and why
(see the package's docstring for the formats and the skip rules)."""
from __future__ import annotations

import glob
import gzip
import json
import logging
import os
import zlib
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.parquet as pq

from .parts import Part, file_kind, is_saved_dataset, saved_dataset_splits

logger = logging.getLogger(__name__)

MIN_DOC_TOKENS = 2
SKIP_REASONS = {
    "missing_file": "path or glob that matched no file, dangling symlink, or file gone before it was read",
    "empty_file": "file without a non-blank line or row",
    "unreadable_file": "corrupt or truncated file (gzip, parquet, dataset directory)",
    "unsupported_format": "file whose name is not .jsonl/.json/.txt[.gz], .parquet, nor a save_to_disk directory",
    "malformed_json": "line that is not valid JSON or not a JSON object",
    "missing_text_field": "record without the text field, or with null there",
    "non_string_text": "record whose text field is not a string",
    "non_utf8": "line (or text) that is not valid UTF-8",
    "too_short": f"document with fewer than {MIN_DOC_TOKENS} tokens",
}


# ----------------------------------------------------------------------------------------------- report

@dataclass
class CorpusReport:
    """What was read and what was skipped, and why. ``sources`` are the files read, in order
    (a ``DatasetDict`` directory contributes ``path[split]`` entries)."""

    max_examples: int = 5
    sources: List[str] = field(default_factory=list)
    documents: int = 0  # usable documents
    tokens: int = 0  # tokens of usable documents (before cls/sep/pad are added)
    train_sequences: int = 0
    meta_sequences: int = 0
    truncated_documents: int = 0  # --packing per_document: documents longer than one row
    truncated_tokens: int = 0  # --packing per_document: their tokens cut off (not trained on)
    skipped: Dict[str, int] = field(default_factory=dict)
    examples: Dict[str, List[str]] = field(default_factory=dict)

    def skip(self, reason: str, where: Optional[str], count: int = 1) -> None:
        """Count ``count`` skipped records; keep ``where`` ("file:line ...") as an example while there is room."""
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        self.skipped[reason] = self.skipped.get(reason, 0) + count
        examples = self.examples.setdefault(reason, [])
        if where is not None and len(examples) < self.max_examples:
            examples.append(where)

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        lines = [
            f"{len(self.sources)} source(s), {self.documents} document(s), {self.tokens} token(s) -> "
            f"{self.train_sequences} training + {self.meta_sequences} meta-validation sequence(s)"
        ]
        if self.truncated_documents:
            lines.append(f"truncated {self.truncated_documents} document(s) longer than one row "
                         f"(--packing per_document): {self.truncated_tokens} token(s) dropped")
        if self.skipped:
            lines.append(f"skipped {self.total_skipped}:")
            for reason in SKIP_REASONS:
                if reason in self.skipped:
                    shown = "; ".join(self.examples.get(reason, []))
                    lines.append(f"  {reason} ({SKIP_REASONS[reason]}): {self.skipped[reason]}, e.g. {shown}")
        return "\n".join(lines)

    def merge(self, other: "CorpusReport") -> None:
        """Add ``other`` (the report of what follows in corpus order): counts summed, sources appended,
        examples appended while there is room (so they stay the first ``max_examples`` in corpus order)."""
        self.sources.extend(other.sources)
        for name in ("documents", "tokens", "train_sequences", "meta_sequences", "truncated_documents",
                     "truncated_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for reason in SKIP_REASONS:  # in a fixed order, so merged reports compare equal
            if reason in other.skipped:
                self.skipped[reason] = self.skipped.get(reason, 0) + other.skipped[reason]
                examples = self.examples.setdefault(reason, [])
                examples.extend(other.examples.get(reason, [])[: max(self.max_examples - len(examples), 0)])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CorpusReport":
        return cls(**d)


# ------------------------------------------------------------------------------------------- reading

def resolve_files(train_files: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Expand globs. Returns (existing paths in order, without duplicates; entries that matched nothing,
    and glob matches that do not exist, such as dangling symlinks)."""
    paths: List[str] = []
    missing: List[str] = []
    seen = set()
    for entry in train_files:
        pattern = os.path.expanduser(str(entry))
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
        else:
            matches = [pattern] if os.path.exists(pattern) else []
        if not matches:
            missing.append(str(entry))
        for path in matches:
            if not os.path.exists(path):  # glob also matches dangling symlinks
                missing.append(path)
                continue
            resolved = os.path.abspath(path)
            if resolved not in seen:
                seen.add(resolved)
                paths.append(resolved)
    return paths, missing


def iter_documents(
    train_files: Sequence[str], text_field: str, report: CorpusReport
) -> Iterator[Tuple[str, int, int]]:
    """Yield ``(text, source_index, line)`` for every readable document; ``source_index`` indexes
    ``report.sources``. Unusable records are skipped into ``report`` (too-short ones are counted later,
    once tokenized)."""
    paths, missing = resolve_files(train_files)
    for entry in missing:
        report.skip("missing_file", f"{entry}: {missing_reason(entry)}")
    for path in paths:
        for text, _, line in iter_path(path, text_field, report):
            yield text, len(report.sources) - 1, line


def iter_path(path: str, text_field: str, report: CorpusReport,
              part: Optional[Part] = None) -> Iterator[Tuple[str, str, int]]:
    """Yield ``(text, source, line)`` for every readable document of one resolved path (a file or a
    save_to_disk directory), or of one ``part`` of it (data.parts); ``source`` is the label it appends to
    ``report.sources`` (``path``, or ``path[split]`` for a DatasetDict; a part appends it only when it is its
    first) and ``report.documents`` counts the documents yielded."""
    # What concerns the whole input (gone, unreadable, empty) is reported once: by it or by its first part.
    once = report if part is None or part.index == 0 else CorpusReport()
    if os.path.isdir(path):
        yield from _read_saved_dataset(path, text_field, report, part, once)
        return
    kind = file_kind(path)
    if kind is None:
        once.skip("unsupported_format", path)
        return
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:  # it vanished since the glob expanded
        once.skip("missing_file", f"{path}: {missing_reason(path)}")
        return
    except OSError as err:
        once.skip("unreadable_file", f"{path} ({type(err).__name__}: {err})")
        return
    if size == 0:
        once.skip("empty_file", path)
        return
    if part is None or part.index == 0:
        report.sources.append(path)
    reader = {"jsonl": _read_jsonl, "txt": _read_txt, "parquet": _read_parquet}[kind]
    for text, line in reader(path, text_field, report, part):
        report.documents += 1
        yield text, path, line


def missing_reason(entry: str) -> str:
    if os.path.islink(entry):
        return "dangling symlink"
    return "glob matched no file" if glob.has_magic(entry) else "no such file"


def iter_texts(train_files: Sequence[str], text_field: str = "text",
               report: Optional[CorpusReport] = None) -> Iterator[str]:
    """The usable texts of the corpus, in order (for tokenizer training)."""
    report = CorpusReport() if report is None else report
    for text, _, _ in iter_documents(train_files, text_field, report):
        yield text


def _open_binary(path: str):
    return gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb")


_READ_ERRORS = (OSError, EOFError, zlib.error)  # gzip.BadGzipFile is an OSError


def _numbered_lines(f, part: Optional[Part]) -> Iterator[Tuple[int, bytes, bool]]:
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


def _no_line_read(part: Optional[Part], any_line: bool) -> bool:
    """Whether the file is empty of text (reported once: by the whole file, or by a part, from the pre-scan)."""
    return not any_line if part is None else part.index == 0 and not part.file_has_text


def _read_jsonl(path: str, text_field: str, report: CorpusReport,
                part: Optional[Part] = None) -> Iterator[Tuple[str, int]]:
    lineno = 0
    any_line = False
    try:
        with _open_binary(path) as f:
            for lineno, raw, beyond in _numbered_lines(f, part):
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
                elif "\\u" in line and not _encodable(text):
                    # A \ud800-style escape decodes to a lone surrogate, which Arrow cannot store.
                    report.skip("non_utf8", f"{where} (lone surrogate escape)")
                else:
                    raw = line = record = None  # only the text stays referenced while it is tokenized
                    yield text, lineno
    except _READ_ERRORS as err:
        report.skip("unreadable_file", f"{path}:{lineno + 1} ({type(err).__name__}: {err})")
        return
    if _no_line_read(part, any_line):
        report.skip("empty_file", path)


def _txt_is_paragraphs(path: str) -> bool:
    """True when a blank line sits between two non-blank lines (see the module docstring)."""
    seen_text = pending_blank = False
    try:
        with _open_binary(path) as f:
            for raw in f:
                if raw.strip():
                    if pending_blank:
                        return True
                    seen_text = True
                elif seen_text:
                    pending_blank = True
    except _READ_ERRORS:
        pass  # the reading pass reports the damage
    return False


def _read_txt(path: str, text_field: str, report: CorpusReport,
              part: Optional[Part] = None) -> Iterator[Tuple[str, int]]:
    paragraphs = _txt_is_paragraphs(path) if part is None else part.paragraphs
    # A part whose first lines continue a paragraph begun before it leaves them to the part that began it.
    continuing = paragraphs and part is not None and not part.prev_blank
    in_paragraph = False  # (paragraphs) since the last blank line, a non-blank one was read
    lineno = 0
    any_line = False
    block: List[str] = []
    block_start = 0
    try:
        with _open_binary(path) as f:
            for lineno, raw, beyond in _numbered_lines(f, part):
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
    except _READ_ERRORS as err:
        report.skip("unreadable_file", f"{path}:{lineno + 1} ({type(err).__name__}: {err})")
    if block:
        yield "\n".join(block), block_start
    if _no_line_read(part, any_line):
        report.skip("empty_file", path)


def _check_value(value, where: str, report: CorpusReport) -> Optional[str]:
    """The text of a column value, or None (and a skip) when it is unusable."""
    if value is None:
        report.skip("missing_text_field", where)
        return None
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            report.skip("non_utf8", where)
            return None
    if not isinstance(value, str):
        report.skip("non_string_text", f"{where} ({type(value).__name__})")
        return None
    return value


def _read_parquet(path: str, text_field: str, report: CorpusReport,
                  part: Optional[Part] = None) -> Iterator[Tuple[str, int]]:
    row = 0
    try:
        parquet = pq.ParquetFile(path)
        num_rows = parquet.metadata.num_rows
        columns = parquet.schema_arrow.names
        if num_rows == 0:
            report.skip("empty_file", path)
            return
        if text_field not in columns:
            report.skip("missing_text_field", f"{path}: no column {text_field!r} (columns: {', '.join(columns)})",
                        count=num_rows)
            return
        groups = None
        if part is not None:  # planned only for a file with the column and rows
            groups, row = list(range(part.start, part.stop)), part.first_line - 1
        for batch in parquet.iter_batches(batch_size=1024, columns=[text_field], row_groups=groups):
            for value in batch.column(0).to_pylist():
                row += 1
                text = _check_value(value, f"{path}:{row}", report)
                if text is not None:
                    yield text, row
    except (pa.ArrowException, *_READ_ERRORS) as err:
        report.skip("unreadable_file", f"{path}:{row + 1} ({type(err).__name__}: {err})")


def _read_saved_dataset(path: str, text_field: str, report: CorpusReport, part: Optional[Part] = None,
                        once: Optional[CorpusReport] = None) -> Iterator[Tuple[str, str, int]]:
    once = report if once is None else once  # see iter_path
    if not is_saved_dataset(path):
        once.skip("unsupported_format", f"{path} (a directory not written by datasets.save_to_disk)")
        return
    import datasets  # only for save_to_disk directories: a shard worker of plain files does without it

    try:
        loaded = datasets.load_from_disk(path)
    except Exception as err:  # datasets raises several types for damaged directories
        once.skip("unreadable_file", f"{path} ({type(err).__name__}: {err})")
        return
    splits = saved_dataset_splits(loaded)
    if part is not None:  # planned only when every split is usable
        splits = [(name, split) for name, split in splits if name == part.split]
    for name, split in splits:
        label = path if name is None else f"{path}[{name}]"
        if len(split) == 0:
            report.skip("empty_file", label)
            continue
        if text_field not in split.column_names:
            report.skip("missing_text_field",
                        f"{label}: no column {text_field!r} (columns: {', '.join(split.column_names)})",
                        count=len(split))
            continue
        row = 0
        if part is not None:
            split, row = split.select(range(part.start, part.stop)), part.first_line - 1
        if row == 0:
            report.sources.append(label)
        for table in split.select_columns([text_field]).with_format("arrow").iter(batch_size=1024):
            for value in table.column(0).to_pylist():
                row += 1
                text = _check_value(value, f"{label}:{row}", report)
                if text is not None:
                    report.documents += 1
                    yield text, label, row


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False
