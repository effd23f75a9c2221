"""``mometas-bench``: parse, re-launch on N ranks if asked, run the arms, print and write the figures."""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import subprocess
import sys
from typing import List

from mometas_ds.distributed.launch import detect_launcher
from mometas_ds.bench.options import REPO_ROOT, BenchConfig, BenchError, parse_args
from mometas_ds.bench.report import format_report
from mometas_ds.bench.runner import Bench


def check_json_path(path: str) -> None:
    """--json PATH must be writable before the benchmark runs (minutes), not found unwritable after it."""
    existed = os.path.exists(path)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise BenchError(f"--json: cannot write {path} ({exc.strerror or exc})") from None
    if not existed:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def _relaunch(cfg: BenchConfig, argv: List[str]) -> int:
    """Run this same command on cfg.ranks ranks through the deepspeed launcher."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # the launcher does not pin ranks to cores
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(cfg.ranks),
           "--master_port", str(port), "--module", "mometas_ds.cli.bench"] + list(argv)
    print("mometas-bench: running " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, env=env).returncode


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rank = int(os.environ.get("RANK", "0"))
    try:
        cfg = parse_args(argv)
        if cfg.json and rank == 0:  # the ranks a re-launch starts would race on the probe
            check_json_path(cfg.json)
    except BenchError as exc:
        print(f"mometas-bench: error: {exc}", file=sys.stderr)
        return 2

    if cfg.ranks is not None and cfg.ranks > 1 and detect_launcher() == "single":
        return _relaunch(cfg, argv)

    logging.basicConfig(level=logging.WARNING,
                        format=f"[%(asctime)s] [rank {rank}] %(levelname)s %(name)s: %(message)s")
    for name in ("DeepSpeed", "deepspeed", "mometas_ds"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        bench = Bench(cfg)
    except BenchError as exc:
        print(f"mometas-bench: error: {exc}", file=sys.stderr)
        return 2
    result = bench.run()
    if bench.rank == 0:
        print(format_report(result), flush=True)
        if cfg.json:
            os.makedirs(os.path.dirname(os.path.abspath(cfg.json)), exist_ok=True)
            with open(cfg.json, "w", encoding="utf-8") as f:
                json.dump(result, f, indent=2)
                f.write("\n")
            print(f"  wrote {cfg.json}", flush=True)
    if not all(math.isfinite(result[key]) for key in ("overhead_pct", "predicted_overhead_pct")):
        return 1
    return 0



if __name__ == "__main__":
    sys.exit(main())
