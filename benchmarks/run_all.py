"""``make bench``: every benchmark once, each writing its JSON into runs/bench/.

  1. corruption   benchmarks/bench_corruption.py: corrupt() of every objective on a 32 x 256 batch
  2. kernels      benchmarks/bench_kernels.py: memory and time of the MLM head + loss (if the file exists)
  3. sampler      mometas-bench --quick: MOMETAS's overhead against uniform sampling, with its breakdown

Each runs in its own process under a time limit; a failure is reported and the others still run.
About 5-8 minutes on the 2-core CPU dev machine.

    python benchmarks/run_all.py [--out runs/bench] [--ranks 2] [--device cuda]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join("runs", "bench"), help="where the JSON files go")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="device of the corruption and kernel benchmarks (mometas-bench picks its own)")
    p.add_argument("--ranks", type=int, default=1, help="ranks of the mometas-bench --quick run")
    args = p.parse_args(argv)

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    py = sys.executable

    jobs = [("corruption", [py, os.path.join(REPO_ROOT, "benchmarks", "bench_corruption.py"), "--device", args.device,
                            "--json", os.path.join(out, f"corruption_{args.device}.json")], 300)]
    kernels = os.path.join(REPO_ROOT, "benchmarks", "bench_kernels.py")
    if os.path.exists(kernels):
        jobs.append(("kernels", [py, kernels, "--device", args.device,
                                 "--json", os.path.join(out, f"kernels_{args.device}.json")], 300))
    else:
        print(f"run_all: {kernels} not found, kernel benchmark skipped", flush=True)
    sampler_json = os.path.join(out, "mometas_quick.json" if args.ranks == 1
                                else f"mometas_quick_{args.ranks}ranks.json")
    jobs.append(("sampler overhead", [py, "-m", "mometas_ds.cli.bench", "--quick", "--ranks", str(args.ranks),
                                      "--json", sampler_json], 420))

    results = []
    for name, cmd, limit in jobs:
        print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
        started = time.time()
        try:
            code = subprocess.run(cmd, env=env, cwd=REPO_ROOT, timeout=limit).returncode
        except subprocess.TimeoutExpired:
            code = f"timed out after {limit} s"
        json_path = cmd[cmd.index("--json") + 1]
        results.append((name, code, time.time() - started, json_path))

    print("\n=== benchmarks done")
    failed = 0
    for name, code, seconds, json_path in results:
        ok = code == 0 and os.path.exists(json_path)
        failed += not ok
        status = "ok" if ok else f"FAILED ({code})"
        print(f"  {name:<18}{status:<10}{seconds:7.0f} s   {json_path}")
    print(f"JSON results are in {out}; the tables and their commands are in docs/benchmarks.md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
