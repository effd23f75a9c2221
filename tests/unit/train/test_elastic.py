"""Phases and elasticity (issue 19, item 4): a resume with another --seq_len, batch shape or number of ranks keeps
the model, optimizer, scheduler, sampler and data position; what must match still stops the run.

Unit tests: the data-position arithmetic (samples, tokens), the run-identity relaxation, the seeded RNG of a
rank without a saved state, the universal copy's manifest and pruning. Integration: a run saved at seq 64 on
1 rank resumed at seq 128 on 2 ranks with another micro-batch, through DeepSpeed's universal checkpoint.
"""
import json
import os
import random

import datasets
import numpy as np
import pytest
import torch

from tests.pretrain_helpers import (
    CPU_CONFIG, REPO_ROOT, assert_ok, free_port, pretrain_args, read_jsonl, run_pretrain, subprocess_env,
)


def packed(num_rows, seq_len):
    """Row i holds the id i everywhere (a batch names its rows)."""
    return datasets.Dataset.from_dict({"input_ids": [[i] * seq_len for i in range(num_rows)],
                                       "attention_mask": [[1] * seq_len for _ in range(num_rows)]})


# ------------------------------------------------------------------------------------------- data position
def test_carry_position_in_samples_and_in_tokens():
    from mometas_ds.data.batches import carry_position

    # 5 steps of 2 ranks x 4 rows done in epoch 3: 40 samples of 64 tokens.
    state = {"epoch": 3, "offset": 5, "batch_size": 4, "world_size": 2, "num_rows": 400, "seq_len": 64,
             "tokens": 5 * 8 * 64, "seed": 1}
    assert carry_position(state, 64, 400, 64, 8) == (3, 5)  # same global batch: exact
    assert carry_position(state, 64, 400, 64, 4) == (3, 10)  # 1 rank x 4: the same 40 samples
    assert carry_position(state, 64, 400, 64, 16) == (3, 2)  # 40 samples -> 2 whole global batches of 16
    # seq 64 -> 128: the corpus packs into half the rows; 2560 of 25600 tokens = a tenth of the epoch,
    # i.e. 20 of the 200 new rows (= 2560 / 128), 5 global batches of 4.
    assert carry_position(state, 64, 200, 128, 4) == (3, 5)
    assert carry_position(state, 64, 200, 128, 6) == (3, 3)  # 20 samples -> 3 whole batches of 6
    # One row per document (rows do not change with seq_len): the same share of the epoch, in samples.
    assert carry_position(state, 64, 400, 128, 8) == (3, 5)
    # A state written before "tokens" and "seq_len" were saved: tokens = samples x the seq_len given.
    old = {k: v for k, v in state.items() if k not in ("tokens", "seq_len")}
    assert carry_position(old, 64, 200, 128, 4) == (3, 5)


def test_sharded_batches_resume_at_another_seq_len_and_rank_count():
    from mometas_ds.data import ShardedBatches

    before = ShardedBatches(packed(120, 8), batch_size=4, rank=0, world_size=1, seed=5)
    assert before.seq_len == 8  # read from the rows
    for _ in range(9):
        next(before)
    state = json.loads(json.dumps(before.state_dict()))
    assert state["seq_len"] == 8 and state["tokens"] == 9 * 4 * 8

    # Repacked at seq 16 (60 rows), 2 ranks of 3: 36 of 120 samples = 30% of the epoch -> 18 of 60 rows.
    ranks = [ShardedBatches(packed(60, 16), batch_size=3, rank=r, world_size=2, seed=5) for r in range(2)]
    for part in ranks:
        part.load_state_dict(state)
        assert (part.epoch, part.offset) == (0, 3)
    reference = ShardedBatches(packed(60, 16), batch_size=6, rank=0, world_size=1, seed=5)
    for _ in range(3):
        next(reference)
    expected = next(reference)["input_ids"][:, 0].tolist()
    assert sum((next(part)["input_ids"][:, 0].tolist() for part in ranks), []) == expected

    # Past the end of the new packing's epoch (few rows): the next epoch starts.
    short = ShardedBatches(packed(13, 16), batch_size=4, rank=0, world_size=1, seed=5)
    late = dict(state, offset=29, tokens=29 * 4 * 8)  # 116 of 120 samples
    short.load_state_dict(late)
    assert (short.epoch, short.offset) == (1, 0)

    # An old state without seq_len: the run identity's --seq_len (saved_seq_len) says it was packed at 8.
    old = {k: v for k, v in state.items() if k not in ("seq_len", "tokens")}
    again = ShardedBatches(packed(60, 16), batch_size=6, rank=0, world_size=1, seed=5)
    again.load_state_dict(old, saved_seq_len=8)
    assert (again.epoch, again.offset) == (0, 3)
    # Without it, the same seq_len is assumed, and another row count is refused as before.
    with pytest.raises(ValueError, match="cannot resume the data order"):
        ShardedBatches(packed(60, 16), batch_size=6, seed=5).load_state_dict(old)
    with pytest.raises(ValueError, match="cannot resume the data order.*seed 5, this run has .* seed 6"):
        ShardedBatches(packed(60, 16), batch_size=6, seed=6).load_state_dict(state)


