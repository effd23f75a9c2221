"""The built-in task kinds (``base.TaskKind``: what each step does): how a task's files become examples,
features, a transformers task model, and scores.

Sequence classification / regression (GLUE, --task_file) is written here; QA, multiple choice and NER call
the building blocks in ``qa.py``, ``multiple_choice.py`` and ``ner.py``.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Dict, List, Optional, Tuple

import datasets
import numpy as np
import torch
from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

from mometas_ds.config import ConfigError, DataError
from mometas_ds.finetune import metrics as glue_metrics
from mometas_ds.finetune.base import (
    TaskData, TaskKind, building_block, cap, kind_for, predict, read_train_dev, register_kind, split_skips,
)
from mometas_ds.finetune.readers import glue_files, is_saved_dataset, read_glue_tsv, read_saved_dataset, read_task_file
from mometas_ds.finetune.tasks import TaskSpec
from mometas_ds.finetune.text_files import TEXT_CHARS_PER_TOKEN, bound_text

logger = logging.getLogger(__name__)


def _bounded(texts: List[str], max_seq_len: int) -> Tuple[List[str], int]:
    """``texts`` each cut by text_files.bound_text (a 10 MB line would cost the tokenizer gigabytes for the
    max_seq_len tokens kept), and how many were cut."""
    out, cut = [], 0
    for text in texts:
        text, was_cut = bound_text(text, max_seq_len)
        out.append(text)
        cut += was_cut
    return out, cut


# --------------------------------------------------------------------------- sequence classification
class SequenceClassification(TaskKind):
    """GLUE tasks, a save_to_disk copy of them, and a user's own --task_file (classification or regression)."""

    model_class = "AutoModelForSequenceClassification"

    def __init__(self, spec: TaskSpec):
        self.spec = spec
        self.regression = spec.kind == "regression"

    # ---- data
    def load(self, spec: TaskSpec, args) -> TaskData:
        skipped = Counter()
        if "metrics" in spec.extra:  # a user's own task
            return self._load_custom(spec, args)
        train_override, dev_override = args.train_file, args.dev_file
        if train_override and dev_override:
            where = {"format": "override"}
        else:
            if not args.data_dir:
                raise ConfigError(f"--tasks {spec.name}: give --data_dir (or --train_file and --dev_file)")
            where = glue_files(spec, args.data_dir)
        dev: Dict[str, list] = {}
        files = {}
        if where["format"] == "disk" and not train_override:
            train, s = read_saved_dataset(spec, where["path"], "train")
            files["train"] = where["path"]
        else:
            path = train_override or where["train"]
            train, s = self._read_any(spec, path, "train")
            files["train"] = path
        skipped.update({f"train: {k}": v for k, v in s.items()})
        if dev_override:
            examples, s = self._read_any(spec, dev_override, spec.hf_dev[0])
            dev[spec.dev_names[0] if len(spec.dev_names) == 1 else "dev"] = examples
            files["dev"] = dev_override
            skipped.update({f"dev: {k}": v for k, v in s.items()})
        elif where["format"] == "disk":
            for split, name in zip(spec.hf_dev, spec.dev_names):
                dev[name], s = read_saved_dataset(spec, where["path"], split)
                skipped.update({f"{name}: {k}": v for k, v in s.items()})
            files["dev"] = where["path"]
        else:
            for path, name in zip(where["dev"], spec.dev_names):
                dev[name], s = read_glue_tsv(spec, path)
                skipped.update({f"{name}: {k}": v for k, v in s.items()})
            files["dev"] = ",".join(where["dev"])
        return TaskData(train=train, dev=dev, skipped=skipped,
                        labels=None if self.regression else list(spec.labels), files=files)

    @staticmethod
    def _read_any(spec: TaskSpec, path: str, split: str):
        if os.path.isdir(path) and is_saved_dataset(path):
            return read_saved_dataset(spec, path, split)
        return read_glue_tsv(spec, path)

    def _load_custom(self, spec: TaskSpec, args) -> TaskData:
        columns = (args.text_column, args.pair_column, args.label_column)
        train, s_train = read_task_file(args.task_file, *columns, regression=self.regression)
        labels = None if self.regression else sorted({e["label"] for e in train}, key=_label_sort_key)
        if not self.regression and len(labels) < 2:
            raise DataError(f"{args.task_file}: every training label is {labels[0]!r}; a classifier needs two or more")
        dev, s_dev = read_task_file(args.dev_file, *columns, regression=self.regression, labels=labels)
        skipped = split_skips(s_train, s_dev)
        return TaskData(train=train, dev={"dev": dev}, skipped=skipped, labels=labels,
                        files={"train": args.task_file, "dev": args.dev_file})

    # ---- model
    def model_kwargs(self, data: TaskData) -> dict:
        if self.regression:
            return {"num_labels": 1, "problem_type": "regression"}
        return {"num_labels": len(data.labels), "problem_type": "single_label_classification",
                "id2label": dict(enumerate(data.labels)), "label2id": {name: i for i, name in enumerate(data.labels)}}

    # ---- features
    def _encode(self, examples: list, tokenizer, args, labels: Optional[List[str]]):
        a, cut_a = _bounded([e["text_a"] for e in examples], args.max_seq_len)
        b, cut_b = (_bounded([e["text_b"] for e in examples], args.max_seq_len)
                    if examples and examples[0]["text_b"] is not None else (None, 0))
        if cut_a or cut_b:
            logger.info("%d text(s) over %d characters cut to that length before tokenizing (%d characters per "
                        "token of --max_seq_len %d; the tokens kept are the same)", cut_a + cut_b,
                        TEXT_CHARS_PER_TOKEN * args.max_seq_len, TEXT_CHARS_PER_TOKEN, args.max_seq_len)
        enc = tokenizer(a, b, truncation=True, max_length=args.max_seq_len)
        if self.regression:
            enc["labels"] = [float(e["label"]) for e in examples]
        else:
            to_id = {name: i for i, name in enumerate(labels)}
            enc["labels"] = [to_id[e["label"]] for e in examples]
        return datasets.Dataset.from_dict(dict(enc))

    def train_dataset(self, data: TaskData, tokenizer, args):
        return self._encode(cap(data.train, args.max_train_examples), tokenizer, args, data.labels)

    def eval_inputs(self, data: TaskData, tokenizer, args):
        return {name: (cap(ex, args.max_eval_examples),
                       self._encode(cap(ex, args.max_eval_examples), tokenizer, args, data.labels))
                for name, ex in data.dev.items()}

    def collator(self, tokenizer):
        return DataCollatorWithPadding(tokenizer)

    # ---- scores
    def evaluate(self, trainer, data: TaskData, inputs, args) -> Tuple[dict, list]:
        metric_task = self.spec.extra.get("metrics", self.spec.name)
        metrics, rows = {}, []
        for split, (examples, dataset) in inputs.items():
            logits = np.asarray(predict(trainer, dataset))
            if self.regression:
                predictions = [float(v) for v in logits.reshape(len(examples), -1)[:, 0]]
            else:
                predictions = [data.labels[int(i)] for i in logits.argmax(-1)]
            gold = [e["label"] for e in examples]
            split_metrics = glue_metrics.classification_metrics(metric_task, predictions, gold)
            if len(inputs) > 1:  # MNLI: accuracy_m / accuracy_mm
                suffix = {"dev_matched": "m", "dev_mismatched": "mm"}.get(split, split)
                split_metrics = {f"{k}_{suffix}": v for k, v in split_metrics.items()}
            metrics.update(split_metrics)
            for i, (e, p) in enumerate(zip(examples, predictions)):
                row = {"index": i, "prediction": p, "label": e["label"]}
                if len(inputs) > 1:
                    row["split"] = split
                rows.append(row)
        if self.spec.name == "mnli" and "accuracy_m" in metrics and "accuracy_mm" in metrics:
            metrics["accuracy_m_mm"] = (metrics["accuracy_m"] + metrics["accuracy_mm"]) / 2
        return metrics, rows


