"""Continual pre-training keeps what a downloaded checkpoint has, in each layout a user brings: a
BertForPreTraining (pooler + NSP head), a BertForMaskedLM (no pooler), a bare BertModel (pooler, no MLM head)
and a sentence-transformers directory (modules.json, 1_Pooling/; weights in the root or in 0_Transformer/).
The pooler is loaded and exported (unchanged without cse, the cse head's start with it); one log line says
what was loaded and what starts fresh; a fine-tuned model from the export has no MISSING pooler.
Tiny checkpoints built here; no training."""
import json
import logging
import os

import pytest
import torch

from mometas_ds.model_config_check import transformer_dir
from mometas_ds.config.choices import MODEL_PRESETS
from mometas_ds.model import MultiObjectiveBert
from mometas_ds.objectives import SpecialTokens, build_objective

SPECIAL = SpecialTokens(pad_id=0, cls_id=1, sep_id=2, mask_id=3, vocab_size=60)


def _objectives(*names):
    return {name: build_objective(name, SPECIAL) for name in names}


def _config():
    return _tiny(60, 32)


def _tiny(vocab_size: int, positions: int):
    """The tiny preset's BertConfig (built directly: a downloaded checkpoint's config.json is just that)."""
    from transformers import BertConfig

    return BertConfig(**{**MODEL_PRESETS["tiny"], "vocab_size": vocab_size, "max_position_embeddings": positions})


def _perturbed(model):
    torch.manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)  # no weight left at its initial value
    return model


def _save(model, out):
    model.save_pretrained(out)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _load(path, names, caplog):
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mometas_ds.model"):
        model = MultiObjectiveBert.from_pretrained(path, _objectives(*names))
    return model, caplog.text


def _exported_pooler(model, out):
    from transformers import AutoModel

    model.save_hf(out)
    encoder, info = AutoModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"], info["missing_keys"]
    return encoder.pooler.dense.weight, encoder.pooler.dense.bias


def test_bert_for_pretraining_pooler_is_kept_unchanged_through_bf16_and_exported(tmp_path, caplog):
    from transformers import BertForPreTraining

    saved = _save(_perturbed(BertForPreTraining(_config())), str(tmp_path / "pt"))
    model, log = _load(str(tmp_path / "pt"), ("mlm", "atd"), caplog)
    assert f"loaded from {tmp_path / 'pt'}: encoder, pooler (kept unchanged for the export), mlm head; " \
           "starting fresh: atd head" in log
    assert "RANDOM" not in log
    model.to(torch.bfloat16)  # what deepspeed.initialize does to the module under bf16
    assert model.kept_pooler.weight.dtype == torch.float32
    assert not any(name.startswith("kept_pooler") for name, _ in model.named_parameters())  # nothing trains it
    weight, bias = _exported_pooler(model, str(tmp_path / "export"))
    assert torch.equal(weight, saved["bert.pooler.dense.weight"]) and torch.equal(bias, saved["bert.pooler.dense.bias"])


def test_with_cse_the_head_starts_from_the_checkpoints_pooler(tmp_path, caplog):
    from transformers import BertForPreTraining

    saved = _save(_perturbed(BertForPreTraining(_config())), str(tmp_path / "pt"))
    model, log = _load(str(tmp_path / "pt"), ("mlm", "cse"), caplog)
    assert "pooler (as the cse head's start), mlm head; starting fresh: nothing" in log
    assert torch.equal(model.heads["cse"].dense.weight, saved["bert.pooler.dense.weight"])
    assert not hasattr(model, "kept_pooler")
    weight, _ = _exported_pooler(model, str(tmp_path / "export"))
    assert torch.equal(weight, saved["bert.pooler.dense.weight"])  # the cse head, untrained here


def test_masked_lm_checkpoint_has_no_pooler_and_says_so(tmp_path, caplog):
    from transformers import BertForMaskedLM

    saved = _save(_perturbed(BertForMaskedLM(_config())), str(tmp_path / "mlm"))
    model, log = _load(str(tmp_path / "mlm"), ("mlm",), caplog)
    assert "encoder, mlm head; starting fresh: nothing; the checkpoint has no pooler" in log
    assert not hasattr(model, "kept_pooler")
    assert torch.equal(model.heads["mlm"].dense.weight, saved["cls.predictions.transform.dense.weight"])


def test_bare_bert_model_keeps_its_pooler_and_warns_that_the_mlm_head_starts_random(tmp_path, caplog):
    from transformers import BertModel

    saved = _save(_perturbed(BertModel(_config())), str(tmp_path / "bare"))
    model, log = _load(str(tmp_path / "bare"), ("mlm", "atd"), caplog)
    assert "encoder, pooler (kept unchanged for the export); starting fresh: mlm head, atd head" in log
    assert "the mlm head starts RANDOM" in log
    assert torch.equal(model.kept_pooler.weight, saved["pooler.dense.weight"])


