"""Checkpoints (mometas_ds/checkpoint/): the resume lookup and its run-identity check, the save limit, the
HF export's fp32 weights, checkpoints that cannot be continued from, and exact resume with gradient accumulation."""
import glob
import json
import os

import pytest

from tests.pretrain_helpers import (
    CPU_CONFIG, assert_ok, pretrain_args, read_jsonl, read_trace, run_pretrain,
)


def test_hf_export_is_a_masked_lm_in_fp32_and_continual_pretraining_reloads_its_head(tmp_path):
    """BertForMaskedLM.from_pretrained gets every weight (its logits equal the mlm head's), AutoModel
    the encoder and the cse pooler, both in fp32 though DeepSpeed had cast the module to bf16; and
    --model_name_or_path on the export starts from the trained mlm head, not a fresh one."""
    import torch
    from transformers import AutoModel, BertForMaskedLM

    from transformers import BertConfig

    from mometas_ds.model import MODEL_PRESETS, MultiObjectiveBert
    from mometas_ds.objectives import SpecialTokens, build_objective

    special = SpecialTokens(pad_id=0, cls_id=1, sep_id=2, mask_id=3, vocab_size=60)
    objectives = {name: build_objective(name, special) for name in ("mlm", "atd", "cse")}
    torch.manual_seed(0)
    config = BertConfig(**MODEL_PRESETS["tiny"], vocab_size=60, max_position_embeddings=32)
    model = MultiObjectiveBert.from_config(config, objectives)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)  # no weight left at its initial value
    model.to(torch.bfloat16)  # what deepspeed.initialize does to the module under bf16
    state = {k: v.float() for k, v in model.state_dict().items()}
    model.float()
    out = str(tmp_path / "hf_model")
    model.save_hf(out, state_dict=state)

    masked_lm, info = BertForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and masked_lm.dtype == torch.float32
    encoder, info = AutoModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and encoder.dtype == torch.float32
    torch.testing.assert_close(encoder.pooler.dense.weight, state["heads.cse.dense.weight"], rtol=0, atol=0)

    model.load_state_dict(state)
    model.eval()
    input_ids = torch.tensor([[1, 5, 3, 7, 9, 2]])
    with torch.no_grad():
        head = model.heads["mlm"]
        hidden = head.layer_norm(head.act(head.dense(model.bert(input_ids=input_ids).last_hidden_state)))
        ours = torch.nn.functional.linear(hidden, head.tied_weight, head.bias)
        torch.testing.assert_close(masked_lm.eval()(input_ids=input_ids).logits, ours)

    reloaded = MultiObjectiveBert.from_pretrained(out, objectives)
    for name, tensor in reloaded.heads["mlm"].state_dict().items():
        torch.testing.assert_close(tensor, state[f"heads.mlm.{name}"], rtol=0, atol=0, msg=name)
    atd_weight = next(k for k in state if k.startswith("heads.atd.") and k.endswith("weight"))
    assert not torch.equal(reloaded.state_dict()[atd_weight], state[atd_weight]), "other heads start fresh"


@pytest.mark.integration
def test_hf_export_without_zero_in_bf16_writes_the_fp32_master_weights(assets, tmp_path):
    # Without ZeRO DeepSpeed trains a bf16 module and keeps the fp32 master weights in its optimizer:
    # the export must be those, not the module's rounded copy upcast.
    import torch
    from safetensors.torch import load_file

    with open(CPU_CONFIG) as f:
        config = {**json.load(f), "zero_optimization": {"stage": 0}, "bf16": {"enabled": True}}
    path = tmp_path / "bf16_stage0.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "run"
    assert_ok(run_pretrain(pretrain_args(assets["corpus"], assets["tokenizer"], str(out), assets["cache"], max_steps=6,
                                   config=str(path))))
    exported = load_file(str(out / "hf_model" / "model.safetensors"))
    (states,) = glob.glob(str(out / "checkpoints" / "step6" / "*model_states.pt"))
    module = torch.load(states, map_location="cpu", weights_only=False)["module"]
    shared = [k for k in exported if k in module and module[k].is_floating_point()]
    assert len(shared) > 10 and all(module[k].dtype == torch.bfloat16 for k in shared)
    for key in shared:
        assert exported[key].dtype == torch.float32
        # The bf16 module weight is the master weight rounded to nearest.
        assert torch.equal(exported[key].bfloat16(), module[key]), key
    assert any(not torch.equal(exported[k], exported[k].bfloat16().float()) for k in shared), \
        "every exported weight is bf16-exact: the export upcast the bf16 module instead of the fp32 masters"


