"""Real pre-training runs on the CPU: 1 rank and 2 ranks (ZeRO-2, ZeRO-3), exact resume, outputs, bad config."""
import glob
import json
import math
import os
import struct
import subprocess
import sys

import pytest

from tests.pretrain_helpers import (
    CPU_CONFIG, REPO_ROOT, make_corpus_and_tokenizer, pretrain_args, read_jsonl, read_trace, run_pretrain,
    subprocess_env,
)

OBJECTIVES = ["mlm", "gmlm", "atd", "dtd", "cse"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pretrain_assets"))
    corpus, tokenizer_dir = make_corpus_and_tokenizer(root)
    return {"root": root, "corpus": corpus, "tokenizer": tokenizer_dir, "cache": os.path.join(root, "cache")}


def _ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\nSTDOUT:\n{result.stdout[-3000:]}\nSTDERR:\n{result.stderr[-6000:]}"


def test_every_ds_config_is_accepted_by_deepspeed():
    from deepspeed.runtime.config import DeepSpeedConfig

    from mometas_ds.config import PretrainConfig, validate_config

    paths = sorted(glob.glob(os.path.join(REPO_ROOT, "ds_configs", "*.json")))
    names = {os.path.basename(p) for p in paths}
    assert {"bert_base_zero2.json", "bert_large_zero2.json", "bert_large_zero3_offload.json", "cpu_demo.json"} <= names
    for path in paths:
        parsed = DeepSpeedConfig(path)
        assert parsed.train_micro_batch_size_per_gpu >= 1
        cfg = PretrainConfig(deepspeed_config=path, train_files=["x.jsonl"], model_config="tiny", train_tokenizer=100)
        assert validate_config(cfg)["zero_optimization"]["stage"] == parsed.zero_optimization_stage


def test_single_rank_run_outputs_and_exact_resume(assets, tmp_path):
    full_dir, part_dir = str(tmp_path / "full"), str(tmp_path / "part")
    # A corpus with bad lines: they are skipped and counted, the run goes on.
    corpus = str(tmp_path / "with_bad_lines.jsonl")
    with open(assets["corpus"], encoding="utf-8") as src, open(corpus, "w", encoding="utf-8") as dst:
        lines = src.readlines()
        dst.writelines(lines[:100])
        dst.write("{not json\n")
        dst.write('{"title": "no text field"}\n')
        dst.writelines(lines[100:])
    steps = 30
    full_run = run_pretrain(pretrain_args(corpus, assets["tokenizer"], full_dir, assets["cache"], max_steps=steps,
                                          extra=["--save_steps", "10", "--save_total_limit", "2"]))
    _ok(full_run)
    # Saves at steps 10, 20, 30; --save_total_limit 2 deleted the oldest after the last one.
    assert sorted(name for name in os.listdir(os.path.join(full_dir, "checkpoints")) if name.startswith("step")) == \
        ["step20", "step30"]
    assert "deleted checkpoint(s) step10 (--save_total_limit 2)" in full_run.stderr + full_run.stdout
    first = run_pretrain(pretrain_args(corpus, assets["tokenizer"], part_dir, assets["cache"], max_steps=steps,
                                       extra=["--steps_this_run", "13"]))
    _ok(first)
    assert "malformed_json" in first.stderr + first.stdout and "with_bad_lines.jsonl:101" in first.stderr + first.stdout
    assert not os.path.exists(os.path.join(part_dir, "hf_model")), "a partial run must not export"
    second = run_pretrain(pretrain_args(corpus, assets["tokenizer"], part_dir, assets["cache"], max_steps=steps,
                                        extra=["--resume"]))
    _ok(second)
    assert "reusing tokenized cache" in second.stderr + second.stdout
    assert "resumed from" in second.stderr + second.stdout
    # Starting over in a finished run's directory without --resume would overwrite it: refused up front.
    again = run_pretrain(pretrain_args(corpus, assets["tokenizer"], part_dir, assets["cache"], max_steps=steps))
    assert again.returncode == 2
    assert f"--resume: {part_dir} holds checkpoint step{steps} of an earlier run" in again.stderr
    # Resuming the finished run trains nothing and leaves its final checkpoint as it was (no re-save).
    final_tag = os.path.join(part_dir, "checkpoints", f"step{steps}")
    with open(os.path.join(final_tag, "run_identity.json")) as f:
        assert json.load(f)["--objectives"] == list(OBJECTIVES)
    before = {name: os.stat(os.path.join(final_tag, name)).st_mtime_ns for name in os.listdir(final_tag)}
    done_again = run_pretrain(pretrain_args(corpus, assets["tokenizer"], part_dir, assets["cache"], max_steps=steps,
                                            extra=["--resume"]))
    _ok(done_again)
    assert f"nothing to train: the run is at step {steps}, --max_steps {steps}" in done_again.stderr + done_again.stdout
    assert {name: os.stat(os.path.join(final_tag, name)).st_mtime_ns for name in os.listdir(final_tag)} == before

    full = read_jsonl(os.path.join(full_dir, "metrics.jsonl"))
    part = read_jsonl(os.path.join(part_dir, "metrics.jsonl"))
    assert [m["step"] for m in full] == list(range(1, steps + 1))
    assert [m["step"] for m in part] == list(range(1, steps + 1))
    # After the restart the drawn objectives and the logged losses equal the uninterrupted run's.
    assert [m["objective"] for m in part] == [m["objective"] for m in full]
    assert [m["loss"] for m in part] == [m["loss"] for m in full]
    assert read_trace(part_dir, 0) == read_trace(full_dir, 0)
    assert set(read_trace(full_dir, 0)) == set(OBJECTIVES), "every objective is drawn"
    for m in full:
        assert set(m) >= {"step", "objective", "loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s"}
        assert m["samples_per_s"] > 0 and m["tokens_per_s"] > 0

    updates_full = read_jsonl(os.path.join(full_dir, "sampler.jsonl"))
    updates_part = read_jsonl(os.path.join(part_dir, "sampler.jsonl"))
    assert [u["step"] for u in updates_full] == list(range(0, steps + 1, 5))
    assert updates_full[0]["reward"] is None and all(u["reward"] is not None for u in updates_full[1:])
    assert [u["probs"] for u in updates_part] == [u["probs"] for u in updates_full]
    assert updates_full[-1]["probs"] != updates_full[0]["probs"], "the policy moved"
    assert set(updates_full[0]["val_losses"]) == set(OBJECTIVES)

    # The exported encoder loads with plain transformers, weights equal to the checkpoint's.
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(os.path.join(full_dir, "hf_model"))
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(full_dir, "hf_model"))
    enc = tokenizer(["the river flows north"], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    assert hidden.shape[-1] == model.config.hidden_size and torch.isfinite(hidden).all()
    part_model = AutoModel.from_pretrained(os.path.join(part_dir, "hf_model"))
    for (name, a), (_, b) in zip(model.state_dict().items(), part_model.state_dict().items()):
        assert torch.equal(a, b), name

    # mometas-plot renders the real run.
    from mometas_ds.plot import plot_run

    figures = plot_run(full_dir)
    assert {os.path.basename(p) for p in figures} == {"sampling_probs.png", "meta_val_loss.png", "reward.png", "train_loss.png"}
    for path in figures:
        with open(path, "rb") as f:
            head = f.read(24)
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        assert struct.unpack(">II", head[16:24]) == (800, 450)


def test_a_run_trains_its_tokenizer_once_and_a_resume_reuses_it(assets, tmp_path):
    out = str(tmp_path / "own_tokenizer")
    args = pretrain_args(assets["corpus"], assets["tokenizer"], out, str(tmp_path / "cache"), max_steps=6)
    at = args.index("--tokenizer")
    args[at:at + 2] = ["--train_tokenizer", "300"]
    first = run_pretrain(args + ["--steps_this_run", "3"])
    _ok(first)
    tokenizer_json = os.path.join(out, "tokenizer", "tokenizer.json")
    with open(tokenizer_json, "rb") as f:
        trained = f.read()
    size = len(json.loads(trained)["model"]["vocab"])
    assert 50 < size <= 300
    assert f"trained a tokenizer of {size} tokens (asked for at most 300)" in first.stderr + first.stdout

    second = run_pretrain(args + ["--resume"])
    _ok(second)
    assert "trained a tokenizer" not in second.stderr + second.stdout
    with open(tokenizer_json, "rb") as f:
        assert f.read() == trained, "the resumed run must keep the tokenizer its checkpoint was trained with"
    with open(os.path.join(out, "hf_model", "config.json")) as f:
        assert json.load(f)["vocab_size"] == size


def test_zero3_gives_the_heads_a_step_did_not_use_zero_gradients(assets, tmp_path):
    # Each step trains one objective's head. ZeRO-3 keeps gradient partitions in a buffer that only a
    # parameter's own backward overwrites, so the other heads handed the optimizer (and the clipping
    # norm) their last gradient again; ZeRO-2 gives them zeros. Every stage must train the same model.
    with open(CPU_CONFIG) as f:
        base = json.load(f)
    losses = {}
    for name, zero in (("zero2", {"stage": 2}), ("zero3", {"stage": 3}),
                       ("zero3_offload", {"stage": 3, "offload_optimizer": {"device": "cpu"}})):
        config = tmp_path / f"{name}.json"
        config.write_text(json.dumps({**base, "zero_optimization": zero}))
        out, record = tmp_path / name, tmp_path / f"{name}_grads.json"
        args = pretrain_args(assets["corpus"], assets["tokenizer"], str(out), assets["cache"], max_steps=8,
                             config=str(config))
        _ok(subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tests", "step_grads_probe.py"), str(record), *args],
                           env=subprocess_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300))
        steps = json.loads(record.read_text())
        assert len(steps) == 8 and len({s["head"] for s in steps}) >= 3, "the steps switched heads"
        for s in steps:
            norms = s["head_grad_norms"]
            assert norms[s["head"]] > 0, s
            assert all(norm == 0 for head, norm in norms.items() if head != s["head"]), (name, s)
        losses[name] = [m["loss"] for m in read_jsonl(str(out / "metrics.jsonl"))]
    for name in ("zero3", "zero3_offload"):
        assert losses[name] == pytest.approx(losses["zero2"], rel=1e-5), name