def _sentence_transformers_dir(root, inner: str):
    """A sentence-transformers directory as its save() writes it: modules.json, 1_Pooling/config.json, the
    Transformer module's files in the root (``"path": ""``, current) or in 0_Transformer/ (older)."""
    from transformers import BertModel

    os.makedirs(os.path.join(root, "1_Pooling"), exist_ok=True)
    saved = _save(_perturbed(BertModel(_config())), os.path.join(root, inner))
    with open(os.path.join(root, "modules.json"), "w") as f:
        json.dump([{"idx": 0, "name": "0", "path": inner, "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                   {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}],
                  f)
    with open(os.path.join(root, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": _config().hidden_size, "pooling_mode_cls_token": False,
                   "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False}, f)
    with open(os.path.join(root, "sentence_bert_config.json"), "w") as f:
        json.dump({"max_seq_length": 32, "do_lower_case": False}, f)
    return saved


@pytest.mark.parametrize("inner", ["", "0_Transformer"], ids=["weights_in_root", "weights_in_0_Transformer"])
def test_sentence_transformers_directory_loads_encoder_and_pooler(tmp_path, caplog, inner):
    root = str(tmp_path / "st")
    saved = _sentence_transformers_dir(root, inner)
    assert transformer_dir(root) == os.path.join(root, inner) if inner else root
    model, log = _load(root, ("mlm", "cse"), caplog)
    assert "pooler (as the cse head's start); starting fresh: mlm head" in log and "RANDOM" in log
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, saved["embeddings.word_embeddings.weight"])
    assert torch.equal(model.heads["cse"].dense.weight, saved["pooler.dense.weight"])


def test_a_sequence_classifier_from_the_export_misses_only_its_classifier(tmp_path, caplog):
    from transformers import AutoModelForSequenceClassification, BertModel

    _save(_perturbed(BertModel(_config())), str(tmp_path / "bare"))
    model, _ = _load(str(tmp_path / "bare"), ("mlm",), caplog)
    model.save_hf(str(tmp_path / "export"))
    _, info = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "export"), num_labels=2,
                                                                 output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"]


def test_validate_config_reads_an_older_sentence_transformers_directory_from_its_transformer_folder(tmp_path):
    from mometas_ds.config import PretrainConfig
    from mometas_ds.train.preflight import validate_config
    from tests.pretrain_helpers import CPU_CONFIG

    root = str(tmp_path / "st")
    _sentence_transformers_dir(root, "0_Transformer")
    with open(os.path.join(root, "0_Transformer", "tokenizer_config.json"), "w") as f:
        json.dump({}, f)
    cfg = PretrainConfig(deepspeed_config=CPU_CONFIG, train_files=["x.jsonl"], model_name_or_path=root,
                         output_dir=str(tmp_path / "out"), objectives=["mlm"], seq_len=32)
    validate_config(cfg)
    assert cfg.model_name_or_path == os.path.join(root, "0_Transformer")


@pytest.mark.integration
def test_a_run_from_a_bare_bert_model_exports_its_pooler_unchanged(assets, tmp_path):
    """bf16 ZeRO-2 steps from a BertModel with a pooler, objectives without cse, resumed once: the run's
    hf_model/ and mometas-export of its checkpoint hold the checkpoint's pooler bit for bit (DeepSpeed cast
    the module to bf16, consolidated the ZeRO partitions, and the pooler stayed fp32)."""
    from safetensors.torch import load_file
    from transformers import BertModel

    from mometas_ds.cli.export import main as export_main
    from mometas_ds.data.tokenizer import load_tokenizer
    from tests.pretrain_helpers import CPU_CONFIG, assert_ok, pretrain_args, run_pretrain

    tokenizer = load_tokenizer(assets["tokenizer"])
    start = str(tmp_path / "bare")
    config = _tiny(len(tokenizer), 40)
    saved = _save(_perturbed(BertModel(config)), start)
    tokenizer.save_pretrained(start)
    with open(CPU_CONFIG) as f:
        ds = {**json.load(f), "bf16": {"enabled": True}}
    ds_path = tmp_path / "bf16.json"
    ds_path.write_text(json.dumps(ds))
    out = str(tmp_path / "run")
    args = pretrain_args(assets["corpus"], assets["tokenizer"], out, assets["cache"], max_steps=2,
                         config=str(ds_path))
    for flag in ("--model_config", "--tokenizer"):
        i = args.index(flag)
        del args[i:i + 2]
    args += ["--model_name_or_path", start, "--objectives", "mlm,atd"]
    args[args.index("--save_steps") + 1] = "2"
    result = run_pretrain(args)
    assert_ok(result)
    assert "pooler (kept unchanged for the export)" in result.stderr + result.stdout
    args[args.index("--max_steps") + 1] = "4"
    assert_ok(run_pretrain(args + ["--resume", "auto"]))  # the kept pooler goes through a resume too
    assert export_main(["--checkpoint", os.path.join(out, "checkpoints", "step4"), "--out", str(tmp_path / "x")]) == 0
    for directory in (os.path.join(out, "hf_model"), str(tmp_path / "x")):
        weights = load_file(os.path.join(directory, "model.safetensors"))
        for key in ("pooler.dense.weight", "pooler.dense.bias"):
            exported = weights.get(f"bert.{key}", weights.get(key))
            assert exported is not None and torch.equal(exported, saved[key]), (directory, key)
