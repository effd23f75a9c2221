"""mometas-study: samplers x seeds on one corpus, each run a real ``mometas-pretrain``; held-out loss of each.

What it does (see docs/sampler_study.md):

1. Splits the corpus by document into training and held-out files (every ``--heldout_every``-th
   document is held out), or generates the demo corpus when no ``--train_files`` is given, and
   trains one WordPiece tokenizer on the training split (or uses ``--tokenizer``) that every run shares.
2. Runs every sampler spec x seed as its own ``python -m mometas_ds.pretrain`` process, ``--jobs``
   at a time (one thread each), into OUTPUT_DIR/runs/LABEL/seedS/. A run whose results are
   already there is not redone, so an interrupted study continues where it stopped.
3. Evaluates each run's final checkpoint (its DeepSpeed module state: every objective head, not
   only the exported mlm head) on the held-out split: the same ``--eval_sequences`` rows and the
   same corruption seeds for every run, one loss per objective.
4. Writes OUTPUT_DIR/study.json (every run), OUTPUT_DIR/study.md (per sampler: draws per
   objective, final probabilities, held-out losses, mean +- std over seeds, and the checks of
   docs/sampler_study.md), and the figures probs.png (probability trajectories per sampler,
   mean over seeds with a min-max band) and heldout.png (held-out loss per objective, mean
   with std error bars).

Sampler specs: ``LABEL=NAME`` or ``LABEL=NAME:JSON`` (JSON = --sampler_args), or just ``NAME``,
e.g. ``uniform mometas exp3 credit=mometas_credit 'floor=mometas:{"prob_floor": 0.2}'``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from .config import ConfigError, DataError, bundled_ds_config

PROG = "mometas-study"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OBJECTIVES = ["mlm", "dtd", "atd", "noisy_mlm", "coin_flip"]
DEFAULT_BAD = ["noisy_mlm", "coin_flip"]
DEFAULT_SAMPLERS = ["uniform", "mometas", "exp3", "mometas_credit"]
EXAMPLE_OBJECTIVES = os.path.join(REPO_ROOT, "examples", "study_objectives.py")
RESULT_FILE = "study_result.json"
logger = logging.getLogger("mometas_ds.study")


class StudyError(ValueError):
    """A bad flag or input of the study: reported as ``mometas-study: error: ...``, exit 2."""


@dataclass
class SamplerSpec:
    label: str
    name: str
    args: dict = field(default_factory=dict)


def parse_sampler_spec(text: str) -> SamplerSpec:
    """``LABEL=NAME[:JSON]`` or ``NAME[:JSON]``."""
    label, sep, rest = text.partition("=")
    if not sep:
        label, rest = "", text
    name, colon, args_text = rest.partition(":")
    name = name.strip()
    label = label.strip() or name
    if not name or not label.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise StudyError(f"--samplers: {text!r} is not LABEL=NAME[:JSON] (label: letters, digits, _-.)")
    args = {}
    if colon:
        try:
            args = json.loads(args_text)
        except json.JSONDecodeError as exc:
            raise StudyError(f"--samplers: {text!r}: the options after ':' are not JSON ({exc})") from None
        if not isinstance(args, dict):
            raise StudyError(f"--samplers: {text!r}: the options after ':' must be a JSON object")
    return SamplerSpec(label, name, args)


# ------------------------------------------------------------------------------------------------ data


def split_corpus(train_files: Sequence[str], text_field: str, every: int, out_dir: str):
    """Write train.jsonl and heldout.jsonl: every ``every``-th usable document goes to the held-out file."""
    from .data import CorpusReport, iter_texts

    os.makedirs(out_dir, exist_ok=True)
    train_path, heldout_path = os.path.join(out_dir, "train.jsonl"), os.path.join(out_dir, "heldout.jsonl")
    report = CorpusReport()
    counts = [0, 0]
    with (
        open(train_path + ".tmp", "w", encoding="utf-8") as train,
        open(heldout_path + ".tmp", "w", encoding="utf-8") as heldout,
    ):
        for i, text in enumerate(iter_texts(list(train_files), text_field, report)):
            target = 1 if i % every == every - 1 else 0
            (heldout if target else train).write(json.dumps({"text": text}) + "\n")
            counts[target] += 1
    if counts[1] == 0 or counts[0] == 0:
        raise StudyError(
            f"--train_files: {counts[0] + counts[1]} usable document(s) cannot be split into "
            f"training and held-out (every {every}th held out); add data or lower --heldout_every"
        )
    os.replace(train_path + ".tmp", train_path)
    os.replace(heldout_path + ".tmp", heldout_path)
    if report.total_skipped:
        logger.warning("corpus: %s", report.summary())
    return train_path, heldout_path, counts


def prepare_inputs(args) -> Dict[str, str]:
    """The shared corpus split and tokenizer of the study (made once; reused when present)."""
    data_dir = os.path.join(args.output_dir, "data")
    train_path, heldout_path = os.path.join(data_dir, "train.jsonl"), os.path.join(data_dir, "heldout.jsonl")
    if not (os.path.isfile(train_path) and os.path.isfile(heldout_path)):
        sources = args.train_files
        if not sources:
            from .demo_corpus import write_demo_corpus

            sources = [write_demo_corpus(os.path.join(data_dir, "generated.jsonl"), num_docs=args.num_docs, seed=0)]
        train_path, heldout_path, counts = split_corpus(sources, args.text_field, args.heldout_every, data_dir)
        logger.info("corpus split: %d training, %d held-out documents", *counts)
    tokenizer = args.tokenizer
    if tokenizer is None:
        tokenizer = os.path.join(data_dir, "tokenizer")
        if not os.path.isfile(os.path.join(tokenizer, "tokenizer.json")):
            from .tokenizer import train_wordpiece_tokenizer

            with open(train_path, encoding="utf-8") as f:
                texts = [json.loads(line)["text"] for line in f]
            train_wordpiece_tokenizer(texts, args.vocab_size, tokenizer)
    return {
        "train": train_path,
        "heldout": heldout_path,
        "tokenizer": tokenizer,
        "cache": os.path.join(data_dir, "cache"),
    }


# ------------------------------------------------------------------------------------------------ runs


def run_dir(output_dir: str, spec: SamplerSpec, seed: int) -> str:
    return os.path.join(output_dir, "runs", spec.label, f"seed{seed}")


def pretrain_command(args, inputs: Dict[str, str], spec: SamplerSpec, seed: int) -> List[str]:
    cmd = [
        sys.executable,
        "-m",
        "mometas_ds.pretrain",
        "--deepspeed_config",
        args.deepspeed_config,
        "--train_files",
        inputs["train"],
        "--output_dir",
        run_dir(args.output_dir, spec, seed),
        "--model_config",
        args.model_config,
        "--tokenizer",
        inputs["tokenizer"],
        "--cache_dir",
        inputs["cache"],
        "--seq_len",
        str(args.seq_len),
        "--objectives",
        ",".join(args.objectives),
        "--sampler",
        spec.name,
        "--meta_interval",
        str(args.meta_interval),
        "--meta_batch_size",
        str(args.meta_batch_size),
        "--max_steps",
        str(args.max_steps),
        "--save_steps",
        str(args.max_steps),
        "--save_total_limit",
        "1",
        "--log_steps",
        str(max(1, args.max_steps // 5)),
        "--seed",
        str(seed),
    ]
    if spec.name == "mometas":
        cmd += ["--meta_lr", str(args.meta_lr)]
    if spec.args:
        cmd += ["--sampler_args", json.dumps(spec.args)]
    if args.user_modules:
        cmd += ["--user_modules", *args.user_modules]
    return cmd


def _child_env() -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # one core per run: --jobs runs share the machine
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def train_one(args, inputs, spec: SamplerSpec, seed: int) -> dict:
    out = run_dir(args.output_dir, spec, seed)
    if os.path.isfile(os.path.join(out, RESULT_FILE)) or os.path.isdir(os.path.join(out, "hf_model")):
        return {"label": spec.label, "seed": seed, "returncode": 0, "seconds": None, "reused": True}  # finished
    shutil.rmtree(out, ignore_errors=True)  # a run stopped part-way starts afresh
    os.makedirs(out, exist_ok=True)
    started = time.time()
    with open(os.path.join(out, "stdout.log"), "w") as log:
        result = subprocess.run(
            pretrain_command(args, inputs, spec, seed),
            env=_child_env(),
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    seconds = time.time() - started
    logger.info("run %s seed %d: exit %d in %.0f s", spec.label, seed, result.returncode, seconds)
    return {"label": spec.label, "seed": seed, "returncode": result.returncode, "seconds": seconds, "reused": False}


# ------------------------------------------------------------------------------------------------ evaluation


class HeldOutEvaluator:
    """Every objective's loss on the same held-out rows with the same corruption seeds, for any checkpoint."""

    def __init__(self, args, inputs: Dict[str, str]):
        import torch

        from .data import DataConfig, prepare_data, rows_as_tensors
        from .objectives import build_objective
        from .tokenizer import load_tokenizer, special_tokens_of

        self.args = args
        self.tokenizer = load_tokenizer(inputs["tokenizer"])
        self.special = special_tokens_of(self.tokenizer)
        data = prepare_data(
            DataConfig(
                train_files=[inputs["heldout"]], seq_len=args.seq_len, cache_dir=inputs["cache"], meta_sequences=0
            ),
            self.tokenizer,
        )
        rows = rows_as_tensors(data.train)
        self.num_rows = min(args.eval_sequences, len(rows["input_ids"]))
        self.rows = {key: column[: self.num_rows] for key, column in rows.items()}
        self.objectives = {name: build_objective(name, self.special) for name in args.objectives}
        self.torch = torch

    def _model(self, out_dir: str):
        from . import checkpoint as ckpt
        from .model import MultiObjectiveBert, build_bert_config

        root = os.path.join(out_dir, "checkpoints")
        tag = ckpt.latest_complete_tag(root)
        if tag is None:
            raise DataError(f"{root}: no complete checkpoint")
        config = build_bert_config(
            self.args.model_config, vocab_size=len(self.tokenizer), max_position_embeddings=max(512, self.args.seq_len)
        )
        model = MultiObjectiveBert.from_config(config, self.objectives)
        model.load_state_dict(_module_state(root, tag))  # strict: every head must be in the checkpoint
        return model.float().eval()

    def losses(self, out_dir: str) -> Dict[str, float]:
        torch = self.torch
        model = self._model(out_dir)
        result = {}
        with torch.no_grad():
            for k, (name, objective) in enumerate(self.objectives.items()):
                generator = torch.Generator().manual_seed(104729 + k)  # fixed corruption, the same for every run
                total, count = 0.0, 0
                for start in range(0, self.num_rows, 32):
                    clean = {key: column[start : start + 32] for key, column in self.rows.items()}
                    if len(clean["input_ids"]) < objective.min_rows:
                        continue
                    batch = objective.corrupt(clean["input_ids"], clean["attention_mask"], generator=generator)
                    if objective.meta_eval_with_dropout:  # e.g. cse: its two views differ only by dropout
                        torch.manual_seed(7919 + start)
                        model.train()
                    loss = model(batch, name)["loss"]
                    model.eval()
                    total += float(loss) * len(clean["input_ids"])
                    count += len(clean["input_ids"])
                result[name] = total / count if count else math.nan
        return result


