"""The run's identity (the settings a checkpoint records: run_identity) and what a resume must match
(check_resume_matches): the ELASTIC settings may change, through DeepSpeed's universal checkpoint the ZeRO
stage and precision too; the tokenizer and the model config are pinned by content. Called by preflight and by
the checkpointer."""
from __future__ import annotations

import json
import math
import os
from typing import List, Optional

from mometas_ds.checkpoint import resume_checkpoint, run_identity_of
from mometas_ds.checkpoint.loading import read_client_state
from mometas_ds.config.choices import MODEL_PRESETS
from mometas_ds.config.paths import RunPaths
from mometas_ds.config.settings import PretrainConfig
from mometas_ds.data.parts import input_bytes
from mometas_ds.errors import ConfigError, read_json_object
from mometas_ds.model import position_embeddings
from mometas_ds.train.ds_config import check_batch_fields


def run_identity(cfg: PretrainConfig, ds_config: dict, world_size: int) -> dict:
    """The settings of a run that a checkpoint records, keyed by where they are set.

    A resume must match every one of them but those in ELASTIC (check_resume_matches): a different
    value would silently mix two experiments (a policy learned for other objectives, another model's
    weights loaded over this one) or fail only deep inside DeepSpeed's load after the corpus work.
    The ELASTIC ones (--seq_len, the batch shape, the number of ranks) are recorded so a resume can say
    what changed and carry the data position over. Flags a resume may change without notice
    (--max_steps, --save_steps, --steps_this_run, logging, timeouts, paths of the corpus and tokenizer)
    are left out.
    """
    micro = check_batch_fields(ds_config, cfg.deepspeed_config, world_size)
    total = ds_config.get("train_batch_size")
    accumulation = total // (micro * world_size) if total else ds_config.get("gradient_accumulation_steps", 1)
    if (ds_config.get("bf16") or {}).get("enabled"):
        precision = "bf16"
    else:
        precision = "fp16" if (ds_config.get("fp16") or {}).get("enabled") else "fp32"
    identity = {
        "--objectives": list(cfg.objectives),
        "--sampler": cfg.sampler,
        "--sampler_args": dict(cfg.sampler_args),
        "--meta_interval": cfg.meta_interval,
        "--meta_batch_size": cfg.meta_batch_size,
        "--meta_fixed_set": cfg.meta_fixed_set,  # checkpoints from before the flag lack it: not compared
        "--seed": cfg.seed,
        "--model_name_or_path": cfg.model_name_or_path,
        # The fields, not the path: the same file named another way is the same model, and one edited in place is
        # not (checkpoints written before this record "--model_config", the path; not compared).
        MODEL_CONFIG_KEY: model_config_fields(cfg.model_config),
        "--seq_len": cfg.seq_len,
        "--train_tokenizer": cfg.train_tokenizer,
        "--whole_word_mask": cfg.whole_word_mask,  # checkpoints from before the flag lack it: not compared
        "--tokenizer_sample": cfg.tokenizer_sample,  # likewise (and --packing, --shard_size_mb)
        "--packing": cfg.packing,
        "--shard_size_mb": cfg.shard_size_mb,  # splits large inputs into shards, so it moves rows
        "number of ranks": world_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "zero_optimization.stage": (ds_config.get("zero_optimization") or {}).get("stage", 0),
        "precision (bf16/fp16)": precision,
    }
    if cfg.sampler == "mometas":
        identity.update({"--meta_lr": cfg.meta_lr, "--meta_gamma": cfg.meta_gamma})
    return json.loads(json.dumps(identity))  # as it reads back from the checkpoint (tuples -> lists)


MODEL_CONFIG_KEY = "--model_config (its fields)"
TOKENIZER_KEY = "tokenizer vocabulary"  # added by the trainer once the tokenizer is loaded (tokenizer_identity)


def model_config_fields(model_config: Optional[str]) -> Optional[dict]:
    """The BertConfig fields --model_config gives (a preset's, or the JSON file's), or None without one."""
    if model_config is None:
        return None
    if model_config in MODEL_PRESETS:
        return dict(MODEL_PRESETS[model_config])
    return read_json_object(model_config, "--model_config")


def tokenizer_identity(tokenizer) -> dict:
    """What a checkpoint records of its tokenizer: the number of tokens and an xxh3_64 hash of every (token, id)."""
    import xxhash

    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: (item[1], item[0]))
    data = json.dumps(vocab, ensure_ascii=False).encode("utf-8")
    return {"tokens": len(vocab), "xxh3_64": xxhash.xxh3_64(data).hexdigest()}


