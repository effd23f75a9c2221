"""The test objectives of examples/study_objectives.py that the study's suites add (issue 30)."""

import torch

from mometas_ds.registry import import_user_module
from mometas_ds.objectives import IGNORE_INDEX, build_objective
from mometas_ds.objectives.base import SpecialTokens
from mometas_ds.study import EXAMPLE_OBJECTIVES

import_user_module(EXAMPLE_OBJECTIVES)
SPECIAL = SpecialTokens(pad_id=0, cls_id=1, sep_id=2, mask_id=3, vocab_size=200)


def _batch():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 200, (6, 24), generator=gen)
    ids[:, 0] = 1
    ids[:, 11] = 2  # an inner separator
    lengths = [24, 20, 16, 12, 24, 18]
    for row, length in enumerate(lengths):
        ids[row, length - 1] = 2
        ids[row, length:] = 0
    return ids, (ids != 0).long()


def test_shuffled_mlm_permutes_the_real_tokens_of_each_row_and_masks_like_mlm():
    ids, mask = _batch()
    objective = build_objective("shuffled_mlm", SPECIAL)
    assert objective.head_name == "mlm"
    unmasked = build_objective("shuffled_mlm", SPECIAL, noise_probability=1e-9)
    shuffled = unmasked.corrupt(ids, mask, generator=torch.Generator().manual_seed(1))
    out = shuffled["input_ids"]
    special = (ids <= 2)
    assert torch.equal(out[special], ids[special])  # cls, sep and padding stay where they are
    for row in range(len(ids)):
        assert sorted(out[row][~special[row]].tolist()) == sorted(ids[row][~special[row]].tolist())
    assert not torch.equal(out, ids)  # the order did change
    assert (shuffled["labels"] == IGNORE_INDEX).all()  # nothing chosen at p = 0
    masked = objective.corrupt(ids, mask, generator=torch.Generator().manual_seed(1))
    chosen = masked["labels"] != IGNORE_INDEX
    assert chosen.any() and not chosen[special].any()
    # the labels are the scrambled row's tokens at the chosen positions
    assert torch.equal(masked["labels"][chosen], out[chosen])


def test_easy_position_labels_are_the_position_parity_of_real_tokens():
    ids, mask = _batch()
    batch = build_objective("easy_position", SPECIAL).corrupt(ids, mask)
    assert torch.equal(batch["input_ids"], ids)
    real = (ids > 2)
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    assert torch.equal(batch["labels"][real], positions[real] % 2)
    assert (batch["labels"][~real] == IGNORE_INDEX).all()


def test_permuted_mlm_labels_are_a_fixed_permutation_of_mlm_labels():
    ids, mask = _batch()
    objective = build_objective("permuted_mlm", SPECIAL)
    assert objective.head_name == "mlm"
    mlm = build_objective("mlm", SPECIAL).corrupt(ids, mask, generator=torch.Generator().manual_seed(3))
    permuted = objective.corrupt(ids, mask, generator=torch.Generator().manual_seed(3))
    assert torch.equal(permuted["input_ids"], mlm["input_ids"])  # the same masking as mlm
    chosen = mlm["labels"] != IGNORE_INDEX
    assert torch.equal(permuted["labels"] != IGNORE_INDEX, chosen)
    mapping = objective.mapping
    assert torch.equal(permuted["labels"][chosen], mapping[mlm["labels"][chosen]])
    ordinary = torch.arange(4, SPECIAL.vocab_size)
    assert sorted(mapping[ordinary].tolist()) == ordinary.tolist()  # a permutation of the ordinary ids
    assert (mapping[ordinary] != ordinary).float().mean() > 0.9  # that moves almost every token
    assert torch.equal(build_objective("permuted_mlm", SPECIAL).mapping, mapping)  # the same in every process


def test_next_token_mlm_labels_a_masked_position_with_the_next_ordinary_token_of_the_original_row():
    ids, mask = _batch()
    objective = build_objective("next_token_mlm", SPECIAL)
    assert objective.head_name == "mlm"
    mlm = build_objective("mlm", SPECIAL, noise_probability=0.5).corrupt(
        ids, mask, generator=torch.Generator().manual_seed(3)
    )
    nxt = build_objective("next_token_mlm", SPECIAL, noise_probability=0.5).corrupt(
        ids, mask, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(nxt["input_ids"], mlm["input_ids"])  # the same masking as mlm
    chosen = mlm["labels"] != IGNORE_INDEX
    labelled = nxt["labels"] != IGNORE_INDEX
    assert labelled.any() and not (labelled & ~chosen).any()  # only masked positions are labelled
    for row, col in chosen.nonzero().tolist():
        following = ids[row, col + 1].item() if col + 1 < ids.shape[1] else 0
        if following > 2:  # an ordinary token follows: it is the label
            assert nxt["labels"][row, col].item() == following
        else:  # a separator, padding or the row's end: no label
            assert not labelled[row, col]
