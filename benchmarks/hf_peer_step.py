"""The peer step: transformers' BertForMaskedLM (SDPA attention) trained on a dense MLM batch with
torch's AdamW, as a plain HF user would (fp32 weights, bf16 autocast). Our pre-training step is
reported as a ratio to this one (benchmarks/gpu_pretrain.sh).

    python benchmarks/hf_peer_step.py --model large --seq_len 128 --micro_batch 32 --device cuda --json PATH
    python benchmarks/hf_peer_step.py --micro_batch max ...   # the largest micro-batch that fits
    python benchmarks/hf_peer_step.py --quick                  # CPU smoke mode: tiny model, a few steps

Figures: median seconds per step over timed rounds after warm-up, tokens/s, samples/s, MFU
(mometas_ds.bench.flops: matmul FLOPs, 3x forward, 15% of the tokens through the vocabulary head),
peak torch.cuda.max_memory_allocated.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from transformers import BertForMaskedLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_timing import (  # noqa: E402  (a script beside it)
    add_step_args, largest_fitting, median_step_seconds, print_and_append, profile_summary, throughput_figures,
)

from mometas_ds.model import MODEL_PRESETS, build_bert_config  # noqa: E402


def build(model: str, vocab_size: int, seq_len: int, micro_batch: int, device: torch.device, bf16: bool, seed: int):
    """The model, its optimizer and one step() closure on a fixed synthetic batch."""
    torch.manual_seed(seed)
    config = build_bert_config(model, vocab_size=vocab_size, seq_len=seq_len)
    net = BertForMaskedLM._from_config(config, attn_implementation="sdpa").to(device)
    net.train()
    fused = device.type == "cuda"  # torch's fused AdamW: one kernel per parameter group, no nvcc
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.01, fused=fused)
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(min(1000, vocab_size // 2), vocab_size, (micro_batch, seq_len), generator=generator)
    labels = torch.full_like(input_ids, -100)
    chosen = torch.rand(micro_batch, seq_len, generator=generator) < 0.15
    labels[chosen] = input_ids[chosen]
    input_ids[chosen] = 103  # [MASK]
    batch = {"input_ids": input_ids.to(device), "labels": labels.to(device),
             "attention_mask": torch.ones_like(input_ids).to(device)}
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)

    def step() -> None:
        with autocast:
            loss = net(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return config, step


def measure(args, micro_batch: int, device: torch.device) -> dict:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    config, step = build(args.model, args.vocab_size, args.seq_len, micro_batch, device, args.bf16, args.seed)
    timing = median_step_seconds(step, device, warmup=args.warmup, rounds=args.rounds,
                                 steps_per_round=args.steps_per_round)
    result = {"step": "hf_bert_for_masked_lm", "model": args.model, "seq_len": args.seq_len,
              "micro_batch": micro_batch, "bf16": args.bf16,
              **throughput_figures(config, args.seq_len, micro_batch, timing, device, args.peak_tflops)}
    if args.profile_steps:
        summary = profile_summary(step, device, steps=args.profile_steps)
        print(summary.pop("table"))
        result["profile"] = summary
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODEL_PRESETS), default="large", help="model preset")
    p.add_argument("--seq_len", type=int, default=128, help="tokens per sequence")
    p.add_argument("--vocab_size", type=int, default=30522, help="vocabulary (BERT: 30522)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    p.add_argument("--no_bf16", dest="bf16", action="store_false", help="fp32 instead of bf16 autocast")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before the rounds")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds; the figure is their median")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the synthetic batch")
    add_step_args(p)
    p.add_argument("--quick", action="store_true", help="CPU smoke mode: tiny model, seq 32, 2 rounds of 2 steps")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.seq_len, args.vocab_size = "tiny", 32, 1000
        args.warmup, args.rounds, args.steps_per_round = 1, 2, 2
        if args.micro_batch == "32":
            args.micro_batch = "4"
        if args.start_micro_batch == 32:
            args.start_micro_batch = 4
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    if args.json:
        try:
            with open(args.json, "a", encoding="utf-8"):
                pass
        except OSError as err:
            p.error(f"--json {args.json}: cannot write ({err.strerror})")
    if args.micro_batch == "max":
        micro_batch = largest_fitting(lambda n: build(args.model, args.vocab_size, args.seq_len, n, device,
                                                      args.bf16, args.seed)[1](), args.start_micro_batch,
                                   args.max_micro_batch)
        if micro_batch is None:
            p.error(f"--micro_batch max: even {args.start_micro_batch} sequences do not fit")
    else:
        try:
            micro_batch = int(args.micro_batch)
        except ValueError:
            p.error(f"--micro_batch: expected a positive integer or 'max', got {args.micro_batch!r}")
        if micro_batch < 1:
            p.error(f"--micro_batch: expected a positive integer or 'max', got {micro_batch}")
    print_and_append(measure(args, micro_batch, device), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
