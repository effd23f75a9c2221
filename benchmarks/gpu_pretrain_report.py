"""The table of benchmarks/gpu_pretrain.sh: our step against the HF peer per configuration, MOMETAS's overhead,
the fused against the sparse vocabulary head. Reads OUT/{ours,peer}.jsonl, OUT/overhead.json, OUT/kernels.json
(whichever exist) and writes OUT/report.md.

    python benchmarks/gpu_pretrain_report.py --out runs/gpu_pretrain
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Tuple


def read_jsonl(path: str) -> List[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_json(path: str) -> Optional[dict]:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def step_table(ours: List[dict], peer: List[dict]) -> List[str]:
    """One row per (model, seq_len, micro_batch) our step ran at, beside the peer's row of the same shape."""
    peers: Dict[Tuple, dict] = {(r["model"], r["seq_len"], r["micro_batch"]): r for r in peer}
    lines = ["| model | seq | micro-batch | ours ms/step | ours tokens/s | ours samples/s | ours MFU | ours peak GiB "
             "| HF ms/step | HF MFU | ours / HF time |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    shown = set()
    for r in ours + [p for p in peer if (p["model"], p["seq_len"], p["micro_batch"]) not in
                     {(o["model"], o["seq_len"], o["micro_batch"]) for o in ours}]:
        key = (r["model"], r["seq_len"], r["micro_batch"])
        if key in shown:
            continue
        shown.add(key)
        mine = r if r["step"] == "mometas_ds_mlm" else None
        theirs = peers.get(key)
        ratio = mine["median_s"] / theirs["median_s"] if mine and theirs else None
        lines.append("| " + " | ".join([
            r["model"], str(r["seq_len"]), str(r["micro_batch"]),
            _fmt(mine and 1e3 * mine["median_s"], ".1f"), _fmt(mine and mine["tokens_per_s"], ",.0f"),
            _fmt(mine and mine["samples_per_s"], ",.1f"), _fmt(mine and mine["mfu"] and 100 * mine["mfu"], ".1f"),
            _fmt(mine and mine["peak_memory_gib"], ".1f"),
            _fmt(theirs and 1e3 * theirs["median_s"], ".1f"),
            _fmt(theirs and theirs["mfu"] and 100 * theirs["mfu"], ".1f"),
            _fmt(ratio, ".2f")]) + " |")
    return lines


def profile_lines(rows: List[dict]) -> List[str]:
    lines = []
    for r in rows:
        prof = r.get("profile")
        if not prof:
            continue
        who = "ours" if r["step"] == "mometas_ds_mlm" else "HF peer"
        idle = prof.get("device_idle_share")
        lines.append(f"### Profile: {who}, {r['model']} seq {r['seq_len']} micro-batch {r['micro_batch']}")
        lines.append(f"{prof['wall_ms_per_step']:.1f} ms per profiled step"
                     + (f"; GPU idle {100 * idle:.0f}% of the wall time" if idle is not None else ""))
        lines.append("")
        lines.append("| operator / kernel | self ms per step | calls per step |")
        lines.append("|---|---:|---:|")
        lines += [f"| `{t['name'][:70]}` | {t['self_ms_per_step']:.3f} | {t['calls_per_step']:g} |"
                  for t in prof["top"]]
        lines.append("")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the directory gpu_pretrain.sh wrote its figures to")
    args = p.parse_args(argv)
    if not os.path.isdir(args.out):
        p.error(f"--out {args.out}: not a directory")
    ours, peer = (read_jsonl(os.path.join(args.out, name)) for name in ("ours.jsonl", "peer.jsonl"))
    overhead, kernels = (read_json(os.path.join(args.out, name)) for name in ("overhead.json", "kernels.json"))
    device = (ours or peer or [{"device": "?"}])[0]["device"]
    lines = [f"# gpu_pretrain.sh on {device}", "", "## Step time: ours against the HF peer", ""]
    lines += step_table(ours, peer) if (ours or peer) else ["(no step figures)"]
    lines += ["", "MFU: model FLOPs (mometas_ds/bench/flops.py: matmul FLOPs, 3x forward, 15% of tokens through the "
              "vocabulary head) per second over the GPU's dense bf16 peak.", ""]
    if overhead:
        c = overhead["config"]
        lines += ["## MOMETAS against uniform", "",
                  f"{c['model']} seq {c['seq_len']} micro-batch {c['micro_batch']}, K = {c['interval']}, "
                  f"{c['meta_batch_size']} meta-validation sequences per objective on this rank, "
                  f"{len(c['objectives'])} objectives: overhead {overhead['overhead_pct']:.2f}% per step "
                  f"(raw {overhead['raw_overhead_pct']:.2f}%); uniform "
                  f"{overhead['arms']['uniform']['samples_per_s']:.1f} samples/s.", ""]
    if kernels:
        lines += ["## Vocabulary head: fused against sparse", "", "| dtype | variant | ms (median) | peak head MiB |",
                  "|---|---|---:|---:|"]
        lines += [f"| {r['dtype']} | {r['variant']} | {r['time_ms_median']:.2f} | {r['peak_head_mib']:.1f} |"
                  for r in kernels["results"]]
        lines.append("")
    lines += profile_lines(ours + peer)
    with open(os.path.join(args.out, "report.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {os.path.join(args.out, 'report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
