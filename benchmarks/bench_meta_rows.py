"""Time to fetch one meta-validation chunk: from the Arrow-backed split through Python lists (what the
trainer did before it held the split as tensors) against indexing ``rows_as_tensors`` (what it does now).

Default shape: BERT-base benchmark settings, 2 x 128 meta-validation sequences of 256 tokens, chunks of 32.

    python benchmarks/bench_meta_rows.py [--rows 256] [--seq_len 256] [--chunk 32] [--reps 50]
"""
from __future__ import annotations

import argparse
import statistics
import time

import datasets
import torch

from mometas_ds.data import rows_as_tensors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--seq_len", type=int, default=256)
    p.add_argument("--chunk", type=int, default=32)
    p.add_argument("--reps", type=int, default=50)
    args = p.parse_args()

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 30522, (args.rows, args.seq_len), generator=g)
    split = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})

    def via_lists(chunk_rows):
        chunk = split[chunk_rows.tolist()]
        return {key: torch.as_tensor(chunk[key], dtype=torch.long) for key in ("input_ids", "attention_mask")}

    start = time.perf_counter()
    held = rows_as_tensors(split)
    load_ms = 1e3 * (time.perf_counter() - start)

    def via_tensors(chunk_rows):
        return {key: column[chunk_rows] for key, column in held.items()}

    for name, fetch in (("via Python lists", via_lists), ("rows_as_tensors", via_tensors)):
        times = []
        for _ in range(args.reps):
            chunk_rows = torch.randperm(args.rows, generator=g)[: args.chunk]
            start = time.perf_counter()
            batch = fetch(chunk_rows)
            times.append(1e3 * (time.perf_counter() - start))
            assert torch.equal(batch["input_ids"], ids[chunk_rows])
        print(f"{name:18s} {statistics.median(times):8.3f} ms per {args.chunk}-row chunk (median of {args.reps})")
    print(f"rows_as_tensors once: {load_ms:.1f} ms for {args.rows} x {args.seq_len}")


if __name__ == "__main__":
    main()
