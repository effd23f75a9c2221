"""The last step of ``make demo``: fine-tune the demo's hf_model/ on a small generated task and print the score.

    python -m mometas_ds.finetune.demo runs/demo
"""
from __future__ import annotations

import json
import os
import sys

from mometas_ds.finetune import metrics, synthetic
from mometas_ds.cli.finetune import main
from mometas_ds.finetune.runner import predictions_path
from mometas_ds.config.paths import RunPaths


def finetune_demo(run_dir: str, seed: int = 1) -> int:
    """Generate a sentiment task (good/bad cue words, SST-2's layout) in RUN_DIR/finetune_data, fine-tune
    RUN_DIR/hf_model on it into RUN_DIR/eval and print the dev accuracy next to the majority baseline."""
    data = synthetic.write_glue(os.path.join(run_dir, "finetune_data"), ["sst2"], n_train=400, n_dev=200, seed=seed)
    out = os.path.join(run_dir, "eval")
    code = main(["--model_name_or_path", RunPaths(run_dir).hf_model, "--data_dir", data, "--tasks", "sst2",
                 "--output_dir", out, "--seeds", str(seed), "--learning_rates", "5e-4", "--epochs", "4",
                 "--batch_size", "16", "--max_seq_len", "48", "--overwrite", "--log_level", "error"])
    if code != 0:
        return code
    with open(os.path.join(out, "results.jsonl"), encoding="utf-8") as f:
        result = json.loads(f.readline())
    with open(predictions_path(out, "sst2", 5e-4, seed), encoding="utf-8") as f:
        labels = [json.loads(line)["label"] for line in f]
    train_labels = [line.rstrip("\n").split("\t")[1] for line in
                    open(os.path.join(data, "SST-2", "train.tsv"), encoding="utf-8").readlines()[1:]]
    baseline = metrics.majority_baseline(train_labels, labels)
    print(f"\nfine-tuned {os.path.join(run_dir, 'hf_model')} on a generated sentiment task "
          f"({result['train_examples']} train / {len(labels)} dev examples, {result['wall_s']:.0f} s): "
          f"dev accuracy {result['metrics']['accuracy']:.1f}% (majority class: {baseline:.1f}%)")
    print(f"  fine-tuning:  {out}  (results.jsonl, predictions/, summary.md; see docs/finetuning.md)")
    return 0


if __name__ == "__main__":
    sys.exit(finetune_demo(sys.argv[1] if len(sys.argv) > 1 else "runs/demo"))
