"""The pre-training run's settings: a typed dataclass, its command line, and checks that run before any work."""
from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import List, Optional

from .checkpoint import find_resume_checkpoint, latest_complete_tag, read_run_identity
from .model import MODEL_PRESETS
from .objectives import DEFAULT_OBJECTIVES, objective_class


class ConfigError(ValueError):
    """A bad flag or config field; the message names it. Raised before any training work."""


class DataError(ValueError):
    """The corpus cannot feed a run (no usable document, too few sequences for the meta split)."""


@dataclass
class PretrainConfig:
    deepspeed_config: Optional[str] = None
    train_files: List[str] = field(default_factory=list)
    text_field: str = "text"
    output_dir: str = "runs/pretrain"
    model_name_or_path: Optional[str] = None
    model_config: Optional[str] = None
    tokenizer: Optional[str] = None
    train_tokenizer: Optional[int] = None
    seq_len: int = 128
    objectives: List[str] = field(default_factory=lambda: list(DEFAULT_OBJECTIVES))
    user_modules: List[str] = field(default_factory=list)
    sampler: str = "mometas"
    sampler_args: dict = field(default_factory=dict)
    meta_interval: int = 100
    meta_lr: float = 0.1
    meta_gamma: float = 2.0
    meta_batch_size: int = 128
    max_steps: int = 1000
    steps_this_run: Optional[int] = None
    save_steps: int = 1000
    resume: Optional[str] = None
    seed: int = 1234
    log_steps: int = 10
    cache_dir: Optional[str] = None
    num_proc: int = 1
    dist_timeout_minutes: float = 30.0
    setup_timeout_minutes: float = 1440.0
    save_total_limit: Optional[int] = None
    max_skipped_steps: int = 10
    local_rank: int = -1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def _csv(value: str) -> List[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def build_arg_parser() -> argparse.ArgumentParser:
    d = PretrainConfig()
    p = argparse.ArgumentParser(
        prog="mometas-pretrain",
        description="Multi-objective continual pre-training of a BERT encoder on DeepSpeed, "
        "with the MOMETAS sampler choosing the objective of every micro-batch.",
    )
    p.add_argument("--deepspeed_config", "--deepspeed-config", dest="deepspeed_config", required=True,
                   help="DeepSpeed JSON config (batch sizes, optimizer, scheduler, ZeRO stage, bf16/fp16), e.g. ds_configs/cpu_demo.json")
    p.add_argument("--deepspeed", action="store_true", help="accepted for DeepSpeed launcher compatibility; no effect")
    p.add_argument("--train_files", nargs="+", required=True,
                   help="corpus files or globs: .jsonl, .jsonl.gz, .txt, .parquet, or datasets.save_to_disk directories")
    p.add_argument("--text_field", default=d.text_field, help="JSON/parquet field holding the document text (default: text)")
    p.add_argument("--output_dir", default=d.output_dir, help="where metrics, traces, checkpoints and hf_model/ go")
    p.add_argument("--model_name_or_path", default=None,
                   help="local HF BERT checkpoint directory to continue pre-training from")
    p.add_argument("--model_config", default=None,
                   help=f"train from scratch with a preset ({' | '.join(MODEL_PRESETS)}) or a BertConfig JSON path")
    p.add_argument("--tokenizer", default=None, help="local HF tokenizer directory")
    p.add_argument("--train_tokenizer", type=int, default=None, metavar="VOCAB_SIZE",
                   help="train a BERT WordPiece tokenizer of at most this vocabulary size on the corpus (saved in "
                   "output_dir/tokenizer; not deterministic: to compare runs, pass one run's as --tokenizer)")
    p.add_argument("--seq_len", type=int, default=d.seq_len, help="tokens per packed sequence, cls and sep included")
    p.add_argument("--objectives", type=_csv, default=list(d.objectives),
                   help="comma-separated objective names (default: mlm,gmlm,atd,dtd,cse)")
    p.add_argument("--user_modules", nargs="+", default=[], metavar="FILE_OR_MODULE",
                   help="Python files or modules to import first: they register your own objectives or samplers")
    p.add_argument("--sampler", default=d.sampler, help="objective sampler: mometas (default), uniform, round_robin, fixed, temperature, exp3")
    p.add_argument("--sampler_args", type=json.loads, default={},
                   help='extra sampler keyword arguments as JSON, e.g. \'{"weights": [2,1,1,1,1]}\' or \'{"prob_floor": 0.05}\'')
    p.add_argument("--meta_interval", type=int, default=d.meta_interval, help="optimizer steps between sampler updates (K)")
    p.add_argument("--meta_lr", type=float, default=d.meta_lr, help="SGD learning rate of the sampler's policy")
    p.add_argument("--meta_gamma", type=float, default=d.meta_gamma, help="entropy weight of the sampler's policy loss")
    p.add_argument("--meta_batch_size", type=int, default=d.meta_batch_size,
                   help="meta-validation sequences per objective per update, split across ranks")
    p.add_argument("--max_steps", type=int, default=d.max_steps, help="optimizer steps of the whole schedule")
    p.add_argument("--steps_this_run", type=int, default=None,
                   help="stop after this many steps with a checkpoint, without changing the schedule (resume later)")
    p.add_argument("--save_steps", type=int, default=d.save_steps, help="checkpoint every N optimizer steps (and at the end)")
    p.add_argument("--save_total_limit", type=int, default=d.save_total_limit,
                   help="keep only the newest N complete checkpoints, deleting older ones after each save (default: keep all)")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from a checkpoint: 'auto' (or no value) = latest in output_dir/checkpoints, a tag "
                        "there (step400), or a checkpoint directory path (another run's too)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of data order, corruption, dropout and the sampler")
    p.add_argument("--log_steps", type=int, default=d.log_steps, help="progress-bar refresh and console log interval")
    p.add_argument("--cache_dir", default=None,
                   help="tokenized-data cache (default: output_dir/cache); point runs on the same corpus at one to share it")
    p.add_argument("--num_proc", type=int, default=d.num_proc, help="processes for tokenizing with HF datasets")
    p.add_argument("--dist_timeout_minutes", type=float, default=d.dist_timeout_minutes,
                   help="collective timeout: a rank that died or hangs ends the run after this long")
    p.add_argument("--setup_timeout_minutes", type=float, default=d.setup_timeout_minutes,
                   help="how long the other ranks wait for rank 0's one-off work: training the tokenizer, "
                        "tokenizing the corpus, writing the HF export (default 24 hours)")
    p.add_argument("--max_skipped_steps", type=int, default=d.max_skipped_steps,
                   help="stop with an error, keeping the last checkpoint, after this many skips without an applied "
                   "update in between (micro-steps with a non-finite loss; bf16/fp32 updates with a non-finite gradient norm)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help="set by the deepspeed launcher")
    return p


def parse_args(argv=None) -> PretrainConfig:
    ns = build_arg_parser().parse_args(argv)
    values = {f.name: getattr(ns, f.name) for f in fields(PretrainConfig) if hasattr(ns, f.name)}
    return PretrainConfig(**values)


def import_user_module(spec: str):
    """Import a ``.py`` file (by path) or a module (dotted name) once; its registrations take effect."""
    import importlib
    import importlib.util
    import sys

    if spec.endswith(".py"):
        path = os.path.abspath(spec)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such file: {spec}")
        name = "mometas_user_" + os.path.splitext(os.path.basename(path))[0]
        if name in sys.modules:
            return sys.modules[name]
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    return importlib.import_module(spec)


def objective_names_problem(names: List[str]) -> Optional[str]:
    """What is wrong with a list of objective names (empty, unknown, repeated), or None."""
    from .objectives import available_objectives

    if not names:
        return "no objective given"
    unknown = [name for name in names if name not in available_objectives()]
    if unknown:
        return f"unknown objective(s) {', '.join(unknown)}; available: {', '.join(available_objectives())}"
    if len(set(names)) != len(names):
        return f"duplicate names in {','.join(names)}"
    return None


def validate_config(cfg: PretrainConfig) -> dict:
    """Check every flag that can be checked without doing work; return the parsed DeepSpeed config."""
    from .samplers import available_samplers, build_sampler

    def fail(flag, message):
        raise ConfigError(f"--{flag}: {message}")

    for module in cfg.user_modules:
        try:
            import_user_module(module)
        except Exception as exc:  # a user's file: report whatever it raised, naming it
            fail("user_modules", f"could not import {module}: {type(exc).__name__}: {exc}")

    if not cfg.deepspeed_config or not os.path.isfile(cfg.deepspeed_config):
        fail("deepspeed_config", f"file not found: {cfg.deepspeed_config}")
    ds_config = read_json_object(cfg.deepspeed_config, "--deepspeed_config")
    from .ds_config_check import check_ds_config  # strict types, no unknown top-level key

    check_ds_config(ds_config, cfg.deepspeed_config)
    if not cfg.train_files:
        fail("train_files", "no corpus given")
    if (cfg.model_name_or_path is None) == (cfg.model_config is None):
        fail("model_config", "give exactly one of --model_name_or_path (continual) or --model_config (from scratch)")
    if cfg.model_config is not None and cfg.model_config not in MODEL_PRESETS:
        if not os.path.isfile(cfg.model_config):
            fail("model_config", f"{cfg.model_config!r} is neither a preset ({', '.join(MODEL_PRESETS)}) nor a JSON file")
        fields = read_json_object(cfg.model_config, "--model_config")  # a BertConfig JSON: unreadable stops here
        if fields.get("model_type", "bert") != "bert":
            fail("model_config", f"{cfg.model_config} is a {fields['model_type']!r} config; mometas_ds trains BERT")
        from .model_config_check import check_model_config_fields  # strict types, no unknown field

        check_model_config_fields(fields, cfg.model_config)
        if fields.get("max_position_embeddings", cfg.seq_len) < cfg.seq_len:
            fail("seq_len", f"{cfg.seq_len} exceeds the max_position_embeddings ({fields['max_position_embeddings']}) "
                            f"of --model_config {cfg.model_config}")
    if cfg.model_name_or_path is not None and not os.path.isdir(cfg.model_name_or_path):
        fail("model_name_or_path", f"{cfg.model_name_or_path} is not a local directory")
    if cfg.tokenizer is None and cfg.train_tokenizer is None:
        tok_in_model = cfg.model_name_or_path and os.path.exists(os.path.join(cfg.model_name_or_path, "tokenizer_config.json"))
        if not tok_in_model:
            fail("tokenizer", "no tokenizer: give --tokenizer DIR or --train_tokenizer VOCAB_SIZE")
    if cfg.tokenizer is not None and cfg.train_tokenizer is not None:
        fail("tokenizer", "give --tokenizer or --train_tokenizer, not both")
    if cfg.tokenizer is not None and not os.path.isdir(cfg.tokenizer):
        fail("tokenizer", f"{cfg.tokenizer} is not a directory")
    if cfg.train_tokenizer is not None and cfg.train_tokenizer < 50:
        fail("train_tokenizer", f"vocabulary size must be >= 50, got {cfg.train_tokenizer}")
    if cfg.seq_len < 8:
        fail("seq_len", f"must be >= 8, got {cfg.seq_len}")
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
    if cfg.sampler not in available_samplers():
        fail("sampler", f"unknown sampler {cfg.sampler!r}; available: {', '.join(available_samplers())}")
    for flag in ("meta_interval", "meta_batch_size", "max_steps", "save_steps", "log_steps", "num_proc", "max_skipped_steps"):
        if getattr(cfg, flag) < 1:
            fail(flag, f"must be >= 1, got {getattr(cfg, flag)}")
    if not math.isfinite(cfg.meta_lr) or cfg.meta_lr <= 0:  # nan <= 0 is False
        fail("meta_lr", f"must be a finite number > 0, got {cfg.meta_lr}")
    if not math.isfinite(cfg.meta_gamma) or cfg.meta_gamma < 0:
        fail("meta_gamma", f"must be a finite number >= 0, got {cfg.meta_gamma}")
    if cfg.steps_this_run is not None and cfg.steps_this_run < 1:
        fail("steps_this_run", f"must be >= 1, got {cfg.steps_this_run}")
    if not math.isfinite(cfg.dist_timeout_minutes) or cfg.dist_timeout_minutes <= 0:
        fail("dist_timeout_minutes", f"must be a finite number > 0, got {cfg.dist_timeout_minutes}")
    if not math.isfinite(cfg.setup_timeout_minutes) or cfg.setup_timeout_minutes <= 0:
        fail("setup_timeout_minutes", f"must be a finite number > 0, got {cfg.setup_timeout_minutes}")
    _check_batch_fields(ds_config, cfg.deepspeed_config)
    _check_optimizer(ds_config, cfg.deepspeed_config)
    if (ds_config.get("checkpoint") or {}).get("writer") or (ds_config.get("datastates_ckpt") or {}).get("enabled"):
        # Checkpoints are published (COMPLETE) once every rank's save returned: a writer that finishes later
        # would let a resume take a checkpoint whose files are still being written.
        raise ConfigError(f"{cfg.deepspeed_config}: checkpoint.writer / datastates_ckpt (asynchronous checkpoint "
                          "writers) are not supported: remove them to use DeepSpeed's synchronous torch.save writer")
    if cfg.save_total_limit is not None and cfg.save_total_limit < 1:
        fail("save_total_limit", f"must be >= 1, got {cfg.save_total_limit}")
    if cfg.resume in (None, "", "none"):
        earlier = latest_complete_tag(os.path.join(cfg.output_dir, "checkpoints"))
        if earlier is not None:
            # Starting over here would overwrite that run's checkpoints and logs as this one reaches them.
            fail("resume", f"{cfg.output_dir} holds checkpoint {earlier} of an earlier run: add --resume to continue "
                           "it, or give a new --output_dir")
    elif cfg.resume != "auto":
        try:
            find_resume_checkpoint(os.path.join(cfg.output_dir, "checkpoints"), cfg.resume)
        except ValueError as exc:
            fail("resume", str(exc).split(": ", 1)[-1])
    # The sampler checks its own options: build one now so a bad --sampler_args stops the run here.
    try:
        build_sampler(cfg.sampler, num_objectives=len(cfg.objectives), seed=cfg.seed, interval=cfg.meta_interval,
                      **sampler_kwargs(cfg))
    except (TypeError, ValueError) as exc:
        fail("sampler_args", str(exc))
    return ds_config


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def bundled_ds_config(name: str) -> str:
    """Path of a DeepSpeed config shipped with mometas_ds (``ds_configs/NAME``): the copy a wheel
    installs inside the package (setup.py maps ds_configs/ to mometas_ds/ds_configs), else the
    source checkout's."""
    installed = os.path.join(_PACKAGE_DIR, "ds_configs", name)
    if os.path.isfile(installed):
        return installed
    return os.path.join(os.path.dirname(_PACKAGE_DIR), "ds_configs", name)


def read_json_object(path: str, flag: str, error: type = None) -> dict:
    """A JSON file holding an object; otherwise ``error`` (ConfigError) naming the flag and the file."""
    error = error or ConfigError
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise error(f"{flag}: cannot read {path} ({exc})") from None
    if not isinstance(value, dict):
        raise error(f"{flag}: {path} must hold a JSON object")
    return value


def read_model_config(model_dir: str) -> dict:
    """The config.json of a local HF checkpoint, as a dict; ConfigError naming the flag if unreadable."""
    return read_json_object(os.path.join(model_dir, "config.json"), "--model_name_or_path")


def check_tokenizer_fits_model(cfg: PretrainConfig, num_tokens: int) -> None:
    """The tokenizer must not have ids beyond the embedding rows (of the checkpoint, or of a
    --model_config JSON that sets vocab_size); checked before the corpus is tokenized."""
    if cfg.model_name_or_path is not None:
        vocab_size = read_model_config(cfg.model_name_or_path).get("vocab_size")
        flag, source = ("--tokenizer" if cfg.tokenizer else "--model_name_or_path"), cfg.model_name_or_path
    elif cfg.model_config not in MODEL_PRESETS:
        vocab_size = read_json_object(cfg.model_config, "--model_config").get("vocab_size")
        flag, source = "--model_config", cfg.model_config
    else:
        return  # a preset takes its vocab_size from the tokenizer
    if vocab_size is not None and num_tokens > vocab_size:
        raise ConfigError(f"{flag}: the tokenizer has {num_tokens} tokens but the embeddings of {source} hold {vocab_size}")


def sampler_kwargs(cfg: PretrainConfig) -> dict:
    """--sampler_args plus what the run's flags imply (MOMETAS's lr and gamma, a schedule's length)."""
    kwargs = dict(cfg.sampler_args)
    if cfg.sampler == "mometas":
        # One way to set each: a value here would silently override the flag (or be overridden).
        for key, flag in (("lr", "--meta_lr"), ("gamma", "--meta_gamma")):
            if key in kwargs:
                raise ValueError(f"{key!r} is set by {flag}, not here")
        kwargs.update(lr=cfg.meta_lr, gamma=cfg.meta_gamma)
    if cfg.sampler == "temperature":
        kwargs.setdefault("total_steps", cfg.max_steps)
    return kwargs


def _check_optimizer(ds_config: dict, path: str) -> None:
    optimizer = ds_config.get("optimizer", {})
    stage = ds_config.get("zero_optimization", {}).get("stage", 0)
    if isinstance(optimizer, dict) and "type" in optimizer:
        import torch
        from deepspeed.runtime.config import DEEPSPEED_OPTIMIZERS

        name = str(optimizer["type"])
        # What deepspeed.initialize accepts: its own optimizers (any case), else a torch.optim class.
        if name.lower() not in DEEPSPEED_OPTIMIZERS and not isinstance(getattr(torch.optim, name, None), type):
            raise ConfigError(f"{path}: optimizer.type {name!r} is neither a DeepSpeed optimizer "
                              f"({', '.join(DEEPSPEED_OPTIMIZERS)}) nor a torch.optim class")
    if isinstance(optimizer, dict) and str(optimizer.get("type", "")).lower() == "lamb" and stage:
        raise ConfigError(
            f"{path}: optimizer.type Lamb with zero_optimization.stage {stage}: ZeRO hands the optimizer flat "
            "partitions, so LAMB's per-layer trust ratio would span whole parameter groups (DeepSpeed lists LAMB "
            "as untested under ZeRO); use AdamW, or Lamb with stage 0"
        )


def _check_batch_fields(ds_config: dict, path: str, world_size: Optional[int] = None) -> Optional[int]:
    """Check DeepSpeed's three batch keys; with ``world_size``, return the micro-batch per rank.

    Any two of them may be given and DeepSpeed infers the third (train_batch_size alone means
    no accumulation); the inferred value must be a whole number.
    """
    micro = ds_config.get("train_micro_batch_size_per_gpu")
    gas = ds_config.get("gradient_accumulation_steps")
    total = ds_config.get("train_batch_size")
    for key, value in (("train_micro_batch_size_per_gpu", micro), ("gradient_accumulation_steps", gas), ("train_batch_size", total)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{path}: {key} must be a positive integer, got {value!r}")
    if micro is None and total is None:
        raise ConfigError(f"{path}: set train_micro_batch_size_per_gpu (and optionally gradient_accumulation_steps)")
    if world_size is None:
        return None
    if total is None:
        return micro
    if micro is not None and gas is not None:
        if total != micro * gas * world_size:
            raise ConfigError(
                f"{path}: train_batch_size={total} != train_micro_batch_size_per_gpu={micro} x "
                f"gradient_accumulation_steps={gas} x world_size={world_size}"
            )
        return micro
    given, key = (micro, "train_micro_batch_size_per_gpu") if micro is not None else (gas or 1, "gradient_accumulation_steps")
    if total % (given * world_size):
        missing = "gradient_accumulation_steps" if micro is not None else "train_micro_batch_size_per_gpu"
        raise ConfigError(
            f"{path}: train_batch_size={total} is not a multiple of {key}={given} x world_size={world_size}, "
            f"so {missing} cannot be inferred"
        )
    return micro if micro is not None else total // (given * world_size)


def check_world_size(cfg: PretrainConfig, ds_config: dict, world_size: int) -> None:
    """Checks that need the number of ranks; still before any work."""
    micro = _check_batch_fields(ds_config, cfg.deepspeed_config, world_size)
    _check_with_deepspeed(ds_config, cfg.deepspeed_config)
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


def _check_with_deepspeed(ds_config: dict, path: str) -> None:
    """Parse the config as deepspeed.initialize will, now rather than after the corpus is tokenized.

    Needs the process group (DeepSpeed reads the world size for its batch arithmetic)."""
    from deepspeed.runtime.config import DeepSpeedConfig

    try:
        DeepSpeedConfig(json.loads(json.dumps(ds_config)))
    except Exception as exc:  # pydantic's ValidationError names the key; DeepSpeed's asserts say what is wrong
        raise ConfigError(f"{path}: DeepSpeed rejects this config: {type(exc).__name__}: {exc}") from None


def run_identity(cfg: PretrainConfig, ds_config: dict, world_size: int) -> dict:
    """What a resumed run must share with the run that wrote its checkpoint, keyed by where it is set.

    A different value would silently mix two experiments (a policy learned for other objectives,
    another model's weights loaded over this one) or fail only deep inside DeepSpeed's load after
    the corpus work. Flags a resume may change (--max_steps, --save_steps, --steps_this_run, logging,
    timeouts, paths of the corpus and tokenizer) are left out.
    """
    micro = _check_batch_fields(ds_config, cfg.deepspeed_config, world_size)
    total = ds_config.get("train_batch_size")
    accumulation = total // (micro * world_size) if total else ds_config.get("gradient_accumulation_steps", 1)
    if (ds_config.get("bf16") or {}).get("enabled"):
        precision = "bf16"
    else:
        precision = "fp16" if (ds_config.get("fp16") or {}).get("enabled") else "fp32"
    identity = {
        "--objectives": list(cfg.objectives),
        "--sampler": cfg.sampler,
        "--sampler_args": dict(cfg.sampler_args),
        "--meta_interval": cfg.meta_interval,
        "--meta_batch_size": cfg.meta_batch_size,
        "--seed": cfg.seed,
        "--model_name_or_path": cfg.model_name_or_path,
        "--model_config": cfg.model_config,
        "--seq_len": cfg.seq_len,
        "--train_tokenizer": cfg.train_tokenizer,
        "number of ranks": world_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "zero_optimization.stage": (ds_config.get("zero_optimization") or {}).get("stage", 0),
        "precision (bf16/fp16)": precision,
    }
    if cfg.sampler == "mometas":
        identity.update({"--meta_lr": cfg.meta_lr, "--meta_gamma": cfg.meta_gamma})
    return json.loads(json.dumps(identity))  # as it reads back from the checkpoint (tuples -> lists)


def check_resume_matches(cfg: PretrainConfig, ds_config: dict, world_size: int) -> None:
    """With --resume, stop before any work if the checkpoint was written by a run set up differently."""
    try:
        found = find_resume_checkpoint(os.path.join(cfg.output_dir, "checkpoints"), cfg.resume)
    except ValueError:
        return  # validate_config reported it
    if found is None:
        return
    tag_dir = os.path.join(*found)
    saved = read_run_identity(tag_dir)
    if saved is None:  # written before checkpoints recorded their run's settings: compare what its client state holds
        from .safe_io import check_resume_objectives, read_client_state

        check_resume_objectives(read_client_state(tag_dir) or {}, cfg.objectives, tag_dir)
        return
    ours = run_identity(cfg, ds_config, world_size)
    differs = [key for key in ours if key in saved and saved[key] != ours[key]]
    if differs:
        where = {key: f"{cfg.deepspeed_config}: {key}" for key in ours if not key.startswith("-") and key != "number of ranks"}
        details = "; ".join(f"{where.get(key, key)} was {saved[key]!r}, now {ours[key]!r}" for key in differs)
        raise ConfigError(f"--resume {cfg.resume}: checkpoint {tag_dir} was written by a run with other settings: "
                          f"{details}. Resume with the same settings, or give a new --output_dir to start afresh")
