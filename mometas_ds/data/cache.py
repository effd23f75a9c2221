"""Tokenizing a corpus once into cached, packed Arrow shards (one per input file, or per part of a large one,
data.parts), loading them as one dataset, and the seeded meta-validation split of it (see the package's
docstring for the packing and split rules)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from typing import List, Optional, Sequence, Tuple

import datasets
import numpy as np
import tokenizers

from mometas_ds.config.choices import MIN_SEQ_LEN, VERIFY_LEVELS
from mometas_ds.errors import DataError
from mometas_ds.data.tokenizer import required_token_id

from mometas_ds.data import readers
from mometas_ds.data.formats import Part, format_of
from mometas_ds.data.parts import MIN_SHARD_SIZE_MB, plan_parts, scan_ranges, with_scans
from mometas_ds.data.report import MIN_DOC_TOKENS, CorpusReport
from mometas_ds.data.shard_files import REPORT_FILE, ROWS_FILE, check_shard, report_stamp
from mometas_ds.data.shards import CACHE_FORMAT_VERSION, PACKING_MODES, ShardJob, build_shards

logger = logging.getLogger(__name__)

SHARDS_DIR = "shards"  # cache_dir/shards/<shard key>/{rows.arrow, shard.json}


# -------------------------------------------------------------------------------- tokenize, pack, cache

@dataclass
class DataConfig:
    train_files: Sequence[str]
    text_field: str = "text"
    seq_len: int = 128
    cache_dir: str = os.path.join("~", ".cache", "mometas_ds", "data")
    num_proc: int = 1  # processes that build missing shards
    meta_sequences: int = 0  # packed sequences held out for the sampler's meta-validation (not in the cache key)
    seed: int = 0  # picks the held-out sequences (not in the cache key)
    max_examples: int = 5  # "file:line" examples kept per skip reason
    packing: str = "packed"  # one of PACKING_MODES (see the package's docstring)
    shard_size_mb: float = 64.0  # an input larger than this is split into shards of about this size (data.parts)
    user_modules: Sequence[str] = ()  # imported by every shard-building process: your corpus formats (not in the key)
    verify: str = "auto"  # how shards are checked when opened, as --verify_checkpoint (not in the cache key)

    def __post_init__(self):
        if isinstance(self.train_files, (str, os.PathLike)):
            self.train_files = [str(self.train_files)]
        self.train_files = [str(f) for f in self.train_files]
        if not self.train_files:
            raise ValueError("--train_files: give at least one file, directory or glob")
        if not isinstance(self.text_field, str) or not self.text_field:
            raise ValueError(f"--text_field must be a non-empty string, got {self.text_field!r}")
        for name, flag, minimum in (("seq_len", "--seq_len", MIN_SEQ_LEN), ("num_proc", "--num_proc", 1),
                                    ("meta_sequences", "meta_sequences (from --meta_batch_size)", 0),
                                    ("max_examples", "max_examples", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{flag} must be an int >= {minimum}, got {value!r}")
        size = self.shard_size_mb
        if isinstance(size, bool) or not isinstance(size, (int, float)) or not math.isfinite(size) \
                or size < MIN_SHARD_SIZE_MB:
            raise ValueError(f"--shard_size_mb must be a number >= {MIN_SHARD_SIZE_MB}, got {size!r}")
        if self.verify not in VERIFY_LEVELS:
            raise ValueError(f"verify must be one of {', '.join(VERIFY_LEVELS)}, got {self.verify!r}")
        if self.packing not in PACKING_MODES:
            raise ValueError(f"--packing must be one of {', '.join(PACKING_MODES)}, got {self.packing!r}")
        self.cache_dir = os.path.abspath(os.path.expanduser(str(self.cache_dir)))


@dataclass
class PreparedData:
    train: datasets.Dataset  # columns input_ids, attention_mask: int lists of length seq_len
    meta: datasets.Dataset  # held-out meta-validation sequences, same columns
    report: CorpusReport
    cache_hit: bool  # True when every shard was already in the cache (nothing was tokenized)
    cache_path: str  # cache_dir/shards: the directory holding the shards
    shard_paths: List[str] = field(default_factory=list)  # the corpus's shard directories, in corpus order
    shards_built: int = 0  # of them, built by this call (the others were reused)
    damaged: List[str] = field(default_factory=list)  # shard directories found damaged (and so rebuilt)


@dataclass
class _Shard:
    path: str  # a resolved input file or save_to_disk directory
    key: Optional[str]  # None: the file vanished after the glob expanded (reported, nothing cached)
    part: Optional[Part] = None  # the part of a large input (data.parts), or None: the whole input

    def label(self) -> str:
        return self.path if self.part is None else f"{self.path} ({self.part.label()})"


def prepare_data(config: DataConfig, tokenizer) -> PreparedData:
    """Tokenize and pack every input file not yet in the cache into its own shard
    ``config.cache_dir/shards/<key>/`` (an input larger than ``config.shard_size_mb`` into one shard per part,
    see data.parts), in ``config.num_proc`` processes; then load the corpus (the shards in file order,
    memory-mapped) and split its rows into training and meta-validation (see ``meta_split_rows``).

    A shard's key covers what determines its rows: the file's path, size and mtime, its part's range,
    ``text_field``, the tokenizer and its special ids, ``seq_len``, ``packing``, ``MIN_DOC_TOKENS``,
    ``max_examples`` (of its report) and ``CACHE_FORMAT_VERSION``; not ``seed`` nor ``meta_sequences``.
    Adding a file builds only its shards; a changed file rebuilds only its own. A shard appears by an atomic
    rename, so a concurrent reader sees it whole or not at all; in multi-rank runs call this on rank 0 first,
    then on the others. Every shard is checked against its shard.json first (sizes, and checksums by
    ``config.verify``, the rule of --verify_checkpoint); a damaged one is rebuilt (``PreparedData.damaged``).
    Concurrent calls on one cache split the shards to build (a lock per shard, data.shards).
    Loading an already prepared corpus writes nothing.
    """
    special, shards, missing, root, spec = _plan(config, tokenizer)
    todo, damaged, seen = [], [], {}
    full = _full_check(config.verify, root, shards)
    for shard in shards:
        if shard.key is None:
            continue
        shard_dir = os.path.join(root, shard.key)
        stamp = report_stamp(shard_dir)
        stored, problems = check_shard(shard_dir, full)
        if stored is not None and not problems:
            continue
        if problems:  # never reused: rebuilt from its input, under the same key
            logger.warning("tokenized shard %s (%s) is damaged, rebuilding it: %s", shard_dir, shard.label(),
                           "; ".join(problems))
            damaged.append(shard_dir)
        todo.append(shard)
        seen[shard.key] = stamp
    built = 0
    if todo:
        os.makedirs(root, exist_ok=True)
        jobs = [ShardJob(shard.path, os.path.join(root, shard.key), config.text_field, config.seq_len,
                         config.packing, special, config.max_examples, shard.part, seen=seen[shard.key])
                for shard in _scanned(shards, todo, config.num_proc)]
        built = build_shards(jobs, config.num_proc, spec, tuple(config.user_modules))
        logger.info("wrote %d tokenized shard(s) in %s (reused %d)", built, root, len(shards) - built)
    else:
        logger.info("reusing tokenized cache at %s (%d shard(s), nothing to tokenize)", root, len(shards))
    try:
        return _load(config, shards, missing, root, built=built, damaged=damaged)
    except DataError:
        for shard in todo:  # all empty (no usable document): a failed preparation leaves nothing behind
            shutil.rmtree(os.path.join(root, shard.key), ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(root)
        raise


def _plan(config: DataConfig, tokenizer):
    """(special ids, the corpus's shards in order, entries that matched nothing, the shards directory,
    the encoder's spec for the workers)."""
    special = tuple(required_token_id(tokenizer, role) for role in ("pad", "cls", "sep"))
    paths, missing = readers.resolve_files(config.train_files)
    backend = _plain_backend(tokenizer)
    tokenizer_fingerprint = _tokenizer_fingerprint(tokenizer, backend)
    root = os.path.join(config.cache_dir, SHARDS_DIR)
    shard_bytes = int(config.shard_size_mb * (1 << 20))
    shards = []
    for path in paths:
        fingerprint = _path_fingerprint(path)
        if not os.path.isdir(path) and fingerprint[1] is None:
            shards.append(_Shard(path, None))
            continue
        for part in plan_parts(path, config.text_field, shard_bytes) or [None]:
            shards.append(_Shard(path, _shard_key(config, fingerprint, tokenizer_fingerprint, special, part), part))
    return special, shards, missing, root, _tokenizer_spec(tokenizer, backend)


def _full_check(level: str, root: str, shards: List[_Shard]) -> bool:
    """Whether opening the shards checks their checksums too, by --verify_checkpoint's rule: 'full' yes,
    'size' no, 'auto' when the corpus's shards hold at most FULL_VERIFY_MAX_BYTES (4 GiB) together."""
    if level != "auto":
        return level == "full"
    from mometas_ds.checkpoint import layout  # read at call time: a test may lower the limit

    total = 0
    for shard in shards:
        if shard.key is not None:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, shard.key, ROWS_FILE))
    return total <= layout.FULL_VERIFY_MAX_BYTES


