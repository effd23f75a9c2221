"""Building one cache shard: one input file's documents, tokenized in bounded batches with the fast
tokenizer backend's ``encode_batch``, packed (the rules are in the package's docstring) and streamed into
one Arrow file; in worker processes for ``--num_proc`` > 1. Kept free of torch and transformers imports,
so a spawned worker starts small."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import pyarrow as pa
import tokenizers

from mometas_ds.data import readers
from mometas_ds.data.formats import Part
from mometas_ds.data.parts import input_bytes
from mometas_ds.data.report import MIN_DOC_TOKENS, CorpusReport
from mometas_ds.data.workers import run_in_processes
from mometas_ds.registry import import_user_module

logger = logging.getLogger(__name__)

# Bump when the cached layout, tokenization or packing rule changes (2: special-token text split as text;
# 3: unsplit rows, the meta split drawn on load; 4: one cache per input file (shard), [SEP] between packed
# documents, --packing).
CACHE_FORMAT_VERSION = 4
ROWS_FILE = "rows.arrow"
REPORT_FILE = "shard.json"  # written last: a shard directory without it is incomplete
PACKING_MODES = ("packed", "per_document")
_DOCS_PER_BATCH = 1024  # documents per encode_batch call ...
_CHARS_PER_BATCH = 4 << 20  # ... or fewer, once they hold this many characters (bounded memory)
_ROWS_PER_WRITE = 1024  # rows per Arrow record batch


def is_complete(shard_dir: str) -> bool:
    return os.path.isfile(os.path.join(shard_dir, REPORT_FILE))


def _publish(built: str, shard_dir: str) -> None:
    """Move a finished shard into place with one rename (atomic on a POSIX file system)."""
    try:
        os.rename(built, shard_dir)
        return
    except OSError:
        if is_complete(shard_dir):
            return  # another process published the same key first; its data is identical
        if not os.path.isdir(shard_dir):
            raise
    # A directory without the report was damaged by hand (ours appear whole): replace it.
    logger.warning("replacing incomplete tokenized shard at %s", shard_dir)
    shutil.rmtree(shard_dir)
    os.rename(built, shard_dir)


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

    def label(self) -> str:
        return self.path if self.part is None else f"{self.path} ({self.part.label()})"


def build_shards(jobs: List[ShardJob], num_proc: int, spec: tuple, user_modules: Tuple[str, ...] = ()) -> None:
    """Build every job's shard, in ``num_proc`` processes (each builds whole shards, so the rows do not
    depend on it); each process imports ``user_modules`` first (corpus formats of the user's)."""
    processes = min(num_proc, len(jobs))
    logger.info("tokenizing %d file(s) into shards with %d process(es)", len(jobs), processes)

    def done(i: int, label: str, rows: int) -> None:
        logger.info("shard %d/%d: %s -> %d row(s)", i, len(jobs), label, rows)

    if processes <= 1:
        encode = _encoder(spec)
        for i, job in enumerate(jobs, 1):
            done(i, job.label(), _build_shard(job, encode))
        return
    # This module imports neither torch nor transformers, so a spawned worker starts small. Largest first:
    # a big input that cannot be split (.gz) started last would leave one process working alone at the end.
    finished = run_in_processes(_build_shard_in_worker, largest_first(jobs), processes, "shard-building",
                                initializer=_init_worker, initargs=(spec, user_modules))
    for i, (_, (label, rows)) in enumerate(finished, 1):
        done(i, label, rows)


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


def _build_shard_in_worker(job: ShardJob) -> Tuple[str, int]:
    # TEST-ONLY fault (tests/unit/data/test_parts.py; listed in mometas_ds.train.faults): the worker building
    # this shard dies.
    if os.environ.get("MOMETAS_FAULT_KILL_SHARD_WORKER") and job.label().endswith(
            os.environ["MOMETAS_FAULT_KILL_SHARD_WORKER"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return job.label(), _build_shard(job, _WORKER_ENCODE)


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


def _build_shard(job: ShardJob, encode) -> int:
    """Read one input, tokenize it in bounded batches, pack its rows straight into one Arrow file, write its
    report; publish the directory by one rename. Returns the number of rows."""
    parent = os.path.dirname(job.shard_dir)
    work = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(job.shard_dir)}-", dir=parent)
    try:
        report = CorpusReport(max_examples=job.max_examples)
        with _RowWriter(os.path.join(work, ROWS_FILE), job.seq_len, job.special, job.packing, report) as rows:
            for batch in _batches(readers.iter_path(job.path, job.text_field, report, job.part)):
                for (_, source, line), ids in zip(batch, encode([text for text, _, _ in batch])):
                    if len(ids) < MIN_DOC_TOKENS:
                        report.documents -= 1
                        report.skip("too_short", f"{source}:{line}")
                    else:
                        rows.add(np.asarray(ids, dtype=np.int32))
        with open(os.path.join(work, REPORT_FILE), "w") as f:
            json.dump({"format": CACHE_FORMAT_VERSION, "source": job.label(), "rows": rows.num_rows,
                       "report": _report_to_store(report)}, f, indent=1)
        _publish(work, job.shard_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows.num_rows


def _batches(documents):
    batch, chars = [], 0
    for document in documents:
        batch.append(document)
        chars += len(document[0])
        if len(batch) >= _DOCS_PER_BATCH or chars >= _CHARS_PER_BATCH:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


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
        self.report.tokens += int(ids.size)
        if self.packing == "per_document":
            if ids.size > self.inner:
                self.report.truncated_documents += 1
                self.report.truncated_tokens += int(ids.size) - self.inner
                ids = ids[: self.inner]
            self.ids[self.n, 1: 1 + ids.size] = ids
            self.fill = int(ids.size)
            self._close_row()
            return
        if self.fill:  # a document after another one in the open row
            if self.inner - self.fill >= 2:
                self.ids[self.n, 1 + self.fill] = self.sep_id
                self.fill += 1
            else:  # one free slot: a [SEP] there would double the row's closing [SEP]
                self._close_row()
        pos = 0
        while pos < ids.size:
            take = min(self.inner - self.fill, ids.size - pos)
            self.ids[self.n, 1 + self.fill: 1 + self.fill + take] = ids[pos: pos + take]
            self.fill += take
            pos += take
            if self.fill == self.inner:
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


