"""Strict types for the DeepSpeed config fields mometas_ds relies on, and no unknown top-level key.

Hand-written because DeepSpeed gets these wrong for us: it reads most fields with plain dict
lookups, so ``"bf16": {"enabled": "false"}`` is a truthy string and trains in bf16, a string
``lr`` or ``gradient_clipping`` fails deep inside ``deepspeed.initialize`` (after the corpus is
tokenized), and a misspelt top-level key is ignored without a word. Everything here runs before
any work; the valid top-level names are the ones DeepSpeed's own config parser reads.
"""
from __future__ import annotations

import functools
import inspect
import json
from typing import Dict, Iterable, Optional

from mometas_ds.config.fields import (
    BOOL, INT, NON_NEGATIVE, NON_NEGATIVE_INT, NUMBER, OPTIONAL_STRING, POSITIVE_INT, STRING, Check, check_fields,
    is_int, is_number, suggestion,
)
from mometas_ds.errors import ConfigError

BETAS: Check = (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(is_number(b) and 0 <= b < 1 for b in v),
                "a list of two numbers in [0, 1), e.g. [0.9, 0.999]")
STAGE: Check = (lambda v: is_int(v) and v >= 0, "a whole number (0, 1, 2 or 3)")  # the range: DeepSpeed says
WARMUP_TYPE: Check = (lambda v: v in ("linear", "log"), '"linear" or "log"')
OBJECT: Check = (lambda v: isinstance(v, dict), "a JSON object")

# Top-level fields: every one mometas_ds reads itself or that decides how the engine trains.
TOP_LEVEL: Dict[str, Check] = {
    "train_batch_size": POSITIVE_INT,
    "train_micro_batch_size_per_gpu": POSITIVE_INT,
    "gradient_accumulation_steps": POSITIVE_INT,
    "gradient_clipping": NON_NEGATIVE,
    "steps_per_print": POSITIVE_INT,
    "wall_clock_breakdown": BOOL,
    "prescale_gradients": BOOL,
    "gradient_predivide_factor": NUMBER,
    "sparse_gradients": BOOL,
    "zero_allow_untested_optimizer": BOOL,
    "zero_force_ds_cpu_optimizer": BOOL,
    "memory_breakdown": BOOL,
    "dump_state": BOOL,
    "dataloader_drop_last": BOOL,
    "communication_data_type": OPTIONAL_STRING,
    "seq_parallel_communication_data_type": OPTIONAL_STRING,
}
for _section in ("optimizer", "scheduler", "zero_optimization", "bf16", "bfloat16", "fp16", "checkpoint",
                 "tensorboard", "wandb", "csv_monitor", "comet", "flops_profiler", "activation_checkpointing"):
    TOP_LEVEL[_section] = OBJECT

# Fields inside a section (a missing field is DeepSpeed's default; only present ones are checked).
SECTIONS: Dict[str, Dict[str, Check]] = {
    "bf16": {"enabled": BOOL, "immediate_grad_update": BOOL, "check_grad_overflow": BOOL},
    "bfloat16": {"enabled": BOOL},
    "fp16": {"enabled": BOOL, "auto_cast": BOOL, "loss_scale": NON_NEGATIVE, "initial_scale_power": NON_NEGATIVE_INT,
             "loss_scale_window": POSITIVE_INT, "hysteresis": POSITIVE_INT, "consecutive_hysteresis": BOOL,
             "min_loss_scale": NON_NEGATIVE},
    "zero_optimization": {"stage": STAGE, "contiguous_gradients": BOOL, "overlap_comm": BOOL, "reduce_scatter": BOOL,
                          "allgather_partitions": BOOL, "round_robin_gradients": BOOL,
                          "reduce_bucket_size": NON_NEGATIVE, "allgather_bucket_size": NON_NEGATIVE,
                          "stage3_gather_16bit_weights_on_model_save": BOOL},
    "optimizer": {"type": STRING, "params": OBJECT},
    "scheduler": {"type": STRING, "params": OBJECT},
    "checkpoint": {"tag_validation": STRING, "load_universal": BOOL, "use_node_local_storage": BOOL},
    "tensorboard": {"enabled": BOOL, "output_path": STRING, "job_name": STRING},
    "wandb": {"enabled": BOOL, "project": STRING, "group": OPTIONAL_STRING, "team": OPTIONAL_STRING},
    "csv_monitor": {"enabled": BOOL, "output_path": STRING, "job_name": STRING},
    "comet": {"enabled": BOOL},
    "flops_profiler": {"enabled": BOOL, "profile_step": POSITIVE_INT, "module_depth": INT, "top_modules": POSITIVE_INT,
                       "detailed": BOOL},
}