@dataclass
class ShardVerdict:
    shard_dir: str
    source: str  # the input file, and its part
    state: str  # "intact", "damaged" or "missing" (not built)
    problems: List[str] = field(default_factory=list)


def verify_cache(config: DataConfig, tokenizer) -> List[ShardVerdict]:
    """Check every shard of the corpus against its shard.json, checksums included; builds nothing."""
    _, shards, _, root, _ = _plan(config, tokenizer)
    verdicts = []
    for shard in shards:
        if shard.key is None:
            continue
        shard_dir = os.path.join(root, shard.key)
        stored, problems = check_shard(shard_dir, full=True)
        state = "missing" if stored is None else "damaged" if problems else "intact"
        verdicts.append(ShardVerdict(shard_dir, shard.label(), state, problems))
    return verdicts


def _scanned(shards: List[_Shard], todo: List[_Shard], num_proc: int) -> List[_Shard]:
    """``todo`` with its byte-range parts completed by the pre-scan (line numbers, .txt layout) of every part
    of their files, all scanned together in ``num_proc`` processes (data.parts)."""
    paths = list(dict.fromkeys(s.path for s in todo if s.part is not None and s.part.unit == "bytes"))
    if not paths:
        return todo
    parts = {path: [s.part for s in shards if s.path == path] for path in paths}
    start = time.perf_counter()
    scans = scan_ranges([(path, part.start, part.stop) for path in paths for part in parts[path]], num_proc)
    logger.info("pre-scanned %d range(s) of %d split file(s) in %.1f s", len(scans), len(paths),
                time.perf_counter() - start)
    filled, done = {}, 0
    for path in paths:
        count = len(parts[path])
        for part in with_scans(parts[path], scans[done: done + count], format_of(path).name):
            filled[path, part.index] = part
        done += count
    return [replace(s, part=filled.get((s.path, s.part.index), s.part)) if s.part else s for s in todo]


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


