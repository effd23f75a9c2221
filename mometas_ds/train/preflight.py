"""The checks that run before any work: every flag (validate_config), then, once the ranks are up, what
needs their number (check_world_size), the run's identity and the resume match. ``preflight`` runs them
all, once, before the trainer is built.

Each subsystem owns the checks of its own fields (train.ds_config: the DeepSpeed config; model_config_check: the
BertConfig; objectives and samplers: their names and options; safe_io: the output folders; train.identity: what a
resume must match); this module composes them in order."""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

from mometas_ds.checkpoint import find_resume_checkpoint, latest_complete_tag
from mometas_ds.config.choices import MIN_SEQ_LEN, MODEL_PRESETS
from mometas_ds.config.paths import RunPaths
from mometas_ds.config.settings import PretrainConfig, sampler_kwargs
from mometas_ds.data.parts import MIN_SHARD_SIZE_MB
from mometas_ds.distributed.launch import LaunchInfo, init_distributed
from mometas_ds.errors import ConfigError, read_json_object
from mometas_ds.model_config_check import check_model_config_fields, read_model_config, transformer_dir
from mometas_ds.objectives import objective_class, objective_names_problem
from mometas_ds.registry import import_user_modules
from mometas_ds.safe_io import check_writable, check_writable_dir
from mometas_ds.samplers import available_samplers, build_sampler
from mometas_ds.train.ds_config import (
    check_batch_fields, check_ds_config, check_optimizer, check_schedule_fits, check_with_deepspeed,
)
from mometas_ds.train.ds_trial import check_sections, trial_initialize
from mometas_ds.train.identity import check_resume_matches, run_identity


@dataclass
class Preflight:
    """What the checks found: the parsed DeepSpeed config, the ranks, and the run's identity (saved with every
    checkpoint)."""

    ds_config: dict
    launch: LaunchInfo
    run_identity: dict


def preflight(cfg: PretrainConfig) -> Preflight:
    """Every check of a run, in order, before the trainer builds anything; a ConfigError names what is wrong."""
    ds_config = validate_config(cfg)
    check_writable(cfg.output_dir)  # every rank, before any collective: a bad mount fails here
    if cfg.cache_dir:
        check_writable_dir(cfg.cache_dir, "--cache_dir")  # the same early probe (a file, read-only, full)
    launch = init_distributed(cfg.dist_timeout_minutes)
    lock_output_dir(cfg.output_dir, launch, cfg.setup_timeout_minutes)  # one writer: before anything reads or writes
    check_world_size(cfg, ds_config, launch.world_size)
    # DeepSpeed itself, on a stand-in model with the run's parameter groups: what it rejects at initialize or
    # at its first step stops here, before the corpus is read.
    trial_initialize(ds_config, cfg.deepspeed_config, cfg.max_steps, launch.rank)
    return Preflight(ds_config, launch, run_identity(cfg, ds_config, launch.world_size))


def lock_output_dir(output_dir: str, launch: LaunchInfo, timeout_minutes: float) -> None:
    """Rank 0 takes the run lock of --output_dir (run_lock) for the run's life; when another run holds it, every
    rank stops with a ConfigError naming the holder. A collective: call it on every rank."""
    from mometas_ds.train import run_lock

    refusal = None
    if launch.rank == 0:
        try:
            run_lock.acquire(output_dir)
        except ConfigError as exc:
            refusal = str(exc)
    if launch.world_size > 1:
        import datetime

        import torch.distributed as dist

        group = dist.new_group(backend="gloo", timeout=datetime.timedelta(minutes=timeout_minutes))
        try:
            box = [refusal]
            dist.broadcast_object_list(box, src=0, group=group)
            refusal = box[0]
        finally:
            dist.destroy_process_group(group)
    if refusal is not None:
        raise ConfigError(refusal)