# optimizer.params: the keys of the optimizers mometas_ds builds (DeepSpeed's Adam/AdamW, our LAMB, torch.optim).
OPTIMIZER_PARAMS: Dict[str, Check] = {
    "lr": NON_NEGATIVE, "betas": BETAS, "eps": NON_NEGATIVE, "weight_decay": NON_NEGATIVE,
    "torch_adam": BOOL, "adam_w_mode": BOOL, "bias_correction": BOOL, "amsgrad": BOOL,
    "max_coeff": NUMBER, "min_coeff": NUMBER, "max_grad_norm": NON_NEGATIVE,
    "momentum": NON_NEGATIVE, "nesterov": BOOL, "dampening": NON_NEGATIVE, "fused": BOOL, "foreach": BOOL,
}
# scheduler.params of DeepSpeed's schedulers (WarmupLR, WarmupDecayLR, WarmupCosineLR, OneCycle, LRRangeTest).
SCHEDULER_PARAMS: Dict[str, Check] = {
    "warmup_min_lr": NON_NEGATIVE, "warmup_max_lr": NON_NEGATIVE, "warmup_num_steps": NON_NEGATIVE_INT,
    "total_num_steps": POSITIVE_INT, "warmup_type": WARMUP_TYPE, "warmup_min_ratio": NON_NEGATIVE,
    "cos_min_ratio": NON_NEGATIVE, "last_batch_iteration": INT,
    "cycle_min_lr": NON_NEGATIVE, "cycle_max_lr": NON_NEGATIVE, "decay_lr_rate": NON_NEGATIVE,
    "cycle_first_step_size": POSITIVE_INT, "cycle_second_step_size": POSITIVE_INT,
    "decay_step_size": NON_NEGATIVE_INT,
    "cycle_momentum": BOOL, "cycle_min_mom": NON_NEGATIVE, "cycle_max_mom": NON_NEGATIVE,
    "decay_mom_rate": NON_NEGATIVE,
    "lr_range_test_min_lr": NON_NEGATIVE, "lr_range_test_step_size": POSITIVE_INT,
    "lr_range_test_step_rate": NON_NEGATIVE, "lr_range_test_staircase": BOOL,
}


@functools.lru_cache(maxsize=1)
def deepspeed_top_level_keys() -> frozenset:
    """The top-level names DeepSpeed reads: recorded while its own parser (DeepSpeedConfig) reads a
    minimal config, plus the sections other DeepSpeed modules read from the same dict."""
    from deepspeed.profiling.constants import FLOPS_PROFILER  # heavy (DeepSpeed): not for --help
    from deepspeed.runtime.activation_checkpointing.config import ACT_CHKPT  # heavy (DeepSpeed): not for --help
    from deepspeed.runtime.config import DeepSpeedConfig  # heavy (DeepSpeed): not for --help
    from deepspeed.runtime.constants import BFLOAT16_OLD  # heavy (DeepSpeed): not for --help
    from deepspeed.runtime.swap_tensor.constants import AIO  # heavy (DeepSpeed): not for --help

    seen = set()

    class Recording(dict):
        def get(self, key, *default):
            seen.add(key)
            return super().get(key, *default)

        def __contains__(self, key):
            seen.add(key)
            return super().__contains__(key)

        def __getitem__(self, key):
            seen.add(key)
            return super().__getitem__(key)

    try:
        DeepSpeedConfig(Recording(train_batch_size=1, train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1))
    except Exception:  # the keys read before any failure are still the ones it knows
        pass
    seen = {key for key in seen if isinstance(key, str)}
    extra = {FLOPS_PROFILER, ACT_CHKPT, AIO, BFLOAT16_OLD, "autotuning", "sequence_parallel_size"}
    return frozenset(seen | extra | set(TOP_LEVEL))