def _label_sort_key(label: str):
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


# --------------------------------------------------------------------------- extractive QA
class QuestionAnswering(TaskKind):
    model_class = "AutoModelForQuestionAnswering"

    def __init__(self, spec: TaskSpec):
        self.spec = spec
        self.qa = building_block("qa", spec.name)
        self.version_2 = bool(spec.extra.get("version_2"))

    def load(self, spec: TaskSpec, args) -> TaskData:
        return read_train_dev(self.qa.read_squad, spec, args)

    def model_kwargs(self, data: TaskData) -> dict:
        return {}

    def train_dataset(self, data: TaskData, tokenizer, args):
        feats = self.qa.prepare_train_features(cap(data.train, args.max_train_examples), tokenizer,
                                               args.max_seq_len, args.doc_stride, args.max_query_len)
        keep = ("input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions")
        return datasets.Dataset.from_dict({k: feats[k] for k in keep if k in feats})

    def eval_inputs(self, data: TaskData, tokenizer, args):
        examples = cap(data.dev["dev"], args.max_eval_examples)
        feats = self.qa.prepare_eval_features(examples, tokenizer, args.max_seq_len, args.doc_stride,
                                              args.max_query_len)
        model_inputs = datasets.Dataset.from_dict(
            {k: feats[k] for k in ("input_ids", "token_type_ids", "attention_mask") if k in feats})
        return {"dev": (examples, feats, model_inputs)}

    def collator(self, tokenizer):
        return DataCollatorWithPadding(tokenizer)

    def evaluate(self, trainer, data: TaskData, inputs, args) -> Tuple[dict, list]:
        examples, feats, model_inputs = inputs["dev"]
        start_logits, end_logits = predict(trainer, model_inputs)[:2]
        answers = self.qa.postprocess_predictions(
            examples, feats, start_logits, end_logits, n_best=args.n_best, max_answer_len=args.max_answer_len,
            version_2=self.version_2, null_threshold=args.null_threshold)
        metrics = dict(self.qa.squad_metrics(answers, examples))
        rows = [{"id": e["id"], "prediction": answers.get(e["id"], ""), "label": list(e["answers"]["text"])}
                for e in examples]
        return metrics, rows


