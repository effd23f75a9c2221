"""Plain, unchunked PyTorch losses: what the kernels are checked against (tests, benchmark).

Same semantics as the kernels: class dimension last, CE computed in fp32, 'mean' over
non-ignored targets with 0 (not NaN) when all are ignored.
"""
from __future__ import annotations

import torch.nn.functional as F


def reference_cross_entropy(logits, target, ignore_index=-100, reduction="mean"):
    loss_sum = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=ignore_index, reduction="sum"
    )
    if reduction == "sum":
        return loss_sum
    return loss_sum / (target != ignore_index).sum().clamp(min=1)


def reference_linear_cross_entropy(hidden, weight, target, bias=None, ignore_index=-100, reduction="mean"):
    return reference_cross_entropy(F.linear(hidden, weight, bias), target, ignore_index, reduction)
