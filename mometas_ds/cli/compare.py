"""mometas-compare: the main table for your own runs -- task x model, mean ± std over seeds, the difference
to the first model, and a paired t-test over seeds (scipy) saying whether it exceeds seed noise.

    mometas-compare runs/uniform/eval runs/mometas/eval --names uniform,mometas --out runs/compare

Each EVAL_DIR is a mometas-finetune --output_dir. Per model and task the learning rate is the one with the
best mean on dev (as in its summary.md); the test pairs the runs of equal seeds. Writes compare.md,
compare.csv and compare.png (bars with ± std error bars) to --out.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
from typing import Dict, List, Optional

import numpy as np

from mometas_ds.config import ConfigError, DataError

from mometas_ds.finetune.summary import _task_order, glue_score, per_task, read_results

PROG = "mometas-compare"
ALPHA = 0.05


def paired_test(a: Dict[int, float], b: Dict[int, float]) -> dict:
    """Paired t-test of b - a over the seeds both have: {"n", "diff", "p", "significant"} (p None for n < 2)."""
    seeds = sorted(set(a) & set(b))
    diffs = [b[s] - a[s] for s in seeds]
    result = {"n": len(seeds), "diff": statistics.fmean(diffs) if diffs else math.nan, "p": None,
              "significant": False}
    if len(seeds) < 2:
        return result
    if all(d == diffs[0] for d in diffs):  # scipy returns nan for zero variance of the differences
        result["p"] = 1.0 if diffs[0] == 0 else 0.0
    else:
        from scipy.stats import ttest_rel  # heavy (scipy.stats, about 1 s): not for --help

        result["p"] = float(ttest_rel([b[s] for s in seeds], [a[s] for s in seeds]).pvalue)
    result["significant"] = result["p"] < ALPHA
    return result


def compare(eval_dirs: List[str], names: List[str]) -> dict:
    """{"models": names, "tasks": [...], "cells": {task: {model: {"mean","std","n","lr","seeds"}}},
    "tests": {task: {model: paired_test vs the first model}}}; a GLUE row when every model has GLUE tasks."""
    summaries = [per_task(read_results(d)) for d in eval_dirs]
    for d, summary in zip(eval_dirs, summaries):
        if not summary:
            raise DataError(f"{d}: its results.jsonl holds no complete result line "
                            "(has mometas-finetune finished a run?)")
    tasks = sorted({t for s in summaries for t in s}, key=_task_order)
    cells, tests = {}, {}
    for task in tasks:
        cells[task] = {}
        for name, s in zip(names, summaries):
            if task in s:
                t = s[task]
                cells[task][name] = {"mean": t["mean"], "std": t["std"], "n": len(t["seeds"]),
                                     "lr": t["learning_rate"], "seeds": t["seeds"], "metric": t["main_metric"]}
    glue = [glue_score(s) for s in summaries]
    if all(g is not None for g in glue) and len({tuple(g[1]) for g in glue}) == 1:
        tasks.append("GLUE")
        cells["GLUE"] = {}
        for name, (score, _, per_seed) in zip(names, glue):
            values = list(per_seed.values())
            cells["GLUE"][name] = {"mean": score, "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                                   "n": len(values), "lr": None, "seeds": per_seed, "metric": "glue_score"}
    base = names[0]
    for task in tasks:
        tests[task] = {}
        for name in names[1:]:
            if base in cells[task] and name in cells[task]:
                tests[task][name] = paired_test(cells[task][base]["seeds"], cells[task][name]["seeds"])
    return {"models": names, "tasks": tasks, "cells": cells, "tests": tests}


def _cell(c: Optional[dict]) -> str:
    return "-" if c is None else f"{c['mean']:.2f} ± {c['std']:.2f} (n={c['n']})"


def _diff(t: Optional[dict]) -> str:
    if t is None or t["n"] == 0:
        return "-"
    p = "n/a (needs 2 shared seeds)" if t["p"] is None else f"p={t['p']:.3g}"
    verdict = "beyond seed noise" if t["significant"] else "within seed noise"
    return f"{t['diff']:+.2f} ({p}, {verdict if t['p'] is not None else 'untested'})"


def write_outputs(result: dict, out_dir: str) -> List[str]:
    os.makedirs(out_dir, exist_ok=True)
    models, tasks, cells, tests = result["models"], result["tasks"], result["cells"], result["tests"]
    header = ["task", "metric"] + models + [f"{m} - {models[0]}" for m in models[1:]]
    md = ["# Model comparison", "",
          f"Main metric per task (percent), mean ± std over seeds at each model's learning rate chosen on dev; "
          f"differences to {models[0]} with a paired t-test over shared seeds (significant at p < {ALPHA}).", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = [["task", "metric", "model", "mean", "std", "n", "learning_rate", "diff_to_first", "p_value",
             "significant"]]
    for task in tasks:
        metric = next(iter(cells[task].values()))["metric"]
        md.append("| " + " | ".join([task, metric] + [_cell(cells[task].get(m)) for m in models]
                                    + [_diff(tests[task].get(m)) for m in models[1:]]) + " |")
        for m in models:
            c, t = cells[task].get(m), tests[task].get(m)
            if c is None:
                continue
            rows.append([task, metric, m, f"{c['mean']:.4f}", f"{c['std']:.4f}", c["n"],
                         "" if c["lr"] is None else f"{c['lr']:g}", "" if t is None else f"{t['diff']:.4f}",
                         "" if t is None or t["p"] is None else f"{t['p']:.6g}",
                         "" if t is None or t["p"] is None else str(t["significant"]).lower()])
    md_path, csv_path, png_path = (os.path.join(out_dir, f"compare.{ext}") for ext in ("md", "csv", "png"))
    with open(md_path, "w", encoding="utf-8") as f:
        f.write("\n".join(md) + "\n")
    with open(csv_path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    _plot(result, png_path)
    return [md_path, csv_path, png_path]


def _plot(result: dict, path: str) -> None:
    import matplotlib  # heavy: not for --help

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"), which must come first

    models, tasks, cells = result["models"], result["tasks"], result["cells"]
    width = 0.8 / len(models)
    x = np.arange(len(tasks))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(tasks) + 2), 4.0))
    for i, m in enumerate(models):
        means = [cells[t][m]["mean"] if m in cells[t] else np.nan for t in tasks]
        stds = [cells[t][m]["std"] if m in cells[t] else 0.0 for t in tasks]
        ax.bar(x + (i - (len(models) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=m)
    ax.set_xticks(x)
    ax.set_xticklabels(tasks, rotation=30, ha="right")
    ax.set_ylabel("main metric (%), mean ± std over seeds")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("eval_dirs", nargs="+", metavar="EVAL_DIR", help="mometas-finetune output dirs; the first "
                   "is the baseline the others are compared with")
    p.add_argument("--names", help="comma-separated model names, one per EVAL_DIR (default: the dirs' names)")
    p.add_argument("--out", default="compare", help="output directory for compare.md/.csv/.png [compare]")
    args = p.parse_args(argv)
    try:
        if len(args.eval_dirs) < 2:
            raise ConfigError("give at least two EVAL_DIRs to compare")
        if args.names:
            names = [n.strip() for n in args.names.split(",")]
            if len(names) != len(args.eval_dirs) or any(not n for n in names):
                raise ConfigError(f"--names: {len(names)} name(s) for {len(args.eval_dirs)} EVAL_DIR(s)")
        else:
            names = [os.path.basename(os.path.normpath(d)) or d for d in args.eval_dirs]
            if os.path.basename(os.path.normpath(args.eval_dirs[0])) == "eval":  # runs/X/eval -> X
                names = [os.path.basename(os.path.dirname(os.path.normpath(d))) or d for d in args.eval_dirs]
        if len(set(names)) != len(names):
            raise ConfigError(f"--names: model names must differ ({', '.join(names)}); pass --names")
        result = compare(args.eval_dirs, names)
        from mometas_ds.safe_io import disk_errors  # imports torch (via the checkpoint code): not for --help

        # A file in the way, a path under a file, no permission: exit 2 naming --out, not a traceback.
        with disk_errors("--out", args.out, "Give a directory you can write with --out."):
            paths = write_outputs(result, args.out)
    except (ConfigError, DataError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    with open(paths[0], encoding="utf-8") as f:
        print(f.read())
    print("wrote " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
