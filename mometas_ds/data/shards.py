"""Building one cache shard: one input file's documents, tokenized in bounded batches with the fast
tokenizer backend's ``encode_batch``, packed (the rules are in the package's docstring) and streamed into
one Arrow file; in worker processes for ``--num_proc`` > 1. Kept free of torch and transformers imports,
so a spawned worker starts small.

A shard is claimed by an OS lock (``fcntl.flock`` on ``<key>.lock`` beside its directory) while it is built,
so that concurrent jobs on one cache split the missing shards between them; a lock dies with its process
(a killed one leaves the empty file, which the next builder of that shard removes).
Its ``shard.json`` records the size and xxh3_64 checksum of ``rows.arrow`` (the checkpoints' scheme,
mometas_ds.checkpoint), computed by the parent process, which publishes the shard; ``check_shard`` compares
them."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import tokenizers

from mometas_ds.data import readers
from mometas_ds.data.formats import Part
from mometas_ds.data.parts import input_bytes
from mometas_ds.data.pieces import document_pieces
from mometas_ds.data.shard_files import FILES_FIELD, REPORT_FILE, ROWS_FILE, report_stamp, shard_lock
from mometas_ds.data.report import MIN_DOC_TOKENS, CorpusReport
from mometas_ds.data.workers import run_as_claimed
from mometas_ds.registry import import_user_module

logger = logging.getLogger(__name__)

# Bump when the cached layout, tokenization or packing rule changes (2: special-token text split as text;
# 3: unsplit rows, the meta split drawn on load; 4: one cache per input file (shard), [SEP] between packed
# documents, --packing).
CACHE_FORMAT_VERSION = 4
PACKING_MODES = ("packed", "per_document")
_DOCS_PER_BATCH = 1024  # documents per encode_batch call ...
_CHARS_PER_BATCH = 4 << 20  # ... or fewer, once they hold this many characters (bounded memory)
_ROWS_PER_WRITE = 1024  # rows per Arrow record batch


def is_complete(shard_dir: str) -> bool:
    return os.path.isfile(os.path.join(shard_dir, REPORT_FILE))


def _publish(built: str, shard_dir: str) -> None:
    """Move a finished shard into place by one rename (atomic on a POSIX file system). Called with the
    shard's lock held: a directory already there is a damaged or incomplete one, replaced."""
    if os.path.lexists(shard_dir):
        logger.warning("replacing tokenized shard %s", shard_dir)
        aside = tempfile.mkdtemp(prefix=f".old-{os.path.basename(shard_dir)}-", dir=os.path.dirname(shard_dir))
        os.rename(shard_dir, os.path.join(aside, "shard"))  # readers that mapped it keep their mapping
        os.rename(built, shard_dir)
        shutil.rmtree(aside, ignore_errors=True)
        return
    os.rename(built, shard_dir)


def _finish(job: "ShardJob", work: str, rows: int, report: CorpusReport) -> None:
    """Record the checksums of a built shard and publish it (in the parent process, lock held)."""
    from mometas_ds.checkpoint.layout import HASH, file_digest

    files: Dict[str, dict] = {}
    for name in (ROWS_FILE,):
        path = os.path.join(work, name)
        files[name] = {"size": os.path.getsize(path), HASH: file_digest(path)}
    with open(os.path.join(work, REPORT_FILE), "w") as f:
        json.dump({"format": CACHE_FORMAT_VERSION, "source": job.label(), "rows": rows, FILES_FIELD: files,
                   "report": _report_to_store(report)}, f, indent=1)
    _publish(work, job.shard_dir)


_SPLIT_FIELDS = ("train_sequences", "meta_sequences")  # of one run, so not in the shared report file


def _report_to_store(report: CorpusReport) -> dict:
    return {name: value for name, value in report.to_dict().items() if name not in _SPLIT_FIELDS}


# ------------------------------------------------------------------------------------------ building shards

