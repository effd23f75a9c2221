"""The pre-training run's settings: one typed dataclass field per flag, holding its default, type and help.

The command line (``config.cli``) and the options table of the docs (``python -m mometas_ds.config
--markdown``) are both built from these fields, so each setting is described in one place.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass, field
from typing import List, Optional

# The flags' choices from the model, objective and checkpoint code, without importing it (torch): see choices.py.
from mometas_ds.config.choices import DEFAULT_OBJECTIVES, MODEL_PRESETS, VERIFY_LEVELS


def _csv(value: str) -> List[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {number}")
    return number


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def option(default=None, help: str = "", *, flags: tuple = (), factory=None, **argparse_kwargs):
    """A PretrainConfig field and its command-line option: ``help``, extra spellings in ``flags``, and any
    argparse keyword (type, nargs, const, metavar, required). The default is the field's default."""
    metadata = {"help": help, "flags": flags, "argparse": argparse_kwargs}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class PretrainConfig:
    deepspeed_config: Optional[str] = option(
        None, "DeepSpeed JSON config (batch sizes, optimizer, scheduler, ZeRO stage, bf16/fp16), "
        "e.g. ds_configs/cpu_demo.json",
        flags=("--deepspeed-config",), required=True)
    train_files: List[str] = option(
        help="corpus files or globs: .jsonl, .jsonl.gz, .txt, .parquet, or datasets.save_to_disk directories",
        factory=list, nargs="+", required=True)
    text_field: str = option("text", "JSON/parquet field holding the document text (default: text)")
    output_dir: str = option("runs/pretrain", "where metrics, traces, checkpoints and hf_model/ go")
    model_name_or_path: Optional[str] = option(None, "local HF BERT checkpoint directory to continue pre-training from")
    model_config: Optional[str] = option(
        None, f"train from scratch with a preset ({' | '.join(MODEL_PRESETS)}) or a BertConfig JSON path")
    tokenizer: Optional[str] = option(None, "local HF tokenizer directory")
    train_tokenizer: Optional[int] = option(
        None, "train a BERT WordPiece tokenizer of at most this vocabulary size on the corpus (saved in "
        "output_dir/tokenizer; deterministic: the same corpus and size give a byte-identical tokenizer)",
        type=int, metavar="VOCAB_SIZE")
    tokenizer_sample: Optional[int] = option(
        None, "with --train_tokenizer: train it on N documents drawn uniformly from the whole corpus (every file; "
        "a fixed seed, so the same corpus and N give the same tokenizer; the corpus is read twice); default: "
        "every document. A corpus of at most N documents is read whole (docs/pretraining.md)",
        type=positive_int, metavar="N")
    seq_len: int = option(128, "tokens per packed sequence, cls and sep included", type=int)
    packing: str = option(
        "packed", "how documents become rows: 'packed' = documents fill every row, [SEP] between two in one row "
        "(a file's last row padded); 'per_document' = one document per row, truncated to seq_len and padded, "
        "as the paper's code did (docs/data.md)", choices=("packed", "per_document"))
    objectives: List[str] = option(help="comma-separated objective names (default: mlm,gmlm,atd,dtd,cse)",
                                   factory=lambda: list(DEFAULT_OBJECTIVES), type=_csv)
    whole_word_mask: bool = option(
        False, "mlm and gmlm mask whole words: a word (a piece and the '##' pieces after it) is chosen with the "
        "objective's probability, then every piece of it (docs/whole_word_masking.md)", action="store_true")
    user_modules: List[str] = option(
        help="Python files or modules to import first: they register your own objectives or samplers",
        factory=list, nargs="+", metavar="FILE_OR_MODULE")
    sampler: str = option("mometas", "objective sampler: mometas (default, as in the paper), mometas_credit "
                          "(per-objective credit: docs/sampler_study.md), mometas_transfer (credit from the other "
                          "objectives' losses only: docs/samplers.md), uniform, round_robin, fixed, temperature, exp3")
    sampler_args: dict = option(
        help='extra sampler keyword arguments as JSON, e.g. \'{"weights": [2,1,1,1,1]}\' or \'{"prob_floor": 0.05}\'',
        factory=dict, type=json.loads)
    meta_interval: int = option(100, "optimizer steps between sampler updates (K)", type=int)
    meta_lr: float = option(0.1, "SGD learning rate of the sampler's policy", type=float)
    meta_gamma: float = option(2.0, "entropy weight of the sampler's policy loss", type=float)
    meta_batch_size: int = option(
        128, "meta-validation sequences per objective per update, split across ranks", type=int)
    meta_fixed_set: str = option(
        "auto", "on: measure every sampler update on the same meta-validation batch (rows and corruption seeds), so a "
        "loss drop is the model's change, not the batch's; off: a fresh batch each update (the paper's); auto: what "
        "the sampler asks (on for mometas_credit and mometas_transfer, off for the others)",
        choices=("auto", "on", "off"))
    max_steps: int = option(1000, "optimizer steps of the whole schedule", type=int)
    steps_this_run: Optional[int] = option(
        None, "stop after this many steps with a checkpoint, without changing the schedule (resume later)", type=int)
    save_steps: int = option(1000, "checkpoint every N optimizer steps (and at the end)", type=int)
    save_total_limit: Optional[int] = option(
        None, "keep only the newest N complete checkpoints, deleting older ones after each save (default: keep all)",
        type=int)
    resume: Optional[str] = option(
        None, "resume from a checkpoint: 'auto' (or no value) = the newest intact one in output_dir/checkpoints "
        "(a damaged one is skipped with a warning), a tag there (step400), or a checkpoint directory path "
        "(another run's too). A checkpoint is pickle files: only resume from ones you trust "
        "(docs/security.md); a damaged or foreign tag stops the run with exit 2", nargs="?", const="auto")
    verify_checkpoint: str = option(
        "auto", "how --resume checks a checkpoint against its manifest: 'size' = every file's size, 'full' = "
        "sizes and xxh3 checksums, 'auto' = full for a checkpoint of up to 4 GiB, else size (docs/checkpoints.md)",
        choices=VERIFY_LEVELS)
    seed: int = option(1234, "seed of data order, corruption, dropout and the sampler", type=int)
    log_steps: int = option(10, "progress-bar refresh and console log interval", type=int)
    cache_dir: Optional[str] = option(
        None, "tokenized-data cache, shards of the input files (default: output_dir/cache); point runs on the same "
        "corpus at one to share it, e.g. the one mometas-prepare wrote")
    num_proc: int = option(
        1, "processes that tokenize the corpus's missing shards (one input file, or one --shard_size_mb part of a "
        "larger one, each) in parallel; the rows do not depend on it", type=int)
    shard_size_mb: float = option(
        64.0, "an input larger than this many MiB is tokenized as several shards of about this size, so that one "
        "big file or save_to_disk dataset uses several --num_proc processes (uncompressed .jsonl/.json/.txt, "
        ".parquet with several row groups, save_to_disk; .gz stays whole); part of the cache key "
        "(docs/data.md)", type=float, metavar="MB")
    dist_timeout_minutes: float = option(
        30.0, "collective timeout: a rank that died or hangs ends the run after this long", type=float)
    setup_timeout_minutes: float = option(
        1440.0, "how long the other ranks wait for rank 0's one-off work: training the tokenizer, "
        "tokenizing the corpus, writing the HF export (default 24 hours)", type=float)
    max_skipped_steps: int = option(
        10, "stop with an error, keeping the last checkpoint, after this many skips without an applied "
        "update in between (micro-steps with a non-finite loss; bf16/fp32 updates with a non-finite gradient norm)",
        type=int)
    prefetch_batches: int = option(
        2, "micro-batches each rank reads ahead in a background thread while the step runs (pinned in host memory "
        "on a GPU); the same batches and the same resume as without; 0 = read each one when the step needs it",
        type=non_negative_int, metavar="N")
    local_rank: int = option(-1, "set by the deepspeed launcher", flags=("--local-rank",), type=int)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def sampler_kwargs(cfg: PretrainConfig) -> dict:
    """--sampler_args plus what the run's flags imply (MOMETAS's lr and gamma, a schedule's length)."""
    kwargs = dict(cfg.sampler_args)
    if cfg.sampler == "mometas":
        # One way to set each: a value here would silently override the flag (or be overridden).
        for key, flag in (("lr", "--meta_lr"), ("gamma", "--meta_gamma")):
            if key in kwargs:
                raise ValueError(f"{key!r} is set by {flag}, not here")
        kwargs.update(lr=cfg.meta_lr, gamma=cfg.meta_gamma)
    if cfg.sampler == "temperature":
        kwargs.setdefault("total_steps", cfg.max_steps)
    return kwargs


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # mometas_ds/


def bundled_ds_config(name: str) -> str:
    """Path of a DeepSpeed config shipped with mometas_ds (``ds_configs/NAME``): the copy a wheel
    installs inside the package (setup.py maps ds_configs/ to mometas_ds/ds_configs), else the
    source checkout's."""
    installed = os.path.join(_PACKAGE_DIR, "ds_configs", name)
    if os.path.isfile(installed):
        return installed
    return os.path.join(os.path.dirname(_PACKAGE_DIR), "ds_configs", name)
