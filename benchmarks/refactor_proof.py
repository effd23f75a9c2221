"""Same seed, same tokenizer, same losses: run a fixed pre-training before and after a refactor and compare.

    python benchmarks/refactor_proof.py prepare DIR          # corpus + tokenizer, trained once
    python benchmarks/refactor_proof.py run DIR LABEL        # 1 rank (cpu_demo.json) and 2 ranks (gas 2) into DIR/LABEL
    python benchmarks/refactor_proof.py compare DIR A B      # exit 1 unless A and B logged the same run

The runs use this checkout (its root goes first on PYTHONPATH). ``compare`` holds every field of
metrics.jsonl except the two throughput figures, sampler.jsonl and every rank's trace byte for byte.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
sys.path.insert(0, REPO_ROOT)

from pretrain_helpers import CPU_CONFIG, make_corpus_and_tokenizer, pretrain_args, run_pretrain  # noqa: E402

TIMING = ("samples_per_s", "tokens_per_s")  # wall-clock figures: differ between any two runs
RUNS = {"rank1": 1, "rank2": 2}


def prepare(root: str) -> None:
    os.makedirs(root, exist_ok=True)
    make_corpus_and_tokenizer(root)
    with open(CPU_CONFIG, encoding="utf-8") as f:
        config = json.load(f)
    config["gradient_accumulation_steps"] = 2  # the 2-rank run also crosses accumulation boundaries
    with open(os.path.join(root, "gas2.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)


def run(root: str, label: str) -> None:
    for name, ranks in RUNS.items():
        out = os.path.join(root, label, name)
        shutil.rmtree(out, ignore_errors=True)
        config = CPU_CONFIG if ranks == 1 else os.path.join(root, "gas2.json")
        args = pretrain_args(os.path.join(root, "corpus.jsonl"), os.path.join(root, "tokenizer"), out,
                             os.path.join(out, "cache"), max_steps=40, config=config,
                             extra=["--sampler", "mometas", "--save_steps", "20"])
        done = run_pretrain(args, ranks=ranks, timeout=1200)
        if done.returncode != 0:
            sys.exit(f"{name}: exit {done.returncode}\n{done.stderr[-4000:]}")
        print(f"{label}/{name}: done")


def _lines(path: str):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def compare(root: str, a: str, b: str) -> int:
    problems = []
    for name, ranks in RUNS.items():
        da, db = os.path.join(root, a, name), os.path.join(root, b, name)
        ma = [json.loads(line) for line in _lines(os.path.join(da, "metrics.jsonl"))]
        mb = [json.loads(line) for line in _lines(os.path.join(db, "metrics.jsonl"))]
        strip = [[{k: v for k, v in r.items() if k not in TIMING} for r in rows] for rows in (ma, mb)]
        if strip[0] != strip[1]:
            problems.append(f"{name}: metrics.jsonl differs")
        files = ["sampler.jsonl"] + [os.path.join("trace", f"rank{r}.txt") for r in range(ranks)]
        for rel in files:
            if _lines(os.path.join(da, rel)) != _lines(os.path.join(db, rel)):
                problems.append(f"{name}: {rel} differs")
        print(f"{name}: {len(ma)} steps, last loss {ma[-1]['loss']!r} vs {mb[-1]['loss']!r}; "
              f"{len(_lines(os.path.join(da, 'sampler.jsonl')))} sampler updates; final probs "
              f"{json.loads(_lines(os.path.join(db, 'sampler.jsonl'))[-1])['probs']}")
    for problem in problems:
        print("DIFFERENT:", problem)
    print("identical" if not problems else "NOT identical")
    return 1 if problems else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="refactor_proof", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare", help="write the corpus, tokenizer and gas-2 config").add_argument("root")
    r = sub.add_parser("run", help="run the 1-rank and 2-rank pre-training into ROOT/LABEL")
    r.add_argument("root")
    r.add_argument("label")
    c = sub.add_parser("compare", help="compare two labels' logs")
    c.add_argument("root")
    c.add_argument("a")
    c.add_argument("b")
    ns = p.parse_args(argv)
    if ns.cmd == "prepare":
        prepare(ns.root)
    elif ns.cmd == "run":
        run(ns.root, ns.label)
    else:
        return compare(ns.root, ns.a, ns.b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