@dataclass
class ShardJob:
    path: str
    shard_dir: str
    text_field: str
    seq_len: int
    packing: str
    special: Tuple[int, int, int]
    max_examples: int
    part: Optional[Part] = None  # one part of a large input (data.parts), or None: the whole input
    seen: Optional[tuple] = None  # report_stamp of the shard when it was found missing or damaged

    def label(self) -> str:
        return self.path if self.part is None else f"{self.path} ({self.part.label()})"


def build_shards(jobs: List[ShardJob], num_proc: int, spec: tuple, user_modules: Tuple[str, ...] = ()) -> int:
    """Build every job's shard that no other process builds, in ``num_proc`` processes (each builds whole
    shards, so the rows do not depend on it; each imports ``user_modules`` first: corpus formats of the user's);
    returns how many this process built.

    Each shard is claimed by its lock first. One held by another process (a concurrent job on the same
    cache) is left to it; once this process has built what it could claim, it waits for those locks and
    builds the ones still missing (their builder died). A shard whose shard.json changed since it was
    found missing or damaged was published by another process meanwhile: not built again."""
    processes = min(num_proc, len(jobs))
    logger.info("tokenizing %d file(s) into shards with %d process(es)", len(jobs), processes)
    busy: List[ShardJob] = []
    held: Dict[str, contextlib.ExitStack] = {}
    built = 0

    def claimed(ordered: List[ShardJob]) -> Iterator[ShardJob]:
        for job in ordered:
            stack = contextlib.ExitStack()
            if not stack.enter_context(shard_lock(job.shard_dir, wait=False)):
                stack.close()
                busy.append(job)
                continue
            if report_stamp(job.shard_dir) != job.seen:
                stack.close()
                continue
            held[job.shard_dir] = stack
            yield job

    def done(job: ShardJob, work: str, rows: int, report: CorpusReport) -> None:
        nonlocal built
        try:
            _finish(job, work, rows, report)
        finally:
            held.pop(job.shard_dir).close()
            shutil.rmtree(work, ignore_errors=True)
        built += 1
        logger.info("shard %d/%d: %s -> %d row(s)", built, len(jobs), job.label(), rows)

    encode = None
    try:
        if processes <= 1:
            encode = _encoder(spec)
            for job in claimed(jobs):
                done(job, *_build_shard(job, encode))
        else:
            # This module imports neither torch nor transformers, so a spawned worker starts small. Largest
            # first: a big input that cannot be split (.gz) started last would leave one process working alone.
            for job, result in run_as_claimed(_build_shard_in_worker, claimed(largest_first(jobs)),
                                              processes, "shard-building", len(jobs), initializer=_init_worker,
                                              initargs=(spec, user_modules)):
                done(job, *result)
    finally:
        for stack in held.values():
            stack.close()
    for job in busy:  # another process holds these: wait for it, then build what it did not publish
        logger.info("waiting for another process building %s", job.label())
        with shard_lock(job.shard_dir, wait=True):
            if report_stamp(job.shard_dir) != job.seen:
                continue
            encode = encode or _encoder(spec)
            held[job.shard_dir] = contextlib.ExitStack()
            done(job, *_build_shard(job, encode))
    return built


def largest_first(jobs: List[ShardJob]) -> List[ShardJob]:
    """The jobs by the bytes of input each reads, largest first (ties in corpus order)."""
    def reads(job: ShardJob) -> int:
        part = job.part
        if part is not None and part.unit == "bytes":
            return part.stop - part.start
        try:
            size = input_bytes(job.path)
        except OSError:
            size = 0  # gone: its job reports it
        return size // part.count if part is not None else size
    return sorted(jobs, key=reads, reverse=True)


_WORKER_ENCODE = None


def _init_worker(spec: tuple, user_modules: Tuple[str, ...] = ()) -> None:
    global _WORKER_ENCODE
    for module in user_modules:  # a spawned process starts without the parent's registrations
        import_user_module(module)
    # Tokenizer threads in many processes oversubscribe the cores; the processes are the parallelism.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER_ENCODE = _encoder(spec)


