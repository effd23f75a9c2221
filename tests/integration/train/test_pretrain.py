"""Real pre-training runs on the CPU: 1 rank and 2 ranks (ZeRO-2, ZeRO-3), outputs, exact resume, a run's own
tokenizer, continual pre-training, and corpora or tokenizers that stop a run at its start.

The `assets` fixture (tests/conftest.py) is a generated corpus and a tokenizer trained on it."""
import glob
import json
import math
import os
import struct
import subprocess
import sys

import pytest

from tests.pretrain_helpers import (
    CPU_CONFIG, OBJECTIVES, REPO_ROOT, assert_ok, pretrain_args, read_jsonl, read_trace, run_pretrain, subprocess_env,
)


@pytest.mark.integration
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
    assert_ok(full_run)
    # Saves at steps 10, 20, 30; --save_total_limit 2 deleted the oldest after the last one.
    assert sorted(name for name in os.listdir(os.path.join(full_dir, "checkpoints")) if name.startswith("step")) == \
        ["step20", "step30"]
    assert "deleted checkpoint(s) step10 (--save_total_limit 2)" in full_run.stderr + full_run.stdout
    first = run_pretrain(pretrain_args(corpus, assets["tokenizer"], part_dir, assets["cache"], max_steps=steps,
                                       extra=["--steps_this_run", "13"]))
    assert_ok(first)
    assert "malformed_json" in first.stderr + first.stdout and "with_bad_lines.jsonl:101" in first.stderr + first.stdout
    assert not os.path.exists(os.path.join(part_dir, "hf_model")), "a partial run must not export"
    second = run_pretrain(pretrain_args(corpus, assets["tokenizer"], part_dir, assets["cache"], max_steps=steps,
                                        extra=["--resume"]))
    assert_ok(second)
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
    assert_ok(done_again)
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
    assert {os.path.basename(p) for p in figures} == {"sampling_probs.png", "meta_val_loss.png", "reward.png",
                                                      "train_loss.png"}
    for path in figures:
        with open(path, "rb") as f:
            head = f.read(24)
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        assert struct.unpack(">II", head[16:24]) == (800, 450)


@pytest.mark.integration
def test_a_run_trains_its_tokenizer_once_and_a_resume_reuses_it(assets, tmp_path):
    out = str(tmp_path / "own_tokenizer")
    args = pretrain_args(assets["corpus"], assets["tokenizer"], out, str(tmp_path / "cache"), max_steps=6)
    at = args.index("--tokenizer")
    args[at:at + 2] = ["--train_tokenizer", "300"]
    first = run_pretrain(args + ["--steps_this_run", "3"])
    assert_ok(first)
    tokenizer_json = os.path.join(out, "tokenizer", "tokenizer.json")
    with open(tokenizer_json, "rb") as f:
        trained = f.read()
    size = len(json.loads(trained)["model"]["vocab"])
    assert 50 < size <= 300
    assert f"trained a tokenizer of {size} tokens (asked for at most 300)" in first.stderr + first.stdout

    second = run_pretrain(args + ["--resume"])
    assert_ok(second)
    assert "trained a tokenizer" not in second.stderr + second.stdout
    with open(tokenizer_json, "rb") as f:
        assert f.read() == trained, "the resumed run must keep the tokenizer its checkpoint was trained with"
    with open(os.path.join(out, "hf_model", "config.json")) as f:
        assert json.load(f)["vocab_size"] == size


@pytest.mark.integration
def test_two_runs_of_one_command_train_one_tokenizer_and_log_the_same_losses(assets, tmp_path):
    """--train_tokenizer with one --seed is one experiment: two runs in separate processes (own caches) train
    byte-identical tokenizers and log identical losses from step 1."""
    outs = [str(tmp_path / name) for name in ("first", "second")]
    for out in outs:
        args = pretrain_args(assets["corpus"], assets["tokenizer"], out, out + "_cache", max_steps=5)
        at = args.index("--tokenizer")
        args[at:at + 2] = ["--train_tokenizer", "300"]
        assert_ok(run_pretrain(args))
    tokenizers = [open(os.path.join(out, "tokenizer", "tokenizer.json"), "rb").read() for out in outs]
    assert tokenizers[0] == tokenizers[1]
    first, second = (read_jsonl(os.path.join(out, "metrics.jsonl")) for out in outs)
    assert [m["step"] for m in first] == list(range(1, 6))
    assert [(m["objective"], m["loss"]) for m in first] == [(m["objective"], m["loss"]) for m in second]


