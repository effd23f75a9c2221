"""DeepSpeed's universal checkpoint, for a resume under ZeRO 1-3 on another number of ranks, another stage (1 <-> 2)
or another precision (fp32 <-> bf16).

ZeRO stages 1-3 save each rank's partition of the fp32 master weights and Adam moments; DeepSpeed's own
load refuses another data-parallel size. Its converter (``deepspeed.checkpoint.ds_to_universal``) rewrites a
tag as one file per parameter and state (``zero/<param>/{fp32,exp_avg,exp_avg_sq}.pt``), which its engine
loads into any partitioning (``checkpoint.load_universal``). We convert a verified tag once, on rank 0, into
``<tag>.universal`` beside it: written in a temporary directory, given a manifest and a COMPLETE marker of
its own, then renamed into place, so a kill mid-conversion leaves no half copy that looks finished. Its manifest
records the size and checksum of the tag's own manifest (``source_manifest``): a copy made from another save of
the tag (rewritten since) is converted again, never loaded. Its name is not a tag (``step<N>``): listing,
``--resume auto`` and the tag verification never take it for one; rewriting the tag (saving.clear_tag) and
``prune`` delete it with the tag. Stage 0 (one optimizer state, replicated) loads on any number of ranks as
it is; which stage and precision changes are allowed is decided before any work (config.checks.universal_refusal).
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import shutil
from typing import Optional

import torch

from mometas_ds.checkpoint.layout import (
    COMPLETE_MARKER, HASH, MANIFEST_FILE, ResumeRefused, _atomic_write, _record, read_run_identity, text_record,
)
from mometas_ds.checkpoint.loading import safe_load, weights_only_loads
from mometas_ds.checkpoint.verify import verify_tag

logger = logging.getLogger(__package__)

UNIVERSAL_SUFFIX = ".universal"
UNIVERSAL_STAGES = (1, 2, 3)  # ZeRO stages DeepSpeed's converter and universal load handle (0.19.8)
STAGE_KEY, PRECISION_KEY = "zero_optimization.stage", "precision (bf16/fp16)"  # run_identity's keys
_TMP_PREFIX = ".universal-tmp-"  # <root>/.universal-tmp-<tag>-<pid>/<tag>.universal while converting


def universal_tag(tag: str) -> str:
    """The name of a tag's universal copy, beside it in the same directory (``step400.universal``)."""
    return tag + UNIVERSAL_SUFFIX


def zero_partitions(tag_dir: str) -> int:
    """How many ZeRO optimizer partitions a tag holds (the data-parallel size that saved it; stages 1-3 name their
    files alike); 0 without ZeRO partition files (stage 0)."""
    return len(glob.glob(os.path.join(tag_dir, "*zero_pp_rank_*_mp_rank_00_optim_states.pt")))


def engine_precision(engine) -> str:
    """"bf16", "fp16" or "fp32", as run_identity records it (key "precision (bf16/fp16)")."""
    return "bf16" if engine.bfloat16_enabled() else "fp16" if engine.fp16_enabled() else "fp32"


def needs_universal(engine, tag_dir: str) -> bool:
    """True when the tag's ZeRO optimizer state must go through the universal copy for this engine: another
    number of partitions, another ZeRO stage (1-3) or another precision than the tag was saved with.

    Stage 0 keeps one replicated optimizer state and loads as it is; a stage-0 tag has no partition files
    (a change to or from stage 0 is refused before any work: config.checks.check_resume_matches)."""
    stage = engine.zero_optimization_stage()
    saved = zero_partitions(tag_dir)
    if stage not in UNIVERSAL_STAGES or not saved:
        return False
    identity = read_run_identity(tag_dir) or {}
    return (saved != engine.dp_world_size or identity.get(STAGE_KEY, stage) != stage
            or identity.get(PRECISION_KEY, engine_precision(engine)) != engine_precision(engine))


def _files_under(path: str) -> dict:
    records = {}
    for base, _, names in os.walk(path):
        for name in names:
            full = os.path.join(base, name)
            rel = os.path.relpath(full, path)
            if rel not in (COMPLETE_MARKER, MANIFEST_FILE):
                records[rel] = _record(full)
    return records


