"""Multiple choice (SWAG, HellaSwag): read the released files, encode each (context, ending) pair, score.

Each example becomes k pairs ``[CLS] context [SEP] second-sentence-start + ending [SEP]``, the form HF's
run_swag uses (SWAG: ``sent1`` / ``sent2 + ending``; HellaSwag: ``ctx_a`` / ``ctx_b + ending``); the model
(``AutoModelForMultipleChoice``) scores the k pairs and the metric is accuracy of the arg-max.
File layout and definitions: docs/finetuning-tasks.md.
"""
from __future__ import annotations

import csv
import json
import re
from typing import Dict, List, Sequence, Tuple

import numpy as np
from sklearn.metrics import accuracy_score

from mometas_ds.config import DataError
from mometas_ds.finetune.skips import SkipCounter, no_examples_error
from mometas_ds.finetune.text_files import bound_text, utf8_lines

_ENDING = re.compile(r"ending(\d+)")


def _join(start: str, ending: str) -> str:
    """The second sentence: its given start (SWAG ``sent2``, HellaSwag ``ctx_b``, may be empty) + the ending."""
    start, ending = start.strip(), ending.strip()
    return f"{start} {ending}" if start and ending else start or ending


def _label(value, k: int, skipped: SkipCounter, place: int):
    """The label as an int in 0..k-1, or None (counted: ``bad_label`` / ``label_out_of_range``)."""
    if isinstance(value, bool):
        value = None
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        value = int(value)
    if not isinstance(value, int):
        skipped.skip("bad_label", place)
        return None
    if not 0 <= value < k:
        skipped.skip("label_out_of_range", place)
        return None
    return value


def read_swag(path: str) -> Tuple[List[dict], SkipCounter]:
    """Read a SWAG csv (the original release's columns: ``video-id, fold-ind, startphrase, sent1, sent2,
    gold-source, ending0..ending3, label``; extra columns are ignored) into ``{id, context, endings, label}``.

    ``context`` is ``sent1`` and ending i is ``sent2 + " " + ending<i>`` (HF's run_swag form); a file with
    ``startphrase`` but no ``sent1``/``sent2`` uses ``startphrase`` as the context and the bare endings.
    ``id`` is the row's 0-based index among the data rows. A row with the wrong number of fields, or a label
    that is not an integer in 0..k-1, is skipped and counted (with its line number); a missing column
    (``label``, ``ending0``.., or the context columns) raises DataError naming the file and the column.
    """
    skipped = SkipCounter(path=path)
    examples: List[dict] = []
    try:
        # BOM, non-UTF-8 bytes, an empty file: text_files' policy
        reader = csv.DictReader(utf8_lines(path))
        header = reader.fieldnames
        if not header:
            raise no_examples_error(path, skipped, "SWAG row")
        columns = set(header)
        n_endings = 0
        while f"ending{n_endings}" in columns:
            n_endings += 1
        if n_endings < 2:
            raise DataError(f"{path}: missing column 'ending{n_endings}' (SWAG needs ending0, ending1, ...; "
                            f"the header has {', '.join(header)})")
        if "label" not in columns:
            raise DataError(f"{path}: missing column 'label' (an unlabelled split cannot be trained or scored)")
        split_form = {"sent1", "sent2"} <= columns
        if not split_form and "startphrase" not in columns:
            raise DataError(f"{path}: missing columns 'sent1' and 'sent2' (or 'startphrase') for the context")
        row_index = -1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error:  # e.g. a NUL byte; the reader has consumed the line and goes on
                row_index += 1
                skipped.skip("malformed_csv", reader.line_num)
                continue
            row_index += 1
            if None in row or any(value is None for value in row.values()):
                skipped.skip("wrong_field_count", reader.line_num)
                continue
            label = _label(row["label"], n_endings, skipped, reader.line_num)
            if label is None:
                continue
            endings = [row[f"ending{i}"] for i in range(n_endings)]
            if split_form:
                context, endings = row["sent1"].strip(), [_join(row["sent2"], e) for e in endings]
            else:
                context, endings = row["startphrase"].strip(), [e.strip() for e in endings]
            examples.append({"id": str(row_index), "context": context, "endings": endings, "label": label})
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read the SWAG file: {err}") from err
    if not examples:
        raise no_examples_error(path, skipped, "SWAG row")
    return examples, skipped