def test_a_rank_without_a_saved_random_state_is_seeded_from_seed_rank_and_step():
    from mometas_ds.train.state import seeded_rng_state

    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    seeded_rng_state(3, 2, 40)
    first = draw()
    seeded_rng_state(3, 2, 40)
    assert draw() == first
    seeded_rng_state(3, 1, 40)
    other_rank = draw()
    seeded_rng_state(3, 2, 41)
    assert len({first, other_rank, draw()}) == 3


# ------------------------------------------------------------------------------------------- run identity
def _write_identity(tmp_path, world_size=1, ds_config=CPU_CONFIG, **flags):
    from mometas_ds.checkpoint import COMPLETE_MARKER, LATEST_FILE, RUN_IDENTITY_FILE
    from mometas_ds.config import PretrainConfig
    from mometas_ds.train.preflight import validate_config
    from mometas_ds.train.identity import run_identity

    out = tmp_path / "run"
    tag_dir = out / "checkpoints" / "step6"
    tag_dir.mkdir(parents=True)
    flags = {"train_files": ["x.jsonl"], **flags}
    written = PretrainConfig(deepspeed_config=ds_config, model_config="tiny", train_tokenizer=100, output_dir=str(out),
                             objectives=["mlm", "atd"], seq_len=64, **flags)
    (tag_dir / RUN_IDENTITY_FILE).write_text(json.dumps(run_identity(written, validate_config(written), world_size)))
    (tag_dir / COMPLETE_MARKER).write_text("6")
    (out / "checkpoints" / LATEST_FILE).write_text("step6")
    return written


def _ds_config(tmp_path, name, **changes):
    with open(CPU_CONFIG) as f:
        config = {**json.load(f), **changes}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_resume_may_change_seq_len_batch_shape_and_ranks_but_not_the_experiment(tmp_path):
    from mometas_ds.config import ConfigError, PretrainConfig
    from mometas_ds.train.preflight import check_world_size, validate_config
    from mometas_ds.train.identity import elastic_changes, run_identity

    written = _write_identity(tmp_path)

    def resume(world_size=1, **changes):
        cfg = PretrainConfig(**{**written.__dict__, "resume": "auto", **changes})
        check_world_size(cfg, validate_config(cfg), world_size)
        return cfg

    # Phase 2 of the BERT recipe: longer rows, a smaller micro-batch with accumulation, on 2 ranks.
    phase2 = _ds_config(tmp_path, "phase2", train_micro_batch_size_per_gpu=2, gradient_accumulation_steps=4)
    cfg = resume(world_size=2, seq_len=128, deepspeed_config=phase2, max_steps=900)
    with open(tmp_path / "run" / "checkpoints" / "step6" / "run_identity.json") as f:
        saved = json.load(f)
    assert elastic_changes(saved, run_identity(cfg, validate_config(cfg), 2)) == {
        "--seq_len": (64, 128), "number of ranks": (1, 2), "train_micro_batch_size_per_gpu": (8, 2),
        "gradient_accumulation_steps": (1, 4)}
    resume(world_size=4)  # a requeue onto more GPUs
    resume(seq_len=512)  # from scratch: max(512, seq_len) position embeddings either way

    # What still must match stops the run naming the field, in the format it always had.
    with pytest.raises(ConfigError, match=r"--resume auto: checkpoint .*step6 was written by a run with other "
                                          r"settings: --objectives was \['mlm', 'atd'\], now \['atd', 'mlm'\]"):
        resume(objectives=["atd", "mlm"])
    with pytest.raises(ConfigError, match="--sampler was 'mometas', now 'uniform'"):
        resume(sampler="uniform", world_size=2)
    with pytest.raises(ConfigError, match="--seed was 1234, now 7"):
        resume(seed=7, seq_len=128)
    with pytest.raises(ConfigError, match="--whole_word_mask was False, now True"):
        resume(whole_word_mask=True)
    with pytest.raises(ConfigError, match="--packing was 'packed', now 'per_document'"):
        resume(packing="per_document")
    with pytest.raises(ConfigError, match="--shard_size_mb was 64.0, now 8.0"):
        resume(shard_size_mb=8.0)
    # ZeRO stage 1 <-> 2 and fp32 <-> bf16 go through the universal copy (with more ranks too) ...
    resume(deepspeed_config=_ds_config(tmp_path, "stage1", zero_optimization={"stage": 1}), world_size=2)
    resume(deepspeed_config=_ds_config(tmp_path, "bf16", bf16={"enabled": True}))
    # ... to or from stage 0 or 3 (another converted layout) and to fp16 (a loss scale) they do not.
    with pytest.raises(ConfigError, match=r"stage3.json: zero_optimization.stage was 2, now 3 \(the stage may change "
                                          r"between 1 and 2 only: .*resume with the stage that saved it\)"):
        resume(deepspeed_config=_ds_config(tmp_path, "stage3", zero_optimization={"stage": 3}))
    with pytest.raises(ConfigError, match=r"stage0.json: zero_optimization.stage was 2, now 0 \(.*stage 0 keeps one "
                                          r"replicated optimizer state"):
        resume(deepspeed_config=_ds_config(tmp_path, "stage0", zero_optimization={"stage": 0}))
    with pytest.raises(ConfigError, match=r"fp16.json: precision \(bf16/fp16\) was 'fp32', now 'fp16' \(fp16 keeps "
                                          r"a dynamic loss scale.*between fp32 and bf16 only\)"):
        resume(deepspeed_config=_ds_config(tmp_path, "fp16", fp16={"enabled": True}))
    # Both at once: each is named.
    with pytest.raises(ConfigError, match=r"stage was 2, now 3; .*precision \(bf16/fp16\) was 'fp32', now 'bf16'"):
        resume(deepspeed_config=_ds_config(tmp_path, "stage3bf16", zero_optimization={"stage": 3},
                                           bf16={"enabled": True}))
    # Position embeddings follow --seq_len from scratch (max(512, seq_len)): past 512 the model would differ.
    with pytest.raises(ConfigError, match=r"--seq_len: 1024 would build a model with 1024 position embeddings, but "
                                          r"checkpoint .*step6 \(written at --seq_len 64\) holds 512.*seq_len <= 512"):
        resume(seq_len=1024)


