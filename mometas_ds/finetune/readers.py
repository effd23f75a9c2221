"""Readers of sequence-classification data: GLUE's TSV files, a ``save_to_disk`` copy, a user's own file.

Every reader returns ``(examples, skipped)``: examples are ``{"text_a", "text_b", "label", "where"}``
(``label`` a string for classification, a float for regression; ``where`` = ``file:line`` for messages),
``skipped`` a Counter of lines left out and why. A malformed line (too few fields, an empty text) is
skipped and counted, like a bad corpus line; a missing column, a label outside the task's label set,
an unparsable score or an empty split stops with a DataError naming the file and line.
"""
from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import datasets

from mometas_ds.config import DataError

from mometas_ds.finetune.tasks import TaskSpec
from mometas_ds.finetune.text_files import read_utf8, utf8_lines

Examples = List[dict]


def _label(spec_labels: Optional[Sequence[str]], regression: bool, raw, where: str):
    """The checked label of one example: a float in [0, 5] for STS-B-like regression, else a label string."""
    if regression:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise DataError(f"{where}: label {raw!r} is not a number (a regression task needs float labels)") from None
        if not math.isfinite(value):
            raise DataError(f"{where}: label {raw!r} is not a finite number")
        return value
    label = str(raw).strip()
    if isinstance(raw, float) and raw.is_integer():
        label = str(int(raw))
    if spec_labels is not None and label not in spec_labels:
        raise DataError(f"{where}: label {label!r} is not in the task's label set {{{', '.join(spec_labels)}}}")
    return label


def _read_lines(path: str) -> List[str]:
    # Only \n ends a line: GLUE's texts contain stray \r and quote characters. BOM, non-UTF-8 bytes and an
    # empty file: text_files' policy.
    return read_utf8(path).split("\n")


def read_glue_tsv(spec: TaskSpec, path: str) -> Tuple[Examples, Counter]:
    """One GLUE TSV file as download_glue_data.py writes it.

    Fields are split on tabs only, with no quote handling (csv's default quoting would swallow the rest of
    the file at a stray quote in MNLI / QQP); CoLA has no header, its columns are positional."""
    lines = _read_lines(path)
    text_a, text_b, label_col = spec.tsv_columns
    start = 0
    if spec.tsv_header:
        header = lines[0].rstrip("\r").split("\t") if lines else []
        index = {name: i for i, name in enumerate(header)}
        for name in (text_a, text_b, label_col):
            if name is not None and name not in index:
                raise DataError(f"{path}:1: missing column {name!r} (header: {', '.join(header) or 'empty'}); "
                                f"is this {spec.tsv_dir}'s file?")
        text_a, label_col = index[text_a], index[label_col]
        text_b = index[text_b] if text_b is not None else None
        start = 1
    needed = max(i for i in (text_a, text_b, label_col) if i is not None) + 1
    regression = spec.kind == "regression"
    examples, skipped = [], Counter()
    for lineno in range(start, len(lines)):
        line = lines[lineno].rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        where = f"{path}:{lineno + 1}"
        if len(fields) < needed:
            skipped["too few tab-separated fields"] += 1  # QQP's train.tsv has a few such lines
            continue
        a = fields[text_a].strip()
        b = fields[text_b].strip() if text_b is not None else None
        if not a or (text_b is not None and not b):
            skipped["empty text"] += 1
            continue
        examples.append({"text_a": a, "text_b": b, "label": _label(spec.labels, regression, fields[label_col], where),
                         "where": where})
    if not examples:
        raise DataError(f"{path}: no examples (empty split)" + (f"; skipped {dict(skipped)}" if skipped else ""))
    return examples, skipped


def is_saved_dataset(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "dataset_dict.json")) or os.path.isfile(os.path.join(path, "state.json"))


