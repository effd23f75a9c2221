"""The study's runs: the shared corpus split and tokenizer, one ``mometas-pretrain`` process per sampler x seed
(a finished run is reused), and what a finished run logged (draws, probability trajectory)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Sequence

from mometas_ds.data.demo_corpus import write_demo_corpus
from mometas_ds.data.tokenizer import train_wordpiece_tokenizer
from mometas_ds.study.common import REPO_ROOT, RESULT_FILE, SamplerSpec, StudyError, logger
from mometas_ds.config.paths import RunPaths

# ------------------------------------------------------------------------------------------------ data


def split_corpus(train_files: Sequence[str], text_field: str, every: int, out_dir: str):
    """Write train.jsonl and heldout.jsonl: every ``every``-th usable document goes to the held-out file."""
    from mometas_ds.data import (  # imports HF datasets (~0.5 s): not needed for --help or a bad flag
        CorpusReport, iter_texts,
    )

    os.makedirs(out_dir, exist_ok=True)
    train_path, heldout_path = os.path.join(out_dir, "train.jsonl"), os.path.join(out_dir, "heldout.jsonl")
    report = CorpusReport()
    counts = [0, 0]
    with (
        open(train_path + ".tmp", "w", encoding="utf-8") as train,
        open(heldout_path + ".tmp", "w", encoding="utf-8") as heldout,
    ):
        for i, text in enumerate(iter_texts(list(train_files), text_field, report)):
            target = 1 if i % every == every - 1 else 0
            (heldout if target else train).write(json.dumps({"text": text}) + "\n")
            counts[target] += 1
    if counts[1] == 0 or counts[0] == 0:
        raise StudyError(
            f"--train_files: {counts[0] + counts[1]} usable document(s) cannot be split into "
            f"training and held-out (every {every}th held out); add data or lower --heldout_every"
        )
    os.replace(train_path + ".tmp", train_path)
    os.replace(heldout_path + ".tmp", heldout_path)
    if report.total_skipped:
        logger.warning("corpus: %s", report.summary())
    return train_path, heldout_path, counts


def prepare_inputs(args) -> Dict[str, str]:
    """The shared corpus split and tokenizer of the study (made once; reused when present)."""
    data_dir = getattr(args, "data_dir", None) or os.path.join(args.output_dir, "data")
    train_path, heldout_path = os.path.join(data_dir, "train.jsonl"), os.path.join(data_dir, "heldout.jsonl")
    if not (os.path.isfile(train_path) and os.path.isfile(heldout_path)):
        sources = args.train_files
        if not sources:
            sources = [write_demo_corpus(os.path.join(data_dir, "generated.jsonl"), num_docs=args.num_docs, seed=0)]
        train_path, heldout_path, counts = split_corpus(sources, args.text_field, args.heldout_every, data_dir)
        logger.info("corpus split: %d training, %d held-out documents", *counts)
    tokenizer = args.tokenizer
    if tokenizer is None:
        tokenizer = os.path.join(data_dir, "tokenizer")
        if not os.path.isfile(os.path.join(tokenizer, "tokenizer.json")):
            with open(train_path, encoding="utf-8") as f:
                texts = [json.loads(line)["text"] for line in f]
            train_wordpiece_tokenizer(texts, args.vocab_size, tokenizer)
    return {
        "train": train_path,
        "heldout": heldout_path,
        "tokenizer": tokenizer,
        "cache": os.path.join(data_dir, "cache"),
    }


# ------------------------------------------------------------------------------------------------ runs


def run_dir(output_dir: str, spec: SamplerSpec, seed: int) -> str:
    return os.path.join(output_dir, "runs", spec.label, f"seed{seed}")


def pretrain_command(args, inputs: Dict[str, str], spec: SamplerSpec, seed: int) -> List[str]:
    cmd = [
        sys.executable,
        "-m",
        "mometas_ds.pretrain",
        "--deepspeed_config",
        args.deepspeed_config,
        "--train_files",
        inputs["train"],
        "--output_dir",
        run_dir(args.output_dir, spec, seed),
        "--model_config",
        args.model_config,
        "--tokenizer",
        inputs["tokenizer"],
        "--cache_dir",
        inputs["cache"],
        "--seq_len",
        str(args.seq_len),
        "--objectives",
        ",".join(args.objectives),
        "--sampler",
        spec.name,
        "--meta_interval",
        str(args.meta_interval),
        "--meta_batch_size",
        str(args.meta_batch_size),
        "--max_steps",
        str(args.max_steps),
        "--save_steps",
        str(args.max_steps),
        "--save_total_limit",
        "1",
        "--log_steps",
        str(max(1, args.max_steps // 5)),
        "--seed",
        str(seed),
    ]
    if spec.name == "mometas":
        cmd += ["--meta_lr", str(args.meta_lr)]
    if spec.args:
        cmd += ["--sampler_args", json.dumps(spec.args)]
    if spec.meta_fixed_set != "auto":
        cmd += ["--meta_fixed_set", spec.meta_fixed_set]
    if args.user_modules:
        cmd += ["--user_modules", *args.user_modules]
    return cmd


def _child_env() -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # one core per run: --jobs runs share the machine
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def train_one(args, inputs, spec: SamplerSpec, seed: int) -> dict:
    out = run_dir(args.output_dir, spec, seed)
    if os.path.isfile(os.path.join(out, RESULT_FILE)) or os.path.isdir(RunPaths(out).hf_model):
        return {"label": spec.label, "seed": seed, "returncode": 0, "seconds": None, "reused": True}  # finished
    shutil.rmtree(out, ignore_errors=True)  # a run stopped part-way starts afresh
    os.makedirs(out, exist_ok=True)
    started = time.time()
    with open(os.path.join(out, "stdout.log"), "w") as log:
        result = subprocess.run(
            pretrain_command(args, inputs, spec, seed),
            env=_child_env(),
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    seconds = time.time() - started
    logger.info("run %s seed %d: exit %d in %.0f s", spec.label, seed, result.returncode, seconds)
    return {"label": spec.label, "seed": seed, "returncode": result.returncode, "seconds": seconds, "reused": False}


def read_run(out_dir: str, objectives: List[str]) -> dict:
    """Draws per objective (rank 0's trace) and the probability trajectory (sampler.jsonl) of one run."""
    with open(os.path.join(out_dir, "trace", "rank0.txt"), encoding="utf-8") as f:
        trace = f.read().split()
    draws = {name: trace.count(name) for name in objectives}
    trajectory = []
    with open(RunPaths(out_dir).sampler, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                trajectory.append([record["step"]] + [float(record["probs"][name]) for name in objectives])
    return {
        "draws": draws,
        "steps": len(trace),
        "trajectory": trajectory,
        "final_probs": dict(zip(objectives, trajectory[-1][1:])) if trajectory else None,
    }
