"""Cross-entropy over rows of logits in plain PyTorch: the same contract as the Triton kernel.

Computes in fp32 and, when asked, writes d(loss)/d(logits) during the forward pass, in place
where the dtypes allow, so it never holds more than one fp32 copy of the rows it is given.
"""
from __future__ import annotations

from typing import Optional, Union

import torch


def extra_bytes_per_logit(dtype: torch.dtype, write_grad: bool) -> int:
    """Working bytes per logit beyond the logits (and dlogits) themselves: one fp32 copy, unless
    the fp32 gradient buffer can serve as the working copy."""
    return 0 if (write_grad and dtype == torch.float32) else 4


def cross_entropy_rows(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int,
    dlogits: Optional[torch.Tensor] = None,
    grad_scale: Union[float, torch.Tensor] = 1.0,
    loss_out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-row loss (fp32; 0 on ignored rows) of ``logits`` [rows, classes] against ``target`` [rows],
    also written into ``loss_out`` (fp32 [rows]) when given.

    If ``dlogits`` is given (same shape and dtype as ``logits``; may be ``logits`` itself), it
    receives ``grad_scale * (softmax - onehot)``, zero on ignored rows. ``grad_scale`` may be a
    0-dim tensor on the logits' device (what the chunked callers pass, so nothing syncs).
    Targets must already be valid class ids or ``ignore_index``.
    """
    valid = target != ignore_index
    safe_target = torch.where(valid, target, 0)  # ignored rows read class 0; masked out below
    # Read the target logits before any in-place work overwrites them.
    target_logit = logits.gather(1, safe_target.unsqueeze(1)).squeeze(1).float()

    if dlogits is not None and dlogits.dtype == torch.float32:
        work = dlogits
        if work is not logits:
            work.copy_(logits)
    else:
        work = logits.to(torch.float32, copy=True)
    row_max = work.amax(dim=1, keepdim=True)
    work.sub_(row_max).exp_()
    sum_exp = work.sum(dim=1, keepdim=True)
    loss = torch.where(valid, (row_max + sum_exp.log()).squeeze(1) - target_logit, 0.0)
    if loss_out is not None:
        loss = loss_out.copy_(loss)
    if dlogits is None:
        return loss

    work.div_(sum_exp)  # softmax
    work.scatter_add_(1, safe_target.unsqueeze(1), torch.full_like(loss, -1.0).unsqueeze(1))
    work.mul_(valid.unsqueeze(1) * grad_scale)
    if work is not dlogits:
        dlogits.copy_(work)
    return loss


def scale_grads_(grads, grad_output: torch.Tensor) -> None:
    """Multiply each tensor in ``grads`` in place by the 0-dim ``grad_output`` (no host sync), in fp32 as
    the Triton kernel does (a half-precision factor could itself round or overflow)."""
    factor = grad_output.to(torch.float32)
    for grad in grads:
        if grad.dtype == torch.float32:
            grad.mul_(factor)
        else:
            grad.copy_(grad.float().mul_(factor))
