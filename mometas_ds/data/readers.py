"""Reading corpora: the ``--train_files`` entries resolved, then every input one document at a time through its
format (data.formats; a save_to_disk directory here), with what was skipped and why (data.report; the package's
docstring has the formats and the skip rules)."""
from __future__ import annotations

import glob
import logging
import os
from typing import Iterator, List, Optional, Sequence, Tuple

from mometas_ds.data.formats import Part, format_of
from mometas_ds.data.parts import is_saved_dataset, saved_dataset_splits
from mometas_ds.data.report import MIN_DOC_TOKENS, SKIP_REASONS, CorpusReport, check_value

__all__ = ["MIN_DOC_TOKENS", "SKIP_REASONS", "CorpusReport", "resolve_files", "iter_documents", "iter_path",
           "iter_texts", "missing_reason"]

logger = logging.getLogger(__name__)


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
    fmt = format_of(path)
    if fmt is None:
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
    for text, line in fmt.read(path, text_field, report, part):
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
                text = check_value(value, f"{label}:{row}", report)
                if text is not None:
                    report.documents += 1
                    yield text, label, row


