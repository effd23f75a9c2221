"""PNG figures of what a pre-training run did and what its sampler learned.

Reads RUN_DIR/metrics.jsonl (one line per optimizer step) and RUN_DIR/sampler.jsonl (one line per
sampler update) and writes, by default into RUN_DIR/plots/ (``mometas-plot``: mometas_ds.cli.plot):

  sampling_probs.png  sampling probability per objective over steps (stacked area; each update's
                      probabilities hold until the next update, the last until the last logged step)
  meta_val_loss.png   meta-validation loss per objective at each sampler update
  reward.png          reward per sampler update (the first update has none: it has no previous loss)
  train_loss.png      training loss per step, one colour per objective, with a running mean each

Every figure is FIGURE_SIZE_IN at FIGURE_DPI: 800 x 450 pixels, whatever the data.

A run killed mid-write leaves a truncated last line: lines that are not JSON objects are skipped,
counted and logged. NaN/inf/null values are left as gaps. Figures whose data is absent (no
sampler.jsonl, or updates without val_losses/reward, as rule-based samplers write them) are skipped
and logged; the others are still written.

Figures are drawn with matplotlib's Agg renderer through `matplotlib.figure.Figure`, so importing
this module never touches pyplot or the caller's backend and needs no display.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np
from matplotlib.figure import Figure
from mometas_ds.config.paths import RunPaths

logger = logging.getLogger(__name__)

FIGURE_SIZE_IN = (8.0, 4.5)
FIGURE_DPI = 100  # -> 800 x 450 px
FIGURE_NAMES = ("sampling_probs.png", "meta_val_loss.png", "reward.png", "train_loss.png")

# Known objectives keep the same colour in every figure and every run; others follow alphabetically.
_KNOWN_OBJECTIVES = ("mlm", "gmlm", "atd", "dtd", "cse")
_RUNNING_MEAN_WINDOW = 25


@dataclass
class StepRecords:
    """metrics.jsonl as columns; one entry per optimizer step."""

    steps: np.ndarray
    objectives: list[str]
    losses: np.ndarray


@dataclass
class UpdateRecords:
    """sampler.jsonl as columns; one entry per sampler update. Missing names/values are NaN."""

    steps: np.ndarray
    probs: dict[str, np.ndarray] = field(default_factory=dict)
    val_losses: dict[str, np.ndarray] = field(default_factory=dict)
    rewards: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _read_jsonl(path: str) -> list[tuple[int, dict]]:
    """(line number, record) for each line that is a JSON object; others are skipped and counted."""
    records, bad_lines = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                bad_lines.append(lineno)
                continue
            if not isinstance(record, dict):
                bad_lines.append(lineno)
                continue
            records.append((lineno, record))
    if bad_lines:
        shown = ", ".join(map(str, bad_lines[:10])) + (", ..." if len(bad_lines) > 10 else "")
        logger.warning("%s: skipped %d malformed line(s) (line %s)", path, len(bad_lines), shown)
    return records


def _number(value, path: str, lineno: int, name: str) -> float:
    """A float from a JSON value; null and non-finite values become NaN (drawn as gaps)."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{path}:{lineno}: field '{name}' must be a number or null, got {value!r}")
    return float(value) if math.isfinite(value) else math.nan


def _step(record: dict, path: str, lineno: int) -> int:
    value = record.get("step")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{path}:{lineno}: field 'step' must be an integer, got {value!r}")
    return value


def _name_to_number(record: dict, key: str, path: str, lineno: int) -> dict[str, float]:
    value = record.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{path}:{lineno}: field '{key}' must be an object of name -> number, got {value!r}")
    return {str(k): _number(v, path, lineno, f"{key}.{k}") for k, v in value.items()}


def read_metrics(path: str) -> StepRecords:
    steps, objectives, losses = [], [], []
    for lineno, record in _read_jsonl(path):
        objective = record.get("objective")
        if not isinstance(objective, str):
            raise ValueError(f"{path}:{lineno}: field 'objective' must be a string, got {objective!r}")
        steps.append(_step(record, path, lineno))
        objectives.append(objective)
        losses.append(_number(record.get("loss"), path, lineno, "loss"))
    if not steps:
        raise ValueError(f"{path}: no step records (empty file or every line malformed)")
    return StepRecords(np.asarray(steps, dtype=np.int64), objectives, np.asarray(losses, dtype=np.float64))


def read_sampler(path: str) -> UpdateRecords:
    steps, probs, val_losses, rewards = [], [], [], []
    for lineno, record in _read_jsonl(path):
        steps.append(_step(record, path, lineno))
        probs.append(_name_to_number(record, "probs", path, lineno))
        val_losses.append(_name_to_number(record, "val_losses", path, lineno))
        rewards.append(_number(record.get("reward"), path, lineno, "reward"))

    def columns(rows: list[dict[str, float]]) -> dict[str, np.ndarray]:
        names = {name for row in rows for name in row}
        return {name: np.array([row.get(name, math.nan) for row in rows]) for name in names}

    return UpdateRecords(np.asarray(steps, dtype=np.int64), columns(probs), columns(val_losses),
                         np.asarray(rewards, dtype=np.float64))


def _objective_order(names) -> list[str]:
    names = set(names)
    return [n for n in _KNOWN_OBJECTIVES if n in names] + sorted(names - set(_KNOWN_OBJECTIVES))


def _colours(names: list[str]) -> dict[str, str]:
    # Indexing over all known names first keeps e.g. "cse" the same colour whether or not "mlm" ran.
    palette_order = list(_KNOWN_OBJECTIVES) + [n for n in names if n not in _KNOWN_OBJECTIVES]
    return {name: f"C{i % 10}" for i, name in enumerate(palette_order) if name in names}