def _check_params(params: dict, table: Dict[str, Check], where: str, path: str,
                  accepted: Iterable[str] = ()) -> None:
    """Known keys by type; an unknown key close to a known one is a typo (another optimizer's own
    keys, far from every known one, pass through to it, and so do those ``accepted``: the arguments of the
    torch.optim class named, e.g. Rprop's ``etas``)."""
    check_fields(params, table, where, path)
    accepted = set(accepted)
    for key in params:
        if key not in table and key not in accepted:
            hint = suggestion(key, table)
            if hint:
                raise ConfigError(f"{path}: unknown field {where}{key}{hint}")


def _torch_optimizer_args(optimizer) -> frozenset:
    """The keyword arguments of the torch.optim class an ``optimizer`` section names (DeepSpeed builds a
    torch.optim class for a type that is not one of its own), else none."""
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("type"), str):
        return frozenset()
    import torch  # heavy: only when a config names an optimizer

    cls = getattr(torch.optim, optimizer["type"], None)
    if not isinstance(cls, type):
        return frozenset()
    try:
        return frozenset(inspect.signature(cls.__init__).parameters) - {"self", "params"}
    except (TypeError, ValueError):
        return frozenset()


_BOOLEAN_STRINGS = {"true", "false", "yes", "no", "on", "off"}


def _check_booleans(section: dict, where: str, path: str) -> None:
    """Anywhere in the config, an ``enabled`` that is not a JSON boolean, or a string that spells one:
    DeepSpeed reads many switches with plain truth tests, so ``"enabled": "false"`` would switch it on."""
    for key, value in section.items():
        name = f"{where}{key}"
        if isinstance(value, dict):
            _check_booleans(value, f"{name}.", path)
        elif key == "enabled" and not isinstance(value, bool):
            raise ConfigError(f"{path}: {name} must be true or false (a JSON boolean, not a string), got {value!r}")
        elif isinstance(value, str) and value.strip().lower() in _BOOLEAN_STRINGS:
            raise ConfigError(f"{path}: {name} is the string {value!r}: write a JSON boolean (true / false, no "
                              "quotes); DeepSpeed would read any non-empty string as true")


def check_ds_config(ds_config: dict, path: str, known_keys: Optional[Iterable[str]] = None,
                    error: type = ConfigError) -> None:
    """Raise ``error`` (ConfigError) naming the file and the field for a mistyped field or an unknown top-level key."""
    try:
        _check_ds_config(ds_config, path, known_keys)
    except ConfigError as exc:
        if error is ConfigError:
            raise
        raise error(str(exc)) from None


def _check_ds_config(ds_config: dict, path: str, known_keys: Optional[Iterable[str]]) -> None:
    known = frozenset(known_keys) if known_keys is not None else deepspeed_top_level_keys()
    for key in ds_config:
        if key not in known:
            raise ConfigError(f"{path}: unknown top-level field {key!r}{suggestion(key, known)}; DeepSpeed would "
                              "ignore it without a word")
    check_fields(ds_config, TOP_LEVEL, "", path)
    for name, table in SECTIONS.items():
        section = ds_config.get(name)
        if isinstance(section, dict):
            check_fields(section, table, f"{name}.", path)
    for name, table in (("optimizer", OPTIMIZER_PARAMS), ("scheduler", SCHEDULER_PARAMS)):
        params = (ds_config.get(name) or {}).get("params")
        if isinstance(params, dict):
            accepted = _torch_optimizer_args(ds_config.get("optimizer")) if name == "optimizer" else ()
            _check_params(params, table, f"{name}.params.", path, accepted)
    _check_booleans(ds_config, "", path)  # after the typed fields: their messages say more


