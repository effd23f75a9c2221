"""The study's summary: the checks of docs/sampler_study.md, the study.md tables and the figures."""

from __future__ import annotations

import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np


def _mean_std(values: Sequence[float]):
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def check_criteria(
    runs: List[dict],
    objectives: List[str],
    bad: List[str],
    reference: Optional[str] = "uniform",
    harmful: Optional[str] = None,
) -> Dict[str, dict]:
    """Per sampler label, over its seeds, the checks of docs/sampler_study.md.

    harmful_least_drawn:  ``harmful`` drawn less than every other objective, in every seed
    harmful_below_useful: ``harmful`` drawn less than every useful objective (the other bad ones may be lower)
    harmful_below_half:   ``harmful``'s final probability < half its uniform share, in every seed
    useful_not_worse:     seeds whose mean held-out loss of the useful objectives is <= the reference's
                          (same seed), of the seeds both have
    useful_above_quarter: no useful objective's final probability < a quarter of its uniform share, any seed
    """
    harmful = harmful or (bad[0] if bad else None)
    useful = [name for name in objectives if name not in bad]
    share = 1.0 / len(objectives)
    by_label: Dict[str, List[dict]] = {}
    for run in runs:
        by_label.setdefault(run["label"], []).append(run)
    ref = {run["seed"]: run["useful_heldout"] for run in by_label.get(reference, [])}
    out = {}
    for label, group in by_label.items():
        checks = {"seeds": len(group)}
        if harmful is not None:
            checks["harmful_least_drawn"] = sum(
                all(run["draws"][harmful] < run["draws"][o] for o in objectives if o != harmful) for run in group
            )
            checks["harmful_below_useful"] = sum(
                all(run["draws"][harmful] < run["draws"][o] for o in useful) for run in group
            )
            checks["harmful_below_half"] = sum(run["final_probs"][harmful] < 0.5 * share for run in group)
        paired = [run for run in group if run["seed"] in ref]
        checks["useful_not_worse"] = sum(run["useful_heldout"] <= ref[run["seed"]] for run in paired)
        checks["paired_seeds"] = len(paired)
        checks["useful_above_quarter"] = sum(
            min(run["final_probs"][o] for o in useful) >= 0.25 * share for run in group
        )
        checks["min_useful_prob"] = min(min(run["final_probs"][o] for o in useful) for run in group)
        out[label] = checks
    return out


def summary_table(runs: List[dict], objectives: List[str], bad: List[str], criteria: Dict[str, dict]) -> str:
    labels = list(dict.fromkeys(run["label"] for run in runs))
    useful = [name for name in objectives if name not in bad]
    lines = []

    def table(title, key, fmt, scale=1.0):
        lines.extend(
            [
                f"**{title}** (mean ± std over seeds)",
                "",
                "| sampler | " + " | ".join(objectives) + " |",
                "|---" * (len(objectives) + 1) + "|",
            ]
        )
        for label in labels:
            group = [run for run in runs if run["label"] == label]
            cells = []
            for name in objectives:
                mean, std = _mean_std([run[key][name] * scale for run in group])
                cells.append(f"{mean:{fmt}} ± {std:{fmt}}")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")

    for run in runs:
        run["draw_share"] = {name: run["draws"][name] / max(1, run["steps"]) for name in objectives}
    table("Share of steps drawn, %", "draw_share", ".1f", 100.0)
    table("Final sampling probability, %", "final_probs", ".1f", 100.0)
    table("Held-out loss", "heldout", ".3f")
    lines.extend(
        [
            f"**Mean held-out loss of the useful objectives ({', '.join(useful)}) per seed**",
            "",
            "| sampler | " + " | ".join(f"seed {s}" for s in sorted({r["seed"] for r in runs})) + " | mean ± std |",
            "|---" * (len({r["seed"] for r in runs}) + 2) + "|",
        ]
    )
    seeds = sorted({run["seed"] for run in runs})
    for label in labels:
        group = {run["seed"]: run["useful_heldout"] for run in runs if run["label"] == label}
        mean, std = _mean_std(list(group.values()))
        lines.append(
            f"| {label} | "
            + " | ".join(f"{group[s]:.3f}" if s in group else "–" for s in seeds)
            + f" | {mean:.3f} ± {std:.3f} |"
        )
    lines.append("")
    harmful = bad[0] if bad else "-"
    lines.extend(
        [
            f"**Checks** (harmful = {harmful}; counts are seeds)",
            "",
            "| sampler | seeds | harmful least drawn | harmful drawn less than every useful | "
            "harmful < ½ uniform share | useful ≤ uniform (paired) | "
            "useful ≥ ¼ uniform share | lowest useful prob |",
            "|---|---|---|---|---|---|---|---|",
        ]
    )
    for label in labels:
        c = criteria[label]
        lines.append(
            f"| {label} | {c['seeds']} | {c.get('harmful_least_drawn', '-')} | "
            f"{c.get('harmful_below_useful', '-')} | {c.get('harmful_below_half', '-')} | "
            f"{c['useful_not_worse']}/{c['paired_seeds']} | {c['useful_above_quarter']} | "
            f"{100 * c['min_useful_prob']:.1f}% |"
        )
    lines.append("")
    return "\n".join(lines)