def _build_shard_in_worker(job: ShardJob) -> Tuple[str, int, CorpusReport]:
    # TEST-ONLY faults (tests/unit/data/test_parts.py, tests/unit/data/test_cache_integrity.py; listed in
    # mometas_ds.train.faults): the worker building this shard dies, or blocks (sleeps) for good.
    if os.environ.get("MOMETAS_FAULT_KILL_SHARD_WORKER") and job.label().endswith(
            os.environ["MOMETAS_FAULT_KILL_SHARD_WORKER"]):
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("MOMETAS_FAULT_BLOCK_SHARD_WORKER") and job.label().endswith(
            os.environ["MOMETAS_FAULT_BLOCK_SHARD_WORKER"]):
        print(f"fault injection: shard worker {os.getpid()} blocks", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    return _build_shard(job, _WORKER_ENCODE)


def _encoder(spec: tuple):
    """texts -> token ids without special tokens (the fast backend's encode_batch when there is one)."""
    if spec[0] == "fast":
        backend = tokenizers.Tokenizer.from_str(spec[1])
        backend.no_truncation()
        backend.no_padding()
        if spec[2]:
            backend.encode_special_tokens = True

        def encode(texts: List[str]) -> List[List[int]]:
            return [encoding.ids for encoding in backend.encode_batch(texts, add_special_tokens=False)]
        return encode
    tokenizer = spec[1]

    def encode_slow(texts: List[str]) -> List[List[int]]:
        # Best effort: transformers' own slow tokenizers may still keep special-token text whole.
        return tokenizer(texts, add_special_tokens=False, truncation=False, split_special_tokens=True)["input_ids"]
    return encode_slow


def _build_shard(job: ShardJob, encode) -> Tuple[str, int, CorpusReport]:
    """Read one input, tokenize it in bounded batches, pack its rows straight into one Arrow file in a new
    temporary directory beside the shard's. Returns (that directory, rows, report); _finish publishes it.
    A document longer than pieces.PIECE_CHARS is tokenized in pieces (pieces.split_pieces), which give its tokens."""
    parent = os.path.dirname(job.shard_dir)
    work = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(job.shard_dir)}-", dir=parent)
    try:
        report = CorpusReport(max_examples=job.max_examples)
        with _RowWriter(os.path.join(work, ROWS_FILE), job.seq_len, job.special, job.packing, report) as rows:
            document = _Document(rows, report)
            for batch in _batches(document_pieces(readers.iter_path(job.path, job.text_field, report, job.part))):
                for (_, source, line, first, last), ids in zip(batch, encode([piece[0] for piece in batch])):
                    document.feed(np.asarray(ids, dtype=np.int32), first, last, f"{source}:{line}")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return work, rows.num_rows, report


def _batches(pieces):
    batch, chars = [], 0
    for piece in pieces:
        batch.append(piece)
        chars += len(piece[0])
        if len(batch) >= _DOCS_PER_BATCH or chars >= _CHARS_PER_BATCH:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


class _Document:
    """Feeds one document's ids, given piece by piece, to the row writer: as one document, skipped when it
    has fewer than MIN_DOC_TOKENS tokens (held back until it has that many)."""

    def __init__(self, rows: "_RowWriter", report: CorpusReport):
        self.rows, self.report = rows, report
        self.held: List[np.ndarray] = []
        self.started = False

    def feed(self, ids: np.ndarray, first: bool, last: bool, where: str) -> None:
        if first:
            self.held, self.started = [], False
        if not self.started:
            self.held.append(ids)
            if sum(len(h) for h in self.held) >= MIN_DOC_TOKENS:
                self.rows.begin()
                for held in self.held:
                    self.rows.extend(held)
                self.held, self.started = [], True
        else:
            self.rows.extend(ids)
        if last:
            if self.started:
                self.rows.end()
            else:
                self.report.documents -= 1
                self.report.skip("too_short", where)
            self.held, self.started = [], False


