"""Inputs for the peak-memory benchmark of one huge document (issue 27): a .jsonl file holding ONE document of
``--mb`` MB of text (mometas_ds.data.demo_corpus paragraphs joined by spaces and newlines), and a WordPiece tokenizer
trained on the same generator's text. It prints the command to measure (peak RSS from /usr/bin/time -v):

    PYTHONPATH=$PWD python benchmarks/huge_doc_bench.py --mb 50 --work /tmp/huge_doc
    /usr/bin/time -v nice -n 19 python -m mometas_ds.cli.prepare --train_files /tmp/huge_doc/one_doc.jsonl \\
        --tokenizer /tmp/huge_doc/tokenizer --seq_len 128 --cache_dir /tmp/huge_doc/cache --num_proc 1
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=50, help="MB of text in the one document")
    p.add_argument("--work", default="/tmp/huge_doc", help="scratch directory (deleted first)")
    p.add_argument("--vocab", type=int, default=30522, help="WordPiece vocabulary size asked for")
    args = p.parse_args(argv)

    from mometas_ds.data.demo_corpus import generate_documents
    from mometas_ds.data.tokenizer import train_wordpiece_tokenizer

    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    pool = generate_documents(20000, seed=0)
    rng = random.Random(0)
    parts, size = [], 0
    while size < args.mb * 1e6:
        paragraph = rng.choice(pool)
        parts.append(paragraph)
        size += len(paragraph) + 1
    text = "".join(p + ("\n" if i % 8 == 7 else " ") for i, p in enumerate(parts))
    corpus = os.path.join(args.work, "one_doc.jsonl")
    with open(corpus, "w", encoding="utf-8") as f:
        f.write(json.dumps({"text": text}) + "\n")
    tokenizer = os.path.join(args.work, "tokenizer")
    trained = train_wordpiece_tokenizer(pool, args.vocab, tokenizer)
    print(json.dumps({"document_chars": len(text), "file_bytes": os.path.getsize(corpus), "vocab": len(trained)}))
    cmd = ["/usr/bin/time", "-v", "nice", "-n", "19", sys.executable, "-m", "mometas_ds.cli.prepare", "--train_files",
           corpus, "--tokenizer", tokenizer, "--seq_len", "128", "--cache_dir", os.path.join(args.work, "cache"),
           "--num_proc", "1"]
    print(shlex.join(cmd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
