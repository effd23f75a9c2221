"""Flags and DeepSpeed configs (mometas_ds/config.py): what is checked, and the message naming the flag or
file, before any work starts."""
import glob
import json
import os
import subprocess
import sys

import pytest

from tests.pretrain_helpers import (
    CPU_CONFIG, REPO_ROOT, pretrain_args, run_pretrain, subprocess_env,
)


def test_every_ds_config_is_accepted_by_deepspeed():
    from deepspeed.runtime.config import DeepSpeedConfig

    from mometas_ds.config import PretrainConfig

    from mometas_ds.train.preflight import validate_config

    # finetune.json is transformers' Trainer config ("auto" values the Trainer fills in), not a pre-training one.
    paths = sorted(p for p in glob.glob(os.path.join(REPO_ROOT, "ds_configs", "*.json"))
                   if os.path.basename(p) != "finetune.json")
    names = {os.path.basename(p) for p in paths}
    assert {"bert_base_zero2.json", "bert_large_zero2.json", "bert_large_zero3_offload.json", "cpu_demo.json"} <= names
    for path in paths:
        parsed = DeepSpeedConfig(path)
        assert parsed.train_micro_batch_size_per_gpu >= 1
        cfg = PretrainConfig(deepspeed_config=path, train_files=["x.jsonl"], model_config="tiny", train_tokenizer=100)
        assert validate_config(cfg)["zero_optimization"]["stage"] == parsed.zero_optimization_stage


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
    from mometas_ds.config import ConfigError, PretrainConfig
    from mometas_ds.train.preflight import check_world_size, validate_config

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
    short.write_text('{"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, '
                     '"max_position_embeddings": 64}')
    check(micro8, model_config=str(short), seq_len=64)
    with pytest.raises(ConfigError,
                       match=r"--seq_len: 128 exceeds the max_position_embeddings \(64\) of --model_config"):
        check(micro8, model_config=str(short), seq_len=128)
    roberta = tmp_path / "roberta.json"
    roberta.write_text('{"model_type": "roberta", "hidden_size": 64}')
    with pytest.raises(ConfigError, match="--model_config: .*roberta.json is a 'roberta' config"):
        check(micro8, model_config=str(roberta))
    small_vocab = tmp_path / "small_vocab.json"
    small_vocab.write_text('{"hidden_size": 64, "vocab_size": 50}')
    from mometas_ds.model_config_check import check_tokenizer_fits_model

    check_tokenizer_fits_model(config(micro8, model_config=str(small_vocab)), 50)
    with pytest.raises(ConfigError,
                       match="--model_config: the tokenizer has 51 tokens but the embeddings of .*small_vocab"):
        check_tokenizer_fits_model(config(micro8, model_config=str(small_vocab)), 51)

    # Whatever deepspeed.initialize would reject stops the run here, naming the file (and DeepSpeed's key).
    with pytest.raises(ConfigError, match="ds.json: optimizer.type 'AdamWW' is neither a DeepSpeed optimizer"):
        check({**micro8, "optimizer": {"type": "AdamWW"}})
    check({**micro8, "optimizer": {"type": "SGD", "params": {"lr": 0.1}}})  # DeepSpeed takes torch.optim classes
    with pytest.raises(ConfigError, match="(?s)ds.json: DeepSpeed rejects this config: .*stage"):
        check({**micro8, "zero_optimization": {"stage": 4}})
    with pytest.raises(ConfigError, match="--setup_timeout_minutes: must be a finite number > 0"):
        check(micro8, setup_timeout_minutes=float("nan"))
    with pytest.raises(ConfigError, match="--shard_size_mb: must be a finite number >= 0.001, got 0"):
        check(micro8, shard_size_mb=0.0)
    with pytest.raises(ConfigError, match="--shard_size_mb: must be a finite number >= 0.001, got 1e-07"):
        check(micro8, shard_size_mb=1e-7)
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


@pytest.mark.parametrize("flag", ["meta_lr", "meta_gamma", "dist_timeout_minutes", "shard_size_mb"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_float_flags_must_be_finite_and_the_message_names_the_flag(flag, value):
    from mometas_ds.config import ConfigError, PretrainConfig
    from mometas_ds.train.preflight import validate_config

    cfg = PretrainConfig(deepspeed_config=CPU_CONFIG, train_files=["x.jsonl"], model_config="tiny",
                         train_tokenizer=100, **{flag: value})
    with pytest.raises(ConfigError, match=f"^--{flag}: must be a finite number"):
        validate_config(cfg)


@pytest.mark.integration  # starts mometas-pretrain processes
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


@pytest.mark.integration  # starts mometas-pretrain processes
def test_tokenizer_that_cannot_serve_ends_like_a_bad_flag(assets, tmp_path):
    """A --tokenizer that does not load, or lacks [MASK], ends as docs/pretraining.md promises a bad flag ends."""
    from transformers import PreTrainedTokenizerFast

    from mometas_ds.data.tokenizer import load_tokenizer

    vocab_only = tmp_path / "vocab_only"  # no tokenizer_config.json: AutoTokenizer cannot tell the class
    vocab_only.mkdir()
    (vocab_only / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\n")
    no_mask = str(tmp_path / "no_mask")
    PreTrainedTokenizerFast(tokenizer_object=load_tokenizer(assets["tokenizer"]).backend_tokenizer, pad_token="[PAD]",
                            cls_token="[CLS]", sep_token="[SEP]", unk_token="[UNK]").save_pretrained(no_mask)
    for tokenizer, cause in ((str(vocab_only), "could not load a tokenizer"), (no_mask, "has no mask token")):
        result = run_pretrain(pretrain_args(assets["corpus"], tokenizer, str(tmp_path / "out"), assets["cache"]))
        assert result.returncode == 2, result.stderr[-3000:]
        assert "mometas-pretrain: error: --tokenizer: " in result.stderr and cause in result.stderr, \
            result.stderr[-3000:]
        assert "Traceback" not in result.stderr


# A fresh interpreter: mometas-pretrain's command line answers --help and a bad flag, then says which of the heavy
# libraries it had imported by then (the parser is built from config.settings and config.cli only).
_LIGHT_PARSER_PROBE = r"""
import contextlib, io, json, sys
from mometas_ds.pretrain import main
codes, errors = [], []
for argv in (["--help"], ["--deepspeed_config", "x.json", "--train_files", "a.jsonl", "--max_steps", "x"]):
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exc:
            codes.append(exc.code)
    errors.append(err.getvalue().strip().splitlines()[-1:])
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "transformers", "deepspeed", "datasets", "numpy"})
checks = "mometas_ds.train.preflight" in sys.modules
print(json.dumps({"codes": codes, "errors": errors, "heavy": heavy, "checks": checks}))
"""


def test_help_and_a_bad_flag_import_no_torch_transformers_or_deepspeed():
    done = subprocess.run([sys.executable, "-c", _LIGHT_PARSER_PROBE], env=subprocess_env(), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["codes"] == [0, 2]
    assert found["errors"][1] == ["mometas-pretrain: error: argument --max_steps: invalid int value: 'x'"]
    assert found["heavy"] == [] and found["checks"] is False, found


def test_the_light_copies_of_the_flag_choices_match_the_code_that_uses_them():
    from mometas_ds import checkpoint, model, objectives
    from mometas_ds.config import choices

    assert choices.VERIFY_LEVELS is checkpoint.VERIFY_LEVELS
    assert model.MODEL_PRESETS is choices.MODEL_PRESETS
    assert objectives.DEFAULT_OBJECTIVES == tuple(objectives.available_objectives()[:5])
