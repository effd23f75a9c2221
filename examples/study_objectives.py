"""Test objectives for checking a sampler on your own corpus: harmful or useless, each by its own mechanism.

Add them to a run with ``--user_modules examples/study_objectives.py`` and name them in
``--objectives``, e.g. ``--objectives mlm,dtd,atd,noisy_mlm,coin_flip``. A sampler that learns
which objectives help should draw both less and less; ``mometas-study`` does this over seeds.

* ``noisy_mlm`` (harmful): BERT's masking, but every masked position is labelled with a
  uniformly random ordinary token. It shares the mlm head (``head_name = "mlm"``), so each step
  of it pulls the mlm head towards the uniform distribution and raises mlm's loss; its own loss
  cannot fall below ln(ordinary vocabulary).
* ``coin_flip`` (no signal): the clean input, and per real token a random 0/1 label
  independent of the text, on its own binary head. Nothing about the text can be learnt from
  it: its loss stays at ln 2, and each step it is drawn is a step the useful objectives lose.
* ``shuffled_mlm`` (harmful, scrambled text): BERT's masking and targets, but on rows whose real
  tokens were randomly permuted first, trained through the mlm head. It teaches the shared head and
  encoder that word order carries nothing (the targets are predictable only from the bag of words),
  the opposite of what mlm on real text needs; its own loss does fall (unigram statistics).
* ``permuted_mlm`` (harmful, a learnable task that conflicts with a useful one): BERT's masking, but each
  masked position is labelled with a fixed random permutation of its original token (the same
  permutation in every run), trained through the mlm head. It is learnable -- its loss falls, so a
  reward made of loss drops pays for it -- and every step of it teaches the shared head the wrong token.
* ``easy_position`` (useless, a loss easy to lower): per real token, the label is its position's
  parity (0/1) on its own binary head. The position embeddings give it away, so its loss drops to
  near zero within a few dozen steps -- a large relative drop that a reward made of loss drops pays
  for -- while it teaches nothing about the text.
* ``next_token_mlm`` (meant as harmful, a learnable task that conflicts with a useful one): BERT's
  masking, but each masked position is labelled with the token that follows it in the original row (a
  position whose next token is not an ordinary one is not labelled), trained through the mlm head. The
  masked input is the same as mlm's, so the shared head cannot tell which of the two it is asked for.
  Measured *not* harmful at the study's scale (tiny model, 1000 steps: a fixed schedule without it was no
  better than uniform; both losses fall together while the model learns unigram statistics), so no suite
  uses it (docs/sampler_study.md).

``mometas-study --suite NAME`` (docs/sampler_study.md) puts these into suites of known worth.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from mometas_ds.objectives import IGNORE_INDEX, Objective, register_objective
from mometas_ds.objectives.atd import TokenDetectionHead
from mometas_ds.objectives.base import rand, real_token_mask, reject_unknown_kwargs, validate_batch
from mometas_ds.objectives.mlm import MaskedLM, mask_chosen_tokens


@register_objective("noisy_mlm")
class NoisyMaskedLM(MaskedLM):
    """MLM input corruption with random targets, trained through the mlm head (harmful to mlm)."""

    @property
    def head_name(self) -> str:
        return "mlm"

    def corrupt(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        **kwargs,
    ) -> Dict[str, torch.Tensor]:
        validate_batch(input_ids, attention_mask, self.special)
        chosen = self.choose(input_ids, attention_mask, generator, **kwargs)
        masked = mask_chosen_tokens(input_ids, chosen, self.special, generator)
        random_targets = self.special.random_ordinary_ids(input_ids.shape, generator, input_ids.device)
        labels = torch.where(chosen, random_targets, IGNORE_INDEX)
        return {"input_ids": masked["input_ids"], "attention_mask": attention_mask.clone(), "labels": labels}


@register_objective("coin_flip")
class CoinFlipDetection(Objective):
    """Per-token random binary labels on the clean text (no signal)."""

    default_noise_probability = 0.5  # probability of label 1

    def corrupt(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        **kwargs,
    ) -> Dict[str, torch.Tensor]:
        validate_batch(input_ids, attention_mask, self.special)
        reject_unknown_kwargs(self.name, kwargs)
        real = real_token_mask(input_ids, attention_mask, self.special)
        coin = (rand(input_ids.shape, generator, input_ids.device) < self.noise_probability).long()
        labels = torch.where(real, coin, IGNORE_INDEX)
        return {"input_ids": input_ids.clone(), "attention_mask": attention_mask.clone(), "labels": labels}

    def build_head(self, config, word_embeddings: nn.Embedding) -> nn.Module:
        return TokenDetectionHead(config)


@register_objective("shuffled_mlm")
class ShuffledMaskedLM(MaskedLM):
    """MLM on scrambled rows: the real non-special tokens of each row randomly permuted, then masked (harmful)."""

    @property
    def head_name(self) -> str:
        return "mlm"

    def corrupt(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        **kwargs,
    ) -> Dict[str, torch.Tensor]:
        validate_batch(input_ids, attention_mask, self.special)
        real = real_token_mask(input_ids, attention_mask, self.special)
        # Real positions in ascending order (then the others), and the real positions in a random order:
        # the i-th real slot takes the token of the i-th random real position. Both orders are permutations.
        inf = torch.full(input_ids.shape, float("inf"), device=input_ids.device)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device, dtype=inf.dtype).expand_as(inf)
        slots = torch.sort(torch.where(real, positions, inf), dim=1).indices
        keys = rand(input_ids.shape, generator, input_ids.device)
        sources = torch.sort(torch.where(real, keys, inf), dim=1).indices
        take = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] < real.sum(dim=1, keepdim=True)
        source_of = torch.empty_like(slots).scatter_(1, slots, torch.where(take, sources, slots))
        shuffled = torch.gather(input_ids, 1, source_of)
        return super().corrupt(shuffled, attention_mask, generator, **kwargs)


PERMUTATION_SEED = 20261206  # one permutation for every run and every process


@register_objective("permuted_mlm")
class PermutedMaskedLM(MaskedLM):
    """MLM input corruption with targets mapped through a fixed permutation of the ordinary ids (harmful to mlm)."""

    @property
    def head_name(self) -> str:
        return "mlm"

    def __init__(self, special, noise_probability: Optional[float] = None, **kwargs):
        super().__init__(special, noise_probability, **kwargs)
        excluded = set(special.ids) | set(special.reserved_ids)
        ordinary = torch.tensor([i for i in range(special.vocab_size) if i not in excluded], dtype=torch.long)
        shuffled = ordinary[torch.randperm(len(ordinary), generator=torch.Generator().manual_seed(PERMUTATION_SEED))]
        self.mapping = torch.arange(special.vocab_size)
        self.mapping[ordinary] = shuffled

    def corrupt(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        **kwargs,
    ) -> Dict[str, torch.Tensor]:
        batch = super().corrupt(input_ids, attention_mask, generator, **kwargs)
        labels = batch["labels"]
        chosen = labels != IGNORE_INDEX
        mapping = self.mapping.to(input_ids.device)
        batch["labels"] = torch.where(chosen, mapping[labels.clamp(min=0)], IGNORE_INDEX)
        return batch


@register_objective("next_token_mlm")
class NextTokenMaskedLM(MaskedLM):
    """MLM input corruption with each masked position labelled by the original row's next token."""

    @property
    def head_name(self) -> str:
        return "mlm"

    def corrupt(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        **kwargs,
    ) -> Dict[str, torch.Tensor]:
        batch = super().corrupt(input_ids, attention_mask, generator, **kwargs)
        real = real_token_mask(input_ids, attention_mask, self.special)
        following = torch.roll(input_ids, shifts=-1, dims=1)
        has_next = torch.roll(real, shifts=-1, dims=1)
        has_next[:, -1] = False
        chosen = (batch["labels"] != IGNORE_INDEX) & has_next
        batch["labels"] = torch.where(chosen, following, IGNORE_INDEX)
        return batch


@register_objective("easy_position")
class PositionParity(Objective):
    """Per real token, its position's parity as a 0/1 label, on its own head (an easy loss that teaches nothing)."""

    def corrupt(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        **kwargs,
    ) -> Dict[str, torch.Tensor]:
        validate_batch(input_ids, attention_mask, self.special)
        reject_unknown_kwargs(self.name, kwargs)
        real = real_token_mask(input_ids, attention_mask, self.special)
        parity = (torch.arange(input_ids.shape[1], device=input_ids.device) % 2).expand_as(input_ids)
        labels = torch.where(real, parity, IGNORE_INDEX)
        return {"input_ids": input_ids.clone(), "attention_mask": attention_mask.clone(), "labels": labels}

    def build_head(self, config, word_embeddings: nn.Embedding) -> nn.Module:
        return TokenDetectionHead(config)
