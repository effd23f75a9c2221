"""Pre-training data: read corpora, tokenize once into a cached packed Arrow dataset, hold out a
seeded meta-validation split of it, and serve each rank its own seeded, resumable shard of batches.

Corpus formats (chosen by file name; ``--train_files`` entries may be globs):

* ``.jsonl`` / ``.json`` (JSON Lines), optionally ``.gz``: one JSON object per line, text under ``text_field``.
* ``.txt``, optionally ``.gz``. The layout is detected per file: if a blank line (empty or whitespace only)
  sits between two non-blank lines, documents are blocks of consecutive non-blank lines (paragraphs,
  joined with newlines); otherwise every non-blank line is a document. A file of single lines separated by
  blank lines reads the same either way.
* ``.parquet``: column ``text_field``.
* a directory written by ``datasets.save_to_disk``: column ``text_field``; of a ``DatasetDict`` only the
  ``train`` split is read when there is one, otherwise every split.

Bad input never stops a run midway. Each record that cannot be used is skipped and counted under one of
``SKIP_REASONS`` in a ``CorpusReport`` with up to ``max_examples`` "file:line" examples. Only when no
usable document is left does ``prepare_data`` raise ``DataError``, before any training.

Packing: the token ids of all documents (no special tokens) are concatenated in corpus order and cut
into chunks of ``seq_len - 2``; each chunk becomes ``[CLS] chunk [SEP]``; the last, shorter chunk is
right-padded with ``[PAD]``. Rows hold ``input_ids`` and ``attention_mask`` of length ``seq_len``.

Meta-validation split: of the ``N`` packed rows, the meta split is the rows
``np.sort(np.random.default_rng(seed).permutation(N)[:meta_sequences])`` and training gets the others, both
in packed order (``meta_split_rows``). The split is drawn each time the cache is loaded, so runs that differ
only in ``--seed`` or ``--meta_batch_size`` share one cache.
"""
from __future__ import annotations

import glob
import gzip
import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
import zlib
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from mometas_ds.errors import DataError
from mometas_ds.tokenizer import required_token_id

logger = logging.getLogger(__name__)

MIN_DOC_TOKENS = 2
# Bump when the cached layout, tokenization or packing rule changes (2: special-token text split as text;
# 3: unsplit rows, the meta split drawn on load).
CACHE_FORMAT_VERSION = 3
REPORT_FILE = "corpus_report.json"
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
        if self.skipped:
            lines.append(f"skipped {self.total_skipped}:")
            for reason in SKIP_REASONS:
                if reason in self.skipped:
                    shown = "; ".join(self.examples.get(reason, []))
                    lines.append(f"  {reason} ({SKIP_REASONS[reason]}): {self.skipped[reason]}, e.g. {shown}")
        return "\n".join(lines)

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
        report.skip("missing_file", f"{entry}: {_missing_reason(entry)}")
    for path in paths:
        if os.path.isdir(path):
            yield from _read_saved_dataset(path, text_field, report)
            continue
        kind = _file_kind(path)
        if kind is None:
            report.skip("unsupported_format", path)
            continue
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:  # it vanished since the glob expanded
            report.skip("missing_file", f"{path}: {_missing_reason(path)}")
            continue
        except OSError as err:
            report.skip("unreadable_file", f"{path} ({type(err).__name__}: {err})")
            continue
        if size == 0:
            report.skip("empty_file", path)
            continue
        source = len(report.sources)
        report.sources.append(path)
        reader = {"jsonl": _read_jsonl, "txt": _read_txt, "parquet": _read_parquet}[kind]
        for text, line in reader(path, text_field, report):
            report.documents += 1
            yield text, source, line


def _missing_reason(entry: str) -> str:
    if os.path.islink(entry):
        return "dangling symlink"
    return "glob matched no file" if glob.has_magic(entry) else "no such file"


def iter_texts(train_files: Sequence[str], text_field: str = "text",
               report: Optional[CorpusReport] = None) -> Iterator[str]:
    """The usable texts of the corpus, in order (for tokenizer training)."""
    report = CorpusReport() if report is None else report
    for text, _, _ in iter_documents(train_files, text_field, report):
        yield text


def _file_kind(path: str) -> Optional[str]:
    name = path.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    if name.endswith(".txt"):
        return "txt"
    return None


def _open_binary(path: str):
    return gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb")