def tokenizer_refusal(cfg: PretrainConfig, tag_dir: str, saved: Optional[dict], ours: Optional[dict]) -> None:
    """ConfigError when the checkpoint recorded another tokenizer vocabulary than this run's (both
    tokenizer_identity records; a checkpoint written before they were recorded is not compared)."""
    if not saved or not ours or saved == ours:
        return
    same_size = (" (as many tokens, other ids or other tokens: the embeddings would be read for the wrong tokens)"
                 if saved.get("tokens") == ours.get("tokens") else "")
    raise ConfigError(
        f"--resume {cfg.resume}: checkpoint {tag_dir} was written by a run with another tokenizer: {TOKENIZER_KEY} "
        f"was {_tokens(saved)}, now {_tokens(ours)}{same_size}. Resume with the tokenizer that wrote it, or give "
        "a new --output_dir to start afresh")


def _tokens(record: dict) -> str:
    return f"{record.get('tokens')} tokens (xxh3_64 {record.get('xxh3_64')})"


def _resume_tokenizer(cfg: PretrainConfig):
    """The tokenizer this run will load, when that takes no work (a directory that exists), else None."""
    from mometas_ds.data.tokenizer import load_tokenizer  # heavy (transformers)

    path = cfg.tokenizer or (cfg.model_name_or_path if cfg.train_tokenizer is None
                             else RunPaths(cfg.output_dir).tokenizer)
    if not path or not os.path.isdir(path):
        return None  # a hub name, or one --train_tokenizer has yet to train: the trainer compares it once loaded
    try:
        return load_tokenizer(path)
    except ConfigError:
        return None  # the run's own load names the flag


def _model_config_differences(saved: Optional[dict], ours: Optional[dict]) -> str:
    """Which --model_config fields differ, each with both values."""
    if not isinstance(saved, dict) or not isinstance(ours, dict):
        return f"{MODEL_CONFIG_KEY} was {saved!r}, now {ours!r}"
    keys = sorted(set(saved) | set(ours), key=str)
    return "; ".join(f"--model_config field {key} was {saved.get(key, '(unset)')!r}, now {ours.get(key, '(unset)')!r}"
                     for key in keys if saved.get(key, "(unset)") != ours.get(key, "(unset)"))