def test_a_checkpoint_from_before_shard_size_resumes_only_with_every_input_read_whole(tmp_path):
    """Such a checkpoint (no --shard_size_mb in its identity) trained on every input whole: a resume whose
    --shard_size_mb would split one stops, naming a value that keeps it whole; below the size it goes on."""
    from mometas_ds.checkpoint import RUN_IDENTITY_FILE
    from mometas_ds.config import ConfigError, PretrainConfig
    from mometas_ds.train.preflight import check_world_size, validate_config

    corpus = tmp_path / "big.jsonl"
    corpus.write_text('{"text": "a b c d"}\n' * 30000)  # 570,000 bytes
    written = _write_identity(tmp_path, train_files=[str(corpus)])
    identity_file = tmp_path / "run" / "checkpoints" / "step6" / RUN_IDENTITY_FILE
    identity = json.loads(identity_file.read_text())
    del identity["--shard_size_mb"]
    identity_file.write_text(json.dumps(identity))

    def resume(**changes):
        cfg = PretrainConfig(**{**written.__dict__, "resume": "auto", **changes})
        check_world_size(cfg, validate_config(cfg), 1)

    resume()  # 64 MiB: read whole, as the checkpoint's run did
    with pytest.raises(ConfigError, match=r"--shard_size_mb: checkpoint .*step6 was written before large inputs were "
                                          r"split .*big.jsonl read whole, but at --shard_size_mb 0.25 it would be "
                                          r"split \(other rows\): resume with --shard_size_mb 2 "):
        resume(shard_size_mb=0.25)
    resume(shard_size_mb=2.0)


def test_zero3_may_change_its_rank_count_and_precision_but_stage0_only_its_rank_count(tmp_path):
    from mometas_ds.config import ConfigError, PretrainConfig
    from mometas_ds.train.preflight import check_world_size, validate_config

    stage3 = _ds_config(tmp_path, "z3", zero_optimization={"stage": 3})
    written = _write_identity(tmp_path, world_size=2, ds_config=stage3)
    cfg = PretrainConfig(**{**written.__dict__, "resume": "auto", "seq_len": 128})
    check_world_size(cfg, validate_config(cfg), 2)  # same ranks, longer rows
    check_world_size(cfg, validate_config(cfg), 4)  # a requeue onto more GPUs: the universal copy re-splits it
    check_world_size(cfg, validate_config(cfg), 1)
    bf16 = PretrainConfig(**{**cfg.__dict__, "deepspeed_config": _ds_config(
        tmp_path, "z3bf16", zero_optimization={"stage": 3}, bf16={"enabled": True})})
    check_world_size(bf16, validate_config(bf16), 4)
    with pytest.raises(ConfigError, match=r"z2.json: zero_optimization.stage was 3, now 2 \(the stage may change "
                                          r"between 1 and 2 only"):
        two = PretrainConfig(**{**cfg.__dict__, "deepspeed_config": _ds_config(tmp_path, "z2")})
        check_world_size(two, validate_config(two), 2)


