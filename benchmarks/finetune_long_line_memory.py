"""Peak memory of tokenizing one 10 MB text as the sequence-classification kind does, whole or cut first by
mometas_ds.finetune.text_files.bound_text (128 characters per token of max_seq_len); also checks that both
keep the same tokens. One mode per process, so ru_maxrss is that mode's own peak:

    python benchmarks/finetune_long_line_memory.py whole
    python benchmarks/finetune_long_line_memory.py cut
"""
import os
import random
import resource
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from finetune_task_helpers import make_tokenizer  # noqa: E402

from mometas_ds.finetune.text_files import bound_text  # noqa: E402

MAX_SEQ_LEN = 128


def main(mode: str) -> None:
    tokenizer = make_tokenizer(tempfile.mkdtemp())
    random.seed(0)
    words = ["alpha", "beta", "gamma", "delta", "sentence", "tokenizer"]
    text = " ".join(random.choice(words) for _ in range(10_000_000 // 7))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    given = text if mode == "whole" else bound_text(text, MAX_SEQ_LEN)[0]
    ids = tokenizer([given], truncation=True, max_length=MAX_SEQ_LEN)["input_ids"][0]
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"{mode}: text {len(text):,} characters, tokenized {len(given):,}, {len(ids)} ids; "
          f"peak RSS before tokenizing {before} MB, after {after} MB")


if __name__ == "__main__":
    main(sys.argv[1])
