"""The pre-training run's settings (settings.py), its command line (cli.py) and the checks that run before
any work (checks.py). Every name is importable from here, the error types too (defined in mometas_ds.errors)."""
from ..errors import ConfigError, DataError, read_json_object
from .checks import (
    ELASTIC, Preflight, check_batch_fields, check_resume_matches, check_tokenizer_fits_model, check_world_size,
    check_writable, elastic_changes, import_user_module, objective_names_problem, preflight, read_model_config, run_identity,
    validate_config,
)
from .cli import build_arg_parser, markdown_table, parse_args
from .settings import PretrainConfig, bundled_ds_config, option, sampler_kwargs

__all__ = [
    "ConfigError", "DataError", "read_json_object", "ELASTIC", "Preflight", "elastic_changes", "check_batch_fields", "check_resume_matches",
    "check_tokenizer_fits_model", "check_world_size", "check_writable", "import_user_module",
    "objective_names_problem", "preflight", "read_model_config", "run_identity", "validate_config",
    "build_arg_parser", "markdown_table", "parse_args", "PretrainConfig", "bundled_ds_config", "option",
    "sampler_kwargs",
]