# --------------------------------------------------------------------------- multiple choice
class MultipleChoice(TaskKind):
    model_class = "AutoModelForMultipleChoice"

    def __init__(self, spec: TaskSpec):
        self.spec = spec
        self.mc = building_block("multiple_choice", spec.name)
        self.reader = self.mc.read_swag if spec.extra.get("format") == "swag" else self.mc.read_hellaswag

    def load(self, spec: TaskSpec, args) -> TaskData:
        return read_train_dev(self.reader, spec, args)

    def model_kwargs(self, data: TaskData) -> dict:
        return {}

    def _features(self, examples, tokenizer, args):
        feats = self.mc.prepare_features(examples, tokenizer, args.max_seq_len)
        keep = ("input_ids", "token_type_ids", "attention_mask", "labels")
        return datasets.Dataset.from_dict({k: feats[k] for k in keep if k in feats})

    def train_dataset(self, data: TaskData, tokenizer, args):
        return self._features(cap(data.train, args.max_train_examples), tokenizer, args)

    def eval_inputs(self, data: TaskData, tokenizer, args):
        examples = cap(data.dev["dev"], args.max_eval_examples)
        return {"dev": (examples, self._features(examples, tokenizer, args))}

    def collator(self, tokenizer):
        return ChoicePadding(tokenizer)

    def evaluate(self, trainer, data: TaskData, inputs, args) -> Tuple[dict, list]:
        examples, dataset = inputs["dev"]
        logits = np.asarray(predict(trainer, dataset))
        predictions = [int(i) for i in logits.argmax(-1)]
        labels = [int(e["label"]) for e in examples]
        metrics = {"accuracy": 100.0 * self.mc.accuracy(predictions, labels)}  # a fraction -> percent
        rows = [{"id": e.get("id", i), "prediction": p, "label": y}
                for i, (e, p, y) in enumerate(zip(examples, predictions, labels))]
        return metrics, rows


