"""Cross-entropy over rows of logits as a Triton kernel (the Liger-Kernel design).

One program per row walks the class dimension in blocks twice: first an online softmax
(running max and rescaled running sum of exponentials) gives the row's log-sum-exp, then
a second pass writes d(loss)/d(logits) = grad_scale * (softmax - onehot). Computing the
gradient in the forward pass makes the backward pass a multiply by a scalar, and lets the
gradient overwrite the logits in place.

Import this module only after deciding on TRITON_INTERPRET: ``triton.jit`` reads it when the
kernel is defined (the package ``__init__`` imports it lazily for that reason).

The kernel calls only Triton builtins. ``tl.max``/``tl.sum``/``tl.zeros`` are themselves
``@triton.jit`` functions, and when triton was first imported without TRITON_INTERPRET=1
(transformers and deepspeed import it) the interpreter cannot call them. So the reductions
are spelled as what ``tl.max``/``tl.sum`` expand to, ``tl.reduce`` with triton's own combine
functions, which compile identically and which the interpreter maps to numpy.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

# Largest class block one program holds (Liger-Kernel's cap): 32768 fp32 values over
# 32 warps is 32 registers per thread. Wider rows loop over several blocks.
MAX_BLOCK = 32768

_max_combine = tl.standard._elementwise_max
_sum_combine = tl.standard._sum_combine


def extra_bytes_per_logit(dtype: torch.dtype, write_grad: bool) -> int:
    """Working bytes per logit beyond the logits (and dlogits) themselves: none, it works in registers."""
    return 0


@triton.jit
def _cross_entropy_rows_kernel(
    logits_ptr,
    logits_row_stride,
    dlogits_ptr,
    dlogits_row_stride,
    target_ptr,
    loss_ptr,
    n_classes,
    ignore_index,
    grad_scale_ptr,
    BLOCK: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    logits_ptr += row * logits_row_stride
    dlogits_ptr += row * dlogits_row_stride
    target = tl.load(target_ptr + row)

    if target == ignore_index:
        tl.store(loss_ptr + row, 0.0)
        if WRITE_GRAD:
            for start in range(0, n_classes, BLOCK):
                offsets = start + tl.arange(0, BLOCK)
                tl.store(dlogits_ptr + offsets, tl.full([BLOCK], 0.0, tl.float32), mask=offsets < n_classes)
        return

    # Pass 1: online softmax over class blocks -> log-sum-exp in fp32.
    running_max = -float("inf")
    running_sum = 0.0
    for start in range(0, n_classes, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        x = tl.load(logits_ptr + offsets, mask=offsets < n_classes, other=-float("inf")).to(tl.float32)
        new_max = tl.maximum(running_max, tl.reduce(x, 0, _max_combine))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.reduce(tl.exp(x - new_max), 0, _sum_combine)
        running_max = new_max
    lse = running_max + tl.log(running_sum)
    target_logit = tl.load(logits_ptr + target).to(tl.float32)
    tl.store(loss_ptr + row, lse - target_logit)

    # Pass 2: the gradient, written over the logits when dlogits_ptr aliases them. The scale is
    # read from device memory (1/n_valid for 'mean') so the host never waits for the count.
    if WRITE_GRAD:
        grad_scale = tl.load(grad_scale_ptr)
        for start in range(0, n_classes, BLOCK):
            offsets = start + tl.arange(0, BLOCK)
            mask = offsets < n_classes
            x = tl.load(logits_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            grad = tl.exp(x - lse)
            grad = tl.where(offsets == target, grad - 1.0, grad) * grad_scale
            tl.store(dlogits_ptr + offsets, grad, mask=mask)


@triton.jit
def _scale_block(x_ptr, n_elements, block, scale, BLOCK: tl.constexpr):
    offsets = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n_elements
    x = tl.load(x_ptr + offsets, mask=mask).to(tl.float32)
    tl.store(x_ptr + offsets, x * scale, mask=mask)


@triton.jit
def _scale_unless_one_kernel(x0_ptr, n0, x1_ptr, n1, x2_ptr, n2, scale_ptr, BLOCK: tl.constexpr):
    # Up to three tensors in one launch (the fused head's input, weight and bias gradients): each
    # Python-side Triton launch costs the host tens of microseconds. Every program reads the scale
    # from device memory and leaves at once when it is 1, so the common grad_output of 1 costs a
    # launch, not a read and write of a weight-sized gradient.
    scale = tl.load(scale_ptr)
    if scale == 1.0:
        return
    block = tl.program_id(0)
    blocks0 = (n0 + BLOCK - 1) // BLOCK
    blocks1 = (n1 + BLOCK - 1) // BLOCK
    if block < blocks0:
        _scale_block(x0_ptr, n0, block, scale, BLOCK)
    elif block < blocks0 + blocks1:
        _scale_block(x1_ptr, n1, block - blocks0, scale, BLOCK)
    else:
        _scale_block(x2_ptr, n2, block - blocks0 - blocks1, scale, BLOCK)


# True when the kernels were defined for the interpreter, i.e. they run on CPU tensors.
INTERPRETED = isinstance(_cross_entropy_rows_kernel, InterpretedFunction)
SCALE_BLOCK = 4096
TENSORS_PER_SCALE_LAUNCH = 3


def scale_grads_(grads, grad_output: torch.Tensor) -> None:
    """Multiply each tensor in ``grads`` in place by the 0-dim ``grad_output``, on the device.

    The kernel skips the memory traffic when grad_output is 1 (a plain ``loss.backward()``)
    without the host ever reading grad_output: checking it on the host would be a sync.
    """
    scale = grad_output.detach().reshape(()).to(torch.float32)
    flat = []
    for grad in grads:
        if grad.numel() == 0:
            continue
        if grad.is_contiguous():
            flat.append(grad)
        else:  # the kernel walks memory flat; gradients made here never take this path
            grad.mul_(scale)
    for first in range(0, len(flat), TENSORS_PER_SCALE_LAUNCH):
        group = flat[first:first + TENSORS_PER_SCALE_LAUNCH]
        sizes = [grad.numel() for grad in group]
        n_blocks = sum(triton.cdiv(n, SCALE_BLOCK) for n in sizes)
        while len(group) < TENSORS_PER_SCALE_LAUNCH:  # unused slots: no blocks, any valid pointer
            group.append(group[0])
            sizes.append(0)
        _scale_unless_one_kernel[(n_blocks,)](
            group[0], sizes[0], group[1], sizes[1], group[2], sizes[2], scale, BLOCK=SCALE_BLOCK
        )


def cross_entropy_rows(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int,
    dlogits: Optional[torch.Tensor] = None,
    grad_scale: Union[float, torch.Tensor] = 1.0,
    loss_out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-row loss (fp32; 0 on ignored rows) of ``logits`` [rows, classes] against ``target`` [rows],
    written into ``loss_out`` (a contiguous fp32 [rows] tensor) when given.

    If ``dlogits`` is given (same shape and dtype as ``logits``; may be ``logits`` itself), it
    receives ``grad_scale * (softmax - onehot)``, zero on ignored rows. ``grad_scale`` is best a
    0-dim fp32 tensor on the logits' device (the kernel loads it; nothing syncs); a float is
    copied into one.
    Targets must already be valid class ids or ``ignore_index``; rows must be unit-stride.
    """
    n_rows, n_classes = logits.shape
    loss = torch.empty(n_rows, dtype=torch.float32, device=logits.device) if loss_out is None else loss_out
    if n_rows == 0:
        return loss
    target = target.contiguous()
    write_grad = dlogits is not None
    grad_out = dlogits if write_grad else logits  # unused pointer when not writing the gradient
    if not isinstance(grad_scale, torch.Tensor):
        grad_scale = torch.full((), float(grad_scale), dtype=torch.float32, device=logits.device)
    elif grad_scale.dtype != torch.float32 or grad_scale.device != logits.device:
        grad_scale = grad_scale.to(device=logits.device, dtype=torch.float32)
    block = min(MAX_BLOCK, triton.next_power_of_2(n_classes))
    num_warps = min(32, max(1, block // 256))
    _cross_entropy_rows_kernel[(n_rows,)](
        logits,
        logits.stride(0),
        grad_out,
        grad_out.stride(0),
        target,
        loss,
        n_classes,
        ignore_index,
        grad_scale,
        BLOCK=block,
        WRITE_GRAD=write_grad,
        num_warps=num_warps,
    )
    return loss