def test_stage0_may_not_change_its_precision(tmp_path):
    from mometas_ds.config import ConfigError, PretrainConfig
    from mometas_ds.train.preflight import check_world_size, validate_config

    written = _write_identity(tmp_path, ds_config=_ds_config(tmp_path, "z0", zero_optimization={"stage": 0}))
    cfg = PretrainConfig(**{**written.__dict__, "resume": "auto"})
    check_world_size(cfg, validate_config(cfg), 2)
    bf16 = PretrainConfig(**{**cfg.__dict__, "deepspeed_config": _ds_config(
        tmp_path, "z0bf16", zero_optimization={"stage": 0}, bf16={"enabled": True})})
    with pytest.raises(ConfigError, match=r"precision \(bf16/fp16\) was 'fp32', now 'bf16' \(ZeRO stage 0 keeps one "
                                          r"replicated optimizer state.*precision of a stage-0 run cannot change\)"):
        check_world_size(bf16, validate_config(bf16), 1)


def test_needs_universal_for_another_rank_count_stage_or_precision(tmp_path):
    import types

    from mometas_ds.checkpoint import RUN_IDENTITY_FILE, needs_universal

    def engine(stage, ranks, precision="fp32"):
        return types.SimpleNamespace(zero_optimization_stage=lambda: stage, dp_world_size=ranks,
                                     bfloat16_enabled=lambda: precision == "bf16",
                                     fp16_enabled=lambda: precision == "fp16")

    tag = tmp_path / "step4"
    tag.mkdir()
    (tag / RUN_IDENTITY_FILE).write_text(json.dumps({"zero_optimization.stage": 2, "precision (bf16/fp16)": "fp32"}))
    assert not needs_universal(engine(2, 2), str(tag))  # a stage-0 tag (no partition files) loads as it is
    for rank in range(2):
        (tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"")
    assert not needs_universal(engine(2, 2), str(tag))  # the same shape: DeepSpeed's plain load
    assert not needs_universal(engine(0, 4), str(tag))  # stage 0 never loads a universal copy
    assert needs_universal(engine(2, 4), str(tag)) and needs_universal(engine(3, 1), str(tag))
    assert needs_universal(engine(1, 2), str(tag)) and needs_universal(engine(2, 2, "bf16"), str(tag))
    (tag / RUN_IDENTITY_FILE).unlink()  # a tag without identity: only the partition count is known
    assert not needs_universal(engine(1, 2, "bf16"), str(tag)) and needs_universal(engine(1, 3), str(tag))


# ------------------------------------------------------------------------------------------- the universal copy
def test_prune_deletes_a_tags_universal_copy_and_a_damaged_copy_is_not_intact(tmp_path):
    from mometas_ds.checkpoint import (COMPLETE_MARKER, LATEST_FILE, MANIFEST_FILE, text_record, latest_complete_tag,
                                       prune, universal_intact, universal_tag)
    from mometas_ds.checkpoint.universal import _files_under

    root = tmp_path / "checkpoints"
    for step in (2, 4):
        (root / f"step{step}").mkdir(parents=True)
        (root / f"step{step}" / COMPLETE_MARKER).write_text(str(step))
    copy = root / universal_tag("step2")
    (copy / "zero" / "w").mkdir(parents=True)
    (copy / "zero" / "w" / "fp32.pt").write_bytes(b"weights")
    manifest = json.dumps({"files": _files_under(str(copy))})
    (copy / MANIFEST_FILE).write_text(manifest)
    (copy / COMPLETE_MARKER).write_text(json.dumps({"manifest": MANIFEST_FILE, **text_record(manifest)}))
    (root / LATEST_FILE).write_text("step4")
    assert universal_intact(str(copy))
    assert latest_complete_tag(str(root)) == "step4"  # the copy is never taken for a tag
    (copy / "zero" / "w" / "fp32.pt").write_bytes(b"weightz")
    assert not universal_intact(str(copy))
    assert prune(str(root), keep=1) == ["step2"]
    assert sorted(os.listdir(root)) == [LATEST_FILE, "step4"]