@pytest.mark.parametrize("wrapper", ["FP16_Optimizer", "FP16_UnfusedOptimizer"])
def test_fp16_export_without_zero_reads_the_masters_of_both_deepspeed_fp16_optimizers(wrapper):
    # DeepSpeed refuses fp16 on this CPU, so the two fp16 wrappers' layouts are stood in for:
    # FP16_Optimizer keeps one flat fp32 buffer per group, FP16_UnfusedOptimizer a list per group.
    import types

    import torch
    from torch._utils import _flatten_dense_tensors

    from mometas_ds.checkpoint.export import _stage0_fp32_state_dict

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    masters = {id(p): torch.randn(p.shape) for p in module.parameters()}
    module.half()  # the training copy: the masters rounded
    groups = [list(module[0].parameters()), list(module[1].parameters())]
    if wrapper == "FP16_Optimizer":
        optimizer = types.SimpleNamespace(fp16_groups=groups, fp32_groups_flat=[
            _flatten_dense_tensors([masters[id(p)] for p in group]) for group in groups])
    else:
        optimizer = types.SimpleNamespace(fp16_groups=groups,
                                          fp32_groups=[[masters[id(p)] for p in group] for group in groups])
    state = _stage0_fp32_state_dict(types.SimpleNamespace(module=module, optimizer=optimizer))
    for key, param in module.state_dict(keep_vars=True).items():
        assert state[key].dtype == torch.float32 and torch.equal(state[key], masters[id(param)]), key


def test_resume_takes_a_tag_here_or_a_checkpoint_path_where_it_is(tmp_path):
    from mometas_ds.checkpoint import COMPLETE_MARKER, find_resume_checkpoint
    from mometas_ds.config import ConfigError, PretrainConfig
    from mometas_ds.train.preflight import validate_config

    here, other = tmp_path / "run_b" / "checkpoints", tmp_path / "run_a" / "checkpoints"
    for root, tag in ((here, "step2"), (other, "step4"), (other, "step6")):
        (root / tag).mkdir(parents=True)
        (root / tag / COMPLETE_MARKER).write_text(tag[4:])
    (other / "step8").mkdir()  # a save that never finished

    assert find_resume_checkpoint(str(here), "auto") == (str(here), "step2")
    assert find_resume_checkpoint(str(here), "step2") == (str(here), "step2")
    assert find_resume_checkpoint(str(here), str(other / "step4")) == (str(other), "step4")
    assert find_resume_checkpoint(str(tmp_path / "empty"), "auto") is None
    for bad in ("step4", str(other / "step8")):
        with pytest.raises(ValueError, match="is not a complete checkpoint"):
            find_resume_checkpoint(str(here), bad)

    cfg = PretrainConfig(deepspeed_config=CPU_CONFIG, train_files=["x.jsonl"], model_config="tiny", train_tokenizer=100,
                         output_dir=str(tmp_path / "run_b"), resume=str(other / "step8"))
    with pytest.raises(ConfigError, match="--resume: .*step8 is not a complete checkpoint"):
        validate_config(cfg)


