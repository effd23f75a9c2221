"""mometas-finetune: fine-tune a pre-trained BERT on GLUE, SQuAD, SWAG/HellaSwag, CoNLL-2003 or your own
task, over several learning rates and seeds, and summarise the scores.

    mometas-finetune --model_name_or_path runs/demo/hf_model --data_dir glue_data --tasks glue \\
        --output_dir runs/demo/eval --seeds 1,2,3,4,5 --learning_rates 1e-5,2e-5,3e-5 --epochs 3

Writes OUTPUT_DIR/results.jsonl (one line per task x learning rate x seed), predictions/, summary.md and
summary.csv. Data is read from local files only. See docs/finetuning.md.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import List

from mometas_ds.config import ConfigError, DataError

from mometas_ds.registry import import_user_modules
from mometas_ds.finetune.tasks import GLUE_TASKS, TASKS, parse_task_names

PROG = "mometas-finetune"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model and output")
    g.add_argument("--model_name_or_path", help="local Hugging Face BERT directory (a run's hf_model/, or "
                   "mometas-export's output); the task head starts fresh")
    g.add_argument("--tokenizer", help="local tokenizer directory (default: the model directory's own)")
    g.add_argument("--output_dir", required=True, help="where results.jsonl, predictions/ and the summary go")
    g.add_argument("--overwrite", action="store_true",
                   help="start OUTPUT_DIR/results.jsonl afresh (default: runs already in it are not redone)")
    g = p.add_argument_group("tasks and data")
    g.add_argument("--user_modules", default="", help="comma-separated .py files or modules to import first: "
                   "your own task kinds and tasks (docs/finetuning-kinds.md)")
    g.add_argument("--tasks", default="", help=f"comma-separated: {', '.join(TASKS)}; glue = "
                   f"{','.join(GLUE_TASKS)}")
    g.add_argument("--data_dir", help="root of the task data: GLUE's download layout (CoLA/, SST-2/, ... with "
                   "train.tsv, dev.tsv) or save_to_disk dirs (cola/, sst2/, ...), squad/, swag/, hellaswag/, "
                   "conll2003/")
    g.add_argument("--train_file", help="training data of the one task in --tasks (overrides --data_dir)")
    g.add_argument("--dev_file", help="dev data of the one task in --tasks, or of --task_file's task")
    g.add_argument("--task_file", help="your own task's training file (.csv, .tsv or .jsonl); needs --dev_file")
    g.add_argument("--task_name", help="name of --task_file's task in the results (default: the file's stem)")
    g.add_argument("--task_type", choices=("classification", "regression"), default="classification",
                   help="--task_file's task: classification (accuracy, macro F1) or regression (Pearson, "
                   "Spearman) [classification]")
    g.add_argument("--text_column", default="text", help="--task_file's text column [text]")
    g.add_argument("--pair_column", help="--task_file's second text column, for sentence pairs [none]")
    g.add_argument("--label_column", default="label", help="--task_file's label column [label]")
    g.add_argument("--max_train_examples", type=int, help="use only the first N training examples")
    g.add_argument("--max_eval_examples", type=int, help="score only the first N dev examples (per split)")
    g = p.add_argument_group("sweep and training")
    g.add_argument("--seeds", default="1,2,3", help="comma-separated seeds [1,2,3]")
    g.add_argument("--learning_rates", default="2e-5", help="comma-separated peak learning rates; the best "
                   "mean on dev is reported [2e-5]")
    g.add_argument("--epochs", type=float, default=3.0, help="training epochs [3]")
    g.add_argument("--batch_size", type=int, default=32, help="training batch size per device [32]")
    g.add_argument("--eval_batch_size", type=int, default=128, help="prediction batch size per device [128]")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1, help="micro-batches per update [1]")
    g.add_argument("--max_seq_len", type=int, default=128, help="tokens per sequence (pair) [128]")
    g.add_argument("--warmup_ratio", type=float, default=0.1, help="linear warm-up, fraction of the steps [0.1]")
    g.add_argument("--weight_decay", type=float, default=0.01, help="AdamW weight decay [0.01]")
    g.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU)")
    g.add_argument("--deepspeed", help="DeepSpeed JSON config for transformers' Trainer (e.g. "
                   "ds_configs/finetune.json for BERT-large; GPU)")
    g.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is visible")
    g = p.add_argument_group("question answering")
    g.add_argument("--doc_stride", type=int, default=128, help="overlap of the context windows, in tokens [128]")
    g.add_argument("--max_query_len", type=int, default=64, help="question tokens kept [64]")
    g.add_argument("--n_best", type=int, default=20, help="start/end candidates per window [20]")
    g.add_argument("--max_answer_len", type=int, default=30, help="longest answer span, in tokens [30]")
    g.add_argument("--null_threshold", type=float, default=0.0,
                   help="squad_v2: answer '' when null score - best span score exceeds this [0.0]")
    g = p.add_argument_group("cluster")
    g.add_argument("--merge", nargs="+", metavar="EVAL_DIR",
                   help="only gather these eval dirs' results (a job array's parts) into --output_dir and "
                   "write its summary")
    g.add_argument("--log_level", default="warning", choices=("debug", "info", "warning", "error"),
                   help="log level of transformers and mometas_ds [warning]")
    return p


def _csv_list(value: str, flag: str, convert, check) -> List:
    items = []
    for raw in value.split(","):
        raw = raw.strip()
        if not raw:
            continue
        try:
            item = convert(raw)
        except ValueError:
            raise ConfigError(f"{flag}: {raw!r} is not a valid value") from None
        if not check(item):
            raise ConfigError(f"{flag}: {raw!r} is out of range")
        if item not in items:
            items.append(item)
    if not items:
        raise ConfigError(f"{flag}: give at least one value")
    return items


def validate(args: argparse.Namespace) -> argparse.Namespace:
    if args.merge:
        return args
    if not args.model_name_or_path:
        raise ConfigError("--model_name_or_path is required")
    import_user_modules(m.strip() for m in args.user_modules.split(",") if m.strip())
    args.task_names = parse_task_names(args.tasks) if args.tasks else []
    if args.task_file:
        if not args.dev_file:
            raise ConfigError("--task_file needs --dev_file (the dev split the score is computed on)")
        if args.train_file:
            raise ConfigError("--task_file is the training file of your task; do not also give --train_file")
        if args.task_names:
            raise ConfigError("--task_file runs one task of its own; run --tasks in a separate command")
        args.task_name = args.task_name or os.path.splitext(os.path.basename(args.task_file))[0]
        if args.task_name.lower() in TASKS or args.task_name.lower() == "glue":
            raise ConfigError(f"--task_name {args.task_name!r} is a built-in task; choose another name")
    elif not args.task_names:
        raise ConfigError("give --tasks (e.g. glue, squad) or --task_file")
    elif (args.train_file or args.dev_file) and len(args.task_names) != 1:
        raise ConfigError("--train_file/--dev_file override the data of one task; --tasks names "
                          f"{len(args.task_names)}")
    args.seed_list = _csv_list(args.seeds, "--seeds", int, lambda s: 0 <= s < 2 ** 32)
    args.lrs = _csv_list(args.learning_rates, "--learning_rates", float, lambda v: math.isfinite(v) and v > 0)
    for flag, value, ok in (("--epochs", args.epochs, math.isfinite(args.epochs) and args.epochs > 0),
                            ("--batch_size", args.batch_size, args.batch_size >= 1),
                            ("--eval_batch_size", args.eval_batch_size, args.eval_batch_size >= 1),
                            ("--gradient_accumulation_steps", args.gradient_accumulation_steps,
                             args.gradient_accumulation_steps >= 1),
                            ("--max_seq_len", args.max_seq_len, args.max_seq_len >= 8),
                            ("--warmup_ratio", args.warmup_ratio, 0 <= args.warmup_ratio < 1),
                            ("--weight_decay", args.weight_decay, math.isfinite(args.weight_decay)
                             and args.weight_decay >= 0),
                            ("--doc_stride", args.doc_stride, args.doc_stride >= 1),
                            ("--max_query_len", args.max_query_len, args.max_query_len >= 1),
                            ("--n_best", args.n_best, args.n_best >= 1),
                            ("--max_answer_len", args.max_answer_len, args.max_answer_len >= 1),
                            ("--null_threshold", args.null_threshold, math.isfinite(args.null_threshold))):
        if not ok:
            raise ConfigError(f"{flag}: {value!r} is out of range")
    for flag in ("max_train_examples", "max_eval_examples"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag} must be >= 1")
    for flag in ("train_file", "dev_file", "task_file", "deepspeed"):
        path = getattr(args, flag)
        if path and not os.path.exists(path):
            raise ConfigError(f"--{flag} {path}: not found")
    if args.data_dir and not os.path.isdir(args.data_dir):
        raise ConfigError(f"--data_dir {args.data_dir}: not a directory")
    return args


def _setup_logging(level: str) -> None:
    import transformers  # heavy: --help does not need it

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("mometas_ds").setLevel(level.upper())
    transformers.logging.set_verbosity(getattr(transformers.logging, level.upper()))
    if level not in ("debug", "info"):
        transformers.logging.disable_progress_bar()  # a "Loading weights" bar per run drowns the scores


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        validate(args)
        _setup_logging(args.log_level)
        from mometas_ds.finetune import runner  # heavy (transformers' Trainer, datasets): not for --help

        if args.merge:
            md = runner.merge(args.output_dir, args.merge)
        else:
            md = runner.run(args)
    except (ConfigError, DataError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    with open(md, encoding="utf-8") as f:
        print(f.read())
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