def test_zeroing_idle_heads_spares_a_module_the_trained_head_shares(monkeypatch):
    import types

    import deepspeed.utils
    import torch

    from mometas_ds.trainer import Trainer

    shared = torch.nn.Linear(2, 2)
    heads = torch.nn.ModuleDict({"a": torch.nn.Sequential(shared), "b": torch.nn.Sequential(shared, torch.nn.Linear(2, 3)),
                                 "c": torch.nn.Linear(2, 2)})
    for param in heads.parameters():
        param.ds_tensor = param.data  # what ZeRO-3 attaches: this rank's partition
    zeroed = []
    monkeypatch.setattr(deepspeed.utils, "safe_set_local_grad", lambda param, value: zeroed.append(param))
    fake = types.SimpleNamespace(model=types.SimpleNamespace(heads=heads),
                                 objectives={"x": types.SimpleNamespace(head_name="a")})
    Trainer._zero_unused_head_grads(fake, "x")
    expected = list(heads["b"][1].parameters()) + list(heads["c"].parameters())
    assert {id(p) for p in zeroed} == {id(p) for p in expected} and len(zeroed) == len(expected)


@pytest.mark.parametrize("stage", [0, 3])  # ZeRO-2, the CPU config's, runs on 2 ranks in test_faults and test_cluster
def test_two_ranks_draw_the_same_objectives(assets, tmp_path, stage):
    with open(CPU_CONFIG) as f:
        ds_config = json.load(f)
    ds_config["zero_optimization"] = {"stage": stage}
    if stage == 3:
        ds_config["bf16"] = {"enabled": True}
        # Gradient accumulation: the same tokens per step in two micro-batches, one objective per step.
        ds_config["train_micro_batch_size_per_gpu"] = ds_config["train_micro_batch_size_per_gpu"] // 2
        ds_config["gradient_accumulation_steps"] = 2
    else:
        # LAMB, which needs ZeRO off (a torch LAMB on the CPU), and DeepSpeed's CSV monitor.
        ds_config["optimizer"] = {"type": "Lamb", "params": {"lr": 2e-3, "weight_decay": 0.01}}
        ds_config["csv_monitor"] = {"enabled": True, "output_path": str(tmp_path / "monitor"), "job_name": "run"}
    config_path = str(tmp_path / f"zero{stage}.json")
    with open(config_path, "w") as f:
        json.dump(ds_config, f)
    out = str(tmp_path / "run")
    result = run_pretrain(pretrain_args(assets["corpus"], assets["tokenizer"], out, assets["cache"], max_steps=24,
                                        config=config_path), ranks=2)
    _ok(result)
    rank0, rank1 = read_trace(out, 0), read_trace(out, 1)
    gas = ds_config["gradient_accumulation_steps"]
    assert len(rank0) == 24 * gas and rank0 == rank1
    assert set(rank0) == set(OBJECTIVES)
    per_step = [rank0[i:i + gas] for i in range(0, len(rank0), gas)]
    assert all(len(set(names)) == 1 for names in per_step), per_step
    logged = [m["objective"] for m in read_jsonl(os.path.join(out, "metrics.jsonl"))]
    assert logged == [names[0] for names in per_step]
    assert os.path.isfile(os.path.join(out, "checkpoints", "step24", "COMPLETE"))
    assert os.path.isfile(os.path.join(out, "hf_model", "config.json"))
    updates = read_jsonl(os.path.join(out, "sampler.jsonl"))
    assert len(updates) == 1 + 24 // 5 and all(abs(sum(u["probs"].values()) - 1) < 1e-9 for u in updates)
    losses = [m["loss"] for m in read_jsonl(os.path.join(out, "metrics.jsonl"))]
    assert all(map(math.isfinite, losses))
    if stage == 0:
        assert "torch LAMB" in result.stderr + result.stdout
        monitor_files = glob.glob(str(tmp_path / "monitor" / "**" / "*.csv"), recursive=True)
        names = " ".join(os.path.basename(f) for f in monitor_files)
        assert "loss" in names and "p_mlm" in names, monitor_files