def read_shard(shard_dir: str) -> Tuple[CorpusReport, int]:
    """A shard's report and its number of rows."""
    with open(os.path.join(shard_dir, REPORT_FILE)) as f:
        stored = json.load(f)
    return CorpusReport.from_dict(stored["report"]), int(stored["rows"])


def _load(config: DataConfig, shards: List[_Shard], missing: List[str], root: str, built: int,
          damaged: List[str]) -> PreparedData:
    """The corpus: the shards' rows in file order (memory-mapped, no copy) and their reports merged."""
    report = CorpusReport(max_examples=config.max_examples)
    for entry in missing:
        report.skip("missing_file", f"{entry}: {readers.missing_reason(entry)}")
    parts, shard_paths = [], []
    for shard in shards:
        if shard.key is None:
            report.skip("missing_file", f"{shard.path}: {readers.missing_reason(shard.path)}")
            continue
        shard_dir = os.path.join(root, shard.key)
        shard_report, rows = read_shard(shard_dir)
        report.merge(shard_report)
        shard_paths.append(shard_dir)
        if rows:
            parts.append(datasets.Dataset.from_file(os.path.join(shard_dir, ROWS_FILE)))
    if not parts:
        short = report.skipped.get("too_short", 0)
        why = (f"every document has fewer than {MIN_DOC_TOKENS} tokens" if short and not report.documents
               else f"(--text_field {config.text_field!r})")
        raise DataError(f"no usable document in --train_files {list(config.train_files)}: {why}\n{report.summary()}")
    packed = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
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
    return PreparedData(train=train, meta=meta, report=report, cache_hit=built == 0, cache_path=root,
                        shard_paths=shard_paths, shards_built=built, damaged=damaged)


def _tokenizer_spec(tokenizer, backend) -> tuple:
    """What a worker process needs to rebuild the encoder (a fast backend travels as its JSON)."""
    if backend is not None:
        return ("fast", backend.to_str(), getattr(backend, "encode_special_tokens", False))
    return ("slow", tokenizer)


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


def _shard_key(config: DataConfig, fingerprint: list, tokenizer_fingerprint: str,
               special: Tuple[int, int, int], part: Optional[Part]) -> str:
    payload = {
        "format": CACHE_FORMAT_VERSION,
        "file": fingerprint,  # path, mtime, size (a directory: its files' too)
        "text_field": config.text_field,
        "tokenizer": tokenizer_fingerprint,
        "special": list(special),
        "seq_len": config.seq_len,
        "packing": config.packing,
        "min_doc_tokens": MIN_DOC_TOKENS,
        "max_examples": config.max_examples,
    }
    if part is not None:  # a whole input keeps the key it had before inputs were split
        payload["part"] = part.key()
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:24]
