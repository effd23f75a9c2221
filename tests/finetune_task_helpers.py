"""A small fast WordPiece tokenizer for the fine-tuning task tests (trained here, no download)."""
from __future__ import annotations

from mometas_ds.data.demo_corpus import generate_documents
from mometas_ds.data.tokenizer import load_tokenizer, train_wordpiece_tokenizer

# Punctuation and question words the generated corpus lacks, so they get their own vocabulary entries.
EXTRA_TEXTS = [
    "What did the team find? Where was it? Who wrote the report, and when? Why not?",
    "The answer is here! The results (final) were: yes; no - maybe.",
] * 20


def make_tokenizer(out_dir: str, vocab_size: int = 1500):
    """Train on the generated corpus, save, and load it back as transformers loads any local tokenizer."""
    train_wordpiece_tokenizer(generate_documents(300, seed=0) + EXTRA_TEXTS, vocab_size=vocab_size,
                              out_dir=out_dir)
    tokenizer = load_tokenizer(out_dir)
    assert tokenizer.is_fast
    return tokenizer