def test_resume_refuses_a_checkpoint_written_by_a_run_with_other_settings(tmp_path):
    """A resume that would mix two experiments (another objective order, sampler, model, seed, precision...)
    stops before any work, naming what differs; the same settings resume, and so does another number of
    ranks (tests/unit/train/test_elastic.py has the rest of what may change)."""
    from mometas_ds.checkpoint import COMPLETE_MARKER, LATEST_FILE, RUN_IDENTITY_FILE
    from mometas_ds.config import ConfigError, PretrainConfig
    from mometas_ds.train.preflight import check_world_size, validate_config
    from mometas_ds.train.identity import run_identity

    out = tmp_path / "run"
    tag_dir = out / "checkpoints" / "step6"
    tag_dir.mkdir(parents=True)
    written = PretrainConfig(deepspeed_config=CPU_CONFIG, train_files=["x.jsonl"], model_config="tiny",
                             train_tokenizer=100, output_dir=str(out), objectives=["mlm", "atd"])
    (tag_dir / RUN_IDENTITY_FILE).write_text(json.dumps(run_identity(written, validate_config(written), 2)))
    (tag_dir / COMPLETE_MARKER).write_text("6")
    (out / "checkpoints" / LATEST_FILE).write_text("step6")

    def resume(world_size=2, **changes):
        cfg = PretrainConfig(**{**written.__dict__, "resume": "auto", "max_steps": 500, **changes})
        check_world_size(cfg, validate_config(cfg), world_size)

    resume()  # the same settings; a longer schedule is fine
    resume(resume=str(tag_dir), save_steps=7, steps_this_run=3)
    with pytest.raises(ConfigError, match=r"--resume auto: checkpoint .*step6 was written by a run with other "
                                          r"settings: --objectives was \['mlm', 'atd'\], now \['atd', 'mlm'\]"):
        resume(objectives=["atd", "mlm"])
    with pytest.raises(ConfigError, match="--meta_lr was 0.1, now 0.5"):
        resume(meta_lr=0.5)
    with pytest.raises(ConfigError, match="--seed was 1234, now 1"):
        resume(seed=1)
    resume(world_size=1)  # another number of ranks resumes (issue 19: ZeRO 1-3 through the universal checkpoint)
    bf16, fp16 = tmp_path / "bf16.json", tmp_path / "fp16.json"
    with open(CPU_CONFIG) as f:
        base = json.load(f)
    bf16.write_text(json.dumps({**base, "bf16": {"enabled": True}}))
    fp16.write_text(json.dumps({**base, "fp16": {"enabled": True}}))
    resume(deepspeed_config=str(bf16))  # fp32 -> bf16 under ZeRO-2: through the universal checkpoint
    with pytest.raises(ConfigError, match=r"fp16.json: precision \(bf16/fp16\) was 'fp32', now 'fp16'"):
        resume(deepspeed_config=str(fp16))


