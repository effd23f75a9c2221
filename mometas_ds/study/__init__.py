"""``mometas-study`` (``python -m mometas_ds.study``): samplers x seeds on one corpus, each run a real
``mometas-pretrain``; held-out loss of each. See docs/sampler_study.md.

  common.py   constants, StudyError, the sampler specs (LABEL=NAME[:JSON])
  runs.py     the corpus split and tokenizer, the mometas-pretrain processes (finished runs reused), their logs
  heldout.py  the final checkpoints and their held-out loss per objective
  report.py   the checks, the study.md tables and the figures
  cli.py      the flags and their checks, run_study (the whole study) and main
"""

from .cli import _check_args as _check_args
from .cli import build_arg_parser, main, run_study
from .common import (
    DEFAULT_BAD,
    DEFAULT_OBJECTIVES,
    DEFAULT_SAMPLERS,
    EXAMPLE_OBJECTIVES,
    PROG,
    REPO_ROOT,
    RESULT_FILE,
    SamplerSpec,
    StudyError,
    logger,
    parse_sampler_spec,
)
from .heldout import HeldOutEvaluator
from .heldout import _module_state as _module_state
from .report import _mean_std as _mean_std
from .report import check_criteria, plot_study, summary_table
from .runs import _child_env as _child_env
from .runs import pretrain_command, prepare_inputs, read_run, run_dir, split_corpus, train_one

__all__ = [
    "DEFAULT_BAD",
    "DEFAULT_OBJECTIVES",
    "DEFAULT_SAMPLERS",
    "EXAMPLE_OBJECTIVES",
    "PROG",
    "REPO_ROOT",
    "RESULT_FILE",
    "HeldOutEvaluator",
    "SamplerSpec",
    "StudyError",
    "build_arg_parser",
    "check_criteria",
    "logger",
    "main",
    "parse_sampler_spec",
    "plot_study",
    "prepare_inputs",
    "pretrain_command",
    "read_run",
    "run_dir",
    "run_study",
    "split_corpus",
    "summary_table",
    "train_one",
]
