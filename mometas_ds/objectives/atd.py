"""Added-token detection: find the random tokens inserted into a sentence.

Corruption: before each real non-special token a random non-special token is
inserted with probability p (0.15). Labels: 1 on inserted tokens, 0 on the
original real tokens (cls and sep included), -100 on padding. A row that grows
past T keeps its first T - 1 tokens and ends with sep (or, when those already end
with an inner sep, its first T - 1 tokens and one pad). Special tokens anywhere in
a row (an inner sep between packed documents) are never an insertion point: no
token is inserted right before one, so a document never ends with an insertion
(but for the closing sep of a truncated row). attention_mask covers
the new content (the reference code keeps the old mask; we do not).

Done as one scatter (id and label packed in one int64): original token j moves to
j + (insertions at or before j), an insertion before j lands just in front of it.
The head is a per-token binary classifier (shared with dtd).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from mometas_ds import kernels

from mometas_ds.objectives.base import (
    IGNORE_INDEX, Objective, gather_labeled, rand, real_token_mask, reject_unknown_kwargs, validate_batch, zero_loss,
)
from mometas_ds.objectives.registry import register_objective


class TokenDetectionHead(nn.Module):
    """Dropout and a linear layer to 2 classes per token; cross-entropy over the labelled positions."""

    def __init__(self, config):
        super().__init__()
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, 2)

    def forward(self, sequence_output: torch.Tensor, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        hidden, target = gather_labeled(sequence_output, batch["labels"])
        logits = self.classifier(self.dropout(hidden.to(self.classifier.weight.dtype)))
        if target.numel() == 0:
            zero = zero_loss(logits, self.classifier.weight, self.classifier.bias)
            return {"loss": zero, "accuracy": zero.detach()}
        loss = kernels.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
        accuracy = (logits.detach().argmax(dim=-1) == target).float().mean()
        return {"loss": loss, "accuracy": accuracy}


@register_objective("atd")
class AddedTokenDetection(Objective):
    default_noise_probability = 0.15

    def corrupt(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                generator: Optional[torch.Generator] = None, **kwargs) -> Dict[str, torch.Tensor]:
        validate_batch(input_ids, attention_mask, self.special)
        reject_unknown_kwargs(self.name, kwargs)
        batch, seq_len = input_ids.shape
        device = input_ids.device
        special = self.special

        real = attention_mask.bool()
        insert_before = real_token_mask(input_ids, attention_mask, special) & (
            rand((batch, seq_len), generator, device) < self.noise_probability
        )
        inserted_ids = special.random_ordinary_ids((batch, seq_len), generator, device)

        # Destinations in a 2T-wide row (room for every possible insertion) plus a
        # discard column 2T for the "no insertion here" slots.
        positions = torch.arange(seq_len, device=device).expand(batch, seq_len)
        original_dest = positions + insert_before.long().cumsum(dim=1)
        inserted_dest = torch.where(insert_before, original_dest - 1, 2 * seq_len)
        dest = torch.cat([original_dest, inserted_dest], dim=1)
        ids_src = torch.cat([input_ids, inserted_ids], dim=1)
        # Pack id and label code into one int64 so a single scatter moves both.
        # Codes: 0 = padding (-100), 1 = original real token (0), 2 = inserted (1).
        codes_src = torch.cat([real.long(), torch.full_like(input_ids, 2)], dim=1)
        packed = torch.empty((batch, 2 * seq_len + 1), dtype=torch.long, device=device)
        packed.scatter_(1, dest, (ids_src << 2) | codes_src)
        # Every slot of the first T columns is written: originals (pads included)
        # and insertions fill [0, T + num_inserted) exactly.
        packed = packed[:, :seq_len]
        out_ids = packed >> 2
        codes = packed & 3
        out_labels = torch.where(codes == 0, IGNORE_INDEX, codes - 1)

        # Truncate grown rows: the last slot becomes sep (an original token, label 0). Where the kept part
        # already ends with an inner sep (a document boundary of a packed row), a second sep would close an
        # empty document: that slot becomes padding instead (never the case in a row [cls] ... [sep]).
        grown_len = real.sum(dim=1) + insert_before.sum(dim=1)
        overflow = grown_len > seq_len
        ends_at_sep = overflow & (out_ids[:, -2] == special.sep_id)  # seq_len >= 2 (validate_batch)
        out_ids[:, -1] = torch.where(ends_at_sep, special.pad_id, torch.where(overflow, special.sep_id, out_ids[:, -1]))
        out_labels[:, -1] = torch.where(ends_at_sep, IGNORE_INDEX, torch.where(overflow, 0, out_labels[:, -1]))
        new_len = grown_len.clamp(max=seq_len) - ends_at_sep.long()
        out_mask = (positions < new_len[:, None]).to(attention_mask.dtype)
        return {"input_ids": out_ids, "attention_mask": out_mask, "labels": out_labels}

    def build_head(self, config, word_embeddings: nn.Embedding) -> nn.Module:
        return TokenDetectionHead(config)
