"""Synthetic token batches: what the benchmark trains on, so that it needs no corpus or tokenizer."""
from __future__ import annotations

from typing import Dict

import torch

from mometas_ds.objectives import SpecialTokens

BERT_SPECIAL_IDS = dict(pad_id=0, cls_id=101, sep_id=102, mask_id=103)


def synthetic_rows(num_rows: int, seq_len: int, special: SpecialTokens, seed: int):
    """Rows like packed pre-training data: 70% filled to seq_len, 30% shorter (a document ended).

    Tokens are uniform over ordinary ids (from 999 up, above BERT's [unused] ids, for a BERT-sized vocabulary).
    """
    g = torch.Generator().manual_seed(seed)
    low = 999 if special.vocab_size > 2000 else max(special.ids) + 1
    full = torch.rand(num_rows, generator=g) < 0.7
    short = torch.randint(seq_len // 4, seq_len, (num_rows,), generator=g)
    lengths = torch.where(full, seq_len, short)
    positions = torch.arange(seq_len)
    inside = positions < lengths[:, None]
    ids = torch.randint(low, special.vocab_size, (num_rows, seq_len), generator=g)
    ids = torch.where(inside, ids, special.pad_id)
    ids[:, 0] = special.cls_id
    ids[torch.arange(num_rows), lengths - 1] = special.sep_id
    return ids, inside.long()


class SyntheticBatches:
    """Stands in for ``data.ShardedBatches``: cycles through a fixed pool, so drawing a batch costs ~nothing."""

    def __init__(self, batch_size: int, seq_len: int, special: SpecialTokens, seed: int, pool: int = 16):
        ids, mask = synthetic_rows(batch_size * pool, seq_len, special, seed)
        self._pool = [{"input_ids": i, "attention_mask": m}
                      for i, m in zip(ids.split(batch_size), mask.split(batch_size))]
        self._next = 0

    def __iter__(self):
        return self

    def __next__(self) -> Dict[str, torch.Tensor]:
        batch = self._pool[self._next % len(self._pool)]
        self._next += 1
        return batch


class Discard:
    """The per-micro-step trace file of a real run; the benchmark keeps no trace."""

    def write(self, text):
        pass

    def flush(self):
        pass