def test_checkpoints_that_would_load_random_or_half_precision_weights(assets, tmp_path):
    """A checkpoint that lacks encoder weights (another architecture, other names) is refused instead of
    training from random weights; one saved in bf16 loads in fp32 like the fresh heads beside it."""
    import torch
    from transformers import BertForMaskedLM

    from mometas_ds.config import ConfigError, PretrainConfig

    from mometas_ds.train.preflight import validate_config
    from transformers import BertConfig

    from mometas_ds.model import MODEL_PRESETS, MultiObjectiveBert
    from mometas_ds.objectives import build_objective
    from mometas_ds.data.tokenizer import load_tokenizer, special_tokens_of

    tokenizer = load_tokenizer(assets["tokenizer"])
    objectives = {name: build_objective(name, special_tokens_of(tokenizer)) for name in ("mlm", "atd")}
    torch.manual_seed(2)
    hf = BertForMaskedLM(BertConfig(**MODEL_PRESETS["tiny"], vocab_size=len(tokenizer), max_position_embeddings=64))

    half = str(tmp_path / "bf16")
    hf.to(torch.bfloat16).save_pretrained(half)
    model = MultiObjectiveBert.from_pretrained(half, objectives)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert torch.equal(model.bert.embeddings.word_embeddings.weight,
                       hf.bert.embeddings.word_embeddings.weight.float())

    deeper = str(tmp_path / "deeper")  # config.json says 3 layers, the weights hold 2
    hf.save_pretrained(deeper)
    with open(os.path.join(deeper, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(deeper, "config.json"), "w") as f:
        json.dump({**config, "num_hidden_layers": 3}, f)
    with pytest.raises(ConfigError, match=r"--model_name_or_path .*deeper: \d+ encoder weight\(s\) are not in the "
                                          r"checkpoint \(e.g. bert.encoder.layer.2"):
        MultiObjectiveBert.from_pretrained(deeper, objectives)

    other = str(tmp_path / "roberta")
    os.makedirs(other)
    with open(os.path.join(other, "config.json"), "w") as f:
        json.dump({**config, "model_type": "roberta"}, f)
    cfg = PretrainConfig(deepspeed_config=CPU_CONFIG, train_files=["x.jsonl"], model_name_or_path=other,
                         tokenizer=assets["tokenizer"])
    with pytest.raises(ConfigError, match="--model_name_or_path: .*roberta holds a 'roberta' model"):
        validate_config(cfg)


def test_save_total_limit_keeps_the_newest_complete_checkpoints(tmp_path):
    from mometas_ds.checkpoint import COMPLETE_MARKER, LATEST_FILE, prune

    root = tmp_path / "checkpoints"
    for step in (2, 4, 5, 6, 8, 12):
        (root / f"step{step}").mkdir(parents=True)
        (root / f"step{step}" / "shard.pt").write_text("x")
        if step not in (5, 12):  # 5: a save a kill interrupted; 12: one from before a restart at step 8
            (root / f"step{step}" / COMPLETE_MARKER).write_text(str(step))
    (root / LATEST_FILE).write_text("step8")
    assert prune(str(root), keep=2) == ["step2", "step4", "step5"]
    assert sorted(os.listdir(root)) == [LATEST_FILE, "step12", "step6", "step8"]
    assert prune(str(root), keep=2) == []
    (root / LATEST_FILE).write_text("step6")  # latest_complete is never deleted, even beyond the limit
    assert prune(str(root), keep=1) == []
    assert prune(str(tmp_path / "none"), keep=1) == []


@pytest.mark.integration
def test_resume_with_gradient_accumulation_is_exact(assets, tmp_path):
    """Two micro-batches per optimizer step: a stop and resume mid-schedule logs the same objectives,
    losses and micro-batch trace as the uninterrupted run."""
    with open(CPU_CONFIG) as f:
        config = {**json.load(f), "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}
    config_path = str(tmp_path / "gas2.json")
    with open(config_path, "w") as f:
        json.dump(config, f)
    full_dir, part_dir = str(tmp_path / "full"), str(tmp_path / "part")
    steps = 12

    def args(out, *extra):
        return pretrain_args(assets["corpus"], assets["tokenizer"], out, assets["cache"], max_steps=steps,
                             config=config_path, extra=list(extra))

    assert_ok(run_pretrain(args(full_dir)))
    assert_ok(run_pretrain(args(part_dir, "--steps_this_run", "7")))
    assert_ok(run_pretrain(args(part_dir, "--resume")))
    full, part = (read_jsonl(os.path.join(d, "metrics.jsonl")) for d in (full_dir, part_dir))
    assert [m["step"] for m in part] == list(range(1, steps + 1))
    assert [(m["objective"], m["loss"]) for m in part] == [(m["objective"], m["loss"]) for m in full]
    trace = read_trace(full_dir, 0)
    assert len(trace) == 2 * steps and trace[0::2] == trace[1::2], "both micro-batches of a step train its objective"
    assert read_trace(part_dir, 0) == trace
