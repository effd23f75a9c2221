"""Schedulers with a total-steps field follow --max_steps: DeepSpeed's WarmupDecayLR and WarmupCosineLR get
``total_num_steps = --max_steps`` and keep the warm-up's fraction of the schedule (a config written for a
long run would otherwise leave a short one in warm-up, or decay a long one to its floor halfway). Light: no
DeepSpeed import, so preflight's checks can use it before anything heavy."""
from __future__ import annotations

from .errors import ConfigError

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
