"""Cross-entropy on logits that already exist, with the gradient computed in the forward pass.

Shared by both backends (``backend`` is the module ``cross_entropy_triton`` or
``cross_entropy_torch``): rows are processed in chunks sized by ``CHUNK_BUDGET_BYTES``, each
chunk's d(loss)/d(logits) is written during the forward pass, and backward scales it.
"""
from __future__ import annotations

from types import ModuleType
from typing import Optional, Tuple

import torch

# Working memory of one chunk of rows: its logits plus whatever fp32 copy the backend needs
# (Triton: none; torch: one fp32 copy, except when it computes an fp32 gradient in place).
# 64 MiB keeps the fused vocabulary head at a few chunks for a BERT batch (~1230 masked rows x
# 30522 classes: 2 chunks in bf16 with Triton, 3 in fp32), so each GEMM stays large, while the
# head never holds the whole [rows x vocab] logits. Set this module attribute to trade memory
# for fewer, larger chunks (benchmarks/bench_kernels.py --chunk-budget-mib measures the trade).
CHUNK_BUDGET_BYTES = 64 * 2**20

REDUCTIONS = ("mean", "sum")
FP16_GRAD_SCALE = 2.0**15  # |softmax - onehot| <= 1, so the scaled fp16 gradient stays below fp16's max


def rows_per_chunk(n_rows: int, n_classes: int, bytes_per_logit: int) -> int:
    """Rows per chunk so a chunk's working bytes stay under CHUNK_BUDGET_BYTES, balanced over chunks."""
    max_rows = max(1, CHUNK_BUDGET_BYTES // max(1, n_classes * bytes_per_logit))
    n_chunks = max(1, -(-n_rows // max_rows))
    return max(1, -(-n_rows // n_chunks))


def count_valid_targets(target: torch.Tensor, n_classes: int, ignore_index: int) -> torch.Tensor:
    """Number of targets that are not ``ignore_index``, as a 0-dim fp32 tensor on target's device
    (exact up to 2**24 rows; fp32 because the count is only ever used as a divisor).

    Targets that are neither ignore_index nor a class id in [0, n_classes): ValueError on CPU
    (and any device but CUDA). On CUDA the check is a device-side assert (torch._assert_async,
    as F.cross_entropy does for a bad target), so the call never waits on the GPU: a host sync
    here would stall the launch queue of every kernel after it. A failed assert surfaces at a
    later CUDA call as a RuntimeError and leaves the CUDA context unusable.
    """
    valid = target != ignore_index
    out_of_range = valid & ((target < 0) | (target >= n_classes))
    if target.device.type == "cuda":
        torch._assert_async(
            ~out_of_range.any(),
            f"target holds value(s) outside [0, {n_classes}) that are not ignore_index={ignore_index}",
        )
    elif out_of_range.any():
        bad = target[out_of_range]
        raise ValueError(
            f"target holds {bad.numel()} value(s) outside [0, {n_classes}) that are not ignore_index={ignore_index} "
            f"(e.g. {bad[0].item()})"
        )
    return valid.sum(dtype=torch.float32)


def grad_scale(n_valid: torch.Tensor, reduction: str) -> torch.Tensor:
    """d(loss)/d(sum of row losses) as a 0-dim fp32 tensor on n_valid's device (never a Python float,
    which would need a host sync): 1 / max(n_valid, 1) for 'mean', 1 for 'sum'."""
    if reduction == "mean":
        return n_valid.clamp(min=1).reciprocal_()
    return torch.ones((), dtype=torch.float32, device=n_valid.device)


def reduce_loss(row_losses: torch.Tensor, scale: torch.Tensor, reduction: str) -> torch.Tensor:
    """The loss from every row's loss (0 on ignored rows): 'sum', or 'mean' over the non-ignored
    rows by the ``grad_scale`` factor (0 when every row is ignored). No host sync."""
    loss_sum = row_losses.sum()
    return loss_sum * scale if reduction == "mean" else loss_sum


def cross_entropy_chunked(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int,
    reduction: str,
    backend: ModuleType,
    write_grad: bool,
) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Loss of ``logits`` [rows, classes] and, if ``write_grad``, d(loss)/d(logits) in the logits' dtype,
    and the factor backward must still apply to that gradient (None when it holds it already).

    fp16 gradients are written as FP16_GRAD_SCALE * (softmax - onehot) instead of (softmax - onehot)/n:
    small entries divided by a large n underflow fp16 before backward's grad_output (DeepSpeed's loss
    scale) could lift them, while |softmax - onehot| <= 1 keeps the scaled values in range; backward
    applies grad_output / (n * FP16_GRAD_SCALE) in fp32, so the result is what fp16 autograd stores.
    """
    n_rows, n_classes = logits.shape
    scale = grad_scale(count_valid_targets(target, n_classes, ignore_index), reduction)
    if write_grad and logits.dtype == torch.float16:
        kernel_scale, deferred = torch.full_like(scale, FP16_GRAD_SCALE), scale / FP16_GRAD_SCALE
    else:
        kernel_scale, deferred = scale, None
    dlogits = torch.empty_like(logits) if write_grad else None
    extra = backend.extra_bytes_per_logit(logits.dtype, write_grad)
    step = max(1, n_rows) if extra == 0 else rows_per_chunk(n_rows, n_classes, extra)
    # Each chunk writes its rows' losses here; one sum at the end instead of a sum and an add per chunk.
    row_losses = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
    for start in range(0, n_rows, step):
        rows = slice(start, start + step)
        chunk_grad = dlogits[rows] if write_grad else None
        backend.cross_entropy_rows(logits[rows], target[rows], ignore_index, chunk_grad, kernel_scale,
                                   row_losses[rows])
    return reduce_loss(row_losses, scale, reduction), dlogits, deferred


def take_saved(ctx, name: str):
    """Hand out a gradient saved in forward exactly once (backward scales it in place)."""
    if torch.is_grad_enabled():  # true inside backward only under create_graph=True
        raise RuntimeError(
            "mometas_ds.kernels: double backward (create_graph=True) is not supported: the gradient is computed "
            "in forward as a constant, so its own gradient would silently be dropped; use F.cross_entropy there"
        )
    saved = getattr(ctx, name)
    if saved is None:
        raise RuntimeError(
            "mometas_ds.kernels: backward through this loss ran twice; its gradient is computed in forward "
            "and consumed by the first backward (retain_graph is not supported)"
        )
    setattr(ctx, name, None)
    return saved


class CrossEntropyFunction(torch.autograd.Function):
    """Autograd wrapper: forward writes d(loss)/d(logits); backward multiplies it by grad_output."""

    @staticmethod
    def forward(ctx, logits, target, ignore_index, reduction, backend):
        loss, dlogits, deferred = cross_entropy_chunked(logits, target, ignore_index, reduction, backend,
                                                        write_grad=True)
        ctx.dlogits = dlogits
        ctx.deferred = deferred
        ctx.backend = backend
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        dlogits = take_saved(ctx, "dlogits")
        factor = grad_output if ctx.deferred is None else grad_output.float() * ctx.deferred
        ctx.backend.scale_grads_([dlogits], factor)
        return dlogits, None, None, None, None