class ChoicePadding:
    """Pads [batch][choices][seq] features to the longest sequence of the batch (HF's collators are 2-D)."""

    def __init__(self, tokenizer):
        self.pad_id = tokenizer.pad_token_id

    def __call__(self, features):
        longest = max(len(seq) for f in features for seq in f["input_ids"])
        batch = {}
        for key, fill in (("input_ids", self.pad_id), ("token_type_ids", 0), ("attention_mask", 0)):
            if key in features[0]:
                batch[key] = torch.tensor([[list(seq) + [fill] * (longest - len(seq)) for seq in f[key]]
                                           for f in features], dtype=torch.long)
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([int(f["labels"]) for f in features], dtype=torch.long)
        return batch


# --------------------------------------------------------------------------- token classification
class TokenClassification(TaskKind):
    model_class = "AutoModelForTokenClassification"

    def __init__(self, spec: TaskSpec):
        self.spec = spec
        self.ner = building_block("ner", spec.name)

    def load(self, spec: TaskSpec, args) -> TaskData:
        data = read_train_dev(self.ner.read_conll, spec, args)
        paths = data.files
        labels = list(self.ner.label_list(data.train))
        known = set(labels)
        for e in data.dev["dev"]:
            unknown = [t for t in e["tags"] if t not in known]
            if unknown:
                raise DataError(f"{paths['dev']}: sentence {e.get('id')}: tag {unknown[0]!r} never occurs in "
                                f"{paths['train']} (the label set is {', '.join(labels)})")
        data.labels = labels
        return data

    def model_kwargs(self, data: TaskData) -> dict:
        return {"num_labels": len(data.labels), "id2label": dict(enumerate(data.labels)),
                "label2id": {name: i for i, name in enumerate(data.labels)}}

    def _features(self, examples, tokenizer, args, labels):
        label_to_id = {name: i for i, name in enumerate(labels)}
        feats = self.ner.prepare_features(examples, tokenizer, args.max_seq_len, label_to_id)
        return feats

    def _dataset(self, feats):
        keep = ("input_ids", "token_type_ids", "attention_mask", "labels")
        return datasets.Dataset.from_dict({k: feats[k] for k in keep if k in feats})

    def train_dataset(self, data: TaskData, tokenizer, args):
        return self._dataset(self._features(cap(data.train, args.max_train_examples), tokenizer, args, data.labels))

    def eval_inputs(self, data: TaskData, tokenizer, args):
        examples = cap(data.dev["dev"], args.max_eval_examples)
        feats = self._features(examples, tokenizer, args, data.labels)
        return {"dev": (examples, feats, self._dataset(feats))}

    def collator(self, tokenizer):
        return DataCollatorForTokenClassification(tokenizer)

    def evaluate(self, trainer, data: TaskData, inputs, args) -> Tuple[dict, list]:
        examples, feats, dataset = inputs["dev"]
        logits = predict(trainer, dataset)
        pred_ids = [list(np.asarray(row).argmax(-1)) for row in logits]
        id_to_label = dict(enumerate(data.labels))
        predicted = self.ner.align_predictions(pred_ids, feats, id_to_label)
        # align_predictions tags every word (those cut by --max_seq_len get "O"): score against all gold tags.
        gold = [list(e["tags"]) for e in examples]
        scores = self.ner.entity_f1(gold, predicted)
        metrics = {k: 100.0 * float(v) for k, v in scores.items()}  # fractions -> percent
        rows = [{"id": e.get("id", i), "prediction": list(p), "label": g}
                for i, (e, p, g) in enumerate(zip(examples, predicted, gold))]
        return metrics, rows


for _name, _kind in (("classification", SequenceClassification), ("regression", SequenceClassification),
                     ("qa", QuestionAnswering), ("multiple_choice", MultipleChoice), ("ner", TokenClassification)):
    register_kind(_name, _kind)

__all__ = ["SequenceClassification", "QuestionAnswering", "MultipleChoice", "TokenClassification", "kind_for"]