def read_hellaswag(path: str) -> Tuple[List[dict], SkipCounter]:
    """Read a HellaSwag jsonl file (one object per line with ``ind, ctx_a, ctx_b, ctx, endings, label``, as
    released) into ``{id, context, endings, label}``: ``context`` is ``ctx_a`` and ending i is
    ``ctx_b + " " + endings[i]`` (a line without ``ctx_a`` uses ``ctx`` and the bare endings); ``id`` is
    ``ind`` (else the line number).

    A line that is not a JSON object, lacks ``endings``/``label``/a context, has a label that is not an
    integer in 0..k-1, or a different number of endings from the file's first example is skipped and counted
    with its line number; blank lines are ignored. A file where no line is usable (e.g. the ``label`` key is
    missing everywhere, as in the unlabelled test split) raises DataError naming the file and the reasons.
    """
    skipped = SkipCounter(path=path)
    examples: List[dict] = []
    n_endings = None
    try:
        # BOM, non-UTF-8 bytes, an empty file: text_files' policy
        for number, line in enumerate(utf8_lines(path), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict):
                skipped.skip("malformed_json", number)
                continue
            endings = record.get("endings")
            if not isinstance(endings, list) or len(endings) < 2 or not all(isinstance(e, str) for e in endings):
                skipped.skip("missing_endings" if endings is None else "malformed_endings", number)
                continue
            if "label" not in record:
                skipped.skip("missing_label", number)
                continue
            if isinstance(record.get("ctx_a"), str):
                start = record.get("ctx_b") if isinstance(record.get("ctx_b"), str) else ""
                context, endings = record["ctx_a"].strip(), [_join(start, e) for e in endings]
            elif isinstance(record.get("ctx"), str):
                context, endings = record["ctx"].strip(), [e.strip() for e in endings]
            else:
                skipped.skip("missing_context", number)
                continue
            if n_endings is not None and len(endings) != n_endings:
                skipped.skip("wrong_ending_count", number)
                continue
            label = _label(record["label"], len(endings), skipped, number)
            if label is None:
                continue
            n_endings = len(endings)
            examples.append({"id": str(record.get("ind", number)), "context": context, "endings": endings,
                             "label": label})
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read the HellaSwag file: {err}") from err
    if not examples:
        raise no_examples_error(path, skipped, "HellaSwag line")
    return examples, skipped


def prepare_features(examples: Sequence[dict], tokenizer, max_seq_len: int, *,
                     pad_to_max_length: bool = True) -> Dict[str, list]:
    """Features shaped [examples][k][seq] (``input_ids``, ``attention_mask``, ``token_type_ids`` when the
    tokenizer makes them) plus ``labels`` [examples]; each of the k rows encodes (context, ending i), cut to
    ``max_seq_len`` by trimming the longer side first (a text is first cut by text_files.bound_text, which keeps
    the same tokens). Every example must have the same k."""
    if not examples:
        return {"input_ids": [], "attention_mask": [], "labels": []}
    k = len(examples[0]["endings"])
    for example in examples:
        if len(example["endings"]) != k:
            raise ValueError(f"example {example['id']} has {len(example['endings'])} endings, the first has {k}")
    encoded = tokenizer([bound_text(e["context"], max_seq_len)[0] for e in examples for _ in range(k)],
                        [bound_text(ending, max_seq_len)[0] for e in examples for ending in e["endings"]],
                        truncation=True, max_length=max_seq_len,
                        padding="max_length" if pad_to_max_length else False)
    features = {key: [encoded[key][i * k:(i + 1) * k] for i in range(len(examples))]
                for key in ("input_ids", "token_type_ids", "attention_mask") if key in encoded}
    features["labels"] = [int(e["label"]) for e in examples]
    return features


def accuracy(predictions, labels) -> float:
    """Fraction (0-1) of examples whose predicted choice is the label; ``predictions`` are choice ids
    [examples] or scores [examples][k] (arg-maxed)."""
    predictions = np.asarray(predictions)
    if predictions.ndim == 2:
        predictions = predictions.argmax(axis=-1)
    labels = np.asarray(labels)
    if predictions.shape != labels.shape or labels.size == 0:
        raise ValueError(f"accuracy: {predictions.shape[0] if predictions.ndim else 0} predictions for "
                         f"{labels.size} labels")
    return float(accuracy_score(labels, predictions))
