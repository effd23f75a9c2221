"""A user objective defined in one file outside the package (examples/custom_objective.py), end to end."""
import importlib.util
from pathlib import Path

import pytest
import torch

from mometas_ds.objectives import (
    IGNORE_INDEX, Objective, SpecialTokens, available_objectives, build_objective, register_objective,
)

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "custom_objective.py"
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


def readme_template():
    """The custom objective template of docs/objectives.md's "Your own objective" section."""
    section = (EXAMPLE.parents[1] / "docs" / "objectives.md").read_text().split("## Your own objective", 1)[1]
    return section.split("```python", 1)[1].split("```", 1)[0]


def test_heads_give_a_finite_zero_loss_without_a_labelled_token(example):
    from transformers import BertConfig

    namespace = {}
    exec(readme_template().replace('@register_objective("mine")', ""), namespace)  # not registered twice
    config = BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    unlabelled = {"labels": torch.full((2, 5), IGNORE_INDEX)}
    for head in (namespace["MyHead"](config), example.ShuffledTokenHead(config)):
        loss = head(hidden, unlabelled)["loss"]
        assert torch.isfinite(loss) and loss.item() == 0.0
        loss.backward()


@pytest.mark.integration
def test_user_objective_through_pre_training(tmp_path):
    """`--user_modules FILE --objectives ...,shuffle`: the user's file is imported and its objective trained."""
    from tests.pretrain_helpers import make_corpus_and_tokenizer, pretrain_args, read_jsonl, read_trace, run_pretrain

    corpus, tokenizer = make_corpus_and_tokenizer(str(tmp_path), num_docs=150, vocab_size=300)
    out = str(tmp_path / "run")
    args = pretrain_args(corpus, tokenizer, out, str(tmp_path / "cache"), max_steps=12,
                         extra=["--user_modules", str(EXAMPLE), "--objectives", "mlm,shuffle",
                                "--sampler", "round_robin"])
    result = run_pretrain(args)
    assert result.returncode == 0, result.stderr[-4000:]
    assert read_trace(out, 0) == ["mlm", "shuffle"] * 6
    shuffle_losses = [m["loss"] for m in read_jsonl(f"{out}/metrics.jsonl") if m["objective"] == "shuffle"]
    assert len(shuffle_losses) == 6 and all(0 < loss < 5 for loss in shuffle_losses)


def test_unknown_objective_without_its_module_names_the_flag(tmp_path, capsys):
    from mometas_ds.pretrain import main

    args = ["--deepspeed_config", "ds_configs/cpu_demo.json", "--train_files", "x.jsonl", "--model_config", "tiny",
            "--train_tokenizer", "100", "--output_dir", str(tmp_path / "o"),
            "--objectives", "mlm,not_registered_anywhere"]
    assert main(args) == 2
    assert "--objectives" in capsys.readouterr().err
    bad = tmp_path / "broken.py"
    bad.write_text("raise RuntimeError('boom')\n")
    assert main(args + ["--user_modules", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "--user_modules" in err and "broken.py" in err and "boom" in err
