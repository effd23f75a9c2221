"""Strict types for the DeepSpeed config fields mometas_ds relies on, and no unknown top-level key.

Hand-written because DeepSpeed gets these wrong for us: it reads most fields with plain dict
lookups, so ``"bf16": {"enabled": "false"}`` is a truthy string and trains in bf16, a string
``lr`` or ``gradient_clipping`` fails deep inside ``deepspeed.initialize`` (after the corpus is
tokenized), and a misspelt top-level key is ignored without a word. Everything here runs before
any work; the valid top-level names are the ones DeepSpeed's own config parser reads.
"""
from __future__ import annotations

import difflib
import functools
import inspect
import math
from typing import Callable, Dict, Iterable, Optional, Tuple

from .errors import ConfigError

# A type check: (predicate, what the message says the value must be).
Check = Tuple[Callable[[object], bool], str]


def _is_bool(value) -> bool:
    return isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


BOOL: Check = (_is_bool, "true or false (a JSON boolean, not a string)")
INT: Check = (_is_int, "a whole number")
POSITIVE_INT: Check = (lambda v: _is_int(v) and v >= 1, "a positive whole number")
NON_NEGATIVE_INT: Check = (lambda v: _is_int(v) and v >= 0, "a whole number >= 0")
NUMBER: Check = (_is_number, "a finite number (not a string)")
NON_NEGATIVE: Check = (lambda v: _is_number(v) and v >= 0, "a finite number >= 0")
STRING: Check = (lambda v: isinstance(v, str), "a string")
OPTIONAL_STRING: Check = (lambda v: v is None or isinstance(v, str), "a string or null")
BETAS: Check = (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v),
                "a list of two numbers in [0, 1), e.g. [0.9, 0.999]")
STAGE: Check = (lambda v: _is_int(v) and v >= 0, "a whole number (0, 1, 2 or 3)")  # the range: DeepSpeed says
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


def suggestion(name: str, valid: Iterable[str]) -> str:
    """' (did you mean X?)' for the nearest valid name, or ''."""
    close = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _check_fields(section: dict, table: Dict[str, Check], where: str, path: str) -> None:
    for key, (ok, must_be) in table.items():
        if key in section and not ok(section[key]):
            raise ConfigError(f"{path}: {where}{key} must be {must_be}, got {section[key]!r}")


def _check_params(params: dict, table: Dict[str, Check], where: str, path: str,
                  accepted: Iterable[str] = ()) -> None:
    """Known keys by type; an unknown key close to a known one is a typo (another optimizer's own
    keys, far from every known one, pass through to it, and so do those ``accepted``: the arguments of the
    torch.optim class named, e.g. Rprop's ``etas``)."""
    _check_fields(params, table, where, path)
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
    _check_fields(ds_config, TOP_LEVEL, "", path)
    for name, table in SECTIONS.items():
        section = ds_config.get(name)
        if isinstance(section, dict):
            _check_fields(section, table, f"{name}.", path)
    for name, table in (("optimizer", OPTIMIZER_PARAMS), ("scheduler", SCHEDULER_PARAMS)):
        params = (ds_config.get(name) or {}).get("params")
        if isinstance(params, dict):
            accepted = _torch_optimizer_args(ds_config.get("optimizer")) if name == "optimizer" else ()
            _check_params(params, table, f"{name}.params.", path, accepted)
    _check_booleans(ds_config, "", path)  # after the typed fields: their messages say more
