"""The task registry: every name ``--tasks`` accepts, its kind, data layout, label set and main metric.

A kind (``kinds.py``) turns a task's files into examples, features, a transformers task model and scores;
the GLUE tasks and a user's ``--task_file`` are sequence classification / regression, ``squad`` and
``squad_v2`` extractive QA, ``swag`` and ``hellaswag`` multiple choice, ``conll2003`` token classification.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from mometas_ds.config import ConfigError

BINARY = ("0", "1")
NLI3 = ("entailment", "neutral", "contradiction")  # the order of HF's glue/mnli ClassLabel
NLI2 = ("entailment", "not_entailment")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str                       # classification | regression | qa | multiple_choice | ner
    main_metric: str                # chooses the learning rate; the summary's and compare's number
    labels: Optional[Tuple[str, ...]] = None  # classification: the label set (strings, as in the files)
    glue: bool = False              # counts toward the GLUE score
    # GLUE's TSV layout (download_glue_data.py): directory, (text_a, text_b, label) header names or indices
    tsv_dir: str = ""
    tsv_columns: Tuple = ()
    tsv_header: bool = True
    tsv_dev: Tuple[str, ...] = ("dev.tsv",)
    # the same task saved with datasets' save_to_disk (HF's glue builder): columns and dev splits
    hf_columns: Tuple = ()
    hf_dev: Tuple[str, ...] = ("validation",)
    dev_names: Tuple[str, ...] = ("dev",)  # the split names in results/predictions (MNLI: m, mm)
    # files of the other kinds, relative to --data_dir
    train_path: str = ""
    dev_path: str = ""
    extra: Dict = field(default_factory=dict)


def _glue(name, kind, main, labels, tsv_dir, tsv_columns, hf_columns, **kw) -> TaskSpec:
    return TaskSpec(name=name, kind=kind, main_metric=main, labels=labels, glue=True, tsv_dir=tsv_dir,
                    tsv_columns=tsv_columns, hf_columns=hf_columns, **kw)


TASKS: Dict[str, TaskSpec] = {t.name: t for t in [
    # CoLA's files have no header: source, label, original label, sentence.
    _glue("cola", "classification", "mcc", BINARY, "CoLA", (3, None, 1), ("sentence", None, "label"),
          tsv_header=False),
    _glue("sst2", "classification", "accuracy", BINARY, "SST-2", ("sentence", None, "label"),
          ("sentence", None, "label")),
    _glue("mrpc", "classification", "f1_acc", BINARY, "MRPC", ("#1 String", "#2 String", "Quality"),
          ("sentence1", "sentence2", "label")),
    _glue("stsb", "regression", "pearson_spearman", None, "STS-B", ("sentence1", "sentence2", "score"),
          ("sentence1", "sentence2", "label")),
    _glue("qqp", "classification", "f1_acc", BINARY, "QQP", ("question1", "question2", "is_duplicate"),
          ("question1", "question2", "label")),
    _glue("mnli", "classification", "accuracy_m_mm", NLI3, "MNLI", ("sentence1", "sentence2", "gold_label"),
          ("premise", "hypothesis", "label"), tsv_dev=("dev_matched.tsv", "dev_mismatched.tsv"),
          hf_dev=("validation_matched", "validation_mismatched"), dev_names=("dev_matched", "dev_mismatched")),
    _glue("qnli", "classification", "accuracy", NLI2, "QNLI", ("question", "sentence", "label"),
          ("question", "sentence", "label")),
    _glue("rte", "classification", "accuracy", NLI2, "RTE", ("sentence1", "sentence2", "label"),
          ("sentence1", "sentence2", "label")),
    _glue("wnli", "classification", "accuracy", BINARY, "WNLI", ("sentence1", "sentence2", "label"),
          ("sentence1", "sentence2", "label")),
    TaskSpec("squad", "qa", "f1", train_path="squad/train-v1.1.json", dev_path="squad/dev-v1.1.json"),
    TaskSpec("squad_v2", "qa", "f1", train_path="squad/train-v2.0.json", dev_path="squad/dev-v2.0.json",
             extra={"version_2": True}),
    TaskSpec("swag", "multiple_choice", "accuracy", train_path="swag/train.csv", dev_path="swag/val.csv",
             extra={"format": "swag"}),
    TaskSpec("hellaswag", "multiple_choice", "accuracy", train_path="hellaswag/hellaswag_train.jsonl",
             dev_path="hellaswag/hellaswag_val.jsonl", extra={"format": "hellaswag"}),
    TaskSpec("conll2003", "ner", "f1", train_path="conll2003/train.txt", dev_path="conll2003/valid.txt"),
]}

GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")  # `--tasks glue` (WNLI left out, as usual)
ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "squad2": "squad_v2", "squadv2": "squad_v2", "conll": "conll2003"}


def custom_task(name: str, task_type: str) -> TaskSpec:
    """A user's own classification / regression task (--task_file)."""
    if task_type == "regression":
        return TaskSpec(name=name, kind="regression", main_metric="pearson_spearman",
                        extra={"metrics": "regression"})
    return TaskSpec(name=name, kind="classification", main_metric="accuracy", extra={"metrics": "classification"})


def register_task(spec: TaskSpec, *, overwrite: bool = False) -> TaskSpec:
    """Add a task ``--tasks`` accepts (a module of yours, given to mometas-finetune --user_modules); its
    ``kind`` must be a registered task kind (finetune.base.register_kind)."""
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"register_task: {spec!r} is not a TaskSpec")
    if spec.name in TASKS and TASKS[spec.name] is not spec and not overwrite:
        raise ValueError(f"task {spec.name!r} is already registered")
    TASKS[spec.name] = spec
    return spec


def parse_task_names(value: str) -> List[str]:
    """``--tasks`` (comma-separated names, ``glue`` = the eight GLUE tasks) as registry names, in order."""
    names: List[str] = []
    for raw in value.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        name = ALIASES.get(name, name)
        expanded = list(GLUE_TASKS) if name == "glue" else [name]
        for n in expanded:
            if n not in TASKS:
                raise ConfigError(f"--tasks: unknown task {raw.strip()!r}; known: glue, {', '.join(TASKS)}")
            if n not in names:
                names.append(n)
    return names