def read_saved_dataset(spec: TaskSpec, path: str, split: str) -> Tuple[Examples, Counter]:
    """One split of a ``datasets.save_to_disk`` directory in HF's glue layout (integer ClassLabel labels)."""
    try:
        loaded = datasets.load_from_disk(path)
    except Exception as err:  # datasets raises several types for a damaged directory
        raise DataError(f"{path}: cannot load the save_to_disk directory ({type(err).__name__}: {err})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"{path}: no split {split!r} (has {', '.join(loaded)})")
        loaded = loaded[split]
    text_a, text_b, label_col = spec.hf_columns
    for name in (text_a, text_b, label_col):
        if name is not None and name not in loaded.column_names:
            raise DataError(f"{path}/{split}: missing column {name!r} (columns: {', '.join(loaded.column_names)})")
    names = None
    feature = loaded.features.get(label_col)
    if isinstance(feature, datasets.ClassLabel):
        names = feature.names
    regression = spec.kind == "regression"
    examples, skipped = [], Counter()
    for row_index, row in enumerate(loaded):
        where = f"{path}/{split} row {row_index}"
        raw = row[label_col]
        if not regression and isinstance(raw, int) and not isinstance(raw, bool):
            if raw < 0:
                raise DataError(f"{where}: label {raw} (an unlabelled test split?)")
            if spec.labels is not None:
                if raw >= len(spec.labels):
                    raise DataError(f"{where}: label {raw} is outside the task's {len(spec.labels)} labels")
                raw = spec.labels[raw]  # HF's ClassLabel order is the registry's order
            elif names is not None:
                raw = names[raw]
        a = str(row[text_a] or "").strip()
        b = str(row[text_b] or "").strip() if text_b is not None else None
        if not a or (text_b is not None and not b):
            skipped["empty text"] += 1
            continue
        examples.append({"text_a": a, "text_b": b, "label": _label(spec.labels, regression, raw, where),
                         "where": where})
    if not examples:
        raise DataError(f"{path}/{split}: no examples (empty split)")
    return examples, skipped


def read_task_file(path: str, text_column: str, pair_column: Optional[str], label_column: str, regression: bool,
                   labels: Optional[Sequence[str]] = None) -> Tuple[Examples, Counter]:
    """A user's own task: .csv, .tsv (header row; fields split on tabs only) or .jsonl, columns by name.

    ``labels``: the label set the training file defined; a dev label outside it is an error."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".jsonl", ".json", ".csv", ".tsv"):
        raise DataError(f"{path}: unknown format {ext or '(no extension)'}; use .csv, .tsv or .jsonl")
    rows: List[Tuple[int, dict]] = []
    skipped = Counter()
    if ext in (".jsonl", ".json"):
        for lineno, line in enumerate(utf8_lines(path), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                skipped["invalid JSON line"] += 1
                continue
            if not isinstance(row, dict):
                skipped["JSON line is not an object"] += 1
                continue
            rows.append((lineno, row))
        columns = None
    else:
        lines = utf8_lines(path)
        if ext == ".csv":
            reader = csv.reader(lines)
        else:
            reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            header = next(reader, None) or []
        except csv.Error as err:
            raise DataError(f"{path}:1: cannot read the header: {err}") from None
        columns = header
        for name in (text_column, pair_column, label_column):
            if name is not None and name not in header:
                raise DataError(f"{path}:1: missing column {name!r} (header: {', '.join(header) or 'empty'})")
        while True:
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as err:  # e.g. a field over csv's field_size_limit (128 KiB): skipped, counted
                skipped[f"unreadable {ext[1:]} record ({err})"] += 1
                continue
            if not any(field.strip() for field in record):
                continue
            if len(record) != len(header):
                skipped[f"{len(record)} fields, header has {len(header)}"] += 1
                continue
            rows.append((reader.line_num, dict(zip(header, record))))
    examples = []
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        for name in (text_column, pair_column, label_column):
            if name is not None and name not in row:
                if columns is None:
                    raise DataError(f"{where}: missing column {name!r} (keys: {', '.join(row) or 'none'})")
        a = str(row[text_column] if row[text_column] is not None else "").strip()
        b = str(row[pair_column] if row[pair_column] is not None else "").strip() if pair_column else None
        if not a or (pair_column and not b):
            skipped["empty text"] += 1
            continue
        examples.append({"text_a": a, "text_b": b, "label": _label(labels, regression, row[label_column], where),
                         "where": where})
    if not examples:
        raise DataError(f"{path}: no examples (empty split)" + (f"; skipped {dict(skipped)}" if skipped else ""))
    return examples, skipped


def glue_files(spec: TaskSpec, data_dir: str) -> Dict[str, object]:
    """Where a GLUE task's data is under ``data_dir``: ``{"format": "tsv"|"disk", ...}``."""
    tsv_dir = os.path.join(data_dir, spec.tsv_dir)
    disk_dir = os.path.join(data_dir, spec.name)
    if os.path.isfile(os.path.join(tsv_dir, "train.tsv")):
        return {"format": "tsv", "train": os.path.join(tsv_dir, "train.tsv"),
                "dev": [os.path.join(tsv_dir, name) for name in spec.tsv_dev]}
    if os.path.isdir(disk_dir) and is_saved_dataset(disk_dir):
        return {"format": "disk", "path": disk_dir}
    raise DataError(f"--data_dir {data_dir}: no {spec.name} data: expected {tsv_dir}/train.tsv (GLUE's download "
                    f"layout) or {disk_dir}/ (datasets.save_to_disk)")
