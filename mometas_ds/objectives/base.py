"""What every objective shares: special-token ids, input validation, the base class.

An objective is three things that belong together: a corruption of a clean
batch (``corrupt``), a head (an ``nn.Module`` built from the encoder config), and
the head's loss (the head's ``forward``). Keeping the loss inside the head's
forward matters under ZeRO-3: DeepSpeed gathers a module's parameters when that
module's forward runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch
from torch import nn

IGNORE_INDEX = -100


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the tokens every objective must recognise, checked against the vocabulary."""

    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    vocab_size: int
    # Further ids that random replacements and insertions never draw: unk, other special or added
    # tokens, BERT's [unusedN] placeholders (``special_tokens_of`` reads them from the tokenizer).
    reserved_ids: Tuple[int, ...] = field(default=(), repr=False)
    # Ids of WordPiece continuation pieces ("##ing"): whole-word masking joins each to the piece before it.
    # Never a special or reserved id (``special_tokens_of`` reads them from the tokenizer's vocabulary).
    continuation_ids: Tuple[int, ...] = field(default=(), repr=False)
    # device -> table of the ids random draws pick from; built once (the draw is in the corruption hot path).
    _id_tables: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    # device -> bool [vocab_size] table, True at the continuation ids; built once per device.
    _continuation_tables: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.vocab_size, int) or self.vocab_size < 5:
            raise ValueError(f"SpecialTokens.vocab_size must be an int >= 5, got {self.vocab_size!r}")
        ids = {"pad_id": self.pad_id, "cls_id": self.cls_id, "sep_id": self.sep_id, "mask_id": self.mask_id}
        for field_name, value in ids.items():
            if not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ValueError(
                    f"SpecialTokens.{field_name}={value!r} is not a token id in [0, vocab_size={self.vocab_size})"
                )
        if len(set(ids.values())) != len(ids):
            raise ValueError(f"SpecialTokens ids must be distinct, got {ids}")
        if not all(isinstance(i, int) and 0 <= i < self.vocab_size for i in self.reserved_ids):
            raise ValueError(f"SpecialTokens.reserved_ids must be token ids in [0, vocab_size={self.vocab_size})")
        reserved = tuple(sorted(set(self.reserved_ids) - set(self.ids)))
        if len(reserved) + len(ids) >= self.vocab_size:
            raise ValueError("SpecialTokens: no ordinary token id is left outside the special and reserved ids")
        object.__setattr__(self, "reserved_ids", reserved)  # canonical, so equal sets compare and hash equal
        if not all(isinstance(i, int) and 0 <= i < self.vocab_size for i in self.continuation_ids):
            raise ValueError(
                f"SpecialTokens.continuation_ids must be token ids in [0, vocab_size={self.vocab_size})"
            )
        # A special or reserved token is never a continuation piece.
        continuation = tuple(sorted(set(self.continuation_ids) - set(self.ids) - set(reserved)))
        object.__setattr__(self, "continuation_ids", continuation)

    @property
    def ids(self):
        return (self.pad_id, self.cls_id, self.sep_id, self.mask_id)

    def special_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """True where a token is one of the special ids."""
        mask = torch.zeros_like(input_ids, dtype=torch.bool)
        for token_id in self.ids:
            mask |= input_ids == token_id
        return mask

    def continuation_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """True where a token is a continuation piece ("##..."): a lookup in a per-device bool table."""
        device = input_ids.device
        table = self._continuation_tables.get(device)
        if table is None:
            table = torch.zeros(self.vocab_size, dtype=torch.bool)
            table[list(self.continuation_ids)] = True
            table = self._continuation_tables[device] = table.to(device)
        # index_select, not table[input_ids]: advanced indexing is much slower on a loaded CPU (as above).
        return table.index_select(0, input_ids.reshape(-1)).reshape(input_ids.shape)

    def random_ordinary_ids(self, shape, generator: Optional[torch.Generator], device) -> torch.Tensor:
        """Uniform random ids that are neither special nor reserved (drawn without a Python loop)."""
        device = torch.device(device)
        table = self._id_tables.get(device)
        if table is None:
            table = self._id_tables[device] = _ordinary_id_table(self.ids + self.reserved_ids, self.vocab_size, device)
        # Draw an index into the table of non-special ids and look it up (index_select:
        # advanced indexing is ~100x slower for this on a loaded 2-core CPU).
        draw = _randint(table.numel(), shape, generator, device)
        return table.index_select(0, draw.reshape(-1)).reshape(draw.shape)