def plot_study(runs: List[dict], objectives: List[str], out_dir: str) -> List[str]:
    # matplotlib (~0.2 s) only for the figures
    from matplotlib.figure import Figure

    from mometas_ds.plot import _colours

    labels = list(dict.fromkeys(run["label"] for run in runs))
    colours = _colours(objectives)
    paths = []
    cols = min(3, len(labels))
    rows = math.ceil(len(labels) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), dpi=100)
    for i, label in enumerate(labels):
        ax = fig.add_subplot(rows, cols, i + 1)
        group = [np.asarray(run["trajectory"], dtype=float) for run in runs if run["label"] == label]
        length = min(len(t) for t in group)
        stack = np.stack([t[:length] for t in group])  # seeds x updates x (1 + objectives)
        steps = stack[0, :, 0]
        for j, name in enumerate(objectives):
            values = stack[:, :, j + 1]
            ax.plot(steps, values.mean(axis=0), color=colours[name], label=name)
            ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=colours[name], alpha=0.2)
        ax.axhline(1.0 / len(objectives), color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{label} ({len(group)} seeds)")
        ax.set_xlabel("step")
        ax.set_ylabel("sampling probability")
        ax.set_ylim(0, None)
        if i == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "probs.png"))
    fig.savefig(paths[-1])

    fig = Figure(figsize=(1.6 * len(objectives) * max(1, len(labels)) / 2 + 2, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(labels)
    x = np.arange(len(objectives))
    for i, label in enumerate(labels):
        group = [run for run in runs if run["label"] == label]
        stats = [_mean_std([run["heldout"][name] for run in group]) for name in objectives]
        ax.bar(
            x + (i - (len(labels) - 1) / 2) * width,
            [m for m, _ in stats],
            width,
            yerr=[s for _, s in stats],
            capsize=2,
            label=label,
        )
    ax.set_xticks(x)
    ax.set_xticklabels(objectives)
    ax.set_ylabel("held-out loss (mean ± std over seeds)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "heldout.png"))
    fig.savefig(paths[-1])
    return paths


# ------------------------------------------------------------------------------------------------ oracle, gain


# Below this relative gain of the oracle over uniform (same seed) there is nothing to capture beyond seed noise:
# the ratio would divide by noise (e.g. every objective useful), so the gain is reported as n/a.
MIN_ORACLE_GAIN = 0.01


def captured_gain(runs: List[dict], oracles: List[str], reference: str = "uniform") -> dict:
    """Each sampler's captured gain per seed: (uniform - sampler) / (uniform - oracle), useful mean held-out loss.

    The oracle is the label in ``oracles`` with the lowest mean useful held-out loss over its seeds (the best
    of the fixed mixtures), taken at the same seed. A seed where the oracle is not better than uniform by at
    least ``MIN_ORACLE_GAIN`` (1%) has no gain (None): there was nothing to capture beyond noise.
    Returns ``{"oracle": label or None, "oracle_means": {..},
    "per_seed": {label: {seed: gain or None}}, "relative": {label: {seed: sampler / uniform - 1}}}``.
    """
    by_label: Dict[str, Dict[int, float]] = {}
    for run in runs:
        by_label.setdefault(run["label"], {})[run["seed"]] = run["useful_heldout"]
    ref = by_label.get(reference, {})
    means = {label: float(np.mean(list(by_label[label].values()))) for label in oracles if by_label.get(label)}
    oracle = min(means, key=means.get) if means else None
    per_seed, relative = {}, {}
    for label, losses in by_label.items():
        per_seed[label], relative[label] = {}, {}
        for seed, loss in sorted(losses.items()):
            if seed not in ref:
                continue
            relative[label][seed] = loss / ref[seed] - 1.0
            target = by_label.get(oracle, {}).get(seed) if oracle else None
            if target is None or ref[seed] - target <= MIN_ORACLE_GAIN * ref[seed]:
                per_seed[label][seed] = None
            else:
                per_seed[label][seed] = (ref[seed] - loss) / (ref[seed] - target)
    return {"oracle": oracle, "oracle_means": means, "per_seed": per_seed, "relative": relative}


def goal_checks(runs: List[dict], objectives: List[str], bad: List[str], gains: dict) -> Dict[str, dict]:
    """Per sampler label, the goal of issue 30 (docs/sampler_study.md), counted in seeds.

    bad_least_drawn:  every harmful/useless objective drawn less than every useful one
    bad_below_half:   every harmful/useless objective's final probability < half its uniform share
    gain_mean, gain_min: captured gain over the seeds that have one (None without an oracle gain)
    within_1pct:      seeds whose useful held-out loss is at most 1% above uniform's (same seed)
    """
    useful = [o for o in objectives if o not in bad]
    share = 1.0 / len(objectives)
    out = {}
    for label in dict.fromkeys(run["label"] for run in runs):
        group = [run for run in runs if run["label"] == label]
        checks = {"seeds": len(group)}
        if bad:
            checks["bad_least_drawn"] = sum(
                max(run["draws"][b] for b in bad) < min(run["draws"][u] for u in useful) for run in group
            )
            checks["bad_below_half"] = sum(all(run["final_probs"][b] < 0.5 * share for b in bad) for run in group)
            checks["bad_share"] = float(np.mean([sum(run["draws"][b] for b in bad) / run["steps"] for run in group]))
        values = [g for g in gains["per_seed"].get(label, {}).values() if g is not None]
        checks["gain_mean"] = float(np.mean(values)) if values else None
        checks["gain_min"] = float(min(values)) if values else None
        rel = list(gains["relative"].get(label, {}).values())
        checks["within_1pct"] = sum(r <= 0.01 for r in rel)
        checks["paired_seeds"] = len(rel)
        checks["worst_vs_uniform"] = float(max(rel)) if rel else None
        out[label] = checks
    return out


def gain_table(runs: List[dict], gains: dict, goals: Dict[str, dict], suite: Optional[str] = None) -> str:
    seeds = sorted({run["seed"] for run in runs})
    labels = list(dict.fromkeys(run["label"] for run in runs))
    oracle = gains["oracle"]
    lines = [
        f"**Captured gain** (uniform − sampler) / (uniform − {oracle or 'oracle'}) on the useful objectives' mean "
        f"held-out loss, per seed{' — suite ' + suite if suite else ''}; oracle = the best fixed mixture "
        "(lowest mean); in brackets: the useful held-out loss vs uniform's",
        "",
        "| sampler | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | min |",
        "|---" * (len(seeds) + 3) + "|",
    ]
    if oracle is None:
        lines[0] += " (no oracle run: gains not defined)"
    for label in labels:
        cells = []
        for s in seeds:
            g = gains["per_seed"].get(label, {}).get(s)
            r = gains["relative"].get(label, {}).get(s)
            if r is None:
                cells.append("–")
            else:
                cells.append(("n/a" if g is None else f"{g:.2f}") + f" ({100 * r:+.1f}%)")
        c = goals[label]
        mean = "–" if c["gain_mean"] is None else f"{c['gain_mean']:.2f}"
        low = "–" if c["gain_min"] is None else f"{c['gain_min']:.2f}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {mean} | {low} |")
    lines.extend(
        [
            "",
            "**Goal checks** (counts are seeds; bad = every harmful/useless objective)",
            "",
            "| sampler | seeds | bad drawn least | bad final < ½ uniform share | bad share of steps | "
            "≤ 1% above uniform | worst vs uniform |",
            "|---|---|---|---|---|---|---|",
        ]
    )
    for label in labels:
        c = goals[label]
        worst = "–" if c["worst_vs_uniform"] is None else f"{100 * c['worst_vs_uniform']:+.1f}%"
        share = f"{100 * c['bad_share']:.1f}%" if "bad_share" in c else "-"
        lines.append(
            f"| {label} | {c['seeds']} | {c.get('bad_least_drawn', '-')} | {c.get('bad_below_half', '-')} | "
            f"{share} | {c['within_1pct']}/{c['paired_seeds']} | {worst} |"
        )
    lines.append("")
    return "\n".join(lines)
