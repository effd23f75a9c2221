"""``make demo``: pre-train a tiny BERT on the CPU with 2 ranks through the deepspeed launcher.

Built-in generated corpus, a WordPiece tokenizer trained on it, all five objectives,
MOMETAS with a short interval; then the figures. Writes to runs/demo/.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

from .config import bundled_ds_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="runs/demo")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--max_steps", type=int, default=300)
    p.add_argument("--deepspeed_config", default=bundled_ds_config("cpu_demo.json"))
    p.add_argument("--keep", action="store_true", help="keep an earlier runs/demo (default: start afresh)")
    args = p.parse_args(argv)

    from .demo_corpus import write_demo_corpus

    out = os.path.abspath(args.output_dir)
    if os.path.exists(out) and not args.keep:
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    corpus = os.path.join(out, "corpus.jsonl")
    write_demo_corpus(corpus, seed=0)

    env = dict(os.environ)
    # The launcher does not pin ranks to cores: one thread per rank avoids oversubscription.
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(args.ranks),
        "--master_port", str(29500 + os.getpid() % 1000),
        "--module", "mometas_ds.pretrain",
        "--deepspeed_config", args.deepspeed_config,
        "--train_files", corpus,
        "--output_dir", out,
        "--model_config", "tiny",
        "--train_tokenizer", "2000",
        "--seq_len", "64",
        "--objectives", "mlm,gmlm,atd,dtd,cse",
        "--sampler", "mometas",
        "--meta_interval", "20",
        "--meta_batch_size", "32",
        "--max_steps", str(args.max_steps),
        "--save_steps", "100",
        "--log_steps", "10",
    ]
    print("running:", " ".join(cmd), flush=True)
    started = time.time()
    result = subprocess.run(cmd, env=env, cwd=REPO_ROOT)
    if result.returncode != 0:
        print(f"demo: pre-training failed (exit {result.returncode})", file=sys.stderr)
        return result.returncode

    from .plot import plot_run

    figures = plot_run(out)
    print(f"\ndemo finished in {time.time() - started:.0f} s")
    print(f"  metrics:     {os.path.join(out, 'metrics.jsonl')}")
    print(f"  sampler:     {os.path.join(out, 'sampler.jsonl')}")
    print(f"  traces:      {os.path.join(out, 'trace')}")
    print(f"  checkpoint:  {os.path.join(out, 'checkpoints')}")
    print(f"  HF model:    {os.path.join(out, 'hf_model')}  (transformers' BertForMaskedLM and AutoModel load it)")
    for path in figures:
        print(f"  figure:      {path}")
    from .finetune.demo import finetune_demo  # pre-train -> fine-tune -> score

    return finetune_demo(out)


if __name__ == "__main__":
    sys.exit(main())