def _module_state(root: str, tag: str) -> dict:
    """The fp32 module weights of a DeepSpeed checkpoint: ZeRO's partitions merged, or stage 0's module."""
    import torch

    if any(name.endswith("optim_states.pt") and "zero_pp_rank" in name for name in os.listdir(os.path.join(root, tag))):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(root, tag=tag)
    state = torch.load(os.path.join(root, tag, "mp_rank_00_model_states.pt"), map_location="cpu", weights_only=False)
    return {key: value.float() for key, value in state["module"].items()}


def read_run(out_dir: str, objectives: List[str]) -> dict:
    """Draws per objective (rank 0's trace) and the probability trajectory (sampler.jsonl) of one run."""
    with open(os.path.join(out_dir, "trace", "rank0.txt"), encoding="utf-8") as f:
        trace = f.read().split()
    draws = {name: trace.count(name) for name in objectives}
    trajectory = []
    with open(os.path.join(out_dir, "sampler.jsonl"), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                trajectory.append([record["step"]] + [float(record["probs"][name]) for name in objectives])
    return {
        "draws": draws,
        "steps": len(trace),
        "trajectory": trajectory,
        "final_probs": dict(zip(objectives, trajectory[-1][1:])) if trajectory else None,
    }


# ------------------------------------------------------------------------------------------------ summary


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
    from matplotlib.figure import Figure

    from .plot import _colours

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


# ------------------------------------------------------------------------------------------------ CLI


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="runs/study", help="where the runs, study.json, study.md and figures go")
    p.add_argument(
        "--samplers",
        nargs="+",
        default=DEFAULT_SAMPLERS,
        metavar="SPEC",
        help="sampler specs LABEL=NAME[:JSON] (default: uniform mometas exp3 mometas_credit); "
        "label 'uniform' is the reference of the held-out check",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5], help="seeds of every sampler (default 1-5)")
    p.add_argument(
        "--train_files",
        nargs="+",
        default=None,
        help="your corpus (as for mometas-pretrain); default: the generated demo corpus",
    )
    p.add_argument("--text_field", default="text", help="JSON/parquet field holding the text")
    p.add_argument("--num_docs", type=int, default=2000, help="documents of the generated corpus (no --train_files)")
    p.add_argument(
        "--heldout_every", type=int, default=10, help="hold out every N-th document for evaluation (default 10)"
    )
    p.add_argument(
        "--tokenizer", default=None, help="HF tokenizer directory (default: train one on the training split)"
    )
    p.add_argument(
        "--vocab_size", type=int, default=2000, help="vocabulary of the tokenizer trained without --tokenizer"
    )
    p.add_argument(
        "--objectives",
        default=",".join(DEFAULT_OBJECTIVES),
        help=f"comma-separated objectives (default: {','.join(DEFAULT_OBJECTIVES)})",
    )
    p.add_argument(
        "--bad",
        default=",".join(DEFAULT_BAD),
        help="comma-separated objectives known to be harmful or useless; the first is 'the harmful one' "
        "of the checks; the others are the useful ones (default: noisy_mlm,coin_flip)",
    )
    p.add_argument(
        "--user_modules",
        nargs="*",
        default=None,
        metavar="FILE_OR_MODULE",
        help="files/modules registering objectives or samplers (default: examples/study_objectives.py)",
    )
    p.add_argument(
        "--deepspeed_config", default=bundled_ds_config("cpu_demo.json"), help="DeepSpeed config of every run"
    )
    p.add_argument("--model_config", default="tiny", help="model preset or BertConfig JSON of every run")
    p.add_argument("--seq_len", type=int, default=64, help="tokens per sequence")
    p.add_argument("--max_steps", type=int, default=1500, help="optimizer steps per run")
    p.add_argument("--meta_interval", type=int, default=20, help="steps between sampler updates (K)")
    p.add_argument("--meta_batch_size", type=int, default=32, help="meta-validation sequences per objective")
    p.add_argument("--meta_lr", type=float, default=0.5, help="--meta_lr of the mometas runs")
    p.add_argument("--eval_sequences", type=int, default=256, help="held-out sequences each objective is evaluated on")
    p.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="runs at once, one core each (default: all cores)"
    )
    p.add_argument(
        "--summarize_only", action="store_true", help="train nothing: evaluate and summarise the runs present"
    )
    return p