def check_batch_fields(ds_config: dict, path: str, world_size: Optional[int] = None) -> Optional[int]:
    """Check DeepSpeed's three batch keys; with ``world_size``, return the micro-batch per rank.

    Any two of them may be given and DeepSpeed infers the third (train_batch_size alone means
    no accumulation); the inferred value must be a whole number.
    """
    micro = ds_config.get("train_micro_batch_size_per_gpu")
    gas = ds_config.get("gradient_accumulation_steps")
    total = ds_config.get("train_batch_size")
    for key, value in (("train_micro_batch_size_per_gpu", micro), ("gradient_accumulation_steps", gas),
                       ("train_batch_size", total)):
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
    given, key = ((micro, "train_micro_batch_size_per_gpu") if micro is not None
                  else (gas or 1, "gradient_accumulation_steps"))
    if total % (given * world_size):
        missing = "gradient_accumulation_steps" if micro is not None else "train_micro_batch_size_per_gpu"
        raise ConfigError(
            f"{path}: train_batch_size={total} is not a multiple of {key}={given} x world_size={world_size}, "
            f"so {missing} cannot be inferred"
        )
    return micro if micro is not None else total // (given * world_size)


def check_optimizer(ds_config: dict, path: str) -> None:
    optimizer = ds_config.get("optimizer", {})
    stage = ds_config.get("zero_optimization", {}).get("stage", 0)
    if isinstance(optimizer, dict) and "type" in optimizer:
        # Here, not at the top: importing DeepSpeed takes seconds, and --help or a table of the options needs none
        # of it.
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


def check_with_deepspeed(ds_config: dict, path: str) -> None:
    """Parse the config as deepspeed.initialize will, now rather than after the corpus is tokenized.

    Needs the process group (DeepSpeed reads the world size for its batch arithmetic)."""
    from deepspeed.runtime.config import DeepSpeedConfig  # heavy: see check_optimizer

    try:
        DeepSpeedConfig(json.loads(json.dumps(ds_config)))
    except Exception as exc:  # pydantic's ValidationError names the key; DeepSpeed's asserts say what is wrong
        raise ConfigError(f"{path}: DeepSpeed rejects this config: {type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------- schedules fitted to --max_steps
# Schedulers with a total-steps field follow --max_steps: DeepSpeed's WarmupDecayLR and WarmupCosineLR get
# total_num_steps = --max_steps and keep the warm-up's fraction of the schedule (a config written for a long run
# would otherwise leave a short one in warm-up, or decay a long one to its floor halfway).
# The schedulers that end at total_num_steps (DeepSpeed's names).
FITTED = ("WarmupDecayLR", "WarmupCosineLR")


def fit_schedule_to_max_steps(ds_config: dict, max_steps: int) -> None:
    """Fit a FITTED scheduler's total_num_steps (and warmup_num_steps, in proportion) to ``max_steps``."""
    scheduler = ds_config.get("scheduler")
    if not scheduler or scheduler.get("type") not in FITTED:
        return
    params = scheduler.setdefault("params", {})
    total = params.get("total_num_steps")
    warmup = params.get("warmup_num_steps", 0)
    if total and total != max_steps:
        params["warmup_num_steps"] = max(1, round(warmup / total * max_steps)) if warmup else 0
        params["total_num_steps"] = max_steps


def check_schedule_fits(ds_config: dict, path: str) -> None:
    """A FITTED scheduler needs total_num_steps to fit from (without it DeepSpeed uses its own default, and the
    warm-up fraction is unknown)."""
    scheduler = ds_config.get("scheduler")
    if not isinstance(scheduler, dict) or scheduler.get("type") not in FITTED:
        return
    params = scheduler.get("params") or {}
    if "total_num_steps" not in params:
        raise ConfigError(f"{path}: scheduler {scheduler['type']} needs params.total_num_steps (it is fitted to "
                          "--max_steps, the warm-up keeping its fraction of it)")