# ------------------------------------------------------------------------------------------- a real phase change
def saved_zero_states(tag_dir):
    """{parameter name: {"fp32", "exp_avg", "exp_avg_sq": flat tensor}} and Adam's step, read from a tag's ZeRO
    partition files (stages 1-3, any number of ranks), independently of DeepSpeed's converter."""
    import glob

    from mometas_ds.checkpoint.loading import safe_load

    def rank_of(path):
        return int(os.path.basename(path).split("zero_pp_rank_")[1].split("_")[0])

    files = sorted(glob.glob(os.path.join(tag_dir, "*zero_pp_rank_*_optim_states.pt")), key=rank_of)
    parts = [safe_load(path)["optimizer_state_dict"] for path in files]
    if "fp32_flat_groups" not in parts[0]:  # ZeRO 1/2: each rank's slice mappings name its parameter fragments
        pieces = {}
        for zero in parts:  # in rank order: a parameter's fragments follow one another across the ranks
            for group, mapping in enumerate(zero["param_slice_mappings"]):
                flat = {"fp32": zero["single_partition_of_fp32_groups"][group], **{
                    key: zero["base_optimizer_state"]["state"][group][key] for key in ("exp_avg", "exp_avg_sq")}}
                for name, fragment in mapping.items():
                    pieces.setdefault(name, []).append(
                        {key: t.narrow(0, fragment.start, fragment.numel) for key, t in flat.items()})
        saved = {name: {key: torch.cat([piece[key] for piece in parts_of]) for key in parts_of[0]}
                 for name, parts_of in pieces.items()}
        return saved, float(parts[0]["base_optimizer_state"]["state"][0]["step"])
    # ZeRO-3: rank R holds ceil(numel / ranks) elements of every parameter (the last zero-padded), one flat
    # tensor per sub-group, in the order of the model-states file's param_shapes.
    shapes = safe_load(glob.glob(os.path.join(tag_dir, "zero_pp_rank_0_*model_states.pt"))[0])["param_shapes"]
    saved = {}
    for group, group_shapes in enumerate(shapes):
        flats = [{"fp32": part["fp32_flat_groups"][group], **{
            key: part["optimizer_state_dict"]["state"][group][key] for key in ("exp_avg", "exp_avg_sq")}}
            for part in parts]
        offset = 0
        for name, shape in group_shapes.items():
            numel, width = shape.numel(), -(-shape.numel() // len(parts))
            saved[name] = {key: torch.cat([flat[key].narrow(0, offset, width) for flat in flats])[:numel]
                           for key in ("fp32", "exp_avg", "exp_avg_sq")}
            offset += width
    return saved, float(parts[0]["optimizer_state_dict"]["state"][0]["step"])


def _probe(args, ranks, prefix):
    """tests/resume_state_probe.py on ``ranks`` ranks (the deepspeed launcher for more than one)."""
    import subprocess
    import sys

    probe = os.path.join(REPO_ROOT, "tests", "resume_state_probe.py")
    launcher = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks), "--master_port",
                str(free_port())] if ranks > 1 else [sys.executable]
    return subprocess.run(launcher + [probe] + args, env={**subprocess_env(), "RESUME_PROBE_OUT": prefix},
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def _assert_resumed_state(prefix, ranks, micro_batch, saved, adam_step, model_states, ours, step):
    """Every rank of a resumed run loaded exactly the saved fp32 master weights and Adam moments (and step),
    each group's weight decay, the scheduler, the counters and the sampler."""
    for rank in range(ranks):
        resumed = torch.load(f"{prefix}.rank{rank}.pt", weights_only=True)
        assert (resumed["world_size"], resumed["micro_batch"]) == (ranks, micro_batch)
        assert set(resumed["params"]) == set(saved)
        for name, states in saved.items():
            for key, value in states.items():
                loaded = resumed["params"][name][key]
                assert torch.equal(loaded.reshape(-1), value), f"rank {rank}: {name} {key} differs from the saved one"
        assert resumed["adam_steps"] == [adam_step]
        assert [group["weight_decay"] for group in resumed["param_groups"]] == [0.01, 0.0]  # decay, no-decay
        assert resumed["lr_scheduler"] == model_states["lr_scheduler"]
        assert resumed["global_steps"] == model_states["global_steps"] == step
        assert resumed["sampler"] == ours["sampler"]
        assert resumed["train_state"] == {k: ours[k] for k in resumed["train_state"]}
        assert resumed["train_state"]["step"] == step
    return [torch.load(f"{prefix}.rank{rank}.pt", weights_only=True)["data"] for rank in range(ranks)]


def _model_states(tag_dir):
    import glob

    from mometas_ds.checkpoint.loading import safe_load

    return safe_load(sorted(glob.glob(os.path.join(tag_dir, "*model_states.pt")))[0])


PHASES = {  # name: (phase 1's DeepSpeed config changes, phase 2's), micro-batch 4 then 2
    "zero2": ({}, {}),
    "zero3": ({"zero_optimization": {"stage": 3}}, {"zero_optimization": {"stage": 3}}),
    "zero1_to_zero2_bf16": ({"zero_optimization": {"stage": 1}}, {"bf16": {"enabled": True}}),
}


@pytest.mark.integration
@pytest.mark.parametrize("phases", list(PHASES))
def test_resume_at_seq128_on_two_ranks_keeps_optimizer_scheduler_sampler_and_counters(assets, tmp_path, phases):
    """Saved at seq 64 on 1 rank (micro-batch 4), resumed at seq 128 on 2 ranks (micro-batch 2) through the
    deepspeed launcher and DeepSpeed's universal checkpoint: ZeRO-2; ZeRO-3 (then back onto 1 rank); ZeRO-1 fp32
    resumed as ZeRO-2 bf16. Every fp32 master weight and Adam moment loaded equals the saved one, and so do Adam's
    step, each group's weight decay, the scheduler step, the sampler state and the counters; it trains on to
    --max_steps with finite losses."""
    from mometas_ds.checkpoint import COMPLETE_MARKER, universal_tag
    from mometas_ds.checkpoint.loading import safe_load

    first, second = PHASES[phases]
    phase1 = _ds_config(tmp_path, "phase1", train_micro_batch_size_per_gpu=4, **first)
    phase2 = _ds_config(tmp_path, "phase2", train_micro_batch_size_per_gpu=2, **second)
    out = str(tmp_path / "run")

    def args(config, seq_len, *extra, max_steps=8):
        flags = pretrain_args(assets["corpus"], assets["tokenizer"], out, assets["cache"], max_steps=max_steps,
                              config=config, extra=["--meta_interval", "2"] + list(extra))
        flags[flags.index("--seq_len") + 1] = str(seq_len)
        return flags

    assert_ok(run_pretrain(args(phase1, 64, "--steps_this_run", "4")))
    tag_dir = os.path.join(out, "checkpoints", "step4")
    saved, adam_step = saved_zero_states(tag_dir)  # read from the partition files, not through the converter
    assert adam_step == 4
    # The encoder's moments are non-zero after 4 steps (a head whose objective was not drawn yet may hold zeros):
    # equal to them means loaded, not freshly initialized.
    assert all(bool(states["exp_avg_sq"].any()) for name, states in saved.items() if name.startswith("bert.encoder"))
    model_states = _model_states(tag_dir)
    ours = safe_load(os.path.join(tag_dir, "mometas_state.pt"))["mometas"]

    prefix = str(tmp_path / "resumed")
    resumed = _probe(args(phase2, 128, "--resume", "auto"), 2, prefix)
    assert_ok(resumed)
    log = resumed.stdout + resumed.stderr
    assert "converting" in log and "universal checkpoint" in log
    assert "--seq_len changed from 64 to 128" in log and "carried in tokens" in log
    assert os.path.isfile(os.path.join(out, "checkpoints", universal_tag("step4"), COMPLETE_MARKER))
    for data in _assert_resumed_state(prefix, 2, 2, saved, adam_step, model_states, ours, step=4):
        # 4 steps x 4 rows of 64 tokens = 1024 tokens: the same share of the new packing's epoch, in global
        # batches of 2 ranks x 2 rows.
        old_rows, new_rows = ours["data"][0]["num_rows"], data["num_rows"]
        assert new_rows < old_rows and data["seq_len"] == 128
        assert data["offset"] == 1024 * new_rows // (old_rows * 64) // 4

    metrics = read_jsonl(os.path.join(out, "metrics.jsonl"))
    assert [m["step"] for m in metrics] == list(range(1, 9))
    assert all(np.isfinite(m["loss"]) for m in metrics)
    assert [round(m["tokens_per_s"] / m["samples_per_s"]) for m in metrics] == [64] * 4 + [128] * 4
    step8 = os.path.join(out, "checkpoints", "step8")
    assert os.path.isfile(os.path.join(step8, COMPLETE_MARKER))
    with open(os.path.join(step8, "run_identity.json")) as f:
        identity = json.load(f)
    assert (identity["--seq_len"], identity["number of ranks"]) == (128, 2)
    state8 = safe_load(os.path.join(step8, "mometas_state.pt"))["mometas"]
    assert state8["step"] == 8 and len(state8["data"]) == 2 and len(state8["rng"]) == 2
    saved8, adam_step8 = saved_zero_states(step8)
    assert adam_step8 == 8  # one Adam step per optimizer step after the resume (no shared step tensor)

    if phases == "zero3":  # and back from 2 ranks onto 1, with micro-batch 4 again
        back = _probe(args(phase1, 128, "--resume", "auto", max_steps=10), 1, prefix)
        assert_ok(back)
        _assert_resumed_state(prefix, 1, 4, saved8, 8, _model_states(step8), state8, step=8)
        assert [m["step"] for m in read_jsonl(os.path.join(out, "metrics.jsonl"))] == list(range(1, 11))


# ------------------------------------------------------------------------------------------- the two-phase script
LARGE_SCRIPT = os.path.join(REPO_ROOT, "slurm", "pretrain_large.sh")


def run_large_script(tmp_path, args=(), job_id=None, squeue_left="1-00:00:00", **env_extra):
    """slurm/pretrain_large.sh outside SLURM, with stand-ins for sbatch/srun/squeue/scontrol that record their
    arguments (and the PHASE they were given): the commands it builds, nothing else."""
    import subprocess

    from tests.slurm_cluster import clean_launch_env

    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir(exist_ok=True)
    ids = tmp_path / "next_id"
    ids.write_text("1001")
    for name, body in {
        # sbatch --parsable prints "id;cluster" on a federation: the script must keep the id only.
        "sbatch": f'echo "PHASE=${{PHASE:-}} sbatch $*" >> {calls}\nid=$(cat {ids}); echo $((id + 1)) > {ids}\n'
                  f'echo "$id;cluster0"',
        "srun": f'echo "srun $*" >> {calls}',
        "squeue": f'echo "{squeue_left}"',
        "scontrol": f'echo "scontrol $*" >> {calls}',
    }.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = clean_launch_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", TRAIN_FILES="data/*.jsonl",
                           MASTER_ADDR="node001", OUTPUT_DIR=str(tmp_path / "run"), **env_extra)
    if job_id is not None:
        env["SLURM_JOB_ID"] = job_id
    proc = subprocess.run(["bash", LARGE_SCRIPT, *args], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=30)
    return proc, calls.read_text().splitlines() if calls.exists() else []


def test_two_phase_submission_chains_phase_2_after_phase_1(tmp_path):
    proc, calls = run_large_script(tmp_path, args=["--meta_interval", "50"], PHASES="2", MAX_STEPS="1000",
                                   SBATCH_ARGS="--nodes=2 --time=24:00:00")
    assert proc.returncode == 0, proc.stderr
    assert calls == [
        f"PHASE=1 sbatch --parsable --nodes=2 --time=24:00:00 {LARGE_SCRIPT} --meta_interval 50",
        f"PHASE=2 sbatch --parsable --kill-on-invalid-dep=yes --dependency=afterok:1001 --nodes=2 --time=24:00:00 "
        f"{LARGE_SCRIPT} --meta_interval 50",
    ]
    assert "phase 1 as job 1001, phase 2 as job 1002" in proc.stdout
    assert "phase 1: steps 1-900 at --seq_len 128" in proc.stdout and "steps 901-1000 at --seq_len 512" in proc.stdout

    (tmp_path / "dry").mkdir()
    dry, calls = run_large_script(tmp_path / "dry", PHASES="2", MAX_STEPS="1000", DRY_RUN="1")
    assert dry.returncode == 0 and calls == []
    assert f"PHASE=1 sbatch --parsable {LARGE_SCRIPT}\n" in dry.stdout
    assert (f"PHASE=2 sbatch --parsable --kill-on-invalid-dep=yes --dependency=afterok:<phase-1 job id> "
            f"{LARGE_SCRIPT}\n") in dry.stdout

    (tmp_path / "bad").mkdir()
    bad, _ = run_large_script(tmp_path / "bad", PHASES="2", MAX_STEPS="1000", PHASE1_STEPS="1000")
    assert bad.returncode == 1
    assert "PHASE1_STEPS=1000 must be a whole number of steps between 1 and MAX_STEPS" in bad.stderr


def test_phase_jobs_run_their_seq_len_config_and_end_step(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    common = dict(PHASES="2", MAX_STEPS="1000", job_id="4242")

    proc, calls = run_large_script(tmp_path, PHASE="1", **common)
    assert proc.returncode == 0, proc.stderr
    flags = calls[0]
    assert "--seq_len 128 " in flags and "--max_steps 1000 " in flags and "--steps_this_run 900" in flags
    assert "--deepspeed_config ds_configs/bert_large_zero2.json " in flags and "--resume auto" in flags

    # A requeued phase 1 at step 600 runs the 300 steps left to its end; little time left afterwards: requeued.
    (checkpoints / "latest_complete").write_text("step600")
    (tmp_path / "calls.txt").unlink()
    proc, calls = run_large_script(tmp_path, PHASE="1", squeue_left="08:00", **common)
    assert "--steps_this_run 300" in calls[0] and "scontrol requeue 4242" in calls
    # Phase 1 done (its end step saved): nothing to run, exit 0 so that phase 2's afterok starts it.
    (checkpoints / "latest_complete").write_text("step900")
    (tmp_path / "calls.txt").unlink()
    proc, calls = run_large_script(tmp_path, PHASE="1", squeue_left="08:00", **common)
    assert proc.returncode == 0 and calls == [] and "nothing to run" in proc.stdout

    proc, calls = run_large_script(tmp_path, PHASE="2", RESUME="", **common)
    assert proc.returncode == 0, proc.stderr
    flags = calls[0]
    assert "--seq_len 512 " in flags and "--max_steps 1000 " in flags and "--steps_this_run" not in flags
    assert "--deepspeed_config ds_configs/bert_large_zero2_phase2.json " in flags and "--resume auto" in flags

    # Without PHASES the script runs as it always did: one run at SEQ_LEN (512).
    (tmp_path / "calls.txt").unlink()
    proc, calls = run_large_script(tmp_path, job_id="4242")
    assert "--seq_len 512 " in calls[0] and "--steps_this_run" not in calls[0]


def test_phase2_config_keeps_phase1_global_batch():
    with open(os.path.join(REPO_ROOT, "ds_configs", "bert_large_zero2.json")) as f:
        one = json.load(f)
    with open(os.path.join(REPO_ROOT, "ds_configs", "bert_large_zero2_phase2.json")) as f:
        two = json.load(f)
    per_rank = [c["train_micro_batch_size_per_gpu"] * c["gradient_accumulation_steps"] for c in (one, two)]
    assert per_rank[0] == per_rank[1] and two["train_micro_batch_size_per_gpu"] < one["train_micro_batch_size_per_gpu"]
    shape = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
    assert {k: v for k, v in one.items() if k not in shape} == {k: v for k, v in two.items() if k not in shape}


@pytest.mark.integration
def test_without_zero_a_resume_on_more_ranks_loads_the_replicated_optimizer_state_as_it_is(assets, tmp_path):
    """ZeRO stage 0 keeps one optimizer state (rank 0 saves it in the model-states file): 1 rank -> 2 ranks at
    the same --seq_len loads it without a universal copy, and the data position carries in samples."""
    import subprocess
    import sys

    from mometas_ds.checkpoint import universal_tag
    from mometas_ds.checkpoint.loading import safe_load

    config = _ds_config(tmp_path, "stage0", train_micro_batch_size_per_gpu=4, zero_optimization={"stage": 0})
    out = str(tmp_path / "run")
    args = pretrain_args(assets["corpus"], assets["tokenizer"], out, assets["cache"], max_steps=6, config=config,
                         extra=["--meta_interval", "2"])
    assert_ok(run_pretrain(args + ["--steps_this_run", "3"]))
    saved = safe_load(os.path.join(out, "checkpoints", "step3", "mp_rank_00_model_states.pt"))
    prefix = str(tmp_path / "resumed")
    second = subprocess.run(
        [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(free_port()),
         os.path.join(REPO_ROOT, "tests", "resume_state_probe.py")] + args + ["--resume", "auto"],
        env={**subprocess_env(), "RESUME_PROBE_OUT": prefix}, cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=300)
    assert_ok(second)
    assert not os.path.exists(os.path.join(out, "checkpoints", universal_tag("step3")))
    assert "holds no random state for rank 1 (saved by 1 rank(s)): seeded" in second.stdout + second.stderr
    for rank in range(2):
        resumed = torch.load(f"{prefix}.rank{rank}.pt", weights_only=True)
        state, expected = resumed["optimizer"]["state"], saved["optimizer"]["state"]
        assert set(state) == set(expected) and len(state) > 10
        for index, moments in expected.items():
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(state[index][key], moments[key]), (rank, index, key)
        assert resumed["lr_scheduler"] == saved["lr_scheduler"] and resumed["train_state"]["step"] == 3
        # 3 micro-steps x 4 rows = 12 samples -> 1 whole global batch of 2 ranks x 4 (rounded down, with a warning).
        assert (resumed["data"]["epoch"], resumed["data"]["offset"]) == (0, 12 // 8)
    metrics = read_jsonl(os.path.join(out, "metrics.jsonl"))
    assert [m["step"] for m in metrics] == list(range(1, 7)) and all(np.isfinite(m["loss"]) for m in metrics)
