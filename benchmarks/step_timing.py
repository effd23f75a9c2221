"""Timing pieces shared by the step benchmarks: median step time over rounds, the largest
micro-batch that fits, and a torch.profiler summary (top kernels, share of idle device time).

Every function takes a ``step()`` callable that runs one full training step (forward, backward,
optimizer), so what is timed is the real step.
"""
from __future__ import annotations

import json
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_step_seconds(step: Callable[[], None], device: torch.device, *, warmup: int, rounds: int,
                        steps_per_round: int) -> Dict[str, float]:
    """Median (and min/max) seconds per step over ``rounds`` timed rounds after ``warmup`` steps."""
    for _ in range(warmup):
        step()
    synchronize(device)
    per_step: List[float] = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps_per_round):
            step()
        synchronize(device)
        per_step.append((time.perf_counter() - start) / steps_per_round)
    return {"median_s": statistics.median(per_step), "min_s": min(per_step), "max_s": max(per_step),
            "rounds": rounds, "steps_per_round": steps_per_round}


def add_step_args(p) -> None:
    """The flags both step benchmarks take: the micro-batch (or its 'max' search), the timing, MFU, JSON."""
    p.add_argument("--micro_batch", default="32", help="sequences per micro-batch, or 'max': the largest that fits "
                   "(doubling from --start_micro_batch up to --max_micro_batch)")
    p.add_argument("--start_micro_batch", type=int, default=32, help="first size of the 'max' search")
    p.add_argument("--max_micro_batch", type=int, default=1024, help="upper bound of the 'max' search")
    p.add_argument("--steps_per_round", type=int, default=5, help="steps per timed round")
    p.add_argument("--profile_steps", type=int, default=0, help="also profile this many steps (torch.profiler)")
    p.add_argument("--peak_tflops", type=float, default=None, help="peak dense bf16 TFLOP/s for MFU "
                   "(default: from the GPU's name, see mometas_ds.bench.flops)")
    p.add_argument("--json", metavar="PATH", help="append the figures as one JSON line to PATH")


def throughput_figures(config, seq_len: int, sequences: int, timing: Dict[str, float], device: torch.device,
                       peak_tflops: Optional[float] = None) -> Dict:
    """Samples/s, tokens/s, model FLOPs, MFU and peak memory of a step over ``sequences`` sequences, from its
    median time (``timing`` from median_step_seconds) and the BertConfig ``config``."""
    from mometas_ds.bench.flops import mfu, peak_flops, pretrain_step_flops

    seconds = timing["median_s"]
    flops = pretrain_step_flops(config, seq_len, sequences)
    cuda = device.type == "cuda"
    peak = peak_tflops * 1e12 if peak_tflops else (peak_flops(torch.cuda.get_device_name(device)) if cuda else None)
    return {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu", **timing,
        "samples_per_s": sequences / seconds, "tokens_per_s": sequences * seq_len / seconds,
        "model_flops_per_step": flops, "achieved_tflops": flops / seconds / 1e12, "mfu": mfu(flops, seconds, peak),
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
    }


def print_and_append(result: Dict, json_path: Optional[str]) -> None:
    """One JSON line on stdout, and appended to ``json_path`` if given."""
    print(json.dumps(result))
    if json_path:
        with open(json_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(result) + "\n")


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def largest_fitting(try_size: Callable[[int], None], start: int, limit: int) -> Optional[int]:
    """Doubles the micro-batch from ``start`` up to ``limit`` while ``try_size(n)`` runs without an
    out-of-memory error; returns the largest size that ran (None if even ``start`` did not)."""
    best = None
    size = start
    while size <= limit:
        try:
            try_size(size)
        except RuntimeError as err:
            if not is_out_of_memory(err):
                raise
            break
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        best = size
        size *= 2
    return best


def profile_summary(step: Callable[[], None], device: torch.device, *, steps: int = 3, rows: int = 15) -> Dict:
    """torch.profiler over ``steps`` steps: the top operators by self device time (self CPU time on
    the CPU) and, on CUDA, the share of the wall time during which no kernel ran."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    step()
    synchronize(device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        synchronize(device)
    wall_us = (time.perf_counter() - start) * 1e6
    events = prof.key_averages()
    on_device = device.type == "cuda"

    def self_us(event) -> float:
        return float(event.self_device_time_total if on_device else event.self_cpu_time_total)

    top = sorted(events, key=self_us, reverse=True)[:rows]
    summary = {
        "steps": steps,
        "wall_ms_per_step": wall_us / steps / 1e3,
        "top": [{"name": e.key, "self_ms_per_step": self_us(e) / steps / 1e3, "calls_per_step": e.count / steps}
                for e in top],
    }
    if on_device:
        # Kernel time summed over all kernels; kernels on one stream do not overlap, so
        # 1 - busy / wall is the share of time the GPU had nothing to run (a lower bound with
        # several streams).
        busy_us = sum(self_us(e) for e in events)
        summary["device_busy_share"] = min(1.0, busy_us / wall_us)
        summary["device_idle_share"] = max(0.0, 1.0 - busy_us / wall_us)
    summary["table"] = events.table(sort_by="self_cuda_time_total" if on_device else "self_cpu_time_total",
                                    row_limit=rows, max_name_column_width=60)
    return summary
