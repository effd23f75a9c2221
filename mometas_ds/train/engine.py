"""The DeepSpeed engine of a run: the model, its optimizer and schedule, from the DeepSpeed config."""
from __future__ import annotations

import json
import logging

import deepspeed
from deepspeed.accelerator import get_accelerator

from mometas_ds.train.optim import Lamb, bert_param_groups
from mometas_ds.train.ds_config import fit_schedule_to_max_steps

__all__ = ["build_engine", "fit_schedule_to_max_steps"]

logger = logging.getLogger("mometas_ds")


def build_engine(model, ds_config: dict, max_steps: int, rank: int = 0):
    """``deepspeed.initialize`` on a copy of ``ds_config`` whose schedule is fitted to ``max_steps``."""
    ds_config = json.loads(json.dumps(ds_config))
    fit_schedule_to_max_steps(ds_config, max_steps)
    opt_cfg = ds_config.get("optimizer", {})
    weight_decay = float(opt_cfg.get("params", {}).get("weight_decay", 0.01))
    groups = bert_param_groups(model, weight_decay)
    client_optimizer = None
    if opt_cfg.get("type", "").lower() == "lamb" and get_accelerator().device_name() == "cpu":
        # DeepSpeed's FusedLamb has no CPU kernel: same hyper-parameters, torch implementation.
        lamb_keys = ("lr", "betas", "eps", "weight_decay", "max_coeff", "min_coeff", "bias_correction")
        params = {k: v for k, v in opt_cfg.get("params", {}).items() if k in lamb_keys}
        client_optimizer = Lamb(groups, **params)
        del ds_config["optimizer"]
        # ZeRO accepts optimizers outside its tested list only when told to; ours is a plain torch.optim one.
        ds_config["zero_allow_untested_optimizer"] = True
        if rank == 0:
            logger.info("optimizer: torch LAMB (FusedLamb is not available on the CPU)")
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=groups if client_optimizer is None else None,
        optimizer=client_optimizer, config=ds_config,
    )
    return engine
