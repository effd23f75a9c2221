"""The study's downstream score (``mometas-study --downstream``): every finished run's final model (hf_model/)
fine-tuned by ``mometas-finetune`` on generated GLUE-layout tasks over several fine-tuning seeds, then
``mometas-compare``'s table (paired t-test) of every sampler against uniform.

Pairing: a sampler's fine-tuning results are pooled over its pre-training seeds, each result keyed by
(pre-training seed, fine-tuning seed) -- written as seed ``1000 * pretrain_seed + finetune_seed`` in
OUTPUT_DIR/downstream/LABEL/results.jsonl -- so the paired test compares uniform and the sampler on the
same pre-training and fine-tuning seeds. A run already fine-tuned is not redone (mometas-finetune skips
the results present in RUN/eval/results.jsonl).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional

from mometas_ds.study.common import REPO_ROOT, logger

DOWNSTREAM_TASKS = ["sst2", "mrpc"]  # one single-sentence, one pair classification task
GENERATED_TASKS = ["cola", "sst2", "mrpc", "stsb", "qqp", "qnli", "rte"]
LEARNING_RATE = "5e-4"  # the tiny from-scratch models need a large one (as in make demo)
SEED_STRIDE = 1000


def _finetune(args, data_dir: str, run: dict) -> int:
    out = os.path.join(args.output_dir, "runs", run["label"], f"seed{run['seed']}")
    log = os.path.join(out, "finetune.log")
    cmd = [
        sys.executable, "-m", "mometas_ds.cli.finetune",
        "--model_name_or_path", os.path.join(out, "hf_model"),
        "--data_dir", data_dir,
        "--tasks", ",".join(args.downstream_tasks),
        "--output_dir", os.path.join(out, "eval"),
        "--seeds", ",".join(str(s) for s in args.downstream_seeds),
        "--learning_rates", LEARNING_RATE,
        "--epochs", f"{args.downstream_epochs:g}",
        "--batch_size", "16",
        "--max_seq_len", "48",
        "--cpu",
        "--log_level", "error",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log, "a") as f:
        code = subprocess.run(cmd, env=env, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    if code != 0:
        logger.warning("fine-tuning %s seed %d: exit %d; see %s", run["label"], run["seed"], code, log)
    return code


def pool_results(args, runs: List[dict], label: str) -> Optional[str]:
    """OUTPUT_DIR/downstream/LABEL/results.jsonl: the label's fine-tuning results of every pre-training seed."""
    from mometas_ds.finetune.summary import read_results

    rows = []
    for run in runs:
        if run["label"] != label:
            continue
        eval_dir = os.path.join(args.output_dir, "runs", label, f"seed{run['seed']}", "eval")
        if not os.path.isfile(os.path.join(eval_dir, "results.jsonl")):
            continue
        for row in read_results(eval_dir):
            if row["task"] in args.downstream_tasks and int(row["seed"]) in args.downstream_seeds:
                rows.append({**row, "seed": SEED_STRIDE * int(run["seed"]) + int(row["seed"])})
    if not rows:
        return None
    out = os.path.join(args.output_dir, "downstream", label)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.jsonl"), "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return out


def run_downstream(args, runs: List[dict]) -> Optional[dict]:
    """Fine-tune every run (missing results only), pool per sampler, compare with uniform; None without uniform."""
    from mometas_ds.cli.compare import compare, write_outputs
    from mometas_ds.finetune import synthetic

    data_dir = os.path.join(getattr(args, "data_dir", None) or os.path.join(args.output_dir, "data"), "downstream")
    if not all(os.path.isdir(os.path.join(data_dir, name)) for name in ("SST-2", "MRPC")):
        synthetic.write_glue(data_dir, list(args.downstream_tasks), n_train=args.downstream_examples, n_dev=200, seed=0)
    if not args.summarize_only:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            list(pool.map(lambda run: _finetune(args, data_dir, run), runs))
    labels = list(dict.fromkeys(run["label"] for run in runs))
    if "uniform" not in labels:
        logger.warning("--downstream: no uniform runs to compare with")
        return None
    labels.remove("uniform")
    dirs, names = [], []
    for label in ["uniform"] + labels:
        pooled = pool_results(args, runs, label)
        if pooled is not None:
            dirs.append(pooled)
            names.append(label)
    if len(dirs) < 2 or names[0] != "uniform":
        logger.warning("--downstream: too few fine-tuned samplers to compare")
        return None
    result = compare(dirs, names)
    paths = write_outputs(result, os.path.join(args.output_dir, "downstream", "compare"))
    with open(paths[0], encoding="utf-8") as f:
        table = f.read()
    table = table.replace("# Model comparison", "**Downstream** (mometas-finetune on generated tasks; seeds are "
                          f"{SEED_STRIDE} x pre-training seed + fine-tuning seed)")
    return {"table": table, "result": result, "paths": paths}