_READ_ERRORS = (OSError, EOFError, zlib.error)  # gzip.BadGzipFile is an OSError


def _read_jsonl(path: str, text_field: str, report: CorpusReport) -> Iterator[Tuple[str, int]]:
    lineno = 0
    any_line = False
    try:
        with _open_binary(path) as f:
            for lineno, raw in enumerate(f, 1):
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
                    yield text, lineno
    except _READ_ERRORS as err:
        report.skip("unreadable_file", f"{path}:{lineno + 1} ({type(err).__name__}: {err})")
        return
    if not any_line:
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


def _read_txt(path: str, text_field: str, report: CorpusReport) -> Iterator[Tuple[str, int]]:
    paragraphs = _txt_is_paragraphs(path)
    lineno = 0
    any_line = False
    block: List[str] = []
    block_start = 0
    try:
        with _open_binary(path) as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    if block:
                        yield "\n".join(block), block_start
                        block = []
                    continue
                any_line = True
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError:
                    report.skip("non_utf8", f"{path}:{lineno}")
                    continue
                if lineno == 1:
                    line = line.lstrip("\ufeff")
                if not paragraphs:
                    yield line, lineno
                    continue
                if not block:
                    block_start = lineno
                block.append(line)
    except _READ_ERRORS as err:
        report.skip("unreadable_file", f"{path}:{lineno + 1} ({type(err).__name__}: {err})")
    if block:
        yield "\n".join(block), block_start
    if not any_line:
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


def _read_parquet(path: str, text_field: str, report: CorpusReport) -> Iterator[Tuple[str, int]]:
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
        for batch in parquet.iter_batches(batch_size=1024, columns=[text_field]):
            for value in batch.column(0).to_pylist():
                row += 1
                text = _check_value(value, f"{path}:{row}", report)
                if text is not None:
                    yield text, row
    except (pa.ArrowException, *_READ_ERRORS) as err:
        report.skip("unreadable_file", f"{path}:{row + 1} ({type(err).__name__}: {err})")


def _is_saved_dataset(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, name)) for name in ("dataset_dict.json", "state.json"))


def _read_saved_dataset(path: str, text_field: str, report: CorpusReport) -> Iterator[Tuple[str, int, int]]:
    if not _is_saved_dataset(path):
        report.skip("unsupported_format", f"{path} (a directory not written by datasets.save_to_disk)")
        return
    try:
        loaded = datasets.load_from_disk(path)
    except Exception as err:  # datasets raises several types for damaged directories
        report.skip("unreadable_file", f"{path} ({type(err).__name__}: {err})")
        return
    if isinstance(loaded, datasets.DatasetDict):
        names = ["train"] if "train" in loaded else list(loaded)
        splits = [(f"{path}[{name}]", loaded[name]) for name in names]
    else:
        splits = [(path, loaded)]
    for label, split in splits:
        if len(split) == 0:
            report.skip("empty_file", label)
            continue
        if text_field not in split.column_names:
            report.skip("missing_text_field",
                        f"{label}: no column {text_field!r} (columns: {', '.join(split.column_names)})",
                        count=len(split))
            continue
        source = len(report.sources)
        report.sources.append(label)
        row = 0
        for table in split.select_columns([text_field]).with_format("arrow").iter(batch_size=1024):
            for value in table.column(0).to_pylist():
                row += 1
                text = _check_value(value, f"{label}:{row}", report)
                if text is not None:
                    report.documents += 1
                    yield text, source, row


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


# -------------------------------------------------------------------------------- tokenize, pack, cache

