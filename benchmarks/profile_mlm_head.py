"""Where the MLM head's time goes on a GPU: torch.profiler over forward + backward of the sparse
head and the fused head (bench_kernels.py's shapes), top CUDA kernels by self time.

    python benchmarks/profile_mlm_head.py --variants sparse,fused_triton --dtype bf16
"""
import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kernels import HeadShape, _step, head_loss_fn, make_inputs  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="sparse,fused_triton")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rows", type=int, default=15, help="kernels listed per variant")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("profile_mlm_head.py needs a CUDA device")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    inputs = make_inputs(HeadShape(), dtype, "cuda")
    for variant in args.variants.split(","):
        loss_fn = head_loss_fn(variant)
        for _ in range(5):
            _step(loss_fn, inputs)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(args.steps):
                _step(loss_fn, inputs)
            torch.cuda.synchronize()
        print(f"== {variant} {args.dtype}: {args.steps} steps of forward + backward")
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