def _check_args(args) -> None:
    from .config import import_user_module
    from .objectives import available_objectives
    from .samplers import available_samplers, build_sampler

    for flag, value, minimum in (
        ("--max_steps", args.max_steps, 1),
        ("--meta_interval", args.meta_interval, 1),
        ("--meta_batch_size", args.meta_batch_size, 1),
        ("--jobs", args.jobs, 1),
        ("--eval_sequences", args.eval_sequences, 1),
        ("--heldout_every", args.heldout_every, 2),
        ("--num_docs", args.num_docs, 2),
        ("--seq_len", args.seq_len, 8),
    ):
        if value < minimum:
            raise StudyError(f"{flag} must be >= {minimum}, got {value}")
    if args.user_modules is None:
        args.user_modules = [EXAMPLE_OBJECTIVES] if os.path.isfile(EXAMPLE_OBJECTIVES) else []
    for module in args.user_modules:
        try:
            import_user_module(module)
        except Exception as exc:
            raise StudyError(f"--user_modules: could not import {module}: {type(exc).__name__}: {exc}") from None
    args.objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
    args.bad = [o.strip() for o in args.bad.split(",") if o.strip()]
    unknown = [o for o in args.objectives if o not in available_objectives()]
    if unknown or len(args.objectives) < 2:
        raise StudyError(
            f"--objectives: need two or more registered objectives; unknown: {', '.join(unknown) or '-'} "
            f"(available: {', '.join(available_objectives())}; yours may need --user_modules)"
        )
    if not set(args.bad) <= set(args.objectives) or len(args.bad) >= len(args.objectives):
        raise StudyError(f"--bad: {','.join(args.bad)} must be some, not all, of --objectives")
    specs = [parse_sampler_spec(text) for text in args.samplers]
    if len({s.label for s in specs}) != len(specs):
        raise StudyError("--samplers: two specs have the same label")
    for spec in specs:
        if spec.name not in available_samplers():
            raise StudyError(f"--samplers: unknown sampler {spec.name!r}; available: {', '.join(available_samplers())}")
        try:
            extra = {"lr": args.meta_lr} if spec.name == "mometas" else {}
            build_sampler(spec.name, len(args.objectives), **{**spec.args, **extra})
        except (ValueError, TypeError) as exc:
            raise StudyError(f"--samplers {spec.label}: {exc}") from None
    args.specs = specs
    if len(set(args.seeds)) != len(args.seeds):
        raise StudyError("--seeds: repeated seed")
    if args.train_files is not None and not args.train_files:
        raise StudyError("--train_files: give at least one file")
    if not os.path.isfile(args.deepspeed_config):
        raise StudyError(f"--deepspeed_config: file not found: {args.deepspeed_config}")
    args.output_dir = os.path.abspath(args.output_dir)
    args.deepspeed_config = os.path.abspath(args.deepspeed_config)


