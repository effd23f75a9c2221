"""The base of a fine-tuning task kind, their registry, and the building blocks every kind shares.

A kind turns one task's files into examples, features, a transformers task model and scores; the runner
(``runner.py``) calls, for every task, seed and learning rate:

- ``load(spec, args) -> TaskData``: read train and dev (``dev`` maps a split name to its examples);
- ``model_class`` and ``model_kwargs(data)``: the ``AutoModelFor...`` class name and its config overrides;
- ``train_dataset(data, tokenizer, args)`` / ``eval_inputs(data, tokenizer, args)``: features;
- ``collator(tokenizer)``: how a batch of features is padded;
- ``evaluate(trainer, data, inputs, args) -> (metrics, rows)``: predict the dev splits, score them, and
  one prediction row per dev example (``{"prediction", "label", ...}``) so every number can be recomputed.

A new kind subclasses ``TaskKind`` and registers under the name its tasks' ``TaskSpec.kind`` gives
(docs/finetuning-kinds.md); the built-ins are in ``kinds.py``.
"""
from __future__ import annotations

import importlib
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Type

from transformers import DataCollatorWithPadding

from mometas_ds.config import ConfigError, DataError
from mometas_ds.finetune.tasks import TaskSpec
from mometas_ds.registry import Registry


@dataclass
class TaskData:
    train: list
    dev: Dict[str, list]             # split name -> examples
    skipped: Counter = field(default_factory=Counter)
    labels: Optional[List[str]] = None  # classification / NER label list (id order)
    files: Dict[str, str] = field(default_factory=dict)


def building_block(module: str, task: str):
    """mometas_ds.finetune.<module>, or a ConfigError saying the task kind is not available yet."""
    try:
        return importlib.import_module(f"mometas_ds.finetune.{module}")
    except ModuleNotFoundError as err:
        if err.name != f"mometas_ds.finetune.{module}":
            raise
        raise ConfigError(f"--tasks {task}: not available yet (mometas_ds/finetune/{module}.py is not in this "
                          f"installation)") from None


def split_skips(s_train, s_dev) -> Counter:
    """Both splits' skip counts in one Counter, each reason prefixed with its split."""
    skipped = Counter({f"train: {k}": v for k, v in s_train.items()})
    skipped.update({f"dev: {k}": v for k, v in s_dev.items()})
    return skipped


def read_train_dev(reader, spec: TaskSpec, args) -> TaskData:
    """``reader(path) -> (examples, skipped)`` on the task's train and dev files; an empty split is a DataError."""
    paths = {"train": data_path(args, spec, "train"), "dev": data_path(args, spec, "dev")}
    train, s_train = reader(paths["train"])
    dev, s_dev = reader(paths["dev"])
    for examples, path in ((train, paths["train"]), (dev, paths["dev"])):
        if not examples:
            raise DataError(f"{path}: no examples (empty split)")
    return TaskData(train=train, dev={"dev": dev}, skipped=split_skips(s_train, s_dev), files=paths)


def data_path(args, spec: TaskSpec, which: str) -> str:
    override = getattr(args, f"{which}_file", None)
    if override:
        return override
    if not args.data_dir:
        raise ConfigError(f"--tasks {spec.name}: give --data_dir (or --train_file and --dev_file)")
    return os.path.join(args.data_dir, spec.train_path if which == "train" else spec.dev_path)


def cap(examples: list, limit: Optional[int]) -> list:
    return examples if not limit else examples[:limit]


def predict(trainer, dataset):
    return trainer.predict(dataset).predictions


class TaskKind:
    """One kind of downstream task (see the module's docstring for what the runner calls)."""

    name: str = ""  # set by register_kind
    model_class: str = "AutoModelForSequenceClassification"  # a transformers class name

    def __init__(self, spec: TaskSpec):
        self.spec = spec

    def load(self, spec: TaskSpec, args) -> TaskData:
        raise NotImplementedError

    def model_kwargs(self, data: TaskData) -> dict:
        return {}

    def train_dataset(self, data: TaskData, tokenizer, args):
        raise NotImplementedError

    def eval_inputs(self, data: TaskData, tokenizer, args) -> dict:
        raise NotImplementedError

    def collator(self, tokenizer):
        return DataCollatorWithPadding(tokenizer)

    def evaluate(self, trainer, data: TaskData, inputs, args) -> Tuple[dict, list]:
        raise NotImplementedError


KINDS: Registry[TaskKind] = Registry("task kind", TaskKind)


def register_kind(name: str, cls: Type[TaskKind] = None, *, overwrite: bool = False):
    """Register ``cls`` for tasks whose ``TaskSpec.kind`` is ``name``; usable as ``@register_kind("name")``."""
    return KINDS.register(name, cls, overwrite=overwrite)


def kind_for(spec: TaskSpec) -> TaskKind:
    """The kind that runs ``spec``, built for it."""
    try:
        cls = KINDS.get(spec.kind)
    except ValueError as exc:
        raise ConfigError(f"--tasks {spec.name}: {exc}") from None
    return cls(spec)
