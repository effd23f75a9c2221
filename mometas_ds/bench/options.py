"""mometas-bench's settings: the command line, its checks, and the DeepSpeed config the arms train with."""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, field
from typing import List, Optional

from mometas_ds.config.choices import MIN_SEQ_LEN
from mometas_ds.config import bundled_ds_config, read_json_object

from mometas_ds.train.ds_config import check_batch_fields

from mometas_ds.objectives import objective_names_problem
from mometas_ds.model import MODEL_PRESETS
from mometas_ds.objectives import DEFAULT_OBJECTIVES

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPU_CONFIG = bundled_ds_config("cpu_demo.json")
GPU_CONFIG = bundled_ds_config("bert_base_zero2.json")
ARMS = ["single", "uniform", "mometas"]
# --quick: sized to finish in a few minutes on a 2-core CPU with 1 or 2 ranks.
# Its ratio of meta-validation forwards to training steps is the paper's:
# (8 / 8) x 5 per 25 steps = (128 / 32) x 5 per 100.
QUICK = dict(model="tiny", seq_len=32, interval=25, meta_batch_size=8, rounds=4, warmup_steps=3, probe_reps=3)
DEFAULTS = dict(model="tiny", seq_len=128, interval=100, meta_batch_size=128, rounds=5, warmup_steps=10, probe_reps=5)


class BenchError(ValueError):
    """A bad flag; the message names it."""


@dataclass
class BenchConfig:
    model: str = DEFAULTS["model"]
    seq_len: int = DEFAULTS["seq_len"]
    micro_batch: Optional[int] = None  # None: the DeepSpeed config's train_micro_batch_size_per_gpu
    interval: int = DEFAULTS["interval"]
    meta_batch_size: int = DEFAULTS["meta_batch_size"]
    objectives: List[str] = field(default_factory=lambda: list(DEFAULT_OBJECTIVES))
    single_objective: str = "mlm"
    deepspeed_config: Optional[str] = None  # None: cpu_demo.json on the CPU, bert_base_zero2.json on a GPU
    rounds: int = DEFAULTS["rounds"]
    block_steps: Optional[int] = None  # None: --interval (one sampler update per MOMETAS block)
    turn_steps: int = 1
    warmup_steps: int = DEFAULTS["warmup_steps"]
    probe_reps: int = DEFAULTS["probe_reps"]
    vocab_size: int = 30522
    meta_lr: float = 0.1
    meta_gamma: float = 2.0
    seed: int = 1234
    torch_adam: bool = False
    quick: bool = False
    ranks: Optional[int] = None
    json: Optional[str] = None
    argv: List[str] = field(default_factory=list)  # the command line, for the record


def _csv(value: str) -> List[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mometas-bench",
        description="Samples/s and tokens/s of one objective, uniform sampling and MOMETAS on the same model and "
        "DeepSpeed config (interleaved rounds, medians); MOMETAS's overhead against uniform, its breakdown, "
        "and the overhead predicted from the config.",
    )
    p.add_argument("--model", default=None, choices=sorted(MODEL_PRESETS),
                   help=f"model preset (default {DEFAULTS['model']}; --quick: {QUICK['model']})")
    p.add_argument("--seq_len", type=int, default=None,
                   help=f"tokens per sequence (default {DEFAULTS['seq_len']}; --quick: {QUICK['seq_len']})")
    p.add_argument("--micro_batch", type=int, default=None,
                   help="sequences per micro-batch per rank; overrides the DeepSpeed config's "
                   "train_micro_batch_size_per_gpu")
    p.add_argument("--interval", type=int, default=None,
                   help=f"optimizer steps between MOMETAS updates (default {DEFAULTS['interval']}; "
                   f"--quick: {QUICK['interval']})")
    p.add_argument("--meta_batch_size", type=int, default=None,
                   help="meta-validation sequences per objective per update, split across ranks "
                   f"(default {DEFAULTS['meta_batch_size']}; --quick: {QUICK['meta_batch_size']})")
    p.add_argument("--objectives", type=_csv, default=list(DEFAULT_OBJECTIVES),
                   help="comma-separated objectives of the uniform and MOMETAS arms (default: mlm,gmlm,atd,dtd,cse)")
    p.add_argument("--single_objective", default=None,
                   help="objective of the single-objective arm (default: mlm if among --objectives, else the first)")
    p.add_argument("--deepspeed_config", "--deepspeed-config", dest="deepspeed_config", default=None,
                   help="DeepSpeed JSON config (default: ds_configs/cpu_demo.json on the CPU, "
                   "ds_configs/bert_base_zero2.json on a GPU)")
    p.add_argument("--rounds", type=int, default=None,
                   help=f"interleaved rounds; figures are medians over them (default {DEFAULTS['rounds']}; "
                   f"--quick: {QUICK['rounds']})")
    p.add_argument("--block_steps", type=int, default=None,
                   help="optimizer steps per arm per round (the arms take turns within it), a multiple of --interval "
                   "(default: --interval)")
    p.add_argument("--turn_steps", type=int, default=1,
                   help="consecutive steps of one arm before the next arm's turn (random arm order per turn)")
    p.add_argument("--warmup_steps", type=int, default=None, help="untimed steps of each arm before the rounds")
    p.add_argument("--probe_reps", type=int, default=None,
                   help="eval forwards of each objective per round in the forward-cost probe")
    p.add_argument("--vocab_size", type=int, default=30522,
                   help="vocabulary of the synthetic tokens and the model (BERT: 30522)")
    p.add_argument("--meta_lr", type=float, default=0.1, help="MOMETAS policy learning rate")
    p.add_argument("--meta_gamma", type=float, default=2.0, help="MOMETAS entropy weight")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--torch_adam", action="store_true",
                   help="set the config's AdamW to torch.optim.AdamW (\"torch_adam\": true): no JIT build of "
                   "DeepSpeed's FusedAdam, which needs nvcc; the same optimizer in every arm")
    p.add_argument("--quick", action="store_true",
                   help="small settings that finish in a few minutes on a 2-core CPU "
                   "(flags given explicitly still win)")
    p.add_argument("--ranks", type=int, default=None,
                   help="run on N ranks: re-launches this command through the deepspeed launcher "
                   "(default: as launched)")
    p.add_argument("--json", default=None, metavar="PATH", help="write every figure to this JSON file")
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help="set by the deepspeed launcher")
    return p


