"""DeepSpeed checks DeepSpeed's config: before the corpus is read, the run's config goes through
``deepspeed.initialize`` and one training step on a tiny stand-in model with the run's two parameter groups
(build_engine, the path the real model takes), so that whatever DeepSpeed rejects — at initialize or at its
first step — stops the run in preflight (exit 2, naming the file and DeepSpeed's own message) instead of
after the corpus is tokenized.

Our own checks stay for what DeepSpeed accepts but the trainer must not (ds_config_check: string booleans,
unknown keys; here: sections the trainer does not honour, and a monitor whose package is not installed,
which would otherwise fail — or, for the trial, write a stray TensorBoard run — inside initialize).
"""
from __future__ import annotations

import contextlib
import copy
import gc
import importlib.util
import logging
from typing import Optional

import torch
from torch import nn

from mometas_ds.errors import ConfigError

# Sections DeepSpeed reads but the trainer does not honour: refused, not silently ignored.
NOT_HONOURED = {
    "data_efficiency": "the trainer never hands DeepSpeed a dataset, so data sampling and routing "
                       "(curriculum learning, random-LTD) would not run",
    "curriculum_learning": "the trainer never hands DeepSpeed a dataset or the seqlen curriculum's batch "
                           "truncation, so the curriculum would not run",
}

# Monitors: the package each needs, and the extra that installs it (setup.py).
MONITORS = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "comet": ("comet_ml", None),
}


class StandIn(nn.Module):
    """Two tiny layers named so that bert_param_groups makes the run's two groups (decay / no decay)."""

    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(8, 8)
        self.LayerNorm = nn.LayerNorm(8)

    def forward(self, x):
        return self.LayerNorm(self.dense(x)).float().pow(2).mean()


def check_sections(ds_config: dict, path: str) -> None:
    """Refuse sections the trainer does not honour, and monitors whose package is missing (naming the extra)."""
    for key, why in NOT_HONOURED.items():
        if key in ds_config:
            raise ConfigError(f"{path}: {key} is not supported: {why}; remove the section")
    for key, (package, extra) in MONITORS.items():
        section = ds_config.get(key)
        if isinstance(section, dict) and section.get("enabled") is True and importlib.util.find_spec(package) is None:
            how = f"pip install 'mometas_ds[{extra}]'" if extra else f"pip install {package}"
            raise ConfigError(f"{path}: {key}.enabled is true but {package} is not installed: {how}, or set "
                              f"{key}.enabled to false")


def trial_batch(ds_config: dict) -> dict:
    """The config with one micro-batch per optimizer step, so that one backward reaches the optimizer's step
    (the batch arithmetic itself is DeepSpeedConfig's, checked with the real numbers in check_world_size)."""
    trial = copy.deepcopy(ds_config)
    trial.pop("train_batch_size", None)
    trial["train_micro_batch_size_per_gpu"] = 1
    trial["gradient_accumulation_steps"] = 1
    return trial


def _trial_config(ds_config: dict) -> dict:
    """The run's config with one micro-batch per step and what would leave traces of the trial switched off:
    monitors (files, runs), the flops profiler (a report), timers and dumps (log lines)."""
    trial = trial_batch(ds_config)
    for key in ("tensorboard", "wandb", "comet", "csv_monitor", "flops_profiler"):
        if isinstance(trial.get(key), dict):
            trial[key] = {**trial[key], "enabled": False}
    for key in ("wall_clock_breakdown", "memory_breakdown", "dump_state"):
        if key in trial:
            trial[key] = False
    trial["steps_per_print"] = 10**9
    return trial


@contextlib.contextmanager
def _quiet():
    """DeepSpeed logs its whole config at initialize: once, for the real engine, is enough."""
    ds_logger = logging.getLogger("DeepSpeed")
    level = ds_logger.level
    ds_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        ds_logger.setLevel(level)


def _hint(ds_config: dict) -> str:
    """What we know about a failure whose DeepSpeed message says little."""
    optimizer = ds_config.get("optimizer")
    name = str(optimizer.get("type", "")).lower() if isinstance(optimizer, dict) else ""
    stage = (ds_config.get("zero_optimization") or {}).get("stage", 0)
    if name == "adagrad" and stage in (1, 2):
        return (" (DeepSpeed's Adagrad under ZeRO stage 1/2 fails with more than one parameter group, and "
                "mometas_ds always passes two: decay and no decay; use stage 0 or another optimizer)")
    if not optimizer:
        return " (the config has no optimizer section: add one, e.g. {\"type\": \"AdamW\", \"params\": {\"lr\": 1e-4}})"
    return ""


def trial_initialize(ds_config: dict, path: str, max_steps: int, rank: int = 0) -> None:
    """``deepspeed.initialize`` and one step (forward, backward, optimizer step) on the stand-in model, as
    build_engine runs the real one; any failure is a ConfigError naming ``path`` and DeepSpeed's message.

    Every rank calls it (ZeRO partitions the stand-in across the process group like the real model)."""
    from mometas_ds.train.engine import build_engine  # heavy (DeepSpeed): not for --help

    check_sections(ds_config, path)
    engine: Optional[object] = None
    try:
        with _quiet():
            torch.manual_seed(0)
            engine = build_engine(StandIn(), _trial_config(ds_config), max_steps, rank=1)
            dtype = next(engine.module.parameters()).dtype
            x = torch.ones(2, 8, dtype=dtype, device=engine.device)
            loss = engine(x)
            engine.backward(loss)
            engine.step()
    except ConfigError:
        raise
    except Exception as exc:  # DeepSpeed's asserts, pydantic's ValidationError, torch's TypeError: all say what
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(f"{path}: DeepSpeed rejects this config (tried on a stand-in model before reading the "
                          f"corpus): {type(exc).__name__}: {message}{_hint(ds_config)}") from None
    finally:
        if engine is not None and hasattr(engine, "destroy"):
            with contextlib.suppress(Exception):
                engine.destroy()
        del engine
        gc.collect()