def _new_figure(title: str, xlabel: str, ylabel: str):
    fig = Figure(figsize=FIGURE_SIZE_IN, dpi=FIGURE_DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig: Figure, path: str) -> str:
    # No bbox_inches="tight": it would change the pixel size from run to run.
    fig.savefig(path, dpi=FIGURE_DPI, format="png")
    return path


def _plot_sampling_probs(updates: UpdateRecords, last_step: int, colours, path: str) -> str:
    names = _objective_order(updates.probs)
    order = np.argsort(updates.steps, kind="stable")
    steps = updates.steps[order]
    # Each update's probabilities hold until the next one; the last holds until the last logged step.
    x = np.append(steps, max(int(steps[-1]), last_step))
    fig, ax = _new_figure("Sampling probability per objective", "step", "probability")
    bottom = np.zeros(len(x))
    for name in names:
        p = np.nan_to_num(updates.probs[name][order], nan=0.0)
        top = bottom + np.append(p, p[-1])
        ax.fill_between(x, bottom, top, step="post", color=colours[name], alpha=0.85, linewidth=0, label=name)
        bottom = top
    ax.set_xlim(x[0], x[-1] if x[-1] > x[0] else x[0] + 1)
    ax.set_ylim(0, max(1.0, float(bottom.max())))
    ax.legend(title="objective", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def _plot_meta_val_loss(updates: UpdateRecords, colours, path: str) -> str:
    fig, ax = _new_figure("Meta-validation loss per objective", "step (sampler update)", "meta-validation loss")
    order = np.argsort(updates.steps, kind="stable")
    for name in _objective_order(updates.val_losses):
        ax.plot(updates.steps[order], updates.val_losses[name][order], marker="o", markersize=3,
                color=colours[name], label=name)
    ax.legend(title="objective", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def _plot_reward(updates: UpdateRecords, path: str) -> str:
    fig, ax = _new_figure("Sampler reward per update", "step (sampler update)", "reward")
    order = np.argsort(updates.steps, kind="stable")
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    ax.plot(updates.steps[order], updates.rewards[order], marker="o", markersize=3, color="C0")
    return _save(fig, path)


def _plot_train_loss(metrics: StepRecords, colours, path: str) -> str:
    fig, ax = _new_figure("Training loss per step", "step", "training loss")
    objectives = np.asarray(metrics.objectives)
    for name in _objective_order(metrics.objectives):
        mask = objectives == name
        steps, losses = metrics.steps[mask], metrics.losses[mask]
        ax.scatter(steps, losses, s=6, alpha=0.45, color=colours[name], linewidths=0, label=name)
        # A running mean over this objective's own steps makes the trend readable over thousands of points.
        finite = np.isfinite(losses)
        if finite.sum() >= 2 * _RUNNING_MEAN_WINDOW:
            kernel = np.ones(_RUNNING_MEAN_WINDOW) / _RUNNING_MEAN_WINDOW
            mean = np.convolve(losses[finite], kernel, mode="valid")
            # Centred on its window, so the line does not lag behind the points it summarises.
            start = _RUNNING_MEAN_WINDOW // 2
            ax.plot(steps[finite][start:start + len(mean)], mean, color=colours[name], linewidth=1.5)
    legend = ax.legend(title="objective", loc="upper left", bbox_to_anchor=(1.01, 1.0), markerscale=2.5)
    for handle in legend.legend_handles:
        handle.set_alpha(1.0)
    return _save(fig, path)


def plot_run(run_dir: str, out_dir: str | None = None) -> list[str]:
    """Write the run's figures as PNGs and return their paths; figures without data are logged as skipped."""
    metrics_path = RunPaths(run_dir).metrics
    if not os.path.isfile(metrics_path):
        raise FileNotFoundError(f"{metrics_path} not found: is {run_dir!r} a run's --output_dir?")
    metrics = read_metrics(metrics_path)

    sampler_path = RunPaths(run_dir).sampler
    if os.path.isfile(sampler_path):
        updates = read_sampler(sampler_path)
    else:
        updates = UpdateRecords(np.zeros(0, dtype=np.int64))
        logger.info("%s not found: sampler figures will be skipped", sampler_path)

    out_dir = out_dir if out_dir is not None else os.path.join(run_dir, "plots")
    os.makedirs(out_dir, exist_ok=True)
    colours = _colours(_objective_order(set(metrics.objectives) | set(updates.probs) | set(updates.val_losses)))

    written, skipped = [], []
    has_updates = len(updates.steps) > 0
    if has_updates and updates.probs:
        last_step = int(metrics.steps.max())
        written.append(_plot_sampling_probs(updates, last_step, colours, os.path.join(out_dir, FIGURE_NAMES[0])))
    else:
        skipped.append((FIGURE_NAMES[0], "no sampler updates with probs"))
    if has_updates and any(np.isfinite(v).any() for v in updates.val_losses.values()):
        written.append(_plot_meta_val_loss(updates, colours, os.path.join(out_dir, FIGURE_NAMES[1])))
    else:
        skipped.append((FIGURE_NAMES[1], "no sampler updates with val_losses"))
    if has_updates and np.isfinite(updates.rewards).any():
        written.append(_plot_reward(updates, os.path.join(out_dir, FIGURE_NAMES[2])))
    else:
        skipped.append((FIGURE_NAMES[2], "no sampler updates with a reward"))
    written.append(_plot_train_loss(metrics, colours, os.path.join(out_dir, FIGURE_NAMES[3])))

    for name, reason in skipped:
        logger.info("skipped %s: %s", name, reason)
    return written