def run_study(args) -> int:
    inputs = prepare_inputs(args)
    jobs = [(spec, seed) for seed in args.seeds for spec in args.specs]
    failed = []
    if not args.summarize_only:
        started = time.time()
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            outcomes = list(pool.map(lambda job: train_one(args, inputs, *job), jobs))
        failed = [o for o in outcomes if o["returncode"] != 0]
        logger.info("%d run(s) in %.0f s wall, %d failed", len(outcomes), time.time() - started, len(failed))
        timing = [o["seconds"] for o in outcomes if o["seconds"] is not None and o["returncode"] == 0]
    else:
        timing = []
    evaluator = None
    runs = []
    for spec, seed in jobs:
        out = run_dir(args.output_dir, spec, seed)
        result_path = os.path.join(out, RESULT_FILE)
        if os.path.isfile(result_path):
            with open(result_path, encoding="utf-8") as f:
                runs.append(json.load(f))
            continue
        if not os.path.isdir(os.path.join(out, "hf_model")):  # the run did not finish
            if not any(o["label"] == spec.label and o["seed"] == seed for o in failed):
                failed.append({"label": spec.label, "seed": seed, "returncode": None})
            continue
        if evaluator is None:
            evaluator = HeldOutEvaluator(args, inputs)
        record = {
            "label": spec.label,
            "sampler": spec.name,
            "sampler_args": spec.args,
            "seed": seed,
            **read_run(out, args.objectives),
            "heldout": evaluator.losses(out),
        }
        useful = [o for o in args.objectives if o not in args.bad]
        record["useful_heldout"] = float(np.mean([record["heldout"][o] for o in useful]))
        with open(result_path, "w", encoding="utf-8") as f:
            json.dump(record, f)
        runs.append(record)
    for o in failed:
        out = run_dir(args.output_dir, SamplerSpec(o["label"], ""), o["seed"])
        print(
            f"{PROG}: run {o['label']} seed {o['seed']} failed; see {os.path.join(out, 'stdout.log')}", file=sys.stderr
        )
    if not runs:
        print(f"{PROG}: error: no finished run to summarise", file=sys.stderr)
        return 1
    criteria = check_criteria(runs, args.objectives, args.bad)
    table = summary_table(runs, args.objectives, args.bad, criteria)
    settings = {
        key: getattr(args, key)
        for key in (
            "objectives",
            "bad",
            "seeds",
            "max_steps",
            "meta_interval",
            "meta_batch_size",
            "meta_lr",
            "seq_len",
            "model_config",
            "eval_sequences",
            "samplers",
        )
    }
    with open(os.path.join(args.output_dir, "study.json"), "w", encoding="utf-8") as f:
        json.dump({"settings": settings, "criteria": criteria, "runs": runs, "run_seconds": timing}, f, indent=1)
    with open(os.path.join(args.output_dir, "study.md"), "w", encoding="utf-8") as f:
        f.write(table)
    figures = plot_study(runs, args.objectives, args.output_dir)
    print(table)
    if timing:
        print(f"run time: {np.mean(timing):.0f} s mean, {max(timing):.0f} s max, over {len(timing)} run(s)")
    for path in [os.path.join(args.output_dir, "study.md"), os.path.join(args.output_dir, "study.json")] + figures:
        print(f"wrote {path}")
    return 1 if failed else 0


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    args = build_arg_parser().parse_args(argv)
    try:
        _check_args(args)
        return run_study(args)
    except (StudyError, ConfigError, DataError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