def _ordinary_id_table(special_ids, vocab_size: int, device: torch.device) -> torch.Tensor:
    is_special = torch.zeros(vocab_size, dtype=torch.bool)
    is_special[list(special_ids)] = True
    return torch.arange(vocab_size)[~is_special].to(device)


def _generator_device(generator: Optional[torch.Generator], device) -> torch.device:
    return generator.device if generator is not None else torch.device(device)


def rand(shape, generator: Optional[torch.Generator], device) -> torch.Tensor:
    """Uniform [0, 1) on ``device``, drawn with ``generator`` wherever that generator lives."""
    gen_device = _generator_device(generator, device)
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def _randint(high: int, shape, generator: Optional[torch.Generator], device) -> torch.Tensor:
    gen_device = _generator_device(generator, device)
    return torch.randint(0, high, shape, generator=generator, device=gen_device).to(device)


def validate_batch(input_ids: torch.Tensor, attention_mask: torch.Tensor, special: SpecialTokens) -> None:
    """Raise ValueError for a batch that breaks the input contract (on CUDA tensors the checks of the
    values are device-side asserts: no host sync in the training loop)."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype != torch.long:
        raise ValueError(f"input_ids must be a torch.long tensor, got {getattr(input_ids, 'dtype', type(input_ids))}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape [batch, seq_len], got {tuple(input_ids.shape)}")
    if input_ids.shape[1] < 2:
        raise ValueError(f"seq_len must be >= 2 (room for cls and sep), got {input_ids.shape[1]}")
    if attention_mask is None or not isinstance(attention_mask, torch.Tensor):
        raise ValueError("attention_mask must be a tensor of the same shape as input_ids")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids {tuple(input_ids.shape)}"
        )
    if input_ids.numel() and input_ids.device.type == "cuda":
        # Checked on the device (reported at a later CUDA call, as F.cross_entropy reports a bad target):
        # reading the answer on the host would stall every micro-step's launch queue, three times.
        torch._assert_async((input_ids[:, 0] == special.cls_id).all(),
                            f"a row does not start with cls_id={special.cls_id}")
        torch._assert_async(((input_ids >= 0) & (input_ids < special.vocab_size)).all(),
                            f"input_ids hold ids outside [0, vocab_size={special.vocab_size})")
        return
    if input_ids.numel() and not bool((input_ids[:, 0] == special.cls_id).all()):
        bad = int((input_ids[:, 0] != special.cls_id).nonzero()[0, 0])
        raise ValueError(
            f"row {bad} does not start with cls_id={special.cls_id} (got {int(input_ids[bad, 0])})"
        )
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= special.vocab_size):
        raise ValueError(f"input_ids hold ids outside [0, vocab_size={special.vocab_size})")


def real_token_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, special: SpecialTokens) -> torch.Tensor:
    """Real (attended) tokens that are not special: the ones objectives may corrupt."""
    return attention_mask.bool() & ~special.special_mask(input_ids)


def whole_words(input_ids: torch.Tensor, candidates: torch.Tensor,
                special: SpecialTokens) -> Tuple[torch.Tensor, torch.Tensor]:
    """Words of a batch: (``starts`` bool [B, T], ``first_piece`` long [B, T]).

    A word is a maskable piece (``candidates``) that is not a continuation, with the continuation
    pieces right after it. A continuation piece whose left neighbour is not maskable (cls, sep,
    padding, or a row truncated mid-word) starts a word of its own: words never cross a special token.
    ``first_piece[b, j]`` is the position of the first piece of the word holding position j (for a
    position that is not a candidate it is meaningless; callers mask with ``candidates``).
    No host sync, no loop over tokens: a table lookup, a shift and a running max.
    """
    continuation = special.continuation_mask(input_ids) & candidates
    after_candidate = torch.cat([torch.zeros_like(candidates[:, :1]), candidates[:, :-1]], dim=1)
    starts = candidates & ~(continuation & after_candidate)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    first_piece = torch.where(starts, positions, 0).cummax(dim=1).values
    return starts, first_piece


def per_word(values: torch.Tensor, first_piece: torch.Tensor) -> torch.Tensor:
    """``values`` [B, T] replaced at every piece by the value at its word's first piece."""
    return values.gather(1, first_piece)