@dataclass
class DataConfig:
    train_files: Sequence[str]
    text_field: str = "text"
    seq_len: int = 128
    cache_dir: str = os.path.join("~", ".cache", "mometas_ds", "data")
    num_proc: int = 1  # processes for tokenization
    meta_sequences: int = 0  # packed sequences held out for the sampler's meta-validation (not in the cache key)
    seed: int = 0  # picks the held-out sequences (not in the cache key)
    max_examples: int = 5  # "file:line" examples kept per skip reason

    def __post_init__(self):
        if isinstance(self.train_files, (str, os.PathLike)):
            self.train_files = [str(self.train_files)]
        self.train_files = [str(f) for f in self.train_files]
        if not self.train_files:
            raise ValueError("--train_files: give at least one file, directory or glob")
        if not isinstance(self.text_field, str) or not self.text_field:
            raise ValueError(f"--text_field must be a non-empty string, got {self.text_field!r}")
        for name, flag, minimum in (("seq_len", "--seq_len", 3), ("num_proc", "--num_proc", 1),
                                    ("meta_sequences", "meta_sequences (from --meta_batch_size)", 0),
                                    ("max_examples", "max_examples", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{flag} must be an int >= {minimum}, got {value!r}")
        self.cache_dir = os.path.abspath(os.path.expanduser(str(self.cache_dir)))


@dataclass
class PreparedData:
    train: datasets.Dataset  # columns input_ids, attention_mask: int lists of length seq_len
    meta: datasets.Dataset  # held-out meta-validation sequences, same columns
    report: CorpusReport
    cache_hit: bool
    cache_path: str


def prepare_data(config: DataConfig, tokenizer) -> PreparedData:
    """Tokenize and pack the corpus into ``config.cache_dir/<key>/``, or reuse that cache; then split
    the packed rows into training and meta-validation (see ``meta_split_rows``).

    The cache holds every packed row once. Its key covers what determines those rows: the resolved
    files with their sizes and mtimes (and the paths that matched nothing), ``text_field``, the tokenizer
    and its special ids, ``seq_len`` and ``max_examples`` (of the report), not ``seed`` nor
    ``meta_sequences``. The cache appears by an atomic rename, so a concurrent reader sees it whole or
    not at all; in multi-rank runs call this on rank 0 first, then on the others. Loading writes nothing.
    """
    pad_id, cls_id, sep_id = (required_token_id(tokenizer, role) for role in ("pad", "cls", "sep"))
    paths, missing = resolve_files(config.train_files)
    backend = _plain_backend(tokenizer)
    key = _cache_key(config, paths, missing, _tokenizer_fingerprint(tokenizer, backend), (pad_id, cls_id, sep_id))
    cache_path = os.path.join(config.cache_dir, key)
    if os.path.isfile(os.path.join(cache_path, REPORT_FILE)):
        logger.info("reusing tokenized cache at %s", cache_path)
        return _load_cache(cache_path, config, cache_hit=True)

    os.makedirs(config.cache_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=config.cache_dir)
    try:
        report = CorpusReport(max_examples=config.max_examples)
        built = _build(config, tokenizer, backend, report, (pad_id, cls_id, sep_id), work, key)
        with open(os.path.join(built, REPORT_FILE), "w") as f:
            json.dump(_report_to_store(report), f, indent=1)
        _publish(built, cache_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("wrote tokenized cache at %s", cache_path)
    return _load_cache(cache_path, config, cache_hit=False)


def _publish(built: str, cache_path: str) -> None:
    """Move a finished cache into place with one rename (atomic on a POSIX file system)."""
    try:
        os.rename(built, cache_path)
        return
    except OSError:
        if os.path.isfile(os.path.join(cache_path, REPORT_FILE)):
            return  # another process published the same key first; its data is identical
        if not os.path.isdir(cache_path):
            raise
    # A directory without the report was damaged by hand (ours appear whole): replace it.
    logger.warning("replacing incomplete tokenized cache at %s", cache_path)
    shutil.rmtree(cache_path)
    os.rename(built, cache_path)


_SPLIT_FIELDS = ("train_sequences", "meta_sequences")  # of one run, so not in the shared report file


def _report_to_store(report: CorpusReport) -> dict:
    return {name: value for name, value in report.to_dict().items() if name not in _SPLIT_FIELDS}


def meta_split_rows(num_rows: int, meta_sequences: int, seed: int) -> np.ndarray:
    """The packed rows held out for meta-validation, ascending:
    ``np.sort(np.random.default_rng(seed).permutation(num_rows)[:meta_sequences])``."""
    if meta_sequences == 0:
        return np.empty(0, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).permutation(num_rows)[:meta_sequences])


def _train_rows(packed: datasets.Dataset, meta_rows: np.ndarray) -> datasets.Dataset:
    """The rows of ``packed`` not in ``meta_rows`` (ascending), in order: the contiguous runs between held-out
    rows, concatenated (at most ``len(meta_rows) + 1`` zero-copy slices)."""
    starts = np.concatenate([[0], meta_rows + 1])
    stops = np.concatenate([meta_rows, [len(packed)]])
    pieces = [packed.select(range(int(a), int(b))) for a, b in zip(starts, stops) if b > a]
    return pieces[0] if len(pieces) == 1 else datasets.concatenate_datasets(pieces)


def _load_cache(cache_path: str, config: DataConfig, cache_hit: bool) -> PreparedData:
    packed = datasets.load_from_disk(cache_path)
    with open(os.path.join(cache_path, REPORT_FILE)) as f:
        report = CorpusReport.from_dict(json.load(f))
    num_rows = len(packed)
    if num_rows <= config.meta_sequences:
        raise DataError(
            f"the corpus packs into {num_rows} sequence(s) of --seq_len {config.seq_len}, but the meta-validation "
            f"split needs {config.meta_sequences} (from --meta_batch_size) plus at least one for training: "
            f"add data, or lower --meta_batch_size or --seq_len"
        )
    meta_rows = meta_split_rows(num_rows, config.meta_sequences, config.seed)
    # A few rows: an indices mapping, built in memory (datasets writes one to disk only when given a file name).
    meta = packed.select(meta_rows, keep_in_memory=True)
    # Training: the runs of rows between the held-out ones, as contiguous slices, so that no indices mapping
    # of every row is built on each load.
    train = _train_rows(packed, meta_rows)
    report.train_sequences, report.meta_sequences = len(train), len(meta)
    return PreparedData(train=train, meta=meta, report=report, cache_hit=cache_hit, cache_path=cache_path)


def _build(config: DataConfig, tokenizer, backend, report: CorpusReport, special: Tuple[int, int, int],
           work: str, key: str) -> str:
    """Read, tokenize and pack into ``work``; return the directory to publish."""
    found = iter_documents(config.train_files, config.text_field, report)
    first = next(found, None)  # datasets cannot build a dataset from an empty generator
    if first is None:
        raise DataError(f"no usable document in --train_files {list(config.train_files)} "
                        f"(--text_field {config.text_field!r})\n{report.summary()}")

    def documents():
        for text, source, line in itertools.chain([first], found):
            yield {"text": text, "source": source, "line": line}

    raw = datasets.Dataset.from_generator(
        documents,
        features=datasets.Features({"text": datasets.Value("string"), "source": datasets.Value("int32"),
                                    "line": datasets.Value("int64")}),
        cache_dir=os.path.join(work, "raw"),
        fingerprint=f"{key}-raw",
    )
    if config.num_proc > 1:
        # Tokenizer threads in forked workers deadlock or warn; the processes are the parallelism.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tokenized = raw.map(
        _TokenizeBatch(tokenizer, backend),
        batched=True,
        input_columns=["text"],
        remove_columns=["text"],
        features=datasets.Features({"source": datasets.Value("int32"), "line": datasets.Value("int64"),
                                    "ids": datasets.List(datasets.Value("int32"))}),
        num_proc=config.num_proc if config.num_proc > 1 else None,
        new_fingerprint=f"{key}-tokenized",
        desc="tokenizing",
    )
    packed_file = os.path.join(work, "packed.arrow")
    num_rows = _pack(tokenized, config.seq_len, special, packed_file, report)
    if num_rows == 0:
        raise DataError(f"no usable document in --train_files {list(config.train_files)}: every document has "
                        f"fewer than {MIN_DOC_TOKENS} tokens\n{report.summary()}")
    out = os.path.join(work, "dataset")
    datasets.Dataset.from_file(packed_file).save_to_disk(out)
    return out


class _TokenizeBatch:
    """Batch function for ``Dataset.map``: document texts -> token ids without special tokens."""

    def __init__(self, tokenizer, backend):
        self.tokenizer = tokenizer
        self.backend = backend

    def __call__(self, texts: List[str]) -> dict:
        if self.backend is not None:
            ids = [encoding.ids for encoding in self.backend.encode_batch(texts, add_special_tokens=False)]
        else:
            # Best effort: transformers' own slow tokenizers may still keep special-token text whole.
            ids = self.tokenizer(texts, add_special_tokens=False, truncation=False,
                                 split_special_tokens=True)["input_ids"]
        return {"ids": ids}


def _plain_backend(tokenizer):
    """A copy of the fast tokenizer's backend with truncation and padding off (a tokenizer.json may set
    them, and a truncated document would silently lose text), or None for a slow tokenizer.

    It also encodes special-token text ("[MASK]", "[SEP]" written in a document) as ordinary text:
    otherwise corpus text would inject real special ids, even with add_special_tokens=False."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    plain = Tokenizer.from_str(backend.to_str())
    plain.no_truncation()
    plain.no_padding()
    try:
        plain.encode_special_tokens = True  # tokenizers >= 0.19
    except AttributeError:
        import tokenizers

        logger.warning("tokenizers %s cannot encode special-token text as text (needs >= 0.19): a document "
                       "containing e.g. \"[MASK]\" gets the special id", tokenizers.__version__)
    return plain


def _tokenizer_fingerprint(tokenizer, backend) -> str:
    if backend is not None:
        # to_str() leaves encode_special_tokens out, yet it changes the ids.
        content = backend.to_str() + f"encode_special_tokens={getattr(backend, 'encode_special_tokens', None)}"
    else:
        content = type(tokenizer).__name__ + json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


def _path_fingerprint(path: str) -> list:
    if os.path.isdir(path):
        entries = []
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                try:
                    stat = os.stat(full)
                except OSError:  # a dangling symlink, or a file that vanished: the reading pass reports it
                    entries.append([os.path.relpath(full, path), None, None])
                    continue
                entries.append([os.path.relpath(full, path), stat.st_mtime_ns, stat.st_size])
        return [path, entries]
    try:
        stat = os.stat(path)
    except OSError:  # vanished since the glob expanded: the reading pass reports it
        return [path, None, None]
    return [path, stat.st_mtime_ns, stat.st_size]


def _cache_key(config: DataConfig, paths: List[str], missing: List[str], tokenizer_fingerprint: str,
               special: Tuple[int, int, int]) -> str:
    payload = {
        "format": CACHE_FORMAT_VERSION,
        "files": [_path_fingerprint(p) for p in paths],
        "missing": missing,
        "text_field": config.text_field,
        "tokenizer": tokenizer_fingerprint,
        "special": list(special),
        "seq_len": config.seq_len,
        "min_doc_tokens": MIN_DOC_TOKENS,
        "max_examples": config.max_examples,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:24]


def _pack(tokenized: datasets.Dataset, seq_len: int, special: Tuple[int, int, int], out_file: str,
          report: CorpusReport) -> int:
    """Concatenate the documents' ids and cut them into [CLS] chunk [SEP] rows (see module docstring);
    stream the rows to an Arrow file. Returns the number of rows."""
    pad_id, cls_id, sep_id = special
    inner = seq_len - 2
    schema = pa.schema([("input_ids", pa.list_(pa.int32(), seq_len)),
                        ("attention_mask", pa.list_(pa.int8(), seq_len))])
    carry = np.empty(0, dtype=np.int32)
    num_rows = 0
    with pa.OSFile(out_file, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        def write(ids: np.ndarray, mask: np.ndarray) -> None:
            writer.write_batch(pa.record_batch(
                [pa.FixedSizeListArray.from_arrays(pa.array(ids.ravel()), seq_len),
                 pa.FixedSizeListArray.from_arrays(pa.array(mask.ravel()), seq_len)], schema=schema))

        for table in tokenized.with_format("arrow").iter(batch_size=4096):
            ids_column = table.column("ids").combine_chunks()
            lengths = pc.list_value_length(ids_column).to_numpy(zero_copy_only=False).astype(np.int64)
            short = lengths < MIN_DOC_TOKENS
            if short.any():
                _report_short(table, np.flatnonzero(short), report)
            flat = pc.list_flatten(ids_column).to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
            kept = flat[np.repeat(~short, lengths)]
            report.tokens += int(kept.size)
            tokens = np.concatenate([carry, kept])
            full = tokens.size // inner
            if full:
                rows = np.empty((full, seq_len), dtype=np.int32)
                rows[:, 0] = cls_id
                rows[:, 1:-1] = tokens[: full * inner].reshape(full, inner)
                rows[:, -1] = sep_id
                write(rows, np.ones((full, seq_len), dtype=np.int8))
                num_rows += full
            carry = tokens[full * inner:]
        if carry.size:
            row = np.full((1, seq_len), pad_id, dtype=np.int32)
            row[0, 0], row[0, 1: carry.size + 1], row[0, carry.size + 1] = cls_id, carry, sep_id
            mask = np.zeros((1, seq_len), dtype=np.int8)
            mask[0, : carry.size + 2] = 1
            write(row, mask)
            num_rows += 1
    return num_rows


def _report_short(table: pa.Table, rows: np.ndarray, report: CorpusReport) -> None:
    report.documents -= int(rows.size)
    sources = table.column("source").to_numpy()
    lines = table.column("line").to_numpy()
    room = max(report.max_examples - len(report.examples.get("too_short", [])), 0)
    for i in rows[:room]:
        report.skip("too_short", f"{report.sources[sources[i]]}:{lines[i]}")
    if rows.size > room:
        report.skip("too_short", None, count=int(rows.size) - room)


# ------------------------------------------------------------------------------------------- batches

def _to_batch(rows: dict) -> Dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.asarray(rows[name], dtype=np.int64))
            for name in ("input_ids", "attention_mask")}


class ShardedBatches:
    """Infinite, seeded, resumable micro-batches of one rank's shard.

    Epoch ``e`` shuffles all rows with ``seed`` and ``e``; global step ``k`` takes permuted rows
    ``[k*G, (k+1)*G)`` with ``G = batch_size * world_size``, and rank ``r`` gets the ``r``-th block of
    ``batch_size`` of them. Ranks thus read disjoint rows, the rows past the last full global batch are
    dropped (equal step counts on every rank), and the data order depends only on the global batch size.
    """

    def __init__(self, dataset: datasets.Dataset, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0):
        for name, value, minimum in (("batch_size", batch_size, 1), ("world_size", world_size, 1), ("rank", rank, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if rank >= world_size:
            raise ValueError(f"rank {rank} is not < world_size {world_size}")
        self.num_rows = len(dataset)
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.global_batch_size = batch_size * world_size
        self.steps_per_epoch = self.num_rows // self.global_batch_size
        if self.steps_per_epoch == 0:
            raise DataError(
                f"the training split has {self.num_rows} sequence(s), fewer than one global batch of "
                f"{self.global_batch_size} (micro batch size {batch_size} x {world_size} rank(s)): add data or "
                f"lower the micro batch size"
            )
        self._rows = dataset.with_format("numpy", columns=["input_ids", "attention_mask"])
        self.epoch = 0
        self.offset = 0  # batches already served in this epoch
        self._order: Optional[np.ndarray] = None

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            self._order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_rows)
        return self._order

    def __iter__(self) -> "ShardedBatches":
        return self

    def __next__(self) -> Dict[str, torch.Tensor]:
        if self.offset >= self.steps_per_epoch:
            self.epoch, self.offset, self._order = self.epoch + 1, 0, None
        start = self.offset * self.global_batch_size + self.rank * self.batch_size
        indices = self._epoch_order()[start: start + self.batch_size]
        self.offset += 1
        return _to_batch(self._rows[indices.tolist()])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed, "num_rows": self.num_rows,
                "batch_size": self.batch_size, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        """Continue where ``state`` left off. With another batch size or world size the position is
        carried over in samples (exact when the global batch size is unchanged)."""
        if state["num_rows"] != self.num_rows or state["seed"] != self.seed:
            raise ValueError(
                f"cannot resume the data order: the saved position is for {state['num_rows']} training sequences "
                f"with seed {state['seed']}, this run has {self.num_rows} with seed {self.seed} "
                f"(did --train_files, --seq_len or --seed change?)"
            )
        epoch, offset = int(state["epoch"]), int(state["offset"])
        saved_global = int(state["batch_size"]) * int(state["world_size"])
        if saved_global != self.global_batch_size:
            consumed = offset * saved_global
            offset = consumed // self.global_batch_size
            if consumed % self.global_batch_size:
                logger.warning("global batch size changed from %d to %d: resuming the data order at sample %d "
                               "of epoch %d instead of %d", saved_global, self.global_batch_size,
                               offset * self.global_batch_size, epoch, consumed)
        self.epoch, self.offset, self._order = epoch, offset, None


def rows_as_tensors(dataset: datasets.Dataset) -> Dict[str, torch.Tensor]:
    """Every row of ``dataset`` as int64 tensors [rows, seq_len], read from Arrow once.

    For the meta-validation split: it is small (2 x --meta_batch_size sequences) and each sampler
    update indexes it chunk by chunk, which through Python lists costs milliseconds per chunk.
    """
    return _to_batch(dataset.with_format("numpy", columns=["input_ids", "attention_mask"])[:])
