"""Splitting one large input into several shards (``--shard_size_mb``), so that one big file or one
``save_to_disk`` dataset is tokenized by several processes, not one.

* uncompressed files of a line-based format (``.jsonl`` / ``.json`` / ``.txt``; data.formats ``split="lines"``):
  byte ranges that start at line starts;
* ``.parquet`` (``split="row_groups"``): ranges of row groups (a file with one row group stays whole);
* a ``save_to_disk`` directory: row ranges of each split it is read from;
* ``.gz`` files stay whole (a gzip stream cannot be entered in the middle).

A part holds the documents that begin in it: a ``.txt`` paragraph that runs over a part's end is read whole
by that part and skipped by the next, so the documents (and their line numbers) are the whole file's. The
line numbers before each byte range and the ``.txt`` layout (which needs the whole file) come from a
pre-scan of the ranges, in parallel (``scan_ranges``), done only when one of the file's parts is missing
from the cache. Kept free of torch and transformers imports (the scan runs in spawned workers).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Tuple

import numpy as np

from mometas_ds.data.formats import Part, format_of, get_format, is_gzip

_SCAN_BLOCK = 1 << 20  # bytes read at a time by the split-point search
MIN_SHARD_SIZE_MB = 0.001  # --shard_size_mb's floor, about 1 kB: smaller parts only multiply processes and rows


def input_bytes(path: str) -> int:
    """The bytes of one resolved input on disk (a save_to_disk directory: its files'); OSError if it is gone."""
    if not os.path.isdir(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def plan_parts(path: str, text_field: str, shard_bytes: int) -> Optional[List[Part]]:
    """The parts of one resolved input larger than ``shard_bytes``, or None to read it whole (small, gzip,
    unsupported, or anything the reader will report as unusable). Cheap: seeks and metadata only."""
    try:
        if os.path.isdir(path):
            return _plan_saved_dataset(path, text_field, shard_bytes)
        fmt = format_of(path)
        size = os.path.getsize(path)
    except OSError:
        return None  # vanished or unreadable: the reader reports it
    if fmt is None or fmt.split is None or size <= shard_bytes or is_gzip(path):
        return None
    if fmt.split == "row_groups":
        return _plan_parquet(path, text_field, size, shard_bytes)
    starts = line_starts(path, size, math.ceil(size / shard_bytes))
    if len(starts) < 2:
        return None  # one line longer than the parts would be
    stops = starts[1:] + [size]
    return [Part(i, len(starts), "bytes", a, b) for i, (a, b) in enumerate(zip(starts, stops))]


def line_starts(path: str, size: int, count: int) -> List[int]:
    """0 and the first line start at or after each ``k * size // count`` (k = 1 .. count-1), without repeats."""
    starts = [0]
    with open(path, "rb") as f:
        for k in range(1, count):
            target = k * size // count
            if target <= starts[-1]:
                continue
            f.seek(target - 1)
            position = target - 1
            while True:  # to just after the next newline (the byte before target may be one)
                block = f.read(_SCAN_BLOCK)
                if not block:
                    return starts
                newline = block.find(b"\n")
                if newline >= 0:
                    position += newline + 1
                    break
                position += len(block)
            if position >= size:
                return starts
            starts.append(position)
    return starts


def _plan_parquet(path: str, text_field: str, size: int, shard_bytes: int) -> Optional[List[Part]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
        columns = pq.read_schema(path).names
    except (pa.ArrowException, OSError):
        return None
    groups = meta.num_row_groups
    if groups < 2 or meta.num_rows == 0 or text_field not in columns:
        return None
    rows_before = np.concatenate([[0], np.cumsum([meta.row_group(g).num_rows for g in range(groups)])])
    # Cut where the row groups' running size crosses k/count of the whole, so parts hold similar bytes.
    bytes_after = np.cumsum([meta.row_group(g).total_byte_size for g in range(groups)])
    count = math.ceil(size / shard_bytes)
    targets = bytes_after[-1] * np.arange(1, count) / count
    cuts = sorted({0, *(int(np.searchsorted(bytes_after, t, side="left")) + 1 for t in targets)} - {groups})
    bounds = [c for c in cuts if c < groups] + [groups]
    if len(bounds) < 3:
        return None
    return [Part(i, len(bounds) - 1, "row_groups", a, b, first_line=int(rows_before[a]) + 1)
            for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]


def saved_dataset_splits(loaded) -> List[Tuple[Optional[str], object]]:
    """(split name or None, dataset) for what the reader reads of a save_to_disk directory: a Dataset, or
    of a DatasetDict its 'train' split when there is one, otherwise every split."""
    import datasets

    if isinstance(loaded, datasets.DatasetDict):
        names = ["train"] if "train" in loaded else list(loaded)
        return [(name, loaded[name]) for name in names]
    return [(None, loaded)]


def is_saved_dataset(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, name)) for name in ("dataset_dict.json", "state.json"))


def _plan_saved_dataset(path: str, text_field: str, shard_bytes: int) -> Optional[List[Part]]:
    if not is_saved_dataset(path):
        return None
    import datasets

    try:
        splits = saved_dataset_splits(datasets.load_from_disk(path))
    except Exception:  # damaged: the reader reports it
        return None
    if any(len(split) == 0 or text_field not in split.column_names for _, split in splits):
        return None  # read whole, so that the reader reports the unusable split once
    sizes = [split.data.nbytes for _, split in splits]
    if sum(sizes) <= shard_bytes:
        return None
    ranges = []
    for (name, split), nbytes in zip(splits, sizes):
        count = max(1, min(len(split), math.ceil(nbytes / shard_bytes)))
        bounds = [len(split) * k // count for k in range(count + 1)]
        ranges += [(name, a, b) for a, b in zip(bounds, bounds[1:])]
    return [Part(i, len(ranges), "rows", a, b, split=name, first_line=a + 1) for i, (name, a, b) in enumerate(ranges)]


# ------------------------------------------------------------------------------------------------ pre-scan

@dataclass(frozen=True)
class RangeScan:
    """What the readers need to know about a byte range from outside it."""

    lines: int  # newlines in the range (its lines, as the range ends at a line start or at the file's end)
    has_text: bool  # a line that is not blank
    lead_blank: bool  # a blank line before the first non-blank one (every line, when there is none)
    inner_blank: bool  # a blank line between two non-blank lines
    trail_blank: bool  # a blank line after the last non-blank one
    last_blank: bool  # its last line is blank


def scan_range(job: Tuple[str, int, int]) -> RangeScan:
    path, start, stop = job
    lines = 0
    has_text = lead = inner = pending = last_blank = False
    with open(path, "rb") as f:
        f.seek(start)
        position = start
        for raw in f:
            if position >= stop:
                break
            position += len(raw)
            lines += raw.endswith(b"\n")
            last_blank = not raw.strip()
            if last_blank:
                if has_text:
                    pending = True
                else:
                    lead = True
            else:
                inner = inner or pending
                has_text, pending = True, False
    return RangeScan(lines, has_text, lead, inner, pending, last_blank)


def scan_ranges(jobs: Sequence[Tuple[str, int, int]], num_proc: int) -> List[RangeScan]:
    """``scan_range`` of every (path, start, stop), in order, in up to ``num_proc`` processes."""
    processes = min(num_proc, len(jobs))
    if processes <= 1:
        return [scan_range(job) for job in jobs]
    from mometas_ds.data.workers import run_in_processes  # here: workers imports errors, not needed for planning

    scans = [None] * len(jobs)
    for i, scan in run_in_processes(scan_range, jobs, processes, "pre-scan"):
        scans[i] = scan
    return scans


def txt_is_paragraphs(scans: Sequence[RangeScan]) -> bool:
    """The readers' whole-file rule (a blank line between two non-blank lines) from the ranges' scans."""
    seen_text = pending = False
    for scan in scans:
        if scan.has_text:
            if scan.inner_blank or (seen_text and (pending or scan.lead_blank)):
                return True
            seen_text, pending = True, scan.trail_blank
        elif seen_text and scan.lead_blank:
            pending = True
    return False


def with_scans(parts: Sequence[Part], scans: Sequence[RangeScan], kind: str) -> List[Part]:
    # ``kind``: the name of the file's corpus format (data.formats).
    """The byte-range parts with what their pre-scans say: first line numbers, the .txt layout, whether the
    line before each is blank, whether the file has any text."""
    first_lines = np.concatenate([[1], 1 + np.cumsum([scan.lines for scan in scans])])
    paragraphs = get_format(kind).paragraphs and txt_is_paragraphs(scans)
    has_text = any(scan.has_text for scan in scans)
    return [replace(part, first_line=int(first_lines[i]), paragraphs=paragraphs, file_has_text=has_text,
                    prev_blank=i == 0 or scans[i - 1].last_blank) for i, part in enumerate(parts)]
