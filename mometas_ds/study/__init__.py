"""``mometas-study`` (``python -m mometas_ds.cli.study``): samplers x seeds on one corpus, each run a real
``mometas-pretrain``; held-out loss of each. See docs/sampler_study.md.

  common.py   constants, StudyError, the sampler specs (LABEL=NAME[:JSON])
  runs.py     the corpus split and tokenizer, the mometas-pretrain processes (finished runs reused), their logs
  heldout.py  the final checkpoints and their held-out loss per objective
  report.py   the checks, the study.md tables and the figures

The command (its flags and checks, run_study: the whole study) is mometas_ds.cli.study.
"""

from mometas_ds.study.common import (
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
from mometas_ds.study.heldout import HeldOutEvaluator
from mometas_ds.study.report import check_criteria, plot_study, summary_table
from mometas_ds.study.runs import pretrain_command, prepare_inputs, read_run, run_dir, split_corpus, train_one

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
    "check_criteria",
    "logger",
    "parse_sampler_spec",
    "plot_study",
    "prepare_inputs",
    "pretrain_command",
    "read_run",
    "run_dir",
    "split_corpus",
    "summary_table",
    "train_one",
]