@pytest.mark.integration
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
        probe = os.path.join(REPO_ROOT, "tests", "step_grads_probe.py")
        assert_ok(subprocess.run([sys.executable, probe, str(record), *args],
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

    from mometas_ds.train.step import TrainStep

    shared = torch.nn.Linear(2, 2)
    heads = torch.nn.ModuleDict({"a": torch.nn.Sequential(shared),
                                 "b": torch.nn.Sequential(shared, torch.nn.Linear(2, 3)),
                                 "c": torch.nn.Linear(2, 2)})
    for param in heads.parameters():
        param.ds_tensor = param.data  # what ZeRO-3 attaches: this rank's partition
    zeroed = []
    monkeypatch.setattr(deepspeed.utils, "safe_set_local_grad", lambda param, value: zeroed.append(param))
    fake = types.SimpleNamespace(model=types.SimpleNamespace(heads=heads),
                                 objectives={"x": types.SimpleNamespace(head_name="a")})
    TrainStep._zero_unused_head_grads(fake, "x")
    expected = list(heads["b"][1].parameters()) + list(heads["c"].parameters())
    assert {id(p) for p in zeroed} == {id(p) for p in expected} and len(zeroed) == len(expected)


@pytest.mark.integration
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
    assert_ok(result)
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


@pytest.mark.integration  # starts mometas-pretrain processes
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


@pytest.mark.integration
def test_continual_pretraining_from_an_hf_checkpoint(assets, tmp_path, capsys):
    """--model_name_or_path: encoder, mlm head and tokenizer from a local checkpoint; a sequence
    length beyond its position embeddings, or a new vocabulary, stops the run before any work."""
    import torch
    from transformers import BertForMaskedLM

    from transformers import BertConfig

    from mometas_ds.model import MODEL_PRESETS, MultiObjectiveBert
    from mometas_ds.objectives import build_objective
    from mometas_ds.pretrain import main
    from mometas_ds.data.tokenizer import load_tokenizer, special_tokens_of

    tokenizer = load_tokenizer(assets["tokenizer"])
    objectives = {name: build_objective(name, special_tokens_of(tokenizer)) for name in OBJECTIVES}
    torch.manual_seed(1)
    config = BertConfig(**MODEL_PRESETS["tiny"], vocab_size=len(tokenizer), max_position_embeddings=40)
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
    assert_ok(result)
    loaded = next(line for line in (result.stderr + result.stdout).splitlines() if f"loaded from {start_dir}:" in line)
    assert "mlm head; starting fresh:" in loaded, loaded
    before = BertForMaskedLM.from_pretrained(start_dir).state_dict()
    after = BertForMaskedLM.from_pretrained(os.path.join(out, "hf_model")).state_dict()
    assert before.keys() == after.keys()
    dense = "cls.predictions.transform.dense.weight"
    assert not torch.equal(before[dense], after[dense])

    never = str(tmp_path / "never")
    assert main(continual_args(never, "--seq_len", "64")) == 2
    assert "--seq_len: 64 exceeds the max_position_embeddings (40)" in capsys.readouterr().err
    assert main(continual_args(never, "--train_tokenizer", "100")) == 2
    assert "--train_tokenizer: a new vocabulary" in capsys.readouterr().err
    assert not os.path.exists(never)

    from mometas_ds.config import ConfigError, PretrainConfig

    from mometas_ds.model_config_check import check_tokenizer_fits_model

    cfg = PretrainConfig(model_name_or_path=start_dir, tokenizer=assets["tokenizer"])
    check_tokenizer_fits_model(cfg, len(tokenizer))
    with pytest.raises(ConfigError,
                       match=f"--tokenizer: the tokenizer has {len(tokenizer) + 1} tokens but the embeddings"):
        check_tokenizer_fits_model(cfg, len(tokenizer) + 1)
