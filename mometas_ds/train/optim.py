"""Optimizer pieces: BERT's no-decay parameter groups, and a torch LAMB for where DeepSpeed's FusedLamb cannot run."""
from __future__ import annotations

import math
from typing import Iterable, List

import torch
from torch import nn


def bert_param_groups(model: nn.Module, weight_decay: float) -> List[dict]:
    """Biases and LayerNorm weights get no weight decay (as in BERT's original recipe)."""
    decay, no_decay = [], []
    seen = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name or param.dim() < 2:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al., 2019): Adam's update scaled per tensor by ||w|| / ||update||.

    Used when the DeepSpeed config asks for LAMB on a device where FusedLamb is unavailable (the CPU).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, max_coeff: float = 10.0, min_coeff: float = 0.01,
                 bias_correction: bool = True):
        if lr <= 0:
            raise ValueError(f"Lamb lr must be > 0, got {lr}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        max_coeff=max_coeff, min_coeff=min_coeff, bias_correction=bias_correction)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.float()
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                if group["bias_correction"]:
                    m_hat = exp_avg / (1 - beta1 ** state["step"])
                    v_hat = exp_avg_sq / (1 - beta2 ** state["step"])
                else:
                    m_hat, v_hat = exp_avg, exp_avg_sq
                update = m_hat / (v_hat.sqrt() + group["eps"])
                if group["weight_decay"]:
                    update = update + group["weight_decay"] * p.float()
                w_norm = p.float().norm()
                u_norm = update.norm()
                if w_norm > 0 and u_norm > 0:
                    trust = (w_norm / u_norm).clamp(group["min_coeff"], group["max_coeff"]).item()
                else:
                    trust = 1.0
                if not math.isfinite(trust):
                    trust = 1.0
                p.add_(update.to(p.dtype), alpha=-group["lr"] * trust)
        return loss
