"""What a corpus format is (``CorpusFormat``: a reader, and how a file of it splits into parts), the registry
of formats (chosen by file name), and ``Part``, the piece of one input a reader is given. See
docs/data-formats.md for adding one."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple

# How a file of a format may be split into parts for several processes (data.parts):
SPLITS = (
    None,          # read whole, by one process
    "lines",       # byte ranges that start at line starts (the reader honours Part.start/stop and the pre-scan)
    "row_groups",  # parquet row groups (the reader reads Part.start..stop row groups)
)


@dataclass(frozen=True)
class Part:
    """A contiguous piece of one input that one process tokenizes into its own shard."""

    index: int  # 0-based, within the input (a save_to_disk directory: over all of its splits)
    count: int  # parts of the input
    unit: str  # "bytes" | "row_groups" | "rows"
    start: int
    stop: int
    split: Optional[str] = None  # "rows" of a DatasetDict: the split's name
    # Filled in before reading, from the pre-scan or the file's metadata (not in the cache key: they follow
    # from the file's content, which the key covers):
    first_line: int = 1  # the line (row) number of the part's first line (row)
    paragraphs: bool = False  # .txt: the whole file's layout (readers' docstring)
    prev_blank: bool = True  # "bytes": the line before the part is blank (a .txt paragraph may not continue)
    file_has_text: bool = True  # "bytes": some line of the whole file is not blank (else: empty_file)

    def key(self) -> list:
        """What of the part decides its rows, for the shard's cache key."""
        return [self.unit, self.split, self.start, self.stop]

    def label(self) -> str:
        return f"part {self.index + 1}/{self.count}"


@dataclass(frozen=True)
class CorpusFormat:
    """A file format ``--train_files`` reads.

    ``read(path, text_field, report, part)`` yields ``(text, line)`` for every usable document of the file (or
    of one ``part`` of it) and skips the others into ``report`` (a data.report.CorpusReport) with a reason of
    ``SKIP_REASONS``; it must not raise for bad content. ``line`` is the 1-based line or row of the document.
    """

    name: str
    suffixes: Tuple[str, ...]  # file-name endings, matched case-insensitively
    read: Callable[..., Iterator[Tuple[str, int]]]
    split: Optional[str] = None  # one of SPLITS
    gzip: bool = False  # also read as NAME.gz (a gzip stream is never split)
    paragraphs: bool = False  # documents may be blank-line separated paragraphs: the pre-scan tells the layout

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"corpus format {self.name!r}: split must be one of {SPLITS}, got {self.split!r}")
        if not self.suffixes or not all(isinstance(s, str) and s.startswith(".") for s in self.suffixes):
            raise ValueError(f"corpus format {self.name!r}: suffixes must be file endings like '.jsonl'")


_FORMATS: Dict[str, CorpusFormat] = {}


def register_format(fmt: CorpusFormat, *, overwrite: bool = False) -> CorpusFormat:
    """Add a format (built-ins register on import; yours in a module given to --user_modules)."""
    if not isinstance(fmt, CorpusFormat):
        raise TypeError(f"register_format: {fmt!r} is not a CorpusFormat")
    taken = {s: f.name for f in _FORMATS.values() if f.name != fmt.name for s in f.suffixes}
    clash = [s for s in fmt.suffixes if s.lower() in taken]
    if (fmt.name in _FORMATS or clash) and not overwrite:
        what = f"suffix {clash[0]} of format {taken[clash[0]]!r}" if clash else f"format {fmt.name!r}"
        raise ValueError(f"corpus {what} is already registered")
    _FORMATS[fmt.name] = fmt
    return fmt


def available_formats() -> List[str]:
    return list(_FORMATS)


def get_format(name: str) -> CorpusFormat:
    if name not in _FORMATS:
        raise ValueError(f"unknown corpus format {name!r}; available: {', '.join(_FORMATS)}")
    return _FORMATS[name]


def format_of(path: str) -> Optional[CorpusFormat]:
    """The format of a file by its name (a trailing .gz for formats that allow it), or None."""
    name = path.lower()
    for fmt in _FORMATS.values():
        if name.endswith(tuple(s.lower() for s in fmt.suffixes)):
            return fmt
    if name.endswith(".gz"):
        fmt = format_of(name[:-3])
        return fmt if fmt is not None and fmt.gzip else None
    return None


def is_gzip(path: str) -> bool:
    return path.lower().endswith(".gz")
