"""Run pre-training and record, at every optimizer step, the gradient norm each head hands the optimizer.

    python tests/step_grads_probe.py OUT.json PRETRAIN_ARGS...

Writes a list with one entry per optimizer step: the objective trained, the head it uses, and the
full (all-gathered) gradient norm of every head's parameters just before ``engine.step()``.
"""
import json
import sys

import torch
from deepspeed.utils import safe_get_full_grad

from mometas_ds.config import parse_args
from mometas_ds.train.trainer import Trainer


def main() -> None:
    out_path, args = sys.argv[1], sys.argv[2:]
    trainer = Trainer(parse_args(args))
    engine = trainer.engine
    last = {}
    forward, step = engine.forward, engine.step

    def recording_forward(batch, objective):
        last["objective"] = objective
        return forward(batch, objective)

    records = []

    def recording_step(*a, **k):
        if engine.is_gradient_accumulation_boundary():
            norms = {}
            for head_name, head in trainer.model.heads.items():
                grads = [safe_get_full_grad(p) for p in head.parameters() if p.requires_grad]
                norms[head_name] = float(torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(g.float()) for g in grads if g is not None]
                                or [torch.zeros(())])))
            name = last["objective"]
            records.append({"objective": name, "head": trainer.objectives[name].head_name, "head_grad_norms": norms})
        return step(*a, **k)

    engine.forward, engine.step = recording_forward, recording_step
    trainer.train()
    if trainer.rank == 0:
        with open(out_path, "w") as f:
            json.dump(records, f)


if __name__ == "__main__":
    main()
