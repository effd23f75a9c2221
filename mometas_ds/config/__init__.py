"""The pre-training run's settings (settings.py), its command line (cli.py), the choices some flags offer
(choices.py) and typed checks of JSON fields (fields.py). A leaf: it imports nothing of the package but its
error types, so building the command line (``--help``, a bad flag) imports no torch. The checks that run before
any work live with what they check and are composed by ``mometas_ds.train.preflight``."""
from mometas_ds.config.cli import build_arg_parser, markdown_table, parse_args
from mometas_ds.config.settings import PretrainConfig, bundled_ds_config, option, sampler_kwargs
from mometas_ds.errors import ConfigError, DataError, read_json_object

__all__ = [
    "ConfigError", "DataError", "read_json_object", "build_arg_parser", "markdown_table", "parse_args",
    "PretrainConfig", "bundled_ds_config", "option", "sampler_kwargs",
]
