"""Benchmark of ``mometas-prepare``: throughput (MB of text per second) at --num_proc 1 and 2, peak memory of the
process tree, cache disk, and the time to add one file to a prepared cache (issue 19).

    PYTHONPATH=$PWD python benchmarks/prepare_bench.py --mb 100 --files 8 --work /tmp/prepare_bench
    PYTHONPATH=$PWD python benchmarks/prepare_bench.py --mb 1000 --files 1 --no_add   # one big file, split

It generates a corpus of ``--mb`` MB of text as ``--files`` .jsonl files (article-sized documents joined from
mometas_ds.data.demo_corpus sentences), trains a WordPiece tokenizer on a sample of it (mometas_ds.data.tokenizer), then
runs ``python -m mometas_ds.cli.prepare`` as a subprocess, each time into a fresh cache, and prints one JSON line per
run. Peak memory: ``tree_peak_rss_mb`` is the largest sum of the RSS of the prepare process and its workers,
sampled every 0.1 s with psutil; ``max_process_rss_mb`` is getrusage(RUSAGE_CHILDREN).ru_maxrss of that run (the
largest single process).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import threading
import time

import psutil

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_corpus(out_dir: str, megabytes: float, files: int, seed: int = 0, start: int = 0) -> list:
    """``files`` .jsonl files of about ``megabytes / files`` MB each; documents of 8 demo paragraphs (~3 kB)."""
    from mometas_ds.data.demo_corpus import generate_documents

    os.makedirs(out_dir, exist_ok=True)
    pool = generate_documents(20000, seed=seed)
    rng = random.Random(seed + start)
    per_file = megabytes * 1e6 / files
    paths = []
    for i in range(start, start + files):
        path = os.path.join(out_dir, f"part{i:04d}.jsonl")
        written = 0
        with open(path, "w", encoding="utf-8") as f:
            doc_id = 0
            while written < per_file:
                text = " ".join(rng.choice(pool) for _ in range(8))
                line = json.dumps({"id": doc_id, "text": text}) + "\n"
                f.write(line)
                written += len(text)
                doc_id += 1
        paths.append(path)
    return paths


def text_megabytes(paths: list) -> float:
    total = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            total += sum(len(json.loads(line)["text"].encode("utf-8")) for line in f)
    return total / 1e6


def du_mb(path: str) -> float:
    total = 0
    for root, _, names in os.walk(path):
        for name in names:
            total += os.lstat(os.path.join(root, name)).st_size
    return total / 1e6


class TreeSampler(threading.Thread):
    """Largest sum of the RSS of a process and all its descendants, sampled every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.process, self.interval, self.peak, self.done = psutil.Process(pid), interval, 0, False

    def run(self):
        while not self.done:
            try:
                procs = [self.process] + self.process.children(recursive=True)
                total = 0
                for proc in procs:
                    try:
                        total += proc.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                return
            time.sleep(self.interval)


def run_prepare(files: list, tokenizer: str, cache: str, num_proc: int, seq_len: int, shard_size_mb: float) -> dict:
    cmd = [sys.executable, "-m", "mometas_ds.cli.prepare", "--train_files", *files, "--tokenizer", tokenizer,
           "--seq_len", str(seq_len), "--cache_dir", cache, "--num_proc", str(num_proc),
           "--shard_size_mb", str(shard_size_mb)]
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    sampler.done = True
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed ({proc.returncode}):\n{err[-3000:]}")
    maxrss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    prescan = re.search(r"pre-scanned (\d+) range\(s\) of \d+ split file\(s\) in ([\d.]+) s", err)
    return {"seconds": round(seconds, 2), "tree_peak_rss_mb": round(sampler.peak / 1e6, 1),
            "prescan": {"ranges": int(prescan[1]), "seconds": float(prescan[2])} if prescan else None,
            # ru_maxrss of all children so far: only meaningful when it grew in this run
            "max_process_rss_mb": round(maxrss_kb / 1e3, 1) if maxrss_kb > before else None,
            "stdout_tail": out.strip().splitlines()[-3:]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Benchmark mometas-prepare (docs/benchmarks.md)")
    p.add_argument("--mb", type=float, default=100, help="MB of text to generate")
    p.add_argument("--files", type=int, default=8, help="number of .jsonl files")
    p.add_argument("--work", default="/tmp/prepare_bench", help="scratch directory (deleted first)")
    p.add_argument("--seq_len", type=int, default=128, help="--seq_len of the prepared rows")
    p.add_argument("--vocab", type=int, default=30522, help="WordPiece vocabulary size asked for")
    p.add_argument("--num_proc", default="1,2", help="comma-separated --num_proc values to run")
    p.add_argument("--shard_size_mb", type=float, default=64.0, help="mometas-prepare --shard_size_mb")
    p.add_argument("--no_add", action="store_true", help="skip the add-one-file and load-only runs")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = p.parse_args(argv)

    from mometas_ds.data.demo_corpus import generate_documents
    from mometas_ds.data.tokenizer import train_wordpiece_tokenizer

    shutil.rmtree(args.work, ignore_errors=True)
    corpus_dir = os.path.join(args.work, "corpus")
    t0 = time.perf_counter()
    files = write_corpus(corpus_dir, args.mb, args.files)
    mb = text_megabytes(files)
    print(json.dumps({"corpus_text_mb": round(mb, 1), "files": len(files),
                      "corpus_disk_mb": round(du_mb(corpus_dir), 1),
                      "generate_seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    tokenizer = os.path.join(args.work, "tokenizer")
    trained = train_wordpiece_tokenizer(generate_documents(20000, seed=0), args.vocab, tokenizer)
    print(json.dumps({"vocab": len(trained)}), flush=True)

    cache = None
    for num_proc in [int(n) for n in args.num_proc.split(",")]:
        if cache:
            shutil.rmtree(cache)  # each run into a fresh cache (only one kept on disk)
        cache = os.path.join(args.work, f"cache_np{num_proc}")
        result = run_prepare(files, tokenizer, cache, num_proc, args.seq_len, args.shard_size_mb)
        result.update(run="prepare", num_proc=num_proc, text_mb=round(mb, 1),
                      mb_per_s=round(mb / result["seconds"], 2), cache_disk_mb=round(du_mb(cache), 1))
        print(json.dumps(result), flush=True)

    if args.no_add:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
        return 0
    # One more file (the size of one of the others) added to the last prepared cache.
    extra = write_corpus(corpus_dir, args.mb / args.files, 1, start=len(files))
    result = run_prepare(files + extra, tokenizer, cache, 1, args.seq_len, args.shard_size_mb)
    result.update(run="add_one_file", added_text_mb=round(text_megabytes(extra), 1),
                  cache_disk_mb=round(du_mb(cache), 1))
    print(json.dumps(result), flush=True)
    # Nothing new: loading the prepared corpus only.
    result = run_prepare(files + extra, tokenizer, cache, 1, args.seq_len, args.shard_size_mb)
    result.update(run="reuse_all")
    print(json.dumps(result), flush=True)
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
