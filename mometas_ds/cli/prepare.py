"""``mometas-prepare``: tokenize and pack a corpus into a cache before any GPU job (docs/data.md).

    mometas-prepare --train_files "data/*.jsonl" --tokenizer tok/ --seq_len 128 --cache_dir /scratch/cache --num_proc 16

Each input file becomes one shard of the cache, built by one of ``--num_proc`` processes; files already in the
cache are reused, so adding a file processes only it. A training run given the same corpus flags and
``--cache_dir`` then starts without tokenizing. The flags are mometas-pretrain's own (the same PretrainConfig
fields and help).
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from typing import List, Optional

from mometas_ds.errors import ConfigError, DataError

PROG = "mometas-prepare"
# The PretrainConfig fields that decide the cached rows (and where they go), in mometas-pretrain's spelling.
FLAGS = ("user_modules", "train_files", "text_field", "tokenizer", "model_name_or_path", "seq_len", "packing",
         "cache_dir", "num_proc", "shard_size_mb")
OWN_FLAGS = ("verify",)  # mometas-prepare's own, not mometas-pretrain's
REQUIRED = ("train_files", "cache_dir")
_EXTRA_HELP = {
    "model_name_or_path": " (mometas-prepare reads only its tokenizer, when --tokenizer is not given)",
    "cache_dir": " (required here)",
}


def usable_cores() -> int:
    """The cores this process may run on (a SLURM task's --cpus-per-task, a taskset), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def build_arg_parser() -> argparse.ArgumentParser:
    # Imported here: a --num_proc worker re-imports this module (spawn), and settings imports torch.
    from dataclasses import fields

    from mometas_ds.config.cli import _default
    from mometas_ds.config.settings import PretrainConfig

    p = argparse.ArgumentParser(
        prog=PROG, description="Tokenize and pack a pre-training corpus into a cache of shards (a file each, or a part "
        "of a large one), in parallel "
        "and in bounded memory, for mometas-pretrain --cache_dir (docs/data.md).")
    by_name = {f.name: f for f in fields(PretrainConfig)}
    for name in FLAGS:
        f = by_name[name]
        kwargs = dict(f.metadata["argparse"])
        kwargs["required"] = name in REQUIRED
        default = None if kwargs["required"] else _default(f)
        extra = _EXTRA_HELP.get(name, "")
        if name == "num_proc":  # a preparation job has the node's cores to itself; training keeps them for ranks
            default, extra = usable_cores(), " (mometas-prepare's default: every core it may use, here %(default)s)"
        p.add_argument(f"--{name}", *f.metadata["flags"], dest=name, default=default,
                       help=f.metadata["help"] + extra, **kwargs)
    p.add_argument("--verify", action="store_true",
                   help="build nothing: check every shard of this corpus in --cache_dir against the sizes and xxh3 "
                   "checksums its shard.json records, print each one intact, damaged or missing; exit 1 if any is "
                   "damaged or missing (a run, or mometas-prepare without --verify, rebuilds those)")
    return p


def pretrain_flags(ns: argparse.Namespace) -> List[str]:
    """The mometas-pretrain flags that find this cache (absolute paths: the job may start elsewhere)."""
    flags = ["--user_modules", *ns.user_modules] if ns.user_modules else []
    flags += ["--train_files", *[os.path.abspath(os.path.expanduser(f)) for f in ns.train_files],
             "--text_field", ns.text_field]
    if ns.tokenizer:
        flags += ["--tokenizer", os.path.abspath(ns.tokenizer)]
    else:
        flags += ["--model_name_or_path", os.path.abspath(ns.model_name_or_path)]
    flags += ["--seq_len", str(ns.seq_len), "--packing", ns.packing, "--shard_size_mb", repr(ns.shard_size_mb),
              "--cache_dir", os.path.abspath(ns.cache_dir)]
    return flags


def _prepare(ns: argparse.Namespace) -> int:
    from mometas_ds.data import DataConfig, prepare_data  # imports HF datasets: not for --help
    from mometas_ds.safe_io import check_writable_dir, disk_errors
    from mometas_ds.data.tokenizer import load_tokenizer
    from mometas_ds.registry import import_user_modules

    import_user_modules(ns.user_modules)
    if not ns.tokenizer and not ns.model_name_or_path:
        raise ConfigError("--tokenizer: give the tokenizer directory (or --model_name_or_path, to use its tokenizer)")
    try:
        config = DataConfig(train_files=list(ns.train_files), text_field=ns.text_field, seq_len=ns.seq_len,
                            cache_dir=ns.cache_dir, num_proc=ns.num_proc, packing=ns.packing,
                            shard_size_mb=ns.shard_size_mb, user_modules=tuple(ns.user_modules))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not ns.verify:  # --verify only reads
        check_writable_dir(config.cache_dir, "--cache_dir")
    tokenizer = (load_tokenizer(ns.tokenizer) if ns.tokenizer
                 else load_tokenizer(ns.model_name_or_path, flag="--model_name_or_path"))
    if ns.verify:
        return _verify(config, tokenizer)
    with disk_errors("--cache_dir", config.cache_dir):
        prepared = prepare_data(config, tokenizer)
    report = prepared.report
    shards = len(prepared.shard_paths)
    print(f"corpus: {report.summary()}")
    print(f"cache: {prepared.cache_path}: {shards} shard(s), {prepared.shards_built} built, "
          f"{shards - prepared.shards_built} reused; {len(prepared.train)} row(s) of --seq_len {ns.seq_len} "
          f"(--packing {ns.packing})")
    for shard_dir in prepared.damaged:
        print(f"rebuilt damaged shard {shard_dir}")
    print("train on it with (the meta-validation split is drawn from these rows by each run):")
    print("  mometas-pretrain --deepspeed_config CONFIG.json " + shlex.join(pretrain_flags(ns)) + " ...")
    return 0


def _verify(config, tokenizer) -> int:
    from mometas_ds.data.cache import verify_cache

    verdicts = verify_cache(config, tokenizer)
    if not verdicts:
        raise DataError(f"--train_files {list(config.train_files)}: no input file found, so no shard to verify")
    for v in verdicts:
        print(f"{v.state}: {v.shard_dir} ({v.source})" + "".join(f"\n  {p}" for p in v.problems))
    counts = {state: sum(v.state == state for v in verdicts) for state in ("intact", "damaged", "missing")}
    print(f"{len(verdicts)} shard(s): " + ", ".join(f"{n} {state}" for state, n in counts.items()))
    if counts["damaged"] or counts["missing"]:
        print("mometas-prepare without --verify (or a training run on this cache) rebuilds the damaged and "
              "missing shards from their input files")
        return 1
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    ns = build_arg_parser().parse_args(argv)  # a bad flag value: argparse exits 2 with "mometas-prepare: error:"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return _prepare(ns)
    except (ConfigError, DataError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the shards finished so far are kept (run again to build the rest)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
