"""Fused linear + cross-entropy: the vocabulary projection in row chunks (the Liger-Kernel approach).

For each chunk of rows: logits = hidden_chunk @ weight.T + bias, then the backend's
cross-entropy turns those logits into d(loss)/d(logits) in place, and the chunk's share of
the input, weight and bias gradients is computed at once. The [rows x vocab] logits never
exist whole; at most one chunk of them (CHUNK_BUDGET_BYTES, see chunked_cross_entropy.py) is alive.

Gradients are computed for grad_output = 1 during forward; backward only scales them (the
Triton backend skips even that on the device when grad_output is 1). So the
input, weight and bias gradients are alive from this forward to its backward (the weight's
size once, e.g. 60 MiB for a bf16 BERT vocabulary), instead of the logits and the loss's
saved softmax that plain autograd keeps over that span. Backward never reads the weight,
which suits ZeRO-3 (the gathered weight may be released after forward).
Precision: every GEMM accumulates in fp32; the CE math is fp32; the weight gradient is
accumulated across chunks in the weight's dtype (one rounding per chunk, as Liger-Kernel
does), since an fp32 accumulator would cost twice a bf16 weight's bytes, more than a chunk.
"""
from __future__ import annotations

from types import ModuleType
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from mometas_ds.kernels.chunked_cross_entropy import (
    count_valid_targets,
    grad_scale,
    reduce_loss,
    rows_per_chunk,
    take_saved,
)


def linear_cross_entropy_chunked(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    target: torch.Tensor,
    ignore_index: int,
    reduction: str,
    backend: ModuleType,
    need_hidden_grad: bool = False,
    need_weight_grad: bool = False,
    need_bias_grad: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Loss of ``hidden`` [rows, H] projected by ``weight`` [V, H] (+ ``bias`` [V]) against ``target`` [rows].

    Returns (loss, grad_hidden, grad_weight, grad_bias) for grad_output = 1; a gradient is None
    unless asked for.
    """
    n_rows = hidden.shape[0]
    vocab = weight.shape[0]
    write_grad = need_hidden_grad or need_weight_grad or need_bias_grad
    bytes_per_logit = hidden.element_size() + backend.extra_bytes_per_logit(hidden.dtype, write_grad)
    step = rows_per_chunk(n_rows, vocab, bytes_per_logit)
    multi_chunk = step < n_rows
    grad_hidden = grad_weight = grad_bias = None

    # Autocast would change the chunk's dtype under us; the inputs' dtypes are the compute dtypes.
    with torch.autocast(hidden.device.type, enabled=False):
        # The first chunk's projection is launched before the target bookkeeping: callers usually
        # have just synced (boolean-mask indexing of the masked rows), so on a GPU the small ops
        # below would otherwise run while the device sits idle; now they overlap the GEMM.
        first_logits = F.linear(hidden[:step], weight, bias) if n_rows else None
        scale = grad_scale(count_valid_targets(target, vocab, ignore_index), reduction)
        # Each chunk writes its rows' losses here; one sum at the end instead of a sum and an add per chunk.
        row_losses = torch.empty(n_rows, dtype=torch.float32, device=hidden.device)
        if need_hidden_grad:
            # Contiguous, whatever the inputs' strides: chunk rows are written with mm(out=).
            grad_hidden = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device)
        for start in range(0, n_rows, step):
            rows = slice(start, start + step)
            hidden_chunk = hidden[rows]
            logits = first_logits if start == 0 else F.linear(hidden_chunk, weight, bias)
            first_logits = None
            # With write_grad the logits buffer becomes d(loss)/d(logits) for these rows.
            backend.cross_entropy_rows(
                logits, target[rows], ignore_index, logits if write_grad else None, scale, row_losses[rows]
            )
            # The first chunk writes the gradient sums outright (no zero fill, no read of zeros); later
            # chunks accumulate. grad_bias sums in fp32 only when there are chunks to add up.
            if need_hidden_grad:
                torch.mm(logits, weight, out=grad_hidden[rows])
            if need_weight_grad:
                if grad_weight is None:
                    grad_weight = torch.mm(logits.t(), hidden_chunk)
                else:
                    grad_weight.addmm_(logits.t(), hidden_chunk)
            if need_bias_grad:
                if grad_bias is None:
                    grad_bias = logits.sum(dim=0, dtype=torch.float32 if multi_chunk else bias.dtype)
                else:
                    grad_bias += logits.sum(dim=0, dtype=torch.float32)
            del logits

    if need_weight_grad and grad_weight is None:  # no rows
        grad_weight = torch.zeros(weight.shape, dtype=weight.dtype, device=weight.device)
    if need_bias_grad:
        grad_bias = torch.zeros_like(bias) if grad_bias is None else grad_bias.to(bias.dtype)
    return reduce_loss(row_losses, scale, reduction), grad_hidden, grad_weight, grad_bias


class FusedLinearCrossEntropyFunction(torch.autograd.Function):
    """Autograd wrapper: forward computes the loss and every needed gradient; backward scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, ignore_index, reduction, backend):
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        loss, *grads = linear_cross_entropy_chunked(
            hidden, weight, bias, target, ignore_index, reduction, backend, need_hidden, need_weight, need_bias
        )
        ctx.grads = grads
        ctx.backend = backend
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        grads = take_saved(ctx, "grads")
        ctx.backend.scale_grads_([g for g in grads if g is not None], grad_output)
        return (*grads, None, None, None, None)