# What a resume may change (docs/checkpoints.md, "What a resume may change"): the batch shape and the number
# of ranks reshape only how the same global state is split (ZeRO partitions go through DeepSpeed's universal
# checkpoint, checkpoint.universal), and --seq_len repacks the corpus (the data position carries in tokens).
ELASTIC = ("--seq_len", "number of ranks", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
# May change too, through the universal copy (checkpoint.universal; it holds fp32 master weights and moments
# whatever the run's precision): the stage between 1 and 2, the precision between fp32 and bf16 under ZeRO 1-3.
THROUGH_UNIVERSAL = ("zero_optimization.stage", "precision (bf16/fp16)")
UNIVERSAL_PRECISIONS = ("fp32", "bf16")


def universal_refusal(saved: dict, ours: dict) -> Optional[str]:
    """Why a change of ZeRO stage or precision between a checkpoint (``saved``) and this run (``ours``: both
    run_identity dicts) cannot go through DeepSpeed's universal checkpoint, or None when it can."""
    stages = (saved["zero_optimization.stage"], ours["zero_optimization.stage"])
    if stages[0] != stages[1] and not set(stages) <= {1, 2}:
        return ("the stage may change between 1 and 2 only: stage 0 keeps one replicated optimizer state (in the "
                "model-states file) that DeepSpeed's universal checkpoint neither converts nor loads, and DeepSpeed "
                "0.19.8 converts a stage-3 tag and a stage-1/2 tag into different layouts that only the same kind of "
                "stage loads (per-rank stage-3 model-states files, the optimizer's global state, per-parameter "
                "files): resume with the stage that saved it")
    if 0 in stages:
        return ("ZeRO stage 0 keeps one replicated optimizer state that DeepSpeed's universal checkpoint neither "
                "converts nor loads, so the precision of a stage-0 run cannot change")
    precisions = (saved["precision (bf16/fp16)"], ours["precision (bf16/fp16)"])
    if precisions[0] != precisions[1] and "fp16" in precisions:
        return ("fp16 keeps a dynamic loss scale that a change of precision would drop or invent: the precision may "
                "change between fp32 and bf16 only")
    return None


def elastic_changes(saved: Optional[dict], ours: dict) -> dict:
    """{key: (saved, now)} for the ELASTIC settings a resume changes (none for a checkpoint without identity)."""
    if not saved:
        return {}
    return {key: (saved[key], ours[key]) for key in ELASTIC if key in saved and key in ours and saved[key] != ours[key]}


def check_inputs_stay_whole(cfg: PretrainConfig, tag_dir: str) -> None:
    """A checkpoint written before --shard_size_mb was trained on every input read whole: stop a resume whose
    --shard_size_mb would split one of them (other rows, another order), naming the value that keeps them."""
    from mometas_ds.data.readers import resolve_files

    limit = cfg.shard_size_mb * (1 << 20)
    for path in resolve_files(cfg.train_files)[0]:
        try:
            size = input_bytes(path)
        except OSError:
            continue  # gone or unreadable: the corpus report says so
        if size > limit:
            keep = math.ceil(size / (1 << 20)) + 1
            raise ConfigError(
                f"--shard_size_mb: checkpoint {tag_dir} was written before large inputs were split into shards, "
                f"so it trained on {path} read whole, but at --shard_size_mb {cfg.shard_size_mb} it would be "
                f"split (other rows): resume with --shard_size_mb {keep} (or more than your largest input)")


def check_resume_matches(cfg: PretrainConfig, ds_config: dict, world_size: int) -> None:
    """With --resume, stop before any work if the checkpoint was written by a run set up differently.

    The ELASTIC settings may differ; what else differs stops the run, naming each field."""
    # Rank 0 picks and verifies the checkpoint now, before any work (a damaged or foreign one: ConfigError).
    found = resume_checkpoint(RunPaths(cfg.output_dir).checkpoints, cfg.resume, cfg.verify_checkpoint,
                              wait_minutes=cfg.setup_timeout_minutes)
    if found is None:
        return
    tag_dir = os.path.join(*found)
    saved = run_identity_of(*found)
    if saved is None:  # written before checkpoints recorded their run's settings: compare what its client state holds
        check_resume_objectives(read_client_state(tag_dir) or {}, cfg.objectives, tag_dir)
        return
    ours = run_identity(cfg, ds_config, world_size)
    differs = [key for key in ours if key in saved and saved[key] != ours[key] and key not in ELASTIC]
    refusal = universal_refusal(saved, ours) if set(differs) & set(THROUGH_UNIVERSAL) else None
    if refusal is None:
        differs = [key for key in differs if key not in THROUGH_UNIVERSAL]
    if differs:
        where = {key: f"{cfg.deepspeed_config}: {key}" for key in ours
                 if not key.startswith("-") and key != "number of ranks"}
        details = "; ".join(_model_config_differences(saved[key], ours[key]) if key == MODEL_CONFIG_KEY
                            else f"{where.get(key, key)} was {saved[key]!r}, now {ours[key]!r}" for key in differs)
        raise ConfigError(f"--resume {cfg.resume}: checkpoint {tag_dir} was written by a run with other settings: "
                          f"{details}{f' ({refusal})' if refusal else ''}. Resume with the same settings, or give a "
                          "new --output_dir to start afresh")
    if saved.get(TOKENIZER_KEY):  # before any work when the tokenizer is there to load (the trainer checks again)
        tokenizer = _resume_tokenizer(cfg)
        if tokenizer is not None:
            tokenizer_refusal(cfg, tag_dir, saved[TOKENIZER_KEY], tokenizer_identity(tokenizer))
    if "--shard_size_mb" not in saved:
        check_inputs_stay_whole(cfg, tag_dir)
    changes = elastic_changes(saved, ours)
    if "--seq_len" in changes:
        was, now = changes["--seq_len"]
        saved_positions, positions = (position_embeddings(cfg.model_config, was),
                                       position_embeddings(cfg.model_config, now))
        if saved_positions != positions:
            raise ConfigError(
                f"--seq_len: {now} would build a model with {positions} position embeddings, but checkpoint "
                f"{tag_dir} (written at --seq_len {was}) holds {saved_positions} (from scratch they are "
                f"max(512, --seq_len)): resume with --seq_len {'<= 512' if was <= 512 else was}, or set "
                f"max_position_embeddings in a --model_config JSON from the first run on")


def check_resume_objectives(client_state: dict, objectives: List[str], checkpoint: str) -> None:
    """ConfigError naming --objectives if the checkpoint's client state was written for other objectives
    (or the same ones in another order: the sampler's probabilities are indexed by position)."""
    saved = (client_state.get("mometas") or {}).get("objectives", client_state.get("objectives"))
    if saved is None:
        return  # nothing recorded to compare
    if list(saved) != list(objectives):
        order = " (the same ones in another order: the sampler's policy is indexed by position)" \
            if sorted(saved) == sorted(objectives) else ""
        raise ConfigError(f"--objectives: checkpoint {checkpoint} was trained with {','.join(saved)}, this run has "
                          f"{','.join(objectives)}{order}. Resume with --objectives {','.join(saved)}, or give a new "
                          "--output_dir to start afresh")