@pytest.mark.parametrize("flags, field", [
    (["--objectives", "mlm,nope"], "--objectives"),
    (["--meta_interval", "0"], "--meta_interval"),
    (["--sampler", "nope"], "--sampler"),
    (["--model_config", "huge"], "--model_config"),
])
def test_bad_flags_stop_before_any_work(assets, tmp_path, flags, field, capsys):
    from mometas_ds.pretrain import main

    out = str(tmp_path / "never")
    args = pretrain_args(assets["corpus"], assets["tokenizer"], out, assets["cache"])
    for i in range(0, len(flags), 2):
        if flags[i] in args:
            args[args.index(flags[i]) + 1] = flags[i + 1]
        else:
            args += flags[i:i + 2]
    assert main(args) == 2
    assert field in capsys.readouterr().err
    assert not os.path.exists(out), "nothing is written before the flags are checked"


def test_batch_keys_optimizer_sampler_args_and_objective_rows_are_checked_before_work(tmp_path):
    from mometas_ds.config import ConfigError, PretrainConfig, check_world_size, validate_config

    def config(ds_config, **flags):
        path = tmp_path / "ds.json"
        path.write_text(json.dumps(ds_config))
        return PretrainConfig(**{"deepspeed_config": str(path), "train_files": ["x.jsonl"], "model_config": "tiny",
                                 "train_tokenizer": 100, **flags})

    def check(ds_config, world_size=1, **flags):
        cfg = config(ds_config, **flags)
        check_world_size(cfg, validate_config(cfg), world_size)

    # Any two of DeepSpeed's batch keys: the third is inferred, and must come out whole.
    check({"train_batch_size": 256, "train_micro_batch_size_per_gpu": 32}, world_size=4)
    check({"train_batch_size": 256, "gradient_accumulation_steps": 2}, world_size=4)
    check({"train_batch_size": 256}, world_size=4)
    with pytest.raises(ConfigError, match="train_batch_size=100 is not a multiple.*cannot be inferred"):
        check({"train_batch_size": 100, "train_micro_batch_size_per_gpu": 32}, world_size=4)
    with pytest.raises(ConfigError, match="train_batch_size=6"):
        check({"train_batch_size": 6}, world_size=4)

    micro8 = {"train_micro_batch_size_per_gpu": 8}
    with pytest.raises(ConfigError, match="ds.json: optimizer.type Lamb with zero_optimization.stage 2"):
        check({**micro8, "optimizer": {"type": "Lamb"}, "zero_optimization": {"stage": 2}})
    check({**micro8, "optimizer": {"type": "Lamb"}, "zero_optimization": {"stage": 0}})

    with pytest.raises(ConfigError, match="--sampler_args: .*one weight per objective"):
        check(micro8, sampler="fixed", sampler_args={"weights": [1, 2]})
    with pytest.raises(ConfigError, match="--sampler_args: .*unknown option"):
        check(micro8, sampler_args={"bogus": 1})
    # The policy's lr and gamma have their own flags; a second way to set them would silently lose one.
    with pytest.raises(ConfigError, match="--sampler_args: 'lr' is set by --meta_lr"):
        check(micro8, sampler_args={"lr": 0.7}, meta_lr=0.3)
    with pytest.raises(ConfigError, match="--sampler_args: 'gamma' is set by --meta_gamma"):
        check(micro8, sampler_args={"gamma": 1.0})
    from mometas_ds.config import sampler_kwargs
    assert sampler_kwargs(config(micro8, meta_lr=0.3, meta_gamma=0.5)) == {"lr": 0.3, "gamma": 0.5}

    broken = tmp_path / "bert.json"
    broken.write_text('{"hidden_size": 64,')
    with pytest.raises(ConfigError, match="--model_config: cannot read .*bert.json"):
        check(micro8, model_config=str(broken))
    short = tmp_path / "short.json"
    short.write_text('{"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 64}')
    check(micro8, model_config=str(short), seq_len=64)
    with pytest.raises(ConfigError, match=r"--seq_len: 128 exceeds the max_position_embeddings \(64\) of --model_config"):
        check(micro8, model_config=str(short), seq_len=128)
    roberta = tmp_path / "roberta.json"
    roberta.write_text('{"model_type": "roberta", "hidden_size": 64}')
    with pytest.raises(ConfigError, match="--model_config: .*roberta.json is a 'roberta' config"):
        check(micro8, model_config=str(roberta))
    small_vocab = tmp_path / "small_vocab.json"
    small_vocab.write_text('{"hidden_size": 64, "vocab_size": 50}')
    from mometas_ds.config import check_tokenizer_fits_model

    check_tokenizer_fits_model(config(micro8, model_config=str(small_vocab)), 50)
    with pytest.raises(ConfigError, match="--model_config: the tokenizer has 51 tokens but the embeddings of .*small_vocab"):
        check_tokenizer_fits_model(config(micro8, model_config=str(small_vocab)), 51)

    # Whatever deepspeed.initialize would reject stops the run here, naming the file (and DeepSpeed's key).
    with pytest.raises(ConfigError, match="ds.json: optimizer.type 'AdamWW' is neither a DeepSpeed optimizer"):
        check({**micro8, "optimizer": {"type": "AdamWW"}})
    check({**micro8, "optimizer": {"type": "SGD", "params": {"lr": 0.1}}})  # DeepSpeed takes torch.optim classes
    with pytest.raises(ConfigError, match="(?s)ds.json: DeepSpeed rejects this config: .*stage"):
        check({**micro8, "zero_optimization": {"stage": 4}})
    with pytest.raises(ConfigError, match="--setup_timeout_minutes: must be a finite number > 0"):
        check(micro8, setup_timeout_minutes=float("nan"))
    with pytest.raises(ConfigError, match="--save_total_limit: must be >= 1, got 0"):
        check(micro8, save_total_limit=0)
    with pytest.raises(ConfigError, match="ds.json: checkpoint.writer / datastates_ckpt .* not supported"):
        check({**micro8, "checkpoint": {"writer": {"decoupled": True}}})

    # cse contrasts the rows of one forward: one row per micro-batch or per rank's meta share is refused.
    with pytest.raises(ConfigError, match="train_micro_batch_size_per_gpu=1, but objective cse needs at least 2"):
        check({"train_micro_batch_size_per_gpu": 1})
    check({"train_micro_batch_size_per_gpu": 1}, objectives=["mlm", "atd"])
    with pytest.raises(ConfigError, match="--meta_batch_size: 2 over 2 rank"):
        check(micro8, world_size=2, meta_batch_size=2)


