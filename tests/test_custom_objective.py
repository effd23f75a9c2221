"""A user objective defined in one file outside the package (examples/custom_objective.py), end to end."""
import importlib.util
from pathlib import Path

import pytest
import torch

from mometas_ds.objectives import (
    IGNORE_INDEX, Objective, SpecialTokens, available_objectives, build_objective, register_objective,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_objective.py"
SPECIAL = SpecialTokens(pad_id=0, cls_id=1, sep_id=2, mask_id=3, vocab_size=100)


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("custom_objective_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # registers "shuffle"
    return module


def test_registered_after_the_builtins(example):
    names = available_objectives()
    assert names[:5] == ["mlm", "gmlm", "atd", "dtd", "cse"] and "shuffle" in names[5:]
    assert isinstance(build_objective("shuffle", SPECIAL), example.ShuffledTokenDetection)
    with pytest.raises(ValueError, match="already registered"):
        register_objective("shuffle")(type("Other", (Objective,), {}))
    with pytest.raises(TypeError, match="not an Objective subclass"):
        register_objective("not_an_objective")(object)


def test_shuffle_corruption(example):
    generator = torch.Generator().manual_seed(0)
    ids, mask = example.toy_batch(8, 20, SPECIAL, generator)
    objective = build_objective("shuffle", SPECIAL, noise_probability=0.5)
    out = objective.corrupt(ids, mask, generator=torch.Generator().manual_seed(1))
    again = objective.corrupt(ids, mask, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(out[k], again[k]) for k in out)
    assert torch.equal(out["attention_mask"], mask)
    # Tokens only move within their row, special tokens and padding never move.
    assert torch.equal(out["input_ids"].sort(dim=1).values, ids.sort(dim=1).values)
    special = (ids == SPECIAL.cls_id) | (ids == SPECIAL.sep_id) | (ids == SPECIAL.pad_id)
    assert torch.equal(out["input_ids"][special], ids[special])
    expected = torch.where(mask.bool(), (out["input_ids"] != ids).long(), IGNORE_INDEX)
    assert torch.equal(out["labels"], expected) and (out["labels"] == 1).any()


def test_shuffle_head_trains_on_a_tiny_bert(example):
    losses = example.train(steps=30, seed=0)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0], losses
