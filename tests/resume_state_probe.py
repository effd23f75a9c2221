"""Resume a pre-training run, record the state it resumed with, then train on.

    RESUME_PROBE_OUT=OUT_PREFIX python tests/resume_state_probe.py PRETRAIN_ARGS...

(the prefix in the environment: the deepspeed launcher puts --local_rank before the script's own arguments)

Right after the Trainer is built (so after its --resume load, before any step), every rank writes
``OUT_PREFIX.rank<R>.pt``: the full (all-gathered) fp32 master weight and Adam moments of every parameter,
by name (DeepSpeed's safe_get_full_* API, so the partitioning of this run does not show; without ZeRO also the
optimizer's state_dict), the LR scheduler
state, the sampler state, the TrainState counters and its data position. Then it trains as mometas-pretrain
does.
"""
import os
import sys

import torch
from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

from mometas_ds.config import parse_args
from mometas_ds.train.trainer import Trainer


def main() -> None:
    out_prefix, args = os.environ["RESUME_PROBE_OUT"], sys.argv[1:]
    trainer = Trainer(parse_args(args))
    engine = trainer.engine
    params = {}
    zero = engine.zero_optimization_stage() > 0  # the safe_get_full_* API reads ZeRO's partitions (None without)
    for name, param in trainer.model.named_parameters() if zero else ():  # collectives: every rank, same order
        params[name] = {"fp32": safe_get_full_fp32_param(param).clone(),
                        "exp_avg": safe_get_full_optimizer_state(param, "exp_avg").clone(),
                        "exp_avg_sq": safe_get_full_optimizer_state(param, "exp_avg_sq").clone()}
    # Without ZeRO the optimizer is the torch one, its state replicated: its state_dict is comparable as it is.
    optimizer = engine.optimizer.state_dict() if engine.zero_optimization_stage() == 0 else None
    # The torch optimizer under ZeRO's wrapper: its groups' hyperparameters (weight decay per group) and Adam's
    # step count, which DeepSpeed's universal load sets apart from the moments.
    base = getattr(engine.optimizer, "optimizer", engine.optimizer)
    groups = [{k: v for k, v in group.items() if k != "params"} for group in base.param_groups]
    steps = sorted({float(state["step"]) for state in base.state.values() if "step" in state})
    torch.save({"params": params, "optimizer": optimizer, "param_groups": groups, "adam_steps": steps,
                "lr_scheduler": engine.lr_scheduler.state_dict(),
                "global_steps": engine.global_steps, "sampler": trainer.sampler.state_dict(),
                "train_state": trainer.state.state_dict(), "data": trainer.batches.state_dict(),
                "world_size": trainer.world_size, "micro_batch": trainer.micro_batch},
               f"{out_prefix}.rank{trainer.rank}.pt")
    trainer.train()


if __name__ == "__main__":
    main()
