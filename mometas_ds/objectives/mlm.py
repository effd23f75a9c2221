"""Masked language modelling (BERT): corruption and the tied, sparse MLM head.

Corruption: each real, non-special token is chosen with probability p (0.15);
a chosen token becomes mask_id (80%), a random non-special id (10%) or stays
(10%). Labels hold the original id where chosen and -100 elsewhere.

``whole_word_mask=True`` chooses words instead of pieces: each word (a piece and
the "##" continuation pieces after it) is chosen with probability p, and then
every piece of it is chosen; the 80/10/10 replacement is still drawn per piece,
as in google-research/bert (docs/whole_word_masking.md).

The head is BERT's prediction head, its decoder tied to the word embeddings. It
projects only the labelled rows onto the vocabulary, never all B*T positions.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from mometas_ds import kernels

from mometas_ds.objectives.base import (
    IGNORE_INDEX, Objective, SpecialTokens, gather_labeled, per_word, rand, real_token_mask, reject_unknown_kwargs,
    validate_batch, whole_words, zero_loss,
)
from mometas_ds.objectives.registry import register_objective

MASK_FRACTION = 0.8    # chosen -> mask_id
RANDOM_FRACTION = 0.1  # chosen -> random non-special id; the remaining 10% stay unchanged


def mask_chosen_tokens(input_ids: torch.Tensor, chosen: torch.Tensor, special: SpecialTokens,
                       generator: Optional[torch.Generator]) -> Dict[str, torch.Tensor]:
    """Apply BERT's 80/10/10 replacement to the ``chosen`` positions; labels = original ids there."""
    how = rand(input_ids.shape, generator, input_ids.device)
    random_ids = special.random_ordinary_ids(input_ids.shape, generator, input_ids.device)
    corrupted = torch.where(chosen & (how < MASK_FRACTION), special.mask_id, input_ids)
    to_random = chosen & (how >= MASK_FRACTION) & (how < MASK_FRACTION + RANDOM_FRACTION)
    corrupted = torch.where(to_random, random_ids, corrupted)
    labels = torch.where(chosen, input_ids, IGNORE_INDEX)
    return {"input_ids": corrupted, "labels": labels}


class MaskedLMHead(nn.Module):
    """BERT's transform (dense, activation, LayerNorm) and a vocab decoder tied to the word embeddings.

    The embedding is held in a tuple, not as a submodule: it belongs to the
    encoder, and under ZeRO-3 the model registers it as an external parameter
    of this head.
    """

    def __init__(self, config, word_embeddings: nn.Embedding):
        super().__init__()
        from transformers.activations import ACT2FN

        hidden = config.hidden_size
        self.dense = nn.Linear(hidden, hidden)
        self.act = ACT2FN[config.hidden_act] if isinstance(config.hidden_act, str) else config.hidden_act
        self.layer_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        if word_embeddings.weight.shape != (config.vocab_size, hidden):
            raise ValueError(
                f"word_embeddings weight {tuple(word_embeddings.weight.shape)} does not match "
                f"(vocab_size={config.vocab_size}, hidden_size={hidden})"
            )
        self._tied = (word_embeddings,)

    @property
    def tied_weight(self) -> nn.Parameter:
        return self._tied[0].weight

    def forward(self, sequence_output: torch.Tensor, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        hidden, target = gather_labeled(sequence_output, batch["labels"])
        weight = self.tied_weight
        hidden = self.layer_norm(self.act(self.dense(hidden.to(self.dense.weight.dtype))))
        num_predictions = target.numel()  # a Python int: a device tensor of it would cost a copy per step
        if target.numel() == 0:
            # Nothing masked in this batch: a mean over no positions would be NaN.
            return {"loss": zero_loss(hidden, weight, self.bias), "num_predictions": num_predictions}
        loss = kernels.fused_linear_cross_entropy(
            hidden.to(weight.dtype), weight, target, bias=self.bias, ignore_index=IGNORE_INDEX
        )
        return {"loss": loss, "num_predictions": num_predictions}


@register_objective("mlm")
class MaskedLM(Objective):
    default_noise_probability = 0.15
    # Takes the ``whole_word_mask`` keyword (what a --whole_word_mask flag passes on).
    supports_whole_word_mask = True

    def __init__(self, special: SpecialTokens, noise_probability: Optional[float] = None, *,
                 whole_word_mask: bool = False):
        super().__init__(special, noise_probability)
        if not isinstance(whole_word_mask, bool):
            raise ValueError(f"{self.name}: whole_word_mask must be a bool, got {whole_word_mask!r}")
        if whole_word_mask and not special.continuation_ids:
            raise ValueError(
                f"{self.name}: whole_word_mask needs the vocabulary's '##' continuation pieces, but "
                "SpecialTokens.continuation_ids is empty (build it with mometas_ds.data.tokenizer.special_tokens_of)"
            )
        self.whole_word_mask = whole_word_mask

    def choose(self, input_ids, attention_mask, generator, **kwargs) -> torch.Tensor:
        """Positions to corrupt: each real non-special token (or, whole_word_mask, word) with probability p."""
        reject_unknown_kwargs(self.name, kwargs)
        candidates = real_token_mask(input_ids, attention_mask, self.special)
        draw = rand(input_ids.shape, generator, input_ids.device)
        if self.whole_word_mask:
            # One draw per word: the one at its first piece (the number of draws stays B * T).
            _, first_piece = whole_words(input_ids, candidates, self.special)
            draw = per_word(draw, first_piece)
        return candidates & (draw < self.noise_probability)

    def corrupt(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                generator: Optional[torch.Generator] = None, **kwargs) -> Dict[str, torch.Tensor]:
        validate_batch(input_ids, attention_mask, self.special)
        chosen = self.choose(input_ids, attention_mask, generator, **kwargs)
        masked = mask_chosen_tokens(input_ids, chosen, self.special, generator)
        return {"input_ids": masked["input_ids"], "attention_mask": attention_mask.clone(), "labels": masked["labels"]}

    def build_head(self, config, word_embeddings: nn.Embedding) -> nn.Module:
        return MaskedLMHead(config, word_embeddings)
