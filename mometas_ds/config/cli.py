"""``mometas-pretrain``'s command line, built from the PretrainConfig fields, and the options table of the docs.

    python -m mometas_ds.config --markdown > options.md
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields
from typing import List

from mometas_ds.config.settings import PretrainConfig

DESCRIPTION = ("Multi-objective continual pre-training of a BERT encoder on DeepSpeed, "
               "with the MOMETAS sampler choosing the objective of every micro-batch.")
# A flag that is no setting: the deepspeed launcher passes it to every script it starts.
LAUNCHER_FLAG = ("--deepspeed", "accepted for DeepSpeed launcher compatibility; no effect")


def _default(f):
    return f.default_factory() if f.default_factory is not MISSING else f.default


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mometas-pretrain", description=DESCRIPTION)
    for f in fields(PretrainConfig):
        meta = f.metadata
        default = None if meta["argparse"].get("required") else _default(f)
        p.add_argument(f"--{f.name}", *meta["flags"], dest=f.name, default=default, help=meta["help"],
                       **meta["argparse"])
        if f.name == "deepspeed_config":
            p.add_argument(LAUNCHER_FLAG[0], action="store_true", help=LAUNCHER_FLAG[1])
    return p


def parse_args(argv=None) -> PretrainConfig:
    ns = build_arg_parser().parse_args(argv)
    values = {f.name: getattr(ns, f.name) for f in fields(PretrainConfig) if hasattr(ns, f.name)}
    return PretrainConfig(**values)


def markdown_table() -> str:
    """Every option of mometas-pretrain as a markdown table: flag, type, default, help."""
    rows = ["| flag | type | default | help |", "| --- | --- | --- | --- |"]
    for f in fields(PretrainConfig):
        meta, kwargs = f.metadata, f.metadata["argparse"]
        flag = " / ".join(f"`{name}`" for name in (f"--{f.name}",) + tuple(meta["flags"]))
        value_type = kwargs.get("metavar") or getattr(kwargs.get("type"), "__name__", "str")
        value_type = {"_csv": "comma-separated", "loads": "JSON"}.get(value_type, value_type)
        if kwargs.get("action") == "store_true":
            value_type = "switch"
        if kwargs.get("nargs") == "+":
            value_type += " ..."
        default = "required" if kwargs.get("required") else f"`{_default(f)!r}`"
        if "const" in kwargs:
            default += f" (bare flag: `{kwargs['const']}`)"
        rows.append(f"| {flag} | {value_type} | {default} | {meta['help'].replace('|', '/')} |")
    rows.append(f"| `{LAUNCHER_FLAG[0]}` | switch | off | {LAUNCHER_FLAG[1]} |")
    return "\n".join(rows) + "\n"


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mometas_ds.config",
                                description="Print the options of mometas-pretrain for the docs.")
    p.add_argument("--markdown", action="store_true",
                   help="print every option as a markdown table (flag, type, default, help)")
    ns = p.parse_args(argv)
    if not ns.markdown:
        p.print_help()
        return 0
    sys.stdout.write(markdown_table())
    return 0
