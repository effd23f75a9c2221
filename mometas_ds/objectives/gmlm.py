"""Guided MLM: mlm restricted to the tokens a guide marks (entity masking in the MOMETAS paper).

``corrupt(input_ids, attention_mask, guide_mask=BoolTensor[B, T])``: only real,
non-special tokens where ``guide_mask`` is True can be chosen, each with
probability p (default 0.5), then BERT's 80/10/10 replacement as in mlm.
Pass the guide your data pipeline computes (entity spans, whole words, ...).

Built-in guide (used when no ``guide_mask`` is passed): random contiguous spans.
Each real non-special token starts a span with probability
``guide_span_start_probability`` (0.12); span lengths are uniform in
1..``guide_max_span_length`` (5, mean 3); only the real non-special tokens
under a span are marked, and a span ends at the first special token it meets
(an inner [SEP] between packed documents: no span covers two documents). That
covers about 30% of the tokens, so with p = 0.5 about 15% are predicted, the
budget of mlm, but in contiguous groups that neighbouring tokens do not give away.
It needs only tensor operations (no tokenizer).

``whole_word_mask=True`` (the "##" continuation pieces join a word to its first
piece): the guide is extended to whole words and the choice is drawn once per
word, so every piece of a chosen word is chosen and no word is chosen in part.
The built-in guide then counts in words, not pieces: a span starts at a word
with probability ``guide_span_start_probability`` and covers 1..max whole
words; a passed ``guide_mask`` marks a word where it marks any of its pieces.
A guided word is then chosen with probability p (one draw per word, taken at
its first piece), and each of its pieces gets mlm's 80/10/10 replacement.

Shares the mlm head (``head_name == "mlm"``).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from mometas_ds.objectives.base import (
    any_piece_per_word, per_word, rand, real_token_mask, reject_unknown_kwargs, whole_words,
)
from mometas_ds.objectives.mlm import MaskedLM
from mometas_ds.objectives.registry import register_objective


@register_objective("gmlm")
class GuidedMaskedLM(MaskedLM):
    default_noise_probability = 0.5

    def __init__(self, special, noise_probability: Optional[float] = None, *,
                 guide_span_start_probability: float = 0.12, guide_max_span_length: int = 5,
                 whole_word_mask: bool = False):
        super().__init__(special, noise_probability, whole_word_mask=whole_word_mask)
        if not 0.0 < guide_span_start_probability <= 1.0:
            raise ValueError(
                f"gmlm: guide_span_start_probability must be in (0, 1], got {guide_span_start_probability}"
            )
        if not (isinstance(guide_max_span_length, int) and guide_max_span_length >= 1):
            raise ValueError(f"gmlm: guide_max_span_length must be an int >= 1, got {guide_max_span_length}")
        self.guide_span_start_probability = float(guide_span_start_probability)
        self.guide_max_span_length = guide_max_span_length

    @property
    def head_name(self) -> str:
        return "mlm"

    def builtin_guide(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Random spans over real non-special tokens, or whole words (see the module docstring)."""
        candidates = real_token_mask(input_ids, attention_mask, self.special)
        words = whole_words(input_ids, candidates, self.special) if self.whole_word_mask else None
        return self._span_guide(input_ids, candidates, words, generator)

    def _span_guide(self, input_ids, candidates, words, generator) -> torch.Tensor:
        batch, seq_len = input_ids.shape
        device = input_ids.device
        starts = candidates & (rand((batch, seq_len), generator, device) < self.guide_span_start_probability)
        # Uniform lengths in 1..max (a geometric draw needs log(), which PyTorch runs
        # multi-threaded even on a 32 x 256 batch: slow on a busy CPU).
        lengths = (rand((batch, seq_len), generator, device) * self.guide_max_span_length).long()
        lengths = lengths.clamp_(max=self.guide_max_span_length - 1) + 1  # fp32 rounding can reach max
        if words is None:
            positions = torch.arange(seq_len, device=device).expand(batch, seq_len)
        else:
            # Count in words: spans start only at a word's first piece, and "position" is the word's
            # index in its row, shared by all its pieces, so a span covers whole words.
            word_starts, _ = words
            starts = starts & word_starts
            positions = word_starts.cumsum(dim=1)
        # A span never crosses a special token (an inner [SEP] ends a document, as words do in whole_words):
        # positions are keyed by their segment, the count of non-candidates at or before them, times more
        # than any position + length, so a span's reach stops at the next special or padding token. In a row
        # [cls] ... [sep] [pad]... every candidate is in one segment: the spans are exactly as without keys.
        segment = (~candidates).long().cumsum(dim=1)
        positions = segment * (seq_len + self.guide_max_span_length + 1) + positions
        # Position j is covered when some span starting at or before j (in its segment) ends after j.
        span_ends = torch.where(starts, positions + lengths, 0)
        reach = span_ends.cummax(dim=1).values
        return candidates & (reach > positions)

    def choose(self, input_ids, attention_mask, generator, guide_mask: Optional[torch.Tensor] = None,
               **kwargs) -> torch.Tensor:
        reject_unknown_kwargs(self.name, kwargs)
        candidates = real_token_mask(input_ids, attention_mask, self.special)
        words = whole_words(input_ids, candidates, self.special) if self.whole_word_mask else None
        if guide_mask is None:
            guide = self._span_guide(input_ids, candidates, words, generator)
        else:
            if not isinstance(guide_mask, torch.Tensor) or guide_mask.dtype != torch.bool:
                raise ValueError(f"gmlm: guide_mask must be a torch.bool tensor, got "
                                 f"{getattr(guide_mask, 'dtype', type(guide_mask))}")
            if guide_mask.shape != input_ids.shape:
                raise ValueError(f"gmlm: guide_mask shape {tuple(guide_mask.shape)} differs from input_ids "
                                 f"{tuple(input_ids.shape)}")
            guide = guide_mask.to(input_ids.device) & candidates
            if words is not None:
                guide = candidates & any_piece_per_word(guide, words[1])
        draw = rand(input_ids.shape, generator, input_ids.device)
        if words is not None:
            draw = per_word(draw, words[1])  # one draw per word, at its first piece
        return guide & (draw < self.noise_probability)

    def corrupt(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                generator: Optional[torch.Generator] = None, guide_mask: Optional[torch.Tensor] = None,
                **kwargs) -> Dict[str, torch.Tensor]:
        return super().corrupt(input_ids, attention_mask, generator, guide_mask=guide_mask, **kwargs)