class _RowWriter:
    """Packs documents' token ids into rows of ``seq_len`` (the rules are in the package's docstring) and
    streams them to an Arrow file in record batches of ``_ROWS_PER_WRITE`` rows."""

    def __init__(self, out_file: str, seq_len: int, special: Tuple[int, int, int], packing: str,
                 report: CorpusReport):
        self.pad_id, self.cls_id, self.sep_id = special
        self.seq_len, self.inner, self.packing, self.report = seq_len, seq_len - 2, packing, report
        self.schema = pa.schema([("input_ids", pa.list_(pa.int32(), seq_len)),
                                 ("attention_mask", pa.list_(pa.int8(), seq_len))])
        self.sink = pa.OSFile(out_file, "wb")
        self.writer = pa.ipc.new_stream(self.sink, self.schema)
        self.ids = np.empty((_ROWS_PER_WRITE, seq_len), dtype=np.int32)
        self.lengths = np.empty(_ROWS_PER_WRITE, dtype=np.int64)  # real tokens per row, cls and sep included
        self._reset()
        self.fill = 0  # inner tokens in the open row (self.ids[self.n])
        self.doc_tokens = 0  # (per_document) tokens of the open document so far
        self.num_rows = 0

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None and self.fill:
            self._close_row()  # the shard's last row, padded
        try:
            if exc_type is None:
                self._flush()
            self.writer.close()
        finally:
            self.sink.close()

    def _reset(self) -> None:
        self.ids.fill(self.pad_id)
        self.ids[:, 0] = self.cls_id
        self.n = 0

    def add(self, ids: np.ndarray) -> None:
        """One whole document."""
        self.begin()
        self.extend(ids)
        self.end()

    def begin(self) -> None:
        """A document starts (its ids follow in one or more ``extend`` calls, then ``end``)."""
        self.doc_tokens = 0
        if self.packing == "packed" and self.fill:  # a document after another one in the open row
            if self.inner - self.fill >= 2:
                self.ids[self.n, 1 + self.fill] = self.sep_id
                self.fill += 1
            else:  # one free slot: a [SEP] there would double the row's closing [SEP]
                self._close_row()

    def extend(self, ids: np.ndarray) -> None:
        self.report.tokens += int(ids.size)
        if self.packing == "per_document":  # the row holds the first inner tokens; the rest are counted
            take = max(0, min(self.inner - self.doc_tokens, int(ids.size)))
            self.ids[self.n, 1 + self.doc_tokens: 1 + self.doc_tokens + take] = ids[:take]
            self.doc_tokens += int(ids.size)
            return
        pos = 0
        while pos < ids.size:
            take = min(self.inner - self.fill, ids.size - pos)
            self.ids[self.n, 1 + self.fill: 1 + self.fill + take] = ids[pos: pos + take]
            self.fill += take
            pos += take
            if self.fill == self.inner:
                self._close_row()

    def end(self) -> None:
        if self.packing == "per_document":
            if self.doc_tokens > self.inner:
                self.report.truncated_documents += 1
                self.report.truncated_tokens += self.doc_tokens - self.inner
            self.fill = min(self.doc_tokens, self.inner)
            self._close_row()

    def _close_row(self) -> None:
        self.ids[self.n, 1 + self.fill] = self.sep_id
        self.lengths[self.n] = self.fill + 2
        self.n += 1
        self.fill = 0
        self.num_rows += 1
        if self.n == _ROWS_PER_WRITE:
            self._flush()

    def _flush(self) -> None:
        if not self.n:
            return
        ids = self.ids[: self.n]
        mask = (np.arange(self.seq_len)[None, :] < self.lengths[: self.n, None]).astype(np.int8)
        self.writer.write_batch(pa.record_batch(
            [pa.FixedSizeListArray.from_arrays(pa.array(ids.ravel()), self.seq_len),
             pa.FixedSizeListArray.from_arrays(pa.array(mask.ravel()), self.seq_len)], schema=self.schema))
        self._reset()


