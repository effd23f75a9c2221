"""results.jsonl -> the learning rate chosen on dev, mean ± std / median over seeds, the GLUE score.

Shared by ``mometas-finetune`` (summary.md, summary.csv) and ``mometas-compare``.
"""
from __future__ import annotations

import csv
import json
import os
import statistics
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

from mometas_ds.config import DataError

from mometas_ds.finetune.tasks import TASKS

RESULTS_FILE = "results.jsonl"


def read_results(eval_dir: str) -> List[dict]:
    """The lines of ``eval_dir/results.jsonl``; a half-written last line (a killed run) is ignored."""
    path = eval_dir if os.path.isfile(eval_dir) else os.path.join(eval_dir, RESULTS_FILE)
    if not os.path.isfile(path):
        raise DataError(f"{path}: not found (is {eval_dir} a mometas-finetune --output_dir?)")
    rows = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if lineno >= len(lines) - 1:  # the last line of a run killed while writing it
                continue
            raise DataError(f"{path}:{lineno}: not a JSON line") from None
        for key in ("task", "seed", "learning_rate", "metrics", "main_metric"):
            if key not in row:
                raise DataError(f"{path}:{lineno}: missing field {key!r}")
        rows.append(row)
    return rows


def _std(values: List[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def per_task(rows: List[dict]) -> Dict[str, dict]:
    """For every task: the learning rate with the best mean main metric on dev, and its per-seed values.

    ``{task: {"main_metric", "learning_rate", "seeds": {seed: value}, "mean", "std", "median",
    "metrics": {name: mean}, "by_lr": {lr: mean}}}``; a seed run twice counts once (the last line)."""
    grouped: Dict[str, Dict[float, Dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    main: Dict[str, str] = {}
    for row in rows:
        grouped[row["task"]][float(row["learning_rate"])][int(row["seed"])] = row
        main[row["task"]] = row["main_metric"]
    out = {}
    for task, by_lr in grouped.items():
        metric = main[task]
        means = {lr: statistics.fmean(r["metrics"][metric] for r in seeds.values()) for lr, seeds in by_lr.items()}
        best = max(sorted(means), key=lambda lr: means[lr])  # ties: the smallest learning rate
        seeds = {s: r["metrics"][metric] for s, r in sorted(by_lr[best].items())}
        values = list(seeds.values())
        names = sorted({k for r in by_lr[best].values() for k in r["metrics"]})
        out[task] = {
            "main_metric": metric, "learning_rate": best, "seeds": seeds,
            "mean": statistics.fmean(values), "std": _std(values), "median": statistics.median(values),
            "metrics": {k: statistics.fmean(r["metrics"][k] for r in by_lr[best].values() if k in r["metrics"])
                        for k in names},
            "by_lr": dict(sorted(means.items())),
        }
    return out


def glue_score(tasks: Dict[str, dict]) -> Optional[Tuple[float, List[str], Dict[int, float]]]:
    """GLUE's average over the GLUE tasks present (each task's main metric is already GLUE's task score:
    MNLI m/mm, MRPC and QQP F1/accuracy and STS-B's two correlations averaged), its tasks, and per seed
    (for seeds every GLUE task has) the same average."""
    glue = [t for t in tasks if t in TASKS and TASKS[t].glue]
    if not glue:
        return None
    score = statistics.fmean(tasks[t]["mean"] for t in glue)
    common = set.intersection(*(set(tasks[t]["seeds"]) for t in glue))
    per_seed = {s: statistics.fmean(tasks[t]["seeds"][s] for t in glue) for s in sorted(common)}
    return score, sorted(glue, key=_task_order), per_seed


def _task_order(task: str):
    names = list(TASKS)
    return (names.index(task) if task in names else len(names), task)


def write_summary(eval_dir: str) -> Tuple[str, str]:
    """summary.md and summary.csv in ``eval_dir`` from its results.jsonl; returns their paths."""
    rows = read_results(eval_dir)
    tasks = per_task(rows)
    order = sorted(tasks, key=_task_order)
    md = ["# Fine-tuning summary", "",
          f"{len(rows)} run(s) from `{RESULTS_FILE}`. Per task: the learning rate with the best mean main metric "
          "on dev, and over its seeds the main metric's mean ± std (sample) and median; metrics in percent.", "",
          "| task | main metric | lr | seeds | mean ± std | median | other metrics (mean) |",
          "|---|---|---|---|---|---|---|"]
    csv_rows = [["task", "main_metric", "learning_rate", "num_seeds", "mean", "std", "median", "seeds", "values"]]
    for task in order:
        t = tasks[task]
        others = ", ".join(f"{k} {v:.2f}" for k, v in t["metrics"].items() if k != t["main_metric"])
        md.append(f"| {task} | {t['main_metric']} | {t['learning_rate']:g} | {len(t['seeds'])} | "
                  f"{t['mean']:.2f} ± {t['std']:.2f} | {t['median']:.2f} | {others} |")
        csv_rows.append([task, t["main_metric"], f"{t['learning_rate']:g}", len(t["seeds"]), f"{t['mean']:.4f}",
                         f"{t['std']:.4f}", f"{t['median']:.4f}", " ".join(map(str, t["seeds"])),
                         " ".join(f"{v:.4f}" for v in t["seeds"].values())])
    glue = glue_score(tasks)
    if glue is not None:
        score, names, _ = glue
        complete = "" if len(names) >= 8 else (
            f" (only {len(names)} of the 8 GLUE tasks: not comparable to a full GLUE score)")
        md += ["", f"**GLUE score: {score:.2f}** over {', '.join(names)}{complete}. Each task's main metric is "
               "its GLUE score: MNLI averages matched and mismatched accuracy, MRPC and QQP average F1 and "
               "accuracy, STS-B averages Pearson and Spearman."]
        csv_rows.append(["GLUE", "glue_score", "", "", f"{score:.4f}", "", "", "", " ".join(names)])
    lr_lines = [f"- {task}: " + ", ".join(f"lr {lr:g}: {m:.2f}" for lr, m in tasks[task]["by_lr"].items())
                for task in order if len(tasks[task]["by_lr"]) > 1]
    if lr_lines:
        md += ["", "Mean main metric per learning rate:", ""] + lr_lines
    md_path, csv_path = os.path.join(eval_dir, "summary.md"), os.path.join(eval_dir, "summary.csv")
    with open(md_path, "w", encoding="utf-8") as f:
        f.write("\n".join(md) + "\n")
    with open(csv_path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(csv_rows)
    return md_path, csv_path