def validate_config(cfg: PretrainConfig) -> dict:
    """Check every flag that can be checked without doing work; return the parsed DeepSpeed config."""
    def fail(flag, message):
        raise ConfigError(f"--{flag}: {message}")

    import_user_modules(cfg.user_modules)

    if not cfg.deepspeed_config or not os.path.isfile(cfg.deepspeed_config):
        fail("deepspeed_config", f"file not found: {cfg.deepspeed_config}")
    ds_config = read_json_object(cfg.deepspeed_config, "--deepspeed_config")
    check_ds_config(ds_config, cfg.deepspeed_config)  # strict types, no unknown top-level key
    check_sections(ds_config, cfg.deepspeed_config)  # sections the trainer does not honour; monitors installed
    check_schedule_fits(ds_config, cfg.deepspeed_config)
    if not cfg.train_files:
        fail("train_files", "no corpus given")
    if (cfg.model_name_or_path is None) == (cfg.model_config is None):
        fail("model_config", "give exactly one of --model_name_or_path (continual) or --model_config (from scratch)")
    if cfg.model_config is not None and cfg.model_config not in MODEL_PRESETS:
        if not os.path.isfile(cfg.model_config):
            fail("model_config",
                 f"{cfg.model_config!r} is neither a preset ({', '.join(MODEL_PRESETS)}) nor a JSON file")
        fields = read_json_object(cfg.model_config, "--model_config")  # a BertConfig JSON: unreadable stops here
        if fields.get("model_type", "bert") != "bert":
            fail("model_config", f"{cfg.model_config} is a {fields['model_type']!r} config; mometas_ds trains BERT")
        check_model_config_fields(fields, cfg.model_config)  # strict types, no unknown field
        if fields.get("max_position_embeddings", cfg.seq_len) < cfg.seq_len:
            fail("seq_len", f"{cfg.seq_len} exceeds the max_position_embeddings ({fields['max_position_embeddings']}) "
                            f"of --model_config {cfg.model_config}")
    if cfg.model_name_or_path is not None and not os.path.isdir(cfg.model_name_or_path):
        fail("model_name_or_path", f"{cfg.model_name_or_path} is not a local directory")
    if cfg.model_name_or_path is not None:
        inner = transformer_dir(cfg.model_name_or_path)
        if inner != cfg.model_name_or_path:  # an older sentence-transformers directory: BERT is in 0_Transformer/
            print(f"--model_name_or_path {cfg.model_name_or_path}: a sentence-transformers directory; its BERT "
                  f"(and tokenizer) are read from {inner}", file=sys.stderr)
            cfg.model_name_or_path = inner
    if cfg.tokenizer is None and cfg.train_tokenizer is None:
        tok_in_model = cfg.model_name_or_path and os.path.exists(
            os.path.join(cfg.model_name_or_path, "tokenizer_config.json"))
        if not tok_in_model:
            fail("tokenizer", "no tokenizer: give --tokenizer DIR or --train_tokenizer VOCAB_SIZE")
    if cfg.tokenizer is not None and cfg.train_tokenizer is not None:
        fail("tokenizer", "give --tokenizer or --train_tokenizer, not both")
    if cfg.tokenizer is not None and not os.path.isdir(cfg.tokenizer):
        fail("tokenizer", f"{cfg.tokenizer} is not a directory")
    if cfg.train_tokenizer is not None and cfg.train_tokenizer < 50:
        fail("train_tokenizer", f"vocabulary size must be >= 50, got {cfg.train_tokenizer}")
    if cfg.tokenizer_sample is not None and cfg.train_tokenizer is None:
        fail("tokenizer_sample", "samples the corpus for --train_tokenizer; give --train_tokenizer VOCAB_SIZE too "
                                 "(a given --tokenizer is used as it is)")
    if cfg.seq_len < MIN_SEQ_LEN:
        fail("seq_len", f"must be >= {MIN_SEQ_LEN}, got {cfg.seq_len}")
    if cfg.model_name_or_path is not None:
        model_config = read_model_config(cfg.model_name_or_path)
        if model_config.get("model_type") != "bert":
            # Loaded as BERT, another architecture's weights would all be missing: random weights, no error.
            fail("model_name_or_path", f"{cfg.model_name_or_path} holds a {model_config.get('model_type')!r} model "
                                       "(config.json model_type); mometas_ds continues pre-training BERT checkpoints")
        if model_config.get("max_position_embeddings", cfg.seq_len) < cfg.seq_len:
            fail("seq_len", f"{cfg.seq_len} exceeds the max_position_embeddings "
                            f"({model_config['max_position_embeddings']}) of {cfg.model_name_or_path}")
        if cfg.train_tokenizer is not None:
            fail("train_tokenizer", f"a new vocabulary would not match the embeddings of {cfg.model_name_or_path}; "
                                    "continue with its tokenizer (or --tokenizer DIR)")
    problem = objective_names_problem(cfg.objectives)
    if problem:
        fail("objectives", problem)
    if cfg.whole_word_mask and not any(objective_class(n).supports_whole_word_mask for n in cfg.objectives):
        fail("whole_word_mask", f"no objective in --objectives ({','.join(cfg.objectives)}) takes it; "
                                "it applies to mlm and gmlm")
    if cfg.sampler not in available_samplers():
        fail("sampler", f"unknown sampler {cfg.sampler!r}; available: {', '.join(available_samplers())}")
    for flag in ("meta_interval", "meta_batch_size", "max_steps", "save_steps", "log_steps", "num_proc",
                 "max_skipped_steps"):
        if getattr(cfg, flag) < 1:
            fail(flag, f"must be >= 1, got {getattr(cfg, flag)}")
    if not math.isfinite(cfg.meta_lr) or cfg.meta_lr <= 0:  # nan <= 0 is False
        fail("meta_lr", f"must be a finite number > 0, got {cfg.meta_lr}")
    if not math.isfinite(cfg.meta_gamma) or cfg.meta_gamma < 0:
        fail("meta_gamma", f"must be a finite number >= 0, got {cfg.meta_gamma}")
    if cfg.steps_this_run is not None and cfg.steps_this_run < 1:
        fail("steps_this_run", f"must be >= 1, got {cfg.steps_this_run}")
    if not math.isfinite(cfg.shard_size_mb) or cfg.shard_size_mb < MIN_SHARD_SIZE_MB:
        fail("shard_size_mb", f"must be a finite number >= {MIN_SHARD_SIZE_MB}, got {cfg.shard_size_mb}")
    if not math.isfinite(cfg.dist_timeout_minutes) or cfg.dist_timeout_minutes <= 0:
        fail("dist_timeout_minutes", f"must be a finite number > 0, got {cfg.dist_timeout_minutes}")
    if not math.isfinite(cfg.setup_timeout_minutes) or cfg.setup_timeout_minutes <= 0:
        fail("setup_timeout_minutes", f"must be a finite number > 0, got {cfg.setup_timeout_minutes}")
    check_batch_fields(ds_config, cfg.deepspeed_config)
    check_optimizer(ds_config, cfg.deepspeed_config)
    if (ds_config.get("checkpoint") or {}).get("writer") or (ds_config.get("datastates_ckpt") or {}).get("enabled"):
        # Checkpoints are published (COMPLETE) once every rank's save returned: a writer that finishes later
        # would let a resume take a checkpoint whose files are still being written.
        raise ConfigError(f"{cfg.deepspeed_config}: checkpoint.writer / datastates_ckpt (asynchronous checkpoint "
                          "writers) are not supported: remove them to use DeepSpeed's synchronous torch.save writer")
    if cfg.save_total_limit is not None and cfg.save_total_limit < 1:
        fail("save_total_limit", f"must be >= 1, got {cfg.save_total_limit}")
    if cfg.resume in (None, "", "none"):
        earlier = latest_complete_tag(RunPaths(cfg.output_dir).checkpoints)
        if earlier is not None:
            # Starting over here would overwrite that run's checkpoints and logs as this one reaches them.
            fail("resume", f"{cfg.output_dir} holds checkpoint {earlier} of an earlier run: add --resume to continue "
                           "it, or give a new --output_dir")
    elif cfg.resume != "auto":
        try:
            find_resume_checkpoint(RunPaths(cfg.output_dir).checkpoints, cfg.resume)
        except ValueError as exc:
            fail("resume", str(exc).split(": ", 1)[-1])
    # The sampler checks its own options: build one now so a bad --sampler_args stops the run here.
    try:
        build_sampler(cfg.sampler, num_objectives=len(cfg.objectives), seed=cfg.seed, **sampler_kwargs(cfg))
    except (TypeError, ValueError) as exc:
        fail("sampler_args", str(exc))
    return ds_config


def check_world_size(cfg: PretrainConfig, ds_config: dict, world_size: int) -> None:
    """Checks that need the number of ranks; still before any work."""
    micro = check_batch_fields(ds_config, cfg.deepspeed_config, world_size)
    check_with_deepspeed(ds_config, cfg.deepspeed_config)
    check_resume_matches(cfg, ds_config, world_size)
    if cfg.meta_batch_size % world_size:
        raise ConfigError(
            f"--meta_batch_size: {cfg.meta_batch_size} sequences per objective do not divide across {world_size} ranks"
        )
    for name in cfg.objectives:
        need = objective_class(name).min_rows
        if micro < need:
            raise ConfigError(f"{cfg.deepspeed_config}: train_micro_batch_size_per_gpu={micro}, but objective {name} "
                              f"needs at least {need} sequences per forward")
        if cfg.meta_batch_size // world_size < need:
            raise ConfigError(f"--meta_batch_size: {cfg.meta_batch_size} over {world_size} rank(s) leaves "
                              f"{cfg.meta_batch_size // world_size} per rank; objective {name} needs at least {need}")
