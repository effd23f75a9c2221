"""Deleted-token detection: find where tokens were removed from a sentence.

Corruption: each real non-special token is deleted with probability p (0.15);
cls and sep never are. Labels: 1 on the first kept token after each deleted run
(sep included), 0 on the other real tokens, -100 on padding. Rows are
re-padded to T and attention_mask covers the shortened content.

Done as one scatter: a kept token moves to (kept tokens before it); deleted ones
go to a discard column. The head is atd's per-token binary classifier.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from mometas_ds.objectives.atd import TokenDetectionHead
from mometas_ds.objectives.base import (
    IGNORE_INDEX, Objective, rand, real_token_mask, reject_unknown_kwargs, validate_batch,
)
from mometas_ds.objectives.registry import register_objective


@register_objective("dtd")
class DeletedTokenDetection(Objective):
    default_noise_probability = 0.15

    def corrupt(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                generator: Optional[torch.Generator] = None, **kwargs) -> Dict[str, torch.Tensor]:
        validate_batch(input_ids, attention_mask, self.special)
        reject_unknown_kwargs(self.name, kwargs)
        batch, seq_len = input_ids.shape
        device = input_ids.device

        real = attention_mask.bool()
        delete = real_token_mask(input_ids, attention_mask, self.special) & (
            rand((batch, seq_len), generator, device) < self.noise_probability
        )
        keep = ~delete
        # A kept token right after a deleted one marks the gap (position 0 is cls, never deleted).
        after_deletion = torch.zeros_like(delete)
        after_deletion[:, 1:] = delete[:, :-1]
        # Codes: 0 = padding (-100), 1 = kept real token (0), 2 = first kept after a gap (1).
        codes = torch.where(real, 1 + after_deletion.long(), 0)

        dest = torch.where(keep, keep.long().cumsum(dim=1) - 1, seq_len)
        # Slots freed at the end of the row stay pad / -100.
        packed = torch.full((batch, seq_len + 1), self.special.pad_id << 2, dtype=torch.long, device=device)
        packed.scatter_(1, dest, (input_ids << 2) | codes)
        packed = packed[:, :seq_len]
        out_ids = packed >> 2
        out_codes = packed & 3
        out_labels = torch.where(out_codes == 0, IGNORE_INDEX, out_codes - 1)

        new_len = real.sum(dim=1) - delete.sum(dim=1)
        positions = torch.arange(seq_len, device=device)
        out_mask = (positions[None, :] < new_len[:, None]).to(attention_mask.dtype)
        return {"input_ids": out_ids, "attention_mask": out_mask, "labels": out_labels}

    def build_head(self, config, word_embeddings: nn.Embedding) -> nn.Module:
        return TokenDetectionHead(config)
