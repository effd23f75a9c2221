"""Shared pieces of the tests that run real pre-training: a corpus, a tokenizer, a runner."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from typing import List, Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_CONFIG = os.path.join(REPO_ROOT, "ds_configs", "cpu_demo.json")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"  # the launcher does not pin ranks to cores
    env.pop("TRITON_INTERPRET", None)
    return env


def make_corpus_and_tokenizer(root: str, num_docs: int = 400, vocab_size: int = 400):
    """A generated corpus and a WordPiece tokenizer trained on it (no downloads)."""
    from mometas_ds.data.demo_corpus import write_demo_corpus
    from mometas_ds.data.tokenizer import train_wordpiece_tokenizer

    corpus = os.path.join(root, "corpus.jsonl")
    write_demo_corpus(corpus, num_docs=num_docs, seed=0)
    with open(corpus, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    tokenizer_dir = os.path.join(root, "tokenizer")
    train_wordpiece_tokenizer(texts, vocab_size, tokenizer_dir)
    return corpus, tokenizer_dir


def pretrain_args(corpus: str, tokenizer_dir: str, output_dir: str, cache_dir: str, max_steps: int = 20,
                  config: str = CPU_CONFIG, extra: Optional[List[str]] = None) -> List[str]:
    return [
        "--deepspeed_config", config, "--train_files", corpus, "--output_dir", output_dir,
        "--model_config", "tiny", "--tokenizer", tokenizer_dir, "--cache_dir", cache_dir,
        "--seq_len", "32", "--meta_interval", "5", "--meta_batch_size", "8",
        "--max_steps", str(max_steps), "--save_steps", "100", "--seed", "3",
    ] + list(extra or [])


def run_pretrain(args: List[str], ranks: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run pre-training in fresh processes: one plain process, or the deepspeed launcher with N ranks."""
    if ranks == 1:
        cmd = [sys.executable, "-m", "mometas_ds.pretrain"] + args
    else:
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks),
               "--master_port", str(free_port()), "--module", "mometas_ds.pretrain"] + args
    return subprocess.run(cmd, env=subprocess_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def read_jsonl(path: str) -> List[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_trace(output_dir: str, rank: int) -> List[str]:
    with open(os.path.join(output_dir, "trace", f"rank{rank}.txt"), encoding="utf-8") as f:
        return f.read().split()


OBJECTIVES = ["mlm", "gmlm", "atd", "dtd", "cse"]


def assert_ok(result: subprocess.CompletedProcess) -> None:
    """A run exited 0; otherwise fail showing the end of its output."""
    assert result.returncode == 0, \
        f"exit {result.returncode}\nSTDOUT:\n{result.stdout[-3000:]}\nSTDERR:\n{result.stderr[-6000:]}"
