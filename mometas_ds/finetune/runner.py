"""The sweep: every task x learning rate x seed fine-tuned with transformers' Trainer, scored on dev.

Each run appends one line to ``results.jsonl`` and writes ``predictions/<task>_lr<lr>_seed<seed>.jsonl``;
a run already in results.jsonl (same task, learning rate, seed and settings) is not redone, so an
interrupted sweep restarted with the same command finishes the missing runs only.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from typing import Dict, List, Tuple

import torch
import transformers
from transformers import Trainer, TrainingArguments, set_seed

from mometas_ds.config import ConfigError, DataError
from mometas_ds.data.tokenizer import load_tokenizer
from mometas_ds.safe_io import check_writable_dir

from mometas_ds.finetune.kinds import kind_for
from mometas_ds.finetune.summary import RESULTS_FILE, read_results, write_summary
from mometas_ds.finetune.tasks import TASKS, TaskSpec, custom_task

logger = logging.getLogger("mometas_ds.finetune")

# Settings that change a run's score: a results.jsonl written with other values is not resumed into.
RUN_SETTINGS = ("model_name_or_path", "epochs", "batch_size", "max_seq_len", "warmup_ratio", "weight_decay",
                "gradient_accumulation_steps", "bf16", "max_train_examples", "max_eval_examples")


def lr_tag(lr: float) -> str:
    return f"{lr:g}"


def predictions_path(output_dir: str, task: str, lr: float, seed: int) -> str:
    return os.path.join(output_dir, "predictions", f"{task}_lr{lr_tag(lr)}_seed{seed}.jsonl")


def check_bert_dir(path: str, flag: str = "--model_name_or_path") -> dict:
    """The config.json of a local HF BERT directory, or a ConfigError naming the flag."""
    if not path or not os.path.isdir(path):
        raise ConfigError(f"{flag} {path}: not a local directory (no model hub here)")
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ConfigError(f"{flag} {path}: no config.json; not a Hugging Face model directory "
                          f"(a pre-training run writes RUN/hf_model; mometas-export makes one from a checkpoint)")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{flag} {path}: cannot read {config_path} ({err})") from None
    if not isinstance(config, dict) or config.get("model_type") != "bert":
        found = config.get("model_type") if isinstance(config, dict) else None
        raise ConfigError(f"{flag} {path}: {config_path} has model_type {found!r}, not 'bert'")
    if not any(os.path.isfile(os.path.join(path, n)) for n in ("model.safetensors", "pytorch_model.bin",
                                                             "model.safetensors.index.json")):
        raise ConfigError(f"{flag} {path}: no weights (model.safetensors / pytorch_model.bin)")
    return config


def task_specs(args) -> List[TaskSpec]:
    specs = [TASKS[name] for name in args.task_names]
    if args.task_file:
        specs.append(custom_task(args.task_name, args.task_type))
    return specs


def _settings(args) -> dict:
    return {k: getattr(args, k) for k in RUN_SETTINGS}


def _done_runs(output_dir: str, settings: dict, overwrite: bool) -> Dict[Tuple[str, float, int], dict]:
    path = os.path.join(output_dir, RESULTS_FILE)
    if not os.path.isfile(path) or overwrite:
        return {}
    done = {}
    for row in read_results(output_dir):
        theirs = row.get("settings", {})
        differing = [k for k in RUN_SETTINGS if k in theirs and theirs[k] != settings[k]]
        if differing:
            k = differing[0]
            raise ConfigError(
                f"--output_dir {output_dir}: {RESULTS_FILE} holds runs with other settings ({k}: {theirs[k]!r}, "
                f"now {settings[k]!r}); use another --output_dir, or --overwrite to start it afresh")
        done[(row["task"], float(row["learning_rate"]), int(row["seed"]))] = row
    return done


def _append_line(path: str, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _write_jsonl(path: str, rows: List[dict]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


def _device_kwargs(args) -> dict:
    on_gpu = torch.cuda.is_available() and not args.cpu
    if (args.bf16 or args.deepspeed) and not on_gpu:
        flag = "--bf16" if args.bf16 else "--deepspeed"
        raise ConfigError(f"{flag} needs a GPU (none is visible here); drop it to fine-tune on the CPU")
    kwargs = {"use_cpu": not on_gpu, "bf16": bool(args.bf16)}
    if args.deepspeed:
        kwargs["deepspeed"] = args.deepspeed
    return kwargs


def run_one(spec: TaskSpec, kind, data, train_dataset, eval_inputs, tokenizer, args, lr: float, seed: int):
    """Fine-tune one model from --model_name_or_path and score it on dev: (metrics, prediction rows, info)."""
    set_seed(seed)  # the task head's initialisation depends on the seed, as the data order and dropout do
    model_class = getattr(transformers, kind.model_class)
    model = model_class.from_pretrained(args.model_name_or_path, dtype=torch.float32, local_files_only=True,
                                        **kind.model_kwargs(data))
    scratch = os.path.join(args.output_dir, "trainer", f"{spec.name}_lr{lr_tag(lr)}_seed{seed}")
    targs = TrainingArguments(
        output_dir=scratch, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size, num_train_epochs=args.epochs, learning_rate=lr,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_ratio, lr_scheduler_type="linear",
        gradient_accumulation_steps=args.gradient_accumulation_steps, max_grad_norm=1.0,
        seed=seed, data_seed=seed, save_strategy="no", eval_strategy="no", logging_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_num_workers=0, push_to_hub=False,
        **_device_kwargs(args),
    )
    trainer = Trainer(model=model, args=targs, train_dataset=train_dataset, data_collator=kind.collator(tokenizer),
                      processing_class=tokenizer)
    started = time.time()
    output = trainer.train()
    train_s = time.time() - started
    metrics, rows = kind.evaluate(trainer, data, eval_inputs, args)
    info = {"train_s": round(train_s, 3), "train_loss": float(output.training_loss),
            "train_examples_per_s": round(len(train_dataset) * args.epochs / train_s, 2) if train_s > 0 else None,
            "is_main": trainer.is_world_process_zero()}
    shutil.rmtree(scratch, ignore_errors=True)
    return metrics, rows, info


def run(args) -> str:
    """Run the whole sweep described by ``args`` (cli.parse_args); returns the summary.md path."""
    config = check_bert_dir(args.model_name_or_path)
    tokenizer = load_tokenizer(args.tokenizer or args.model_name_or_path,
                               flag="--tokenizer" if args.tokenizer else "--model_name_or_path")
    limit = config.get("max_position_embeddings")
    if limit is not None and args.max_seq_len > limit:
        raise ConfigError(f"--max_seq_len {args.max_seq_len} exceeds the model's max_position_embeddings {limit}")
    check_writable_dir(args.output_dir, "--output_dir")  # a file in the way, no permission: exit 2, no traceback
    os.makedirs(os.path.join(args.output_dir, "predictions"), exist_ok=True)
    settings = _settings(args)
    if args.overwrite and os.path.isfile(os.path.join(args.output_dir, RESULTS_FILE)):
        os.remove(os.path.join(args.output_dir, RESULTS_FILE))
    done = _done_runs(args.output_dir, settings, args.overwrite)
    results_path = os.path.join(args.output_dir, RESULTS_FILE)
    for spec in task_specs(args):
        todo = [(lr, s) for lr in args.lrs for s in args.seed_list if (spec.name, lr, s) not in done]
        if not todo:
            logger.info("%s: all %d run(s) already in %s", spec.name, len(args.lrs) * len(args.seed_list),
                        results_path)
            continue
        kind = kind_for(spec)
        data = kind.load(spec, args)
        if data.skipped:
            skipped = ", ".join(f"{v} ({k})" for k, v in sorted(data.skipped.items()))
            logger.warning("%s: skipped %s", spec.name, skipped)
        train_dataset = kind.train_dataset(data, tokenizer, args)
        if len(train_dataset) == 0:
            raise DataError(f"{data.files.get('train')}: no training features for {spec.name}")
        eval_inputs = kind.eval_inputs(data, tokenizer, args)
        dev_examples = sum(len(v[0]) for v in eval_inputs.values())
        for lr, seed in todo:
            started = time.time()
            metrics, rows, info = run_one(spec, kind, data, train_dataset, eval_inputs, tokenizer, args, lr, seed)
            if not info.pop("is_main"):
                continue
            _write_jsonl(predictions_path(args.output_dir, spec.name, lr, seed), rows)
            row = {"task": spec.name, "seed": seed, "learning_rate": lr, "metrics": metrics,
                   "main_metric": spec.main_metric, "split": "+".join(eval_inputs),
                   "train_examples": len(data.train if not args.max_train_examples else
                                         data.train[:args.max_train_examples]),
                   "train_features": len(train_dataset), "dev_examples": dev_examples,
                   "wall_s": round(time.time() - started, 3), **info, "settings": settings,
                   "skipped": dict(data.skipped), "files": data.files}
            _append_line(results_path, row)
            main = metrics.get(spec.main_metric, math.nan)
            print(f"{spec.name} lr {lr_tag(lr)} seed {seed}: {spec.main_metric} {main:.2f}  "
                  + " ".join(f"{k} {v:.2f}" for k, v in metrics.items() if k != spec.main_metric), flush=True)
    shutil.rmtree(os.path.join(args.output_dir, "trainer"), ignore_errors=True)
    md, _ = write_summary(args.output_dir)
    return md


def merge(output_dir: str, parts: List[str]) -> str:
    """Gather the results.jsonl and predictions of several eval dirs (a SLURM array's parts) into
    ``output_dir`` and write its summary; returns the summary.md path."""
    check_writable_dir(output_dir, "--output_dir")
    os.makedirs(os.path.join(output_dir, "predictions"), exist_ok=True)
    rows: Dict[Tuple[str, float, int], dict] = {}
    for part in parts:
        for row in read_results(part):
            rows[(row["task"], float(row["learning_rate"]), int(row["seed"]))] = row
            src = predictions_path(part, row["task"], float(row["learning_rate"]), int(row["seed"]))
            if os.path.isfile(src) and os.path.abspath(part) != os.path.abspath(output_dir):
                shutil.copyfile(src, predictions_path(output_dir, row["task"], float(row["learning_rate"]),
                                                      int(row["seed"])))
    if not rows:
        raise DataError(f"--merge: no results in {', '.join(parts)}")
    _write_jsonl(os.path.join(output_dir, RESULTS_FILE), [rows[k] for k in sorted(rows)])
    md, _ = write_summary(output_dir)
    return md
