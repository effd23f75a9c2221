"""SimCSE-style contrastive sentence embeddings (unsupervised: dropout is the augmentation).

Corruption: every row is duplicated, rows 2i and 2i+1 are the two views of input
row i; the encoder's dropout makes their embeddings differ. labels[k] = k ^ 1,
the index of k's partner view.

Head: SimCSE's training MLP on the cls position (dense + tanh), then InfoNCE
over the cosine similarities of all 2B views divided by a temperature of 0.05,
each view's own similarity excluded and its partner the positive.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from mometas_ds import kernels

from mometas_ds.objectives.base import Objective, reject_unknown_kwargs, validate_batch
from mometas_ds.objectives.registry import register_objective

TEMPERATURE = 0.05
# Stands in for -inf on the diagonal: exp(-1e4) is 0 in every float type, and
# unlike -inf or finfo.min it cannot turn into NaN or overflow in bf16/fp16 math.
SELF_SIMILARITY_LOGIT = -1e4


def contrastive_logits(pooled: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """Cosine similarity of every pair of views / temperature, in fp32, self-pairs masked out."""
    normalized = F.normalize(pooled.float(), dim=-1)
    logits = normalized @ normalized.t() / temperature
    eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    return logits.masked_fill(eye, SELF_SIMILARITY_LOGIT)


class ContrastiveHead(nn.Module):
    def __init__(self, config, temperature: float = TEMPERATURE):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()
        self.temperature = temperature

    def forward(self, sequence_output: torch.Tensor, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        partner = batch["labels"]
        num_views = sequence_output.shape[0]
        if partner.shape != (num_views,):
            raise ValueError(f"cse: labels must have shape [{num_views}] (partner index per view), "
                             f"got {tuple(partner.shape)}")
        if num_views < 4:
            raise ValueError(f"cse: needs at least 4 views (two input rows: with one, the partner is the only "
                             f"candidate and the loss is 0), got {num_views}")
        cls_hidden = sequence_output[:, 0].to(self.dense.weight.dtype)
        pooled = self.activation(self.dense(cls_hidden))
        logits = contrastive_logits(pooled, self.temperature)
        loss = kernels.cross_entropy(logits, partner)
        accuracy = (logits.detach().argmax(dim=-1) == partner).float().mean()
        return {"loss": loss, "accuracy": accuracy}


@register_objective("cse")
class ContrastiveSentenceEmbedding(Objective):
    default_noise_probability = 0.0  # no token noise: dropout makes the two views
    min_rows = 2  # with one row the partner view is the only candidate: loss 0, no gradient
    meta_eval_with_dropout = True  # without dropout the two views are the same embedding

    def corrupt(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                generator: Optional[torch.Generator] = None, **kwargs) -> Dict[str, torch.Tensor]:
        validate_batch(input_ids, attention_mask, self.special)
        reject_unknown_kwargs(self.name, kwargs)
        num_views = 2 * input_ids.shape[0]
        partner = torch.arange(num_views, device=input_ids.device) ^ 1
        return {
            "input_ids": input_ids.repeat_interleave(2, dim=0),
            "attention_mask": attention_mask.repeat_interleave(2, dim=0),
            "labels": partner,
        }

    def build_head(self, config, word_embeddings: nn.Embedding) -> nn.Module:
        return ContrastiveHead(config)
