"""Count the kernel launches the host issues for one fused head forward + backward (no GPU needed).

On a GPU the host issues every launch one by one; when a step waits on the host, each one costs
its launch overhead. This counts them on the CPU: PyTorch ops through a TorchDispatchMode, Triton
launches by wrapping the kernels (triton backend under TRITON_INTERPRET=1, set here). The Triton
interpreter's own tensor traffic (empty, set_, copy_ ...) and view ops are left out.

  python benchmarks/count_head_launches.py            # 40 rows in 2 chunks, vocab 128, grad_output 0.5
"""
from __future__ import annotations

import argparse
import collections
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton's kernels
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import mometas_ds.kernels.chunked_cross_entropy as ce_impl  # noqa: E402
from mometas_ds.kernels import cross_entropy_triton, fused_linear_cross_entropy  # noqa: E402

# Ops the interpreter issues to move tensors in and out of numpy, and allocations (no launch).
NOT_LAUNCHES = {"empty", "empty_strided", "new_empty", "set_", "copy_", "_local_scalar_dense"}
TRITON_KERNELS = ("_cross_entropy_rows_kernel", "_scale_unless_one_kernel")


class RecordLaunches(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.launches = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not func.is_view and name not in NOT_LAUNCHES:
            self.launches[name] += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--chunks", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=32)
    args = parser.parse_args()
    # A budget that gives the asked number of chunks (the triton backend holds 4 bytes per fp32 logit).
    ce_impl.CHUNK_BUDGET_BYTES = -(-args.rows // args.chunks) * args.vocab * 4
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.rows, args.hidden, generator=g, requires_grad=True)
    weight = torch.randn(args.vocab, args.hidden, generator=g, requires_grad=True)
    bias = torch.zeros(args.vocab, requires_grad=True)
    target = torch.randint(0, args.vocab, (args.rows,), generator=g)
    target[::3] = -100

    recorder = RecordLaunches()
    for name in TRITON_KERNELS:
        kernel = getattr(cross_entropy_triton, name)

        class CountedKernel:  # kernel[grid](...) as before, counted
            def __getitem__(self, grid, kernel=kernel, name=name):
                recorder.launches["triton:" + name] += 1
                return kernel[grid]

        setattr(cross_entropy_triton, name, CountedKernel())
    with recorder:
        loss = fused_linear_cross_entropy(hidden, weight, target, bias, backend="triton")
        loss.backward(torch.tensor(0.5))
    print(f"{sum(recorder.launches.values())} launches "
          f"({args.rows} rows, {args.chunks} chunks, vocab {args.vocab}, hidden {args.hidden})")
    for name, count in recorder.launches.most_common():
        print(f"  {count:3d}  {name}")


if __name__ == "__main__":
    main()
