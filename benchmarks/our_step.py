"""Our pre-training step on one objective, timed as mometas-bench builds it (the run's own TrainStep on a
DeepSpeed engine: corruption on the device, the objective's head, DeepSpeed's backward and step), with the
figures benchmarks/gpu_pretrain.sh compares side by side with the HF peer (benchmarks/hf_peer_step.py).

    python benchmarks/our_step.py --model large --seq_len 128 --micro_batch 32 \
        --deepspeed_config ds_configs/bert_large_zero2.json --torch_adam --json PATH [--profile_steps 3]
    python benchmarks/our_step.py ... --micro_batch max      # the largest micro-batch that fits
    python benchmarks/our_step.py --quick                    # CPU smoke mode

Every flag other than the ones below is mometas-bench's (``python -m mometas_ds.cli.bench --help``).
"""
from __future__ import annotations

import argparse
import gc
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_timing import (  # noqa: E402  (a script beside it)
    add_step_args, largest_fitting, median_step_seconds, print_and_append, profile_summary, throughput_figures,
)

from mometas_ds.bench.options import BenchError, parse_args  # noqa: E402
from mometas_ds.bench.runner import Bench  # noqa: E402
from mometas_ds.bench.synthetic import Discard  # noqa: E402
from mometas_ds.model import build_bert_config  # noqa: E402


def build(bench_argv, micro_batch: int):
    """A Bench (model, engine, arms) at ``micro_batch`` and the step() of its single-objective arm."""
    cfg = parse_args(bench_argv + ["--micro_batch", str(micro_batch)])
    bench = Bench(cfg)
    arm, trace = bench.arms["single"], Discard()

    def step() -> None:
        arm.optimizer_step(trace)

    return cfg, bench, step


def release(bench) -> None:
    """Drop a Bench's engine and model so the next size starts from free device memory."""
    bench.arms.clear()
    del bench.engine, bench.model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_args(p)
    args, bench_argv = p.parse_known_args(argv)
    quick = "--quick" in bench_argv
    bench_argv = bench_argv + ["--objectives", "mlm", "--single_objective", "mlm"]
    if args.json:
        try:
            with open(args.json, "a", encoding="utf-8"):
                pass
        except OSError as err:
            p.error(f"--json {args.json}: cannot write ({err.strerror})")
    try:
        parse_args(bench_argv)  # mometas-bench's own checks, before any model is built
        if args.micro_batch == "max":
            start = 4 if quick and args.start_micro_batch == 32 else args.start_micro_batch
            limit = 8 if quick and args.max_micro_batch == 1024 else args.max_micro_batch

            def fits(size: int) -> None:
                _, bench, step = build(bench_argv, size)
                try:
                    step()
                    step()
                finally:
                    release(bench)

            micro_batch = largest_fitting(fits, start, limit)
            if micro_batch is None:
                p.error(f"--micro_batch max: even {start} sequences do not fit")
        else:
            micro_batch = int(args.micro_batch)
        cfg, bench, step = build(bench_argv, micro_batch)
    except BenchError as err:
        p.error(str(err))
    except ValueError:
        p.error(f"--micro_batch: expected a positive integer or 'max', got {args.micro_batch!r}")
    device = bench.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timing = median_step_seconds(step, device, warmup=cfg.warmup_steps, rounds=cfg.rounds,
                                 steps_per_round=args.steps_per_round)
    sequences = bench.micro_batch * bench.gas * bench.world_size
    bert_config = build_bert_config(cfg.model, vocab_size=cfg.vocab_size)
    result = {
        "step": "mometas_ds_mlm", "model": cfg.model, "seq_len": cfg.seq_len, "micro_batch": bench.micro_batch,
        "gradient_accumulation_steps": bench.gas, "ranks": bench.world_size, "deepspeed_config": bench.ds_path,
        **throughput_figures(bert_config, cfg.seq_len, sequences, timing, device, args.peak_tflops),
    }
    if args.profile_steps:
        summary = profile_summary(step, device, steps=args.profile_steps)
        print(summary.pop("table"))
        result["profile"] = summary
    if bench.rank == 0:
        print_and_append(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