def universal_intact(path: str) -> bool:
    """A universal copy whose COMPLETE marker and manifest match every file it lists (sizes and checksums)."""
    try:
        with open(os.path.join(path, COMPLETE_MARKER), encoding="utf-8") as f:
            marker = json.load(f)
        with open(os.path.join(path, MANIFEST_FILE), "rb") as f:
            data = f.read()
        if text_record(data.decode("utf-8")) != {"size": marker["size"], HASH: marker[HASH]}:
            return False
        files = json.loads(data)["files"]
        return all(_record(os.path.join(path, name)) == record for name, record in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def source_record(tag_dir: str) -> Optional[dict]:
    """The size and checksum of the tag's manifest, as its COMPLETE marker records them (None without one): what a
    universal copy records of the save it was converted from."""
    try:
        with open(os.path.join(tag_dir, COMPLETE_MARKER), encoding="utf-8") as f:
            marker = json.load(f)
        return {"size": int(marker["size"]), HASH: str(marker[HASH])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def universal_source(path: str) -> Optional[dict]:
    """The source_record a universal copy was converted from (None for a copy that recorded none)."""
    try:
        with open(os.path.join(path, MANIFEST_FILE), encoding="utf-8") as f:
            source = json.load(f).get("source_manifest")
        return source if isinstance(source, dict) else None
    except (OSError, ValueError, AttributeError):
        return None


def convert_to_universal(tags_dir: str, tag: str, workers: int = 1) -> str:
    """Rank 0: the universal copy of ``tags_dir/tag`` (made now unless an intact one is there); returns its path.

    Disk: about the size of the tag's optimizer files again (fp32 weights and both Adam moments, unpartitioned),
    plus a copy of its model-states file; the converter's intermediate fragments live inside the temporary
    directory and are deleted before the rename."""
    from deepspeed.checkpoint import ds_to_universal  # heavy; --help imports this package

    tag_dir = os.path.join(tags_dir, tag)
    verdict = verify_tag(tags_dir, tag, "size")  # the resume verified it fully; a reader never skips the manifest
    if verdict.intact is False:
        raise ResumeRefused(f"checkpoint {tag_dir} is damaged: " + "; ".join(verdict.problems))
    source = source_record(tag_dir)
    final = os.path.join(tags_dir, universal_tag(tag))
    if os.path.isdir(final):
        if not universal_intact(final):
            logger.warning("--resume: %s is incomplete or damaged: converting %s again", final, tag)
        elif source is None or universal_source(final) != source:
            logger.warning("--resume: %s was converted from another save of %s (its manifest differs from the one "
                           "the tag holds now): converting %s again", final, tag, tag)
        else:
            logger.info("--resume: using the universal checkpoint %s", final)
            return final
        shutil.rmtree(final)
    for stale in glob.glob(os.path.join(tags_dir, f"{_TMP_PREFIX}{tag}-*")):
        shutil.rmtree(stale, ignore_errors=True)  # a conversion a kill interrupted
    tmp_root = os.path.join(tags_dir, f"{_TMP_PREFIX}{tag}-{os.getpid()}")
    # The converter writes `latest_universal` beside its output folder: inside tmp_root, not in tags_dir.
    out = os.path.join(tmp_root, universal_tag(tag))
    os.makedirs(tmp_root)
    args = argparse.Namespace(input_folder=os.path.join(tags_dir, tag), output_folder=out,
                              num_extract_workers=workers, num_merge_workers=max(1, workers // 2),
                              keep_temp_folder=False, strict=True,
                              # Our engine saves no universal_checkpoint_info (no tensor/pipeline parallelism):
                              # the converter adds its version record, as its --inject_missing_state does.
                              inject_missing_state=True)
    logger.info("--resume: converting %s to DeepSpeed's universal checkpoint in %s (the ZeRO partitioning "
                "changed)", os.path.join(tags_dir, tag), final)
    try:
        with weights_only_loads():
            ds_to_universal.main(args)
        files = _files_under(out)
        manifest = json.dumps({"format": 1, "source": tag, "source_manifest": source, "hash": HASH, "files": files},
                              indent=1, sort_keys=True)
        _atomic_write(os.path.join(out, MANIFEST_FILE), manifest)
        _atomic_write(os.path.join(out, COMPLETE_MARKER), json.dumps({"manifest": MANIFEST_FILE,
                                                                       **text_record(manifest)}))
        os.replace(out, final)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    logger.info("--resume: wrote %s (%.1f MB)", final, sum(r["size"] for r in files.values()) / 1e6)
    return final


def load_universal(engine, tags_dir: str, tag: str) -> tuple:
    """engine.load_checkpoint of the universal copy of ``tag`` (DeepSpeed's ``checkpoint.load_universal``,
    set on the engine's config for this load only); returns what load_checkpoint returns."""
    config = engine._config  # the attribute engine.load_universal_checkpoint() reads
    previous: Optional[bool] = config.load_universal_checkpoint
    config.load_universal_checkpoint = True
    try:
        with weights_only_loads():
            loaded = engine.load_checkpoint(tags_dir, tag=universal_tag(tag))
            _repair_universal_load(engine, os.path.join(tags_dir, universal_tag(tag)))
            return loaded
    finally:
        config.load_universal_checkpoint = previous


def _repair_universal_load(engine, universal_dir: str) -> None:
    """Undo two things DeepSpeed 0.19.8's ZeRO-3 universal load (load_hp_checkpoint_state_from_checkpoint_dir_stage3)
    gets wrong for us; hand-written because no DeepSpeed option does it:

    * it copies group 0's hyperparameters into every parameter group, so our no-decay group (biases, LayerNorm)
      would get group 0's weight decay: each group gets the ones it was saved with (its ZeRO 1/2 load does this
      already; doing it for every stage costs nothing);
    * it gives every sub-group the same Adam ``step`` tensor, which torch's AdamW increments in place once per
      sub-group and step, so the bias correction would run ahead (4 + 2 x 4 = 12 after 4 more steps with two
      sub-groups): each state gets its own copy."""

    saved = safe_load(os.path.join(universal_dir, "zero", "optimizer_state.pt"))["param_groups"]
    base = getattr(engine.optimizer, "optimizer", engine.optimizer)  # the torch optimizer under ZeRO's wrapper
    if len(saved) != len(base.param_groups):
        raise ValueError(f"{universal_dir} holds {len(saved)} optimizer parameter groups, this run has "
                         f"{len(base.param_groups)}")
    for group, hyper in zip(base.param_groups, saved):
        group.update({key: value for key, value in hyper.items() if key != "params"})
    for state in base.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()
