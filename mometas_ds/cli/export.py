"""mometas-export: any complete pre-training checkpoint as a Hugging Face BERT directory with its tokenizer,
so a run can be evaluated along its schedule (not only the final hf_model/).

    mometas-export --checkpoint runs/demo/checkpoints/step200 --out runs/demo/hf_step200
    mometas-finetune --model_name_or_path runs/demo/hf_step200 ...

The weights are written the way the end of a run writes hf_model/ (MultiObjectiveBert.save_hf: a
BertForMaskedLM checkpoint when the run had an mlm head, the cse head as BERT's pooler); ZeRO checkpoints
are consolidated to fp32 with DeepSpeed's zero_to_fp32. The model config and tokenizer come from the run's
run_config.json, next to checkpoints/.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import types
from typing import Optional, Tuple

import torch

from mometas_ds.checkpoint import COMPLETE_MARKER, ResumeRefused, safe_load, step_of, verify_tag, weights_only_loads
from mometas_ds.config import ConfigError
from mometas_ds.safe_io import write_dir_atomically
from mometas_ds.config.paths import RunPaths

PROG = "mometas-export"
EXPORT_MARKER = "exported_from.json"  # which checkpoint an export came from; marks a directory as ours
logger = logging.getLogger("mometas_ds.cli.export")


def _split_checkpoint(path: str) -> Tuple[str, str]:
    path = os.path.normpath(os.path.abspath(path))
    if not os.path.isdir(path):
        raise ConfigError(f"--checkpoint {path}: not a directory (expected RUN/checkpoints/stepN)")
    if not os.path.isfile(os.path.join(path, COMPLETE_MARKER)):
        raise ConfigError(f"--checkpoint {path}: no {COMPLETE_MARKER} marker; the checkpoint is incomplete "
                          f"(a save was interrupted) or this is not a mometas_ds checkpoint")
    return os.path.split(path)


def _verify(tags_dir: str, tag: str, level: str) -> None:
    """The tag's files against its manifest (as --resume checks them): a damaged tag is refused, naming each file."""
    path = os.path.join(tags_dir, tag)
    if step_of(tag) is None:
        raise ConfigError(f"--checkpoint {path}: {tag!r} is not a checkpoint tag (step<N>)")
    verdict = verify_tag(tags_dir, tag, level)
    if verdict.intact is False:
        raise ConfigError(f"--checkpoint {path} is DAMAGED, refused: " + "; ".join(verdict.problems)
                          + " (mometas-checkpoint verify shows which checkpoints are intact)")
    if verdict.intact is None:
        logger.warning("--checkpoint %s was written before checkpoints carried a manifest: not verified", path)


def _run_config(run_dir: str) -> dict:
    path = os.path.join(run_dir, "run_config.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"--checkpoint: cannot read the run's settings {path} ({err}); the checkpoint must lie "
                          f"in RUN/checkpoints/ of a mometas-pretrain run") from None


def _tokenizer_dir(run_dir: str, cfg: dict, override: Optional[str]) -> str:
    if override:
        return override
    if cfg.get("tokenizer"):
        return cfg["tokenizer"]
    if cfg.get("train_tokenizer") is not None:
        return RunPaths(run_dir).tokenizer
    if cfg.get("model_name_or_path"):
        return cfg["model_name_or_path"]
    raise ConfigError(f"{run_dir}/run_config.json names no tokenizer; give --tokenizer")


def _bert_config(cfg: dict, vocab_size: int, model_config: Optional[str]):
    from transformers import BertConfig  # heavy (transformers): not for --help

    from mometas_ds.model import build_bert_config  # heavy (transformers): not for --help

    if model_config is None and cfg.get("model_name_or_path"):
        return BertConfig.from_pretrained(cfg["model_name_or_path"], local_files_only=True)
    preset = model_config or cfg.get("model_config") or "base"
    try:
        return build_bert_config(preset, vocab_size=vocab_size, seq_len=int(cfg.get("seq_len") or 512))
    except ValueError as err:
        raise ConfigError(f"--model_config: {err}") from None


