"""Model FLOPs of a BERT pre-training step, and model FLOPs utilisation (MFU).

Counted as matrix-multiply FLOPs (2 per multiply-add), the convention of the MFU literature
(PaLM, Megatron): per encoder layer and sequence of ``s`` tokens with hidden size ``h`` and
intermediate size ``f``

    Q, K, V and output projections   8 s h^2
    feed-forward (two GEMMs)         4 s h f
    attention scores and values      4 s^2 h

and per predicted (masked) row of a vocabulary head ``2 h^2 + 2 h V`` (transform + decoder).
A training step is 3x its forward (the backward computes two GEMMs per forward GEMM).
Embedding look-ups, layer norms, softmax and activation recomputation are not counted, so the
figure is model FLOPs, not hardware FLOPs. docs/benchmarks.md quotes this formula.
"""
from __future__ import annotations

from typing import Optional

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, FLOP/s.
PEAK_BF16_FLOPS = {
    "H200": 989.4e12,
    "H100 PCIe": 756.0e12,
    "H100": 989.4e12,  # SXM
    "A100": 312.0e12,
}


def encoder_forward_flops(num_layers: int, hidden: int, intermediate: int, seq_len: int) -> int:
    """Forward matmul FLOPs of the encoder for one sequence of ``seq_len`` tokens."""
    s, h, f = seq_len, hidden, intermediate
    per_layer = 8 * s * h * h + 4 * s * h * f + 4 * s * s * h
    return num_layers * per_layer


def vocab_head_forward_flops(hidden: int, vocab_size: int, rows: float) -> float:
    """Forward FLOPs of an mlm-style head (dense transform + tied decoder) on ``rows`` predicted rows."""
    return rows * (2 * hidden * hidden + 2 * hidden * vocab_size)


def pretrain_step_flops(config, seq_len: int, sequences: int, predicted_fraction: float = 0.15) -> float:
    """Model FLOPs of one mlm training step (forward + backward) over ``sequences`` sequences.

    ``config`` is a transformers BertConfig (or anything with its size fields); the vocabulary
    head runs on ``predicted_fraction`` of the tokens (mlm's 15%).
    """
    forward = encoder_forward_flops(config.num_hidden_layers, config.hidden_size, config.intermediate_size, seq_len)
    forward += vocab_head_forward_flops(config.hidden_size, config.vocab_size, predicted_fraction * seq_len)
    return 3.0 * forward * sequences


def peak_flops(device_name: str) -> Optional[float]:
    """The dense bf16 peak of a known GPU from its ``torch.cuda.get_device_name``; None if unknown."""
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):  # "H100 PCIe" before "H100"
        if key in device_name:
            return PEAK_BF16_FLOPS[key]
    return None


def mfu(flops_per_step: float, step_seconds: float, peak: Optional[float]) -> Optional[float]:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak; None without a peak."""
    if peak is None or step_seconds <= 0:
        return None
    return flops_per_step / step_seconds / peak
