"""Tokenizing a corpus once into a cached, packed Arrow dataset, and the seeded meta-validation split of it
(see the package's docstring for the packing and split rules)."""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tokenizers

from mometas_ds.errors import DataError
from mometas_ds.tokenizer import required_token_id

from . import readers
from .readers import MIN_DOC_TOKENS, CorpusReport

logger = logging.getLogger(__name__)

# Bump when the cached layout, tokenization or packing rule changes (2: special-token text split as text;
# 3: unsplit rows, the meta split drawn on load).
CACHE_FORMAT_VERSION = 3
REPORT_FILE = "corpus_report.json"


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
    paths, missing = readers.resolve_files(config.train_files)
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
    found = readers.iter_documents(config.train_files, config.text_field, report)
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
    plain = tokenizers.Tokenizer.from_str(backend.to_str())
    plain.no_truncation()
    plain.no_padding()
    try:
        plain.encode_special_tokens = True  # tokenizers >= 0.19
    except AttributeError:
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
