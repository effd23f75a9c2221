"""Peak memory and time of the MLM vocabulary head + loss, forward and backward, three ways.

  dense   logits over every position, then F.cross_entropy with ignore_index (what the published
          MOMETAS code and HF's BertForMaskedLM do)
  sparse  gather the masked positions (as the model does: objectives.base.gather_labeled), logits
          for those rows only, then F.cross_entropy
  fused   the same gather, then mometas_ds.kernels.fused_linear_cross_entropy
          (chunked; the [rows x vocab] logits never exist whole); fused_torch / fused_triton
          force a backend, plain ``fused`` uses backend='auto'

"Head" is the vocabulary projection (+bias) and the loss; the BERT transform before it is the
same in every variant and left out. Default shape: the paper's batch, 32 x 256 tokens, 15%
masked, hidden 1024, vocab 30522.

Memory is the peak *above* what is allocated before the head runs (inputs and parameters),
so it counts the logits, the loss's internals and the gradients the head produces.
  cuda: torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus memory_allocated.
  cpu:  each (variant, dtype) runs in a fresh subprocess with glibc's mmap threshold pinned at
        64 KiB (MALLOC_MMAP_THRESHOLD_), so every tensor buffer is its own mapping, returned to the
        OS when freed; the peak is VmHWM (peak resident set, reset via /proc/self/clear_refs)
        minus VmRSS just before the measured step. Resident pages are what was written, which
        for these tensors is all of them; allocator and library overheads are included.
Time: cuda: CUDA events, median over reps after warmup, and the host's time to issue each step
(host_ms_median; close to the event time means the step is bound by kernel launches).
cpu: wall clock, median over reps.

  python benchmarks/bench_kernels.py --device cpu --json runs/kernels_cpu.json
  python benchmarks/bench_kernels.py --device cuda --json $OUT/kernels_gpu.json
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

IGNORE = -100
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
VARIANTS = ("dense", "sparse", "fused", "fused_torch", "fused_triton")


@dataclass
class HeadShape:
    batch: int = 32
    seq_len: int = 256
    hidden: int = 1024
    vocab: int = 30522
    mask_prob: float = 0.15


def make_inputs(shape: HeadShape, dtype: torch.dtype, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(shape.batch, shape.seq_len, shape.hidden, generator=g)
    weight = torch.randn(shape.vocab, shape.hidden, generator=g) * 0.02
    bias = torch.zeros(shape.vocab)
    token_ids = torch.randint(0, shape.vocab, (shape.batch, shape.seq_len), generator=g)
    masked = torch.rand(shape.batch, shape.seq_len, generator=g) < shape.mask_prob
    labels = torch.where(masked, token_ids, torch.full_like(token_ids, IGNORE))
    leaves = [t.to(device, dtype).requires_grad_(True) for t in (hidden, weight, bias)]
    return (*leaves, labels.to(device))


def head_loss_fn(variant: str) -> Callable:
    from mometas_ds.kernels import fused_linear_cross_entropy
    from mometas_ds.objectives.base import gather_labeled  # the model's own gather: one nonzero, two index_selects

    def dense(hidden, weight, bias, labels):
        logits = F.linear(hidden, weight, bias)
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=IGNORE)

    def sparse(hidden, weight, bias, labels):
        rows, target = gather_labeled(hidden, labels)
        return F.cross_entropy(F.linear(rows, weight, bias), target, ignore_index=IGNORE)

    def fused(backend):
        def loss(hidden, weight, bias, labels):
            rows, target = gather_labeled(hidden, labels)
            return fused_linear_cross_entropy(rows, weight, target, bias, backend=backend)

        return loss

    return {
        "dense": dense,
        "sparse": sparse,
        "fused": fused("auto"),
        "fused_torch": fused("torch"),
        "fused_triton": fused("triton"),
    }[variant]


def backend_used(variant: str, device: str) -> str:
    if not variant.startswith("fused"):
        return "torch-eager"
    if variant != "fused":
        return variant.split("_", 1)[1]
    from mometas_ds.kernels import resolve_backend

    return "triton" if "triton" in resolve_backend("auto", torch.device(device)).__name__ else "torch"


def _step(loss_fn, inputs) -> float:
    loss = loss_fn(*inputs)
    loss.backward()
    value = loss.detach()
    for t in inputs[:3]:
        t.grad = None
    return value


# ---- CPU: one subprocess per measurement, peak resident set --------------------------------------

def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def cpu_worker(variant: str, dtype_name: str, shape: HeadShape, warmup: int, reps: int) -> Dict:
    loss_fn = head_loss_fn(variant)
    inputs = make_inputs(shape, DTYPES[dtype_name], "cpu")
    for _ in range(warmup):
        _step(loss_fn, inputs)
    gc.collect()
    baseline_kib = _proc_status_kib("VmRSS")
    _reset_peak_rss()
    start = time.perf_counter()
    loss = _step(loss_fn, inputs)
    times = [time.perf_counter() - start]
    peak_kib = _proc_status_kib("VmHWM") - baseline_kib
    for _ in range(reps - 1):
        start = time.perf_counter()
        _step(loss_fn, inputs)
        times.append(time.perf_counter() - start)
    return {
        "variant": variant,
        "dtype": dtype_name,
        "backend": backend_used(variant, "cpu"),
        "peak_head_mib": peak_kib / 1024,
        "time_ms_median": 1000 * statistics.median(times),
        "times_ms": [1000 * t for t in times],
        "loss": float(loss),
    }


def run_cpu_subprocess(variant: str, dtype_name: str, args) -> Dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [
        sys.executable, os.path.abspath(__file__), "--device", "cpu", "--_worker", f"{variant}:{dtype_name}",
        "--warmup", str(args.warmup), "--reps", str(args.reps), "--batch", str(args.batch), "--seq-len",
        str(args.seq_len), "--hidden", str(args.hidden), "--vocab", str(args.vocab), "--mask-prob",
        str(args.mask_prob),
    ]
    if args.chunk_budget_mib is not None:
        cmd += ["--chunk-budget-mib", str(args.chunk_budget_mib)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- CUDA: in process, allocator statistics and CUDA events --------------------------------------

def measure_cuda(variant: str, dtype_name: str, shape: HeadShape, warmup: int, reps: int) -> Dict:
    loss_fn = head_loss_fn(variant)
    inputs = make_inputs(shape, DTYPES[dtype_name], "cuda")
    for _ in range(warmup):
        _step(loss_fn, inputs)
    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    loss = _step(loss_fn, inputs)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - baseline
    times, host_times = [], []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        host_start = time.perf_counter()
        loss_value = loss_fn(*inputs)
        loss_value.backward()
        # Host time to issue the step (syncs included): near the CUDA-event time means launch-bound.
        host_times.append(1000 * (time.perf_counter() - host_start))
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
        for t in inputs[:3]:
            t.grad = None
    del inputs
    gc.collect()
    torch.cuda.empty_cache()
    return {
        "variant": variant,
        "dtype": dtype_name,
        "backend": backend_used(variant, "cuda"),
        "peak_head_mib": peak / 2**20,
        "time_ms_median": statistics.median(times),
        "times_ms": times,
        "host_ms_median": statistics.median(host_times),
        "loss": float(loss),
    }


def summarize(results: List[Dict]) -> List[str]:
    by_key = {(r["dtype"], r["variant"]): r for r in results}
    lines = [
        f"{'dtype':5} {'variant':13} {'backend':11} {'peak MiB':>10} {'dense/x':>8} {'median ms':>11} "
        f"{'x/sparse':>9} {'host ms':>8} {'loss':>9}"
    ]
    for r in results:
        dense = by_key.get((r["dtype"], "dense"))
        sparse = by_key.get((r["dtype"], "sparse"))
        # Tiny shapes can peak below the CPU measurement's page granularity (0 MiB): no ratio then.
        measurable = dense is not None and min(dense["peak_head_mib"], r["peak_head_mib"]) > 0
        r["memory_saving_vs_dense"] = dense["peak_head_mib"] / r["peak_head_mib"] if measurable else None
        r["time_vs_sparse"] = r["time_ms_median"] / sparse["time_ms_median"] if sparse else None
        saving = f"{r['memory_saving_vs_dense']:.1f}x" if r["memory_saving_vs_dense"] is not None else "-"
        speed = f"{r['time_vs_sparse']:.2f}" if sparse else "-"
        host = f"{r['host_ms_median']:.2f}" if "host_ms_median" in r else "-"
        lines.append(
            f"{r['dtype']:5} {r['variant']:13} {r['backend']:11} {r['peak_head_mib']:10.1f} {saving:>8} "
            f"{r['time_ms_median']:11.2f} {speed:>9} {host:>8} {r['loss']:9.4f}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtypes", default=None, help="comma list of fp32,bf16,fp16 (cpu: fp32; cuda: fp32,bf16)")
    parser.add_argument("--variants", default=None, help=f"comma list of {','.join(VARIANTS)}")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (cpu: 1; cuda: 3)")
    parser.add_argument("--reps", type=int, default=None, help="timed steps (cpu: 1; cuda: 20)")
    parser.add_argument("--batch", type=int, default=HeadShape.batch)
    parser.add_argument("--seq-len", type=int, default=HeadShape.seq_len)
    parser.add_argument("--hidden", type=int, default=HeadShape.hidden)
    parser.add_argument("--vocab", type=int, default=HeadShape.vocab)
    parser.add_argument("--mask-prob", type=float, default=HeadShape.mask_prob)
    parser.add_argument("--chunk-budget-mib", type=float, default=None, help="override CHUNK_BUDGET_BYTES")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    args.reps = args.reps if args.reps is not None else (20 if cuda else 1)
    if args.reps < 1:
        raise SystemExit("--reps must be >= 1")
    shape = HeadShape(args.batch, args.seq_len, args.hidden, args.vocab, args.mask_prob)
    if args.chunk_budget_mib is not None:
        import mometas_ds.kernels.chunked_cross_entropy as ce_impl

        ce_impl.CHUNK_BUDGET_BYTES = int(args.chunk_budget_mib * 2**20)

    if args._worker:
        variant, dtype_name = args._worker.split(":")
        print(json.dumps(cpu_worker(variant, dtype_name, shape, args.warmup, args.reps)))
        return

    dtypes = (args.dtypes or ("fp32,bf16" if cuda else "fp32")).split(",")
    variants = (args.variants or ("dense,sparse,fused_triton,fused_torch" if cuda else "dense,sparse,fused")).split(",")
    for name in dtypes:
        if name not in DTYPES:
            raise SystemExit(f"--dtypes: unknown dtype {name!r}; choose from {sorted(DTYPES)}")
    for name in variants:
        if name not in VARIANTS:
            raise SystemExit(f"--variants: unknown variant {name!r}; choose from {VARIANTS}")

    results = []
    for dtype_name in dtypes:
        for variant in variants:
            if cuda:
                result = measure_cuda(variant, dtype_name, shape, args.warmup, args.reps)
            else:
                result = run_cpu_subprocess(variant, dtype_name, args)
            results.append(result)
            host = f" (host {result['host_ms_median']:.2f} ms)" if "host_ms_median" in result else ""
            print(f"  measured {dtype_name} {variant}: {result['peak_head_mib']:.1f} MiB, "
                  f"{result['time_ms_median']:.2f} ms{host}", file=sys.stderr, flush=True)

    table = summarize(results)
    print("\n".join(table))
    import mometas_ds.kernels.chunked_cross_entropy as ce_impl

    report = {
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores)",
        "torch": torch.__version__,
        "triton": _triton_version(),
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "shape": asdict(shape),
        "chunk_budget_bytes": ce_impl.CHUNK_BUDGET_BYTES,
        "warmup": args.warmup,
        "reps": args.reps,
        "results": results,
    }
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


def _triton_version():
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
