"""A user-defined objective in one file: shuffled-token detection.

Corruption: a fraction p of the real non-special tokens of each row trade places
among themselves; the encoder must say, per token, whether it is out of place.
Labels: 1 where the token differs from the original, 0 on the other real tokens,
-100 on padding. Head: a linear layer to 2 classes per token.

Registering it makes it available by name like the built-ins:

    import custom_objective  # this file, anywhere on your path
    from mometas_ds.objectives import build_objective
    objective = build_objective("shuffle", special, noise_probability=0.3)

Run this file to corrupt a toy batch and train a tiny BERT on the objective for a
few steps on the CPU:  python examples/custom_objective.py
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from mometas_ds.kernels import cross_entropy
from mometas_ds.objectives import IGNORE_INDEX, Objective, register_objective
from mometas_ds.objectives.base import rand, real_token_mask, reject_unknown_kwargs, validate_batch


class ShuffledTokenHead(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.classifier = nn.Linear(config.hidden_size, 2)

    def forward(self, sequence_output: torch.Tensor, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        logits = self.classifier(sequence_output)
        # Unlike F.cross_entropy (NaN), 0 when no token is labelled.
        loss = cross_entropy(logits, batch["labels"], ignore_index=IGNORE_INDEX)
        return {"loss": loss}


@register_objective("shuffle")
class ShuffledTokenDetection(Objective):
    default_noise_probability = 0.3

    def corrupt(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                generator: Optional[torch.Generator] = None, **kwargs) -> Dict[str, torch.Tensor]:
        validate_batch(input_ids, attention_mask, self.special)
        reject_unknown_kwargs(self.name, kwargs)
        batch, seq_len = input_ids.shape
        selected = real_token_mask(input_ids, attention_mask, self.special) & (
            rand((batch, seq_len), generator, input_ids.device) < self.noise_probability
        )
        # Flat indices of the selected tokens, in row order; sorting them by
        # row + a random key in [0, 1) permutes them randomly within each row.
        flat = selected.reshape(-1).nonzero().squeeze(1)
        row_of = torch.div(flat, seq_len, rounding_mode="floor")
        order = torch.argsort(row_of + rand(flat.shape, generator, input_ids.device))
        shuffled = input_ids.clone().reshape(-1)
        shuffled[flat] = input_ids.reshape(-1)[flat[order]]
        shuffled = shuffled.reshape(batch, seq_len)
        labels = torch.where(attention_mask.bool(), (shuffled != input_ids).long(), IGNORE_INDEX)
        return {"input_ids": shuffled, "attention_mask": attention_mask.clone(), "labels": labels}

    def build_head(self, config, word_embeddings: nn.Embedding) -> nn.Module:
        return ShuffledTokenHead(config)


def toy_batch(batch: int, seq_len: int, special, generator: torch.Generator):
    """Rows [cls, ordinary tokens..., sep, pad...] of random lengths."""
    lengths = torch.randint(seq_len // 2, seq_len + 1, (batch,), generator=generator)
    ids = torch.randint(special.mask_id + 1, special.vocab_size, (batch, seq_len), generator=generator)
    positions = torch.arange(seq_len)
    ids = torch.where(positions < lengths[:, None], ids, special.pad_id)
    ids[:, 0] = special.cls_id
    ids[torch.arange(batch), lengths - 1] = special.sep_id
    return ids, (positions < lengths[:, None]).long()


def train(steps: int = 30, seed: int = 0, lr: float = 3e-3):
    """Train a tiny BERT and the shuffle head; returns the loss of every step."""
    from transformers import BertConfig, BertModel

    from mometas_ds.objectives import SpecialTokens, build_objective

    torch.manual_seed(seed)
    special = SpecialTokens(pad_id=0, cls_id=1, sep_id=2, mask_id=3, vocab_size=100)
    config = BertConfig(vocab_size=special.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, attn_implementation="sdpa")
    encoder = BertModel(config, add_pooling_layer=False)
    objective = build_objective("shuffle", special)
    head = objective.build_head(config, encoder.embeddings.word_embeddings)
    optimizer = torch.optim.AdamW(list(encoder.parameters()) + list(head.parameters()), lr=lr)

    generator = torch.Generator().manual_seed(seed)
    clean_ids, clean_mask = toy_batch(16, 24, special, generator)
    # One corrupted batch, fitted for a few steps: enough to show corruption, head and
    # loss train end to end (a real run corrupts every batch afresh).
    batch = objective.corrupt(clean_ids, clean_mask, generator=generator)
    losses = []
    for _ in range(steps):
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        loss = head(hidden, batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


if __name__ == "__main__":
    for step, loss in enumerate(train(), start=1):
        print(f"step {step:3d}  shuffle loss {loss:.4f}")