@pytest.mark.parametrize("flag", ["meta_lr", "meta_gamma", "dist_timeout_minutes"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_float_flags_must_be_finite_and_the_message_names_the_flag(flag, value):
    from mometas_ds.config import ConfigError, PretrainConfig, validate_config

    cfg = PretrainConfig(deepspeed_config=CPU_CONFIG, train_files=["x.jsonl"], model_config="tiny",
                         train_tokenizer=100, **{flag: value})
    with pytest.raises(ConfigError, match=f"^--{flag}: must be a finite number"):
        validate_config(cfg)


def test_missing_tokenizer_and_bad_batch_config(assets, tmp_path, capsys):
    from mometas_ds.pretrain import main

    out = str(tmp_path / "never")
    args = pretrain_args(assets["corpus"], assets["tokenizer"], out, assets["cache"])
    no_tok = args[:args.index("--tokenizer")] + args[args.index("--tokenizer") + 2:]
    assert main(no_tok) == 2
    assert "--tokenizer" in capsys.readouterr().err

    with open(CPU_CONFIG) as f:
        ds_config = json.load(f)
    ds_config["train_batch_size"] = 7  # != micro 8 x accumulation 1 x 1 rank
    bad = str(tmp_path / "bad.json")
    with open(bad, "w") as f:
        json.dump(ds_config, f)
    result = run_pretrain(pretrain_args(assets["corpus"], assets["tokenizer"], out, assets["cache"], config=bad))
    assert result.returncode == 2
    assert "train_batch_size" in result.stderr and "bad.json" in result.stderr
    assert not os.path.exists(os.path.join(out, "checkpoints"))


def test_tokenizer_that_cannot_serve_ends_like_a_bad_flag(assets, tmp_path):
    """A --tokenizer that does not load, or lacks [MASK], ends as the README promises a bad flag ends."""
    from transformers import PreTrainedTokenizerFast

    from mometas_ds.tokenizer import load_tokenizer

    vocab_only = tmp_path / "vocab_only"  # no tokenizer_config.json: AutoTokenizer cannot tell the class
    vocab_only.mkdir()
    (vocab_only / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\n")
    no_mask = str(tmp_path / "no_mask")
    PreTrainedTokenizerFast(tokenizer_object=load_tokenizer(assets["tokenizer"]).backend_tokenizer, pad_token="[PAD]",
                            cls_token="[CLS]", sep_token="[SEP]", unk_token="[UNK]").save_pretrained(no_mask)
    for tokenizer, cause in ((str(vocab_only), "could not load a tokenizer"), (no_mask, "has no mask token")):
        result = run_pretrain(pretrain_args(assets["corpus"], tokenizer, str(tmp_path / "out"), assets["cache"]))
        assert result.returncode == 2, result.stderr[-3000:]
        assert "mometas-pretrain: error: --tokenizer: " in result.stderr and cause in result.stderr, result.stderr[-3000:]
        assert "Traceback" not in result.stderr


def test_corpus_without_usable_documents_stops_at_start(assets, tmp_path):
    corpus = str(tmp_path / "bad.jsonl")
    with open(corpus, "w") as f:
        f.write("{broken\n" + json.dumps({"text": "x"}) + "\n" + json.dumps({"other": "y"}) + "\n")
    out = str(tmp_path / "run")
    result = run_pretrain(pretrain_args(corpus, assets["tokenizer"], out, str(tmp_path / "cache")))
    assert result.returncode == 2
    assert "bad.jsonl" in result.stderr and "no usable" in result.stderr.lower()
    assert not os.path.exists(os.path.join(out, "metrics.jsonl"))
    # A corpus without any text cannot train a tokenizer either: the same clean stop, not a traceback.
    with open(corpus, "w") as f:
        f.write("{broken\n" + json.dumps({"other": "y"}) + "\n")
    args = pretrain_args(corpus, assets["tokenizer"], str(tmp_path / "run2"), str(tmp_path / "cache"))
    i = args.index("--tokenizer")
    args[i:i + 2] = ["--train_tokenizer", "100"]
    result = run_pretrain(args)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "mometas-pretrain: error: cannot train a tokenizer: the corpus yielded no text" in result.stderr
    assert "Traceback" not in result.stderr


def test_hf_export_is_a_masked_lm_in_fp32_and_continual_pretraining_reloads_its_head(tmp_path):
    """BertForMaskedLM.from_pretrained gets every weight (its logits equal the mlm head's), AutoModel
    the encoder and the cse pooler, both in fp32 though DeepSpeed had cast the module to bf16; and
    --model_name_or_path on the export starts from the trained mlm head, not a fresh one."""
    import torch
    from transformers import AutoModel, BertForMaskedLM

    from mometas_ds.model import MultiObjectiveBert, build_bert_config
    from mometas_ds.objectives import SpecialTokens, build_objective

    special = SpecialTokens(pad_id=0, cls_id=1, sep_id=2, mask_id=3, vocab_size=60)
    objectives = {name: build_objective(name, special) for name in ("mlm", "atd", "cse")}
    torch.manual_seed(0)
    model = MultiObjectiveBert.from_config(build_bert_config("tiny", vocab_size=60, max_position_embeddings=32), objectives)
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
    _ok(run_pretrain(pretrain_args(assets["corpus"], assets["tokenizer"], str(out), assets["cache"], max_steps=6,
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

    from mometas_ds.checkpoint import _stage0_fp32_state_dict

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    masters = {id(p): torch.randn(p.shape) for p in module.parameters()}
    module.half()  # the training copy: the masters rounded
    groups = [list(module[0].parameters()), list(module[1].parameters())]
    if wrapper == "FP16_Optimizer":
        optimizer = types.SimpleNamespace(fp16_groups=groups, fp32_groups_flat=[
            _flatten_dense_tensors([masters[id(p)] for p in group]) for group in groups])
    else:
        optimizer = types.SimpleNamespace(fp16_groups=groups, fp32_groups=[[masters[id(p)] for p in group] for group in groups])
    state = _stage0_fp32_state_dict(types.SimpleNamespace(module=module, optimizer=optimizer))
    for key, param in module.state_dict(keep_vars=True).items():
        assert state[key].dtype == torch.float32 and torch.equal(state[key], masters[id(param)]), key


def test_resume_takes_a_tag_here_or_a_checkpoint_path_where_it_is(tmp_path):
    from mometas_ds.checkpoint import COMPLETE_MARKER, find_resume_checkpoint
    from mometas_ds.config import ConfigError, PretrainConfig, validate_config

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


def test_continual_pretraining_from_an_hf_checkpoint(assets, tmp_path, capsys):
    """--model_name_or_path: encoder, mlm head and tokenizer from a local checkpoint; a sequence
    length beyond its position embeddings, or a new vocabulary, stops the run before any work."""
    import torch
    from transformers import BertForMaskedLM

    from mometas_ds.model import MultiObjectiveBert, build_bert_config
    from mometas_ds.objectives import build_objective
    from mometas_ds.pretrain import main
    from mometas_ds.tokenizer import load_tokenizer, special_tokens_of

    tokenizer = load_tokenizer(assets["tokenizer"])
    objectives = {name: build_objective(name, special_tokens_of(tokenizer)) for name in OBJECTIVES}
    torch.manual_seed(1)
    config = build_bert_config("tiny", vocab_size=len(tokenizer), max_position_embeddings=40)
    start_dir = str(tmp_path / "checkpoint")
    MultiObjectiveBert.from_config(config, objectives).save_hf(start_dir, tokenizer)

    def continual_args(out, *extra):
        args = pretrain_args(assets["corpus"], assets["tokenizer"], out, assets["cache"], max_steps=4)
        for flag in ("--model_config", "--tokenizer"):
            i = args.index(flag)
            del args[i:i + 2]
        return args + ["--model_name_or_path", start_dir, *extra]

    out = str(tmp_path / "run")
    result = run_pretrain(continual_args(out))
    _ok(result)
    assert f"mlm head loaded from {start_dir}" in result.stderr + result.stdout
    before = BertForMaskedLM.from_pretrained(start_dir).state_dict()
    after = BertForMaskedLM.from_pretrained(os.path.join(out, "hf_model")).state_dict()
    assert before.keys() == after.keys()
    assert not torch.equal(before["cls.predictions.transform.dense.weight"], after["cls.predictions.transform.dense.weight"])

    never = str(tmp_path / "never")
    assert main(continual_args(never, "--seq_len", "64")) == 2
    assert "--seq_len: 64 exceeds the max_position_embeddings (40)" in capsys.readouterr().err
    assert main(continual_args(never, "--train_tokenizer", "100")) == 2
    assert "--train_tokenizer: a new vocabulary" in capsys.readouterr().err
    assert not os.path.exists(never)

    from mometas_ds.config import ConfigError, PretrainConfig, check_tokenizer_fits_model

    cfg = PretrainConfig(model_name_or_path=start_dir, tokenizer=assets["tokenizer"])
    check_tokenizer_fits_model(cfg, len(tokenizer))
    with pytest.raises(ConfigError, match=f"--tokenizer: the tokenizer has {len(tokenizer) + 1} tokens but the embeddings"):
        check_tokenizer_fits_model(cfg, len(tokenizer) + 1)


def test_resume_refuses_a_checkpoint_written_by_a_run_with_other_settings(tmp_path):
    """A resume that would mix two experiments (another objective order, sampler, model, seed, rank count,
    batch layout...) stops before any work, naming what differs; the same settings resume."""
    from mometas_ds.checkpoint import COMPLETE_MARKER, LATEST_FILE, RUN_IDENTITY_FILE
    from mometas_ds.config import ConfigError, PretrainConfig, check_world_size, run_identity, validate_config

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
    with pytest.raises(ConfigError, match="number of ranks was 2, now 1"):
        resume(world_size=1)
    bf16 = tmp_path / "bf16.json"
    with open(CPU_CONFIG) as f:
        bf16.write_text(json.dumps({**json.load(f), "bf16": {"enabled": True}}))
    with pytest.raises(ConfigError, match=r"bf16.json: precision \(bf16/fp16\) was 'fp32', now 'bf16'"):
        resume(deepspeed_config=str(bf16))


def test_checkpoints_that_would_load_random_or_half_precision_weights(assets, tmp_path):
    """A checkpoint that lacks encoder weights (another architecture, other names) is refused instead of
    training from random weights; one saved in bf16 loads in fp32 like the fresh heads beside it."""
    import torch
    from transformers import BertForMaskedLM

    from mometas_ds.config import ConfigError, PretrainConfig, validate_config
    from mometas_ds.model import MultiObjectiveBert, build_bert_config
    from mometas_ds.objectives import build_objective
    from mometas_ds.tokenizer import load_tokenizer, special_tokens_of

    tokenizer = load_tokenizer(assets["tokenizer"])
    objectives = {name: build_objective(name, special_tokens_of(tokenizer)) for name in ("mlm", "atd")}
    torch.manual_seed(2)
    hf = BertForMaskedLM(build_bert_config("tiny", vocab_size=len(tokenizer), max_position_embeddings=64))

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

    _ok(run_pretrain(args(full_dir)))
    _ok(run_pretrain(args(part_dir, "--steps_this_run", "7")))
    _ok(run_pretrain(args(part_dir, "--resume")))
    full, part = (read_jsonl(os.path.join(d, "metrics.jsonl")) for d in (full_dir, part_dir))
    assert [m["step"] for m in part] == list(range(1, steps + 1))
    assert [(m["objective"], m["loss"]) for m in part] == [(m["objective"], m["loss"]) for m in full]
    trace = read_trace(full_dir, 0)
    assert len(trace) == 2 * steps and trace[0::2] == trace[1::2], "both micro-batches of a step train its objective"
    assert read_trace(part_dir, 0) == trace
