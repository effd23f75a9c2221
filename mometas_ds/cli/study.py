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

Suites (``--suite NAME [NAME ...]``, see ``--list_suites``): named sets of objectives with known worth, each
declared dev (a sampler's defaults may be chosen on it) or test (reporting only). Each suite runs into
OUTPUT_DIR/SUITE/ with the objectives, --bad and oracle runs (fixed weights over the useful objectives,
and a small grid of fixed mixtures) of the suite; study.md then also reports each sampler's captured gain
(uniform - sampler) / (uniform - best oracle) on the useful objectives' mean held-out loss, per seed.
``--downstream`` fine-tunes every finished run on generated tasks and compares every sampler with uniform.

Sampler specs: ``LABEL=NAME`` or ``LABEL=NAME:JSON`` (JSON = --sampler_args), or just ``NAME``,
e.g. ``uniform mometas exp3 credit=mometas_credit 'floor=mometas:{"prob_floor": 0.2}'``; the JSON may also
hold ``"meta_fixed_set": "on"`` (or true/false), given to the run as --meta_fixed_set.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mometas_ds.config import ConfigError, DataError, bundled_ds_config

from mometas_ds.safe_io import check_writable

from mometas_ds.registry import import_user_module
from mometas_ds.objectives import available_objectives
from mometas_ds.samplers import available_samplers, build_sampler
from mometas_ds.study.common import (
    DEFAULT_BAD,
    DEFAULT_OBJECTIVES,
    DEFAULT_SAMPLERS,
    EXAMPLE_OBJECTIVES,
    PROG,
    RESULT_FILE,
    SamplerSpec,
    StudyError,
    logger,
    parse_sampler_spec,
)
from mometas_ds.study.downstream import DOWNSTREAM_TASKS, GENERATED_TASKS, run_downstream
from mometas_ds.study.heldout import HeldOutEvaluator
from mometas_ds.study.report import captured_gain, check_criteria, goal_checks, gain_table, plot_study, summary_table
from mometas_ds.study.runs import prepare_inputs, read_run, run_dir, train_one
from mometas_ds.study.suites import get_suite, suites_table


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
    p.add_argument(
        "--suite",
        nargs="+",
        default=None,
        metavar="NAME",
        help="named suites of objectives with known worth (replace --objectives/--bad; each into OUTPUT_DIR/NAME, "
        "with its oracle runs); see --list_suites",
    )
    p.add_argument("--list_suites", action="store_true", help="print the suites (dev/test) and exit")
    p.add_argument(
        "--downstream",
        action="store_true",
        help="after pre-training, fine-tune every run on generated downstream tasks and compare with uniform",
    )
    p.add_argument(
        "--downstream_tasks",
        default=",".join(DOWNSTREAM_TASKS),
        help=f"generated GLUE-layout tasks of --downstream (default: {','.join(DOWNSTREAM_TASKS)})",
    )
    p.add_argument(
        "--downstream_seeds", nargs="+", type=int, default=[1, 2, 3], help="fine-tuning seeds (default 1 2 3)"
    )
    p.add_argument("--downstream_epochs", type=float, default=3.0, help="fine-tuning epochs (default 3)")
    p.add_argument(
        "--downstream_examples", type=int, default=256, help="generated training examples per task (default 256)"
    )
    return p


def _check_args(args) -> None:
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
    if isinstance(args.objectives, str):
        args.objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
    if isinstance(args.bad, str):
        args.bad = [o.strip() for o in args.bad.split(",") if o.strip()]
    unknown = [o for o in args.objectives if o not in available_objectives()]
    if unknown or len(args.objectives) < 2:
        raise StudyError(
            f"--objectives: need two or more registered objectives; unknown: {', '.join(unknown) or '-'} "
            f"(available: {', '.join(available_objectives())}; yours may need --user_modules)"
        )
    if not set(args.bad) <= set(args.objectives) or len(args.bad) >= len(args.objectives):
        raise StudyError(f"--bad: {','.join(args.bad)} must be some, not all, of --objectives")
    specs = [parse_sampler_spec(text) for text in args.samplers] + list(getattr(args, "extra_specs", []))
    if len({s.label for s in specs}) != len(specs):
        raise StudyError("--samplers: two specs have the same label")
    for spec in specs:
        if spec.name not in available_samplers():
            raise StudyError(f"--samplers: unknown sampler {spec.name!r}; available: {', '.join(available_samplers())}")
        try:
            extra = {"lr": args.meta_lr} if spec.name == "mometas" else {}
            if spec.name == "fixed" and len(spec.args.get("weights", ())) != len(args.objectives):
                raise StudyError(f"--samplers {spec.label}: needs one weight per objective ({len(args.objectives)})")
            build_sampler(spec.name, len(args.objectives), **{**spec.args, **extra})
        except (ValueError, TypeError) as exc:
            raise StudyError(f"--samplers {spec.label}: {exc}") from None
    args.specs = specs
    if args.downstream:
        args.downstream_tasks = [t.strip() for t in args.downstream_tasks.split(",") if t.strip()]
        unknown = [t for t in args.downstream_tasks if t not in GENERATED_TASKS]
        if unknown or not args.downstream_tasks:
            raise StudyError(
                f"--downstream_tasks: unknown or none: {', '.join(unknown) or '-'} "
                f"(generated tasks: {', '.join(GENERATED_TASKS)})"
            )
        for flag, value in (
            ("--downstream_epochs", args.downstream_epochs),
            ("--downstream_examples", args.downstream_examples),
        ):
            if not value > 0:
                raise StudyError(f"{flag} must be > 0, got {value}")
        if len(set(args.downstream_seeds)) != len(args.downstream_seeds):
            raise StudyError("--downstream_seeds: repeated seed")
    if len(set(args.seeds)) != len(args.seeds):
        raise StudyError("--seeds: repeated seed")
    if args.train_files is not None and not args.train_files:
        raise StudyError("--train_files: give at least one file")
    if not os.path.isfile(args.deepspeed_config):
        raise StudyError(f"--deepspeed_config: file not found: {args.deepspeed_config}")
    args.output_dir = os.path.abspath(args.output_dir)
    args.deepspeed_config = os.path.abspath(args.deepspeed_config)
    check_writable(args.output_dir)  # a file in the way, read-only: ConfigError naming --output_dir, before any run


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
            "meta_fixed_set": spec.meta_fixed_set,
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
    oracles = [spec.label for spec in args.specs if spec.label.startswith("oracle")]
    gains = captured_gain(runs, oracles)
    goals = goal_checks(runs, args.objectives, args.bad, gains)
    table += gain_table(runs, gains, goals, suite=getattr(args, "suite_name", None))
    downstream = None
    if args.downstream:
        downstream = run_downstream(args, runs)
        if downstream is not None:
            table += "\n" + downstream["table"]
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
    settings["suite"] = getattr(args, "suite_name", None)
    settings["suite_split"] = getattr(args, "suite_split", None)
    with open(os.path.join(args.output_dir, "study.json"), "w", encoding="utf-8") as f:
        json.dump(
            {
                "settings": settings,
                "criteria": criteria,
                "captured_gain": gains,
                "goal": goals,
                "downstream": None if downstream is None else downstream["result"],
                "runs": runs,
                "run_seconds": timing,
            },
            f,
            indent=1,
        )
    with open(os.path.join(args.output_dir, "study.md"), "w", encoding="utf-8") as f:
        f.write(table)
    figures = plot_study(runs, args.objectives, args.output_dir)
    print(table)
    if timing:
        print(f"run time: {np.mean(timing):.0f} s mean, {max(timing):.0f} s max, over {len(timing)} run(s)")
    for path in [os.path.join(args.output_dir, "study.md"), os.path.join(args.output_dir, "study.json")] + figures:
        print(f"wrote {path}")
    return 1 if failed else 0


def _suite_args(args, name: str):
    """A copy of ``args`` for one suite: its objectives, bad ones, oracle runs and OUTPUT_DIR/NAME (data shared)."""
    suite = get_suite(name)
    sub = argparse.Namespace(**vars(args))
    sub.objectives, sub.bad = list(suite.objectives), list(suite.bad)
    labels = {parse_sampler_spec(text).label for text in args.samplers}
    sub.extra_specs = [spec for spec in suite.oracle_specs() if spec.label not in labels]
    sub.output_dir = os.path.join(os.path.abspath(args.output_dir), name)
    sub.data_dir = os.path.join(os.path.abspath(args.output_dir), "data")
    sub.suite_name, sub.suite_split = suite.name, suite.split
    return sub


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    args = build_arg_parser().parse_args(argv)
    if args.list_suites:
        print(suites_table())
        return 0
    try:
        if args.suite:
            subs = [_suite_args(args, name) for name in args.suite]
            for sub in subs:  # every suite's flags are checked before any run
                _check_args(sub)
            code = 0
            for sub in subs:
                logger.info("suite %s (%s): %s", sub.suite_name, sub.suite_split, ", ".join(sub.objectives))
                code = max(code, run_study(sub))
            return code
        _check_args(args)
        return run_study(args)
    except (StudyError, ConfigError, DataError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
