"""The pre-training run's settings (settings.py), its command line (cli.py) and the checks that run before
any work (checks.py). Every name is importable from here, the error types too (defined in mometas_ds.errors).

The checks' names are imported on first use (PEP 562): they need torch, DeepSpeed and the model code, and
building the command line (``--help``, a bad flag) must not wait for those."""
import importlib

from ..errors import ConfigError, DataError, read_json_object
from .cli import build_arg_parser, markdown_table, parse_args
from .settings import PretrainConfig, bundled_ds_config, option, sampler_kwargs

_CHECKS = (
    "ELASTIC", "MODEL_CONFIG_KEY", "TOKENIZER_KEY", "Preflight", "check_batch_fields", "check_resume_matches",
    "check_tokenizer_fits_model", "check_world_size", "check_writable", "elastic_changes", "import_user_module",
    "objective_names_problem", "preflight", "read_model_config", "run_identity", "tokenizer_identity",
    "tokenizer_refusal", "validate_config",
)

__all__ = [
    "ConfigError", "DataError", "read_json_object", *_CHECKS,
    "build_arg_parser", "markdown_table", "parse_args", "PretrainConfig", "bundled_ds_config", "option",
    "sampler_kwargs",
]


def __getattr__(name):
    if name in _CHECKS:
        return getattr(importlib.import_module(f"{__name__}.checks"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