def _fp32_weights(tags_dir: str, tag: str) -> dict:
    """The checkpoint's weights in fp32: ZeRO partitions consolidated by DeepSpeed's zero_to_fp32, else the
    module states (which, without ZeRO, hold only the bf16/fp16 copy of a mixed-precision run)."""
    path = os.path.join(tags_dir, tag)
    model_file = os.path.join(path, "mp_rank_00_model_states.pt")
    if not os.path.isfile(model_file):
        raise ConfigError(f"--checkpoint {path}: no mp_rank_00_model_states.pt")
    try:
        states = safe_load(model_file, map_location="cpu")
        stage = int(((states.get("ds_config") or {}).get("zero_optimization") or {}).get("stage", 0))
        if stage >= 1:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint  # heavy

            with weights_only_loads():  # DeepSpeed's own torch.load calls too (docs/security.md)
                return dict(get_fp32_state_dict_from_zero_checkpoint(tags_dir, tag=tag))
        module = states["module"]
    except ResumeRefused as exc:
        raise ConfigError(f"--checkpoint: {exc}") from None
    except Exception as exc:  # what verify could not see (a checkpoint without a manifest), or not ours
        raise ConfigError(f"--checkpoint {path}: reading its weights failed: {type(exc).__name__}: {exc}; "
                          "mometas-checkpoint verify checks its files") from None
    low = sorted({str(v.dtype) for v in module.values() if v.is_floating_point() and v.dtype != torch.float32})
    if low:
        logger.warning("%s: a ZeRO stage-0 checkpoint keeps the module in %s; exporting those weights upcast "
                       "to fp32", model_file, ", ".join(low))
    return {k: v.float() if v.is_floating_point() else v for k, v in module.items()}


def _check_out(out_dir: str) -> None:
    """--out must be new, empty, or an earlier export (which is replaced whole): never a user's directory."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"--out {out_dir}: exists and is not a directory; nothing was written")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, EXPORT_MARKER)):
        raise ConfigError(f"--out {out_dir}: a non-empty directory that is not an earlier mometas-export output "
                          f"(no {EXPORT_MARKER}); nothing was written: give a new --out")


def export_checkpoint(checkpoint: str, out_dir: str, tokenizer: Optional[str] = None,
                      model_config: Optional[str] = None, verify: str = "auto") -> str:
    """Write ``checkpoint`` (RUN/checkpoints/stepN, complete) to ``out_dir`` as an HF directory; returns out_dir.

    The tag is first checked against its manifest at level ``verify`` (as --verify_checkpoint; a damaged one is a
    ConfigError naming each file).

    The directory is written beside ``out_dir`` and renamed into place: ``out_dir`` is whole or as it was."""
    from mometas_ds.model import MultiObjectiveBert  # heavy (transformers): not for --help
    from mometas_ds.data.tokenizer import load_tokenizer  # heavy (transformers): not for --help

    _check_out(out_dir)
    tags_dir, tag = _split_checkpoint(checkpoint)
    _verify(tags_dir, tag, verify)
    run_dir = os.path.dirname(tags_dir)
    cfg = _run_config(run_dir)
    tok = load_tokenizer(_tokenizer_dir(run_dir, cfg, tokenizer), flag="--tokenizer")
    config = _bert_config(cfg, len(tok), model_config)
    weights = _fp32_weights(tags_dir, tag)
    key = "bert.embeddings.word_embeddings.weight"
    if key not in weights:
        raise ConfigError(f"--checkpoint {checkpoint}: no {key}; not a mometas_ds MultiObjectiveBert checkpoint")
    if tuple(weights[key].shape) != (config.vocab_size, config.hidden_size):
        raise ConfigError(f"--checkpoint {checkpoint}: word embeddings {tuple(weights[key].shape)} do not match the "
                          f"model config ({config.vocab_size}, {config.hidden_size}); pass --model_config")

    def write(tmp_dir: str) -> None:
        # save_hf reads only the encoder's config from the model: no need to build the model and its heads.
        MultiObjectiveBert.save_hf(types.SimpleNamespace(bert=types.SimpleNamespace(config=config)), tmp_dir, tok,
                                   state_dict=weights)
        with open(os.path.join(tmp_dir, EXPORT_MARKER), "w", encoding="utf-8") as f:
            json.dump({"checkpoint": os.path.join(tags_dir, tag), "step": tag}, f, indent=1)

    write_dir_atomically(out_dir, write, flag="--out")
    return out_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a complete checkpoint directory, RUN/checkpoints/stepN")
    p.add_argument("--out", required=True, help="output directory (Hugging Face format, with the tokenizer)")
    p.add_argument("--tokenizer", help="tokenizer directory (default: the run's, from RUN/run_config.json)")
    p.add_argument("--model_config", help="model preset or BertConfig JSON (default: the run's --model_config, "
                   "or the config of its --model_name_or_path)")
    p.add_argument("--verify_checkpoint", choices=("auto", "size", "full"), default="auto",
                   help="check the checkpoint's files against its manifest first, as mometas-pretrain --resume does: "
                   "sizes, and checksums (full; auto: for a checkpoint up to 4 GiB); a damaged one is refused")
    args = p.parse_args(argv)
    try:
        out = export_checkpoint(args.checkpoint, args.out, args.tokenizer, args.model_config, args.verify_checkpoint)
    except ConfigError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.checkpoint} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