def parse_args(argv=None) -> BenchConfig:
    ns = build_arg_parser().parse_args(argv)
    preset = QUICK if ns.quick else DEFAULTS
    values = {}
    for key in BenchConfig.__dataclass_fields__:
        value = getattr(ns, key, None)
        if value is None and key in preset:
            value = preset[key]
        if value is not None:
            values[key] = value
    if ns.single_objective is None:
        objectives = values.get("objectives", list(DEFAULT_OBJECTIVES))
        values["single_objective"] = "mlm" if "mlm" in objectives else (objectives[0] if objectives else "mlm")
    cfg = BenchConfig(**values)
    given = argv if argv is not None else sys.argv[1:]
    cfg.argv = [a for a in given if not a.startswith(("--local_rank", "--local-rank"))]
    if cfg.block_steps is None:
        cfg.block_steps = cfg.interval
    validate(cfg)
    return cfg


def validate(cfg: BenchConfig) -> None:
    def fail(flag, message):
        raise BenchError(f"--{flag}: {message}")

    for flag in ("seq_len", "interval", "meta_batch_size", "rounds", "block_steps", "turn_steps", "probe_reps"):
        if getattr(cfg, flag) < 1:
            fail(flag, f"must be >= 1, got {getattr(cfg, flag)}")
    if cfg.seq_len < MIN_SEQ_LEN:
        fail("seq_len", f"must be >= {MIN_SEQ_LEN}, got {cfg.seq_len}")
    if cfg.warmup_steps < 0:
        fail("warmup_steps", f"must be >= 0, got {cfg.warmup_steps}")
    if cfg.micro_batch is not None and cfg.micro_batch < 1:
        fail("micro_batch", f"must be >= 1, got {cfg.micro_batch}")
    if cfg.ranks is not None and cfg.ranks < 1:
        fail("ranks", f"must be >= 1, got {cfg.ranks}")
    if cfg.ranks is not None and cfg.meta_batch_size % cfg.ranks:
        fail("meta_batch_size",
             f"{cfg.meta_batch_size} sequences per objective do not divide across --ranks {cfg.ranks}")
    if cfg.block_steps % cfg.interval:
        fail("block_steps", f"{cfg.block_steps} is not a multiple of --interval {cfg.interval}: every MOMETAS block "
             "must hold whole update intervals, or its cost depends on where the block falls")
    if cfg.vocab_size < 200:
        fail("vocab_size", f"must be >= 200, got {cfg.vocab_size}")
    problem = objective_names_problem(cfg.objectives)
    if problem:
        fail("objectives", problem)
    if cfg.single_objective not in cfg.objectives:
        fail("single_objective", f"{cfg.single_objective!r} is not one of --objectives {','.join(cfg.objectives)}")
    if cfg.deepspeed_config is not None and not os.path.isfile(cfg.deepspeed_config):
        fail("deepspeed_config", f"file not found: {cfg.deepspeed_config}")
    if cfg.deepspeed_config is not None:  # strict field types, no unknown top-level key (issue 21)
        from mometas_ds.train.ds_config import check_ds_config

        check_ds_config(read_json_object(cfg.deepspeed_config, "--deepspeed_config", BenchError),
                        cfg.deepspeed_config, error=BenchError)
    for flag in ("meta_lr", "meta_gamma"):
        if not math.isfinite(getattr(cfg, flag)) or getattr(cfg, flag) < 0 or (flag == "meta_lr" and cfg.meta_lr == 0):
            fail(flag, f"must be a finite number {'>' if flag == 'meta_lr' else '>='} 0, got {getattr(cfg, flag)}")




def load_ds_config(path: str, micro_batch: Optional[int], world_size: int, torch_adam: bool = False) -> dict:
    ds_config = read_json_object(path, "--deepspeed_config", BenchError)
    if micro_batch is not None:
        ds_config["train_micro_batch_size_per_gpu"] = micro_batch
    if "train_micro_batch_size_per_gpu" not in ds_config:
        raise BenchError(f"--deepspeed_config: {path} has no train_micro_batch_size_per_gpu; give --micro_batch")
    if "train_batch_size" in ds_config:  # keep it consistent with the (possibly overridden) micro batch
        ds_config["train_batch_size"] = (ds_config["train_micro_batch_size_per_gpu"]
                                         * ds_config.get("gradient_accumulation_steps", 1) * world_size)
    if torch_adam:
        optimizer = ds_config.get("optimizer", {})
        if optimizer.get("type", "").lower() not in ("adam", "adamw"):
            raise BenchError(f"--torch_adam: {path} does not use Adam/AdamW (optimizer type {optimizer.get('type')!r})")
        optimizer.setdefault("params", {})["torch_adam"] = True
    check_batch_fields(ds_config, path, world_size)
    return ds_config