def any_piece_per_word(flags: torch.Tensor, first_piece: torch.Tensor) -> torch.Tensor:
    """True at every piece of a word where ``flags`` holds at any of its pieces."""
    counts = torch.zeros(flags.shape, dtype=torch.long, device=flags.device)
    counts.scatter_add_(1, first_piece, flags.long())  # integer adds: deterministic on CUDA too
    return per_word(counts, first_piece) > 0


class Objective:
    """Base class of a pre-training objective.

    Subclasses set ``name`` and implement ``corrupt`` and ``build_head``. Objectives
    that share a head (mlm and gmlm) return the same ``head_name``.
    """

    name: str = ""
    default_noise_probability: float = 0.15
    # Fewest input rows one forward needs for a loss that teaches something (checked against the
    # micro-batch and each rank's meta-validation share before a run starts).
    min_rows: int = 1
    # Whether the meta-validation forward keeps dropout on (eval mode would make cse's views equal).
    meta_eval_with_dropout: bool = False
    # Whether the constructor takes ``whole_word_mask=`` (mlm and gmlm: docs/whole_word_masking.md).
    supports_whole_word_mask: bool = False

    def __init__(self, special: SpecialTokens, noise_probability: Optional[float] = None):
        if not isinstance(special, SpecialTokens):
            raise ValueError(f"special must be a SpecialTokens, got {type(special).__name__}")
        p = self.default_noise_probability if noise_probability is None else float(noise_probability)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{self.name}: noise_probability must be in [0, 1], got {p}")
        self.special = special
        self.noise_probability = p

    @property
    def head_name(self) -> str:
        return self.name

    def corrupt(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                generator: Optional[torch.Generator] = None, **kwargs) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def build_head(self, config, word_embeddings: nn.Embedding) -> nn.Module:
        """The module whose ``forward(sequence_output, batch)`` returns ``{"loss": ...}``."""
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r}, noise_probability={self.noise_probability})"


def reject_unknown_kwargs(objective_name: str, kwargs: Dict) -> None:
    """A misspelt keyword (``guide_maks=``) must fail loudly, not be ignored."""
    if kwargs:
        raise ValueError(f"{objective_name}.corrupt() got unexpected keyword(s): {', '.join(sorted(kwargs))}")


def gather_labeled(sequence_output: torch.Tensor, labels: torch.Tensor):
    """Rows of ``sequence_output`` [B, T, H] whose label != IGNORE_INDEX, and those labels.

    Heads project only these rows (the sparse prediction of NVIDIA's BERT recipe):
    with 15% masking the vocab projection shrinks ~7x.
    """
    if labels.shape != sequence_output.shape[:-1]:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} does not match sequence_output {tuple(sequence_output.shape[:-1])}"
        )
    flat_labels = labels.reshape(-1)
    rows = (flat_labels != IGNORE_INDEX).nonzero().squeeze(1)
    hidden = sequence_output.reshape(-1, sequence_output.shape[-1]).index_select(0, rows)
    return hidden, flat_labels.index_select(0, rows)


def zero_loss(*tensors: torch.Tensor) -> torch.Tensor:
    """A finite 0 that stays connected to the graph (gradients of 0) for a batch with nothing to predict."""
    # One element each (not a full sum): cheap, and 0 * a finite value is always 0.
    return sum(t.reshape(-1)[:1].float().sum() for t in tensors) * 0.0
