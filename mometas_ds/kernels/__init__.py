"""Loss kernels for the objective heads: one cross-entropy for every head, and a fused
linear + cross-entropy for the vocabulary head that never holds the whole [rows x vocab] logits.

Backends (same algorithm, gradients computed chunk by chunk during the forward pass):
- ``triton``: the Triton kernel of ``cross_entropy_triton`` on each chunk. Runs on CUDA
  tensors, and on CPU tensors when TRITON_INTERPRET=1 was set before the kernel was imported.
- ``torch``: plain PyTorch ops on each chunk (``cross_entropy_torch``).
- ``auto``: ``triton`` where it can run on the tensors' device, else ``torch``; logged once.

Semantics: class dimension last (logits [..., C], target [...]); ``reduction`` 'mean'
averages over non-ignored targets (0 when all are ignored, with zero gradients) or 'sum';
the loss is fp32; gradients come back in the inputs' dtypes.

No host-device sync on CUDA tensors: the count of non-ignored targets and the gradient scale
stay 0-dim device tensors (the Triton kernel loads the scale). So a target that is neither
ignore_index nor a class id raises ValueError on CPU tensors, but on CUDA tensors it trips a
device-side assert (as in F.cross_entropy), reported at a later CUDA call as a RuntimeError.
"""
from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType
from typing import Optional

import torch

from mometas_ds.kernels import cross_entropy_torch
from mometas_ds.kernels.chunked_cross_entropy import REDUCTIONS, CrossEntropyFunction, cross_entropy_chunked
from mometas_ds.kernels.fused_linear_ce import FusedLinearCrossEntropyFunction, linear_cross_entropy_chunked

__all__ = ["cross_entropy", "fused_linear_cross_entropy", "resolve_backend"]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "triton", "torch")
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_logged_choices = set()


def _triton_module_for(device: torch.device) -> Optional[ModuleType]:
    """The Triton backend module if its kernel can run on ``device``, else None."""
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return None
    if device.type not in ("cpu", "cuda"):
        return None
    try:
        module = importlib.import_module("mometas_ds.kernels.cross_entropy_triton")
    except ImportError:
        return None
    # A kernel compiled for the GPU cannot take CPU tensors, even if TRITON_INTERPRET was set later.
    if device.type == "cpu" and not module.INTERPRETED:
        return None
    return module


def resolve_backend(backend: str, device: torch.device) -> ModuleType:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return cross_entropy_torch
    triton_module = _triton_module_for(device)
    if backend == "triton":
        if triton_module is None:
            raise ValueError(
                f"backend='triton' cannot run on device {device}: needs triton and a CUDA device, "
                "or TRITON_INTERPRET=1 set before import for CPU tensors"
            )
        return triton_module
    choice = ("triton" if triton_module is not None else "torch", device.type)
    if choice not in _logged_choices:
        _logged_choices.add(choice)
        logger.info("mometas_ds.kernels: backend='auto' uses %s on %s tensors", *choice)
    return triton_module if triton_module is not None else cross_entropy_torch


def _check_tensors(**tensors) -> None:
    for name, tensor in tensors.items():
        if tensor is not None and not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")


def _check_common(target: torch.Tensor, ignore_index: int, reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class ids, got dtype {target.dtype}")


def _check_float(name: str, tensor: torch.Tensor) -> None:
    if tensor.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32, bfloat16 or float16, got {tensor.dtype}")


def cross_entropy(logits, target, ignore_index=-100, reduction="mean", backend="auto"):
    """Cross-entropy of ``logits`` [..., C] against class ids ``target`` [...]; a 0-dim fp32 loss."""
    _check_tensors(logits=logits, target=target)
    _check_common(target, ignore_index, reduction)
    _check_float("logits", logits)
    if logits.dim() < 1 or tuple(target.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"target shape {tuple(target.shape)} must equal logits shape without its class dimension "
            f"{tuple(logits.shape[:-1])} (logits [..., C], class dimension last)"
        )
    if logits.shape[-1] == 0:
        raise ValueError(f"logits shape {tuple(logits.shape)} has no classes")
    if target.device != logits.device:
        raise ValueError(f"target is on {target.device} but logits on {logits.device}")
    module = resolve_backend(backend, logits.device)
    logits_2d = logits.reshape(-1, logits.shape[-1])
    if logits_2d.stride(-1) != 1:
        logits_2d = logits_2d.contiguous()
    target_1d = target.reshape(-1).long()
    if torch.is_grad_enabled() and logits.requires_grad:
        return CrossEntropyFunction.apply(logits_2d, target_1d, ignore_index, reduction, module)
    loss, _, _ = cross_entropy_chunked(logits_2d, target_1d, ignore_index, reduction, module, write_grad=False)
    return loss


def fused_linear_cross_entropy(hidden, weight, target, bias=None, ignore_index=-100, reduction="mean", backend="auto"):
    """Cross-entropy of ``hidden @ weight.T + bias`` against ``target`` without the whole logits.

    hidden [..., H], weight [V, H], bias [V] or None, target [...] (class ids or ignore_index).
    Pass only the rows that carry a target (e.g. the masked positions) to skip the rest.
    Hidden, weight and bias must share a dtype; that dtype is the compute dtype of the GEMMs.
    """
    _check_tensors(hidden=hidden, weight=weight, target=target, bias=bias)
    _check_common(target, ignore_index, reduction)
    _check_float("hidden", hidden)
    if weight.dim() != 2 or weight.shape[0] == 0:
        raise ValueError(f"weight must be [vocab, hidden] with vocab >= 1, got shape {tuple(weight.shape)}")
    if hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden's last dimension ({hidden.shape[-1] if hidden.dim() else 'none'}; hidden shape "
                         f"{tuple(hidden.shape)}) must equal weight.shape[1]={weight.shape[1]}")
    if tuple(target.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"target shape {tuple(target.shape)} must equal hidden.shape[:-1]={tuple(hidden.shape[:-1])}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be [vocab]={weight.shape[0]}, got shape {tuple(bias.shape)}")
    for name, tensor in (("weight", weight), ("bias", bias)):
        if tensor is not None and tensor.dtype != hidden.dtype:
            raise ValueError(f"{name} dtype {tensor.dtype} differs from hidden dtype {hidden.dtype}")
    for name, tensor in (("weight", weight), ("target", target), ("bias", bias)):
        if tensor is not None and tensor.device != hidden.device:
            raise ValueError(f"{name} is on {tensor.device} but hidden on {hidden.device}")

    module = resolve_backend(backend, hidden.device)
    hidden_2d = hidden.reshape(-1, hidden.shape[-1])
    target_1d = target.reshape(-1).long()
    needs_grad = any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    if torch.is_grad_enabled() and needs_grad:
        return FusedLinearCrossEntropyFunction.apply(hidden_2d, weight, bias, target_1d, ignore_index, reduction,
                                                     module)
    loss, *_ = linear_cross_entropy_chunked(hidden_2d, weight, bias, target_1d, ignore_index, reduction, module)
    return loss
