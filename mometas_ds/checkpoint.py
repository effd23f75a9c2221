"""Checkpoints on top of DeepSpeed's save/load, published only when complete.

DeepSpeed writes its ``latest`` file from rank 0 without waiting for the other ranks'
shards. We save with ``save_latest=False``, wait for every rank, then rank 0 marks the
tag complete and replaces our own ``latest`` atomically. A kill during a save leaves an
unmarked tag directory that resume never picks. A write that fails on any rank (disk
full, permissions) fails the save on every rank with a CheckpointError naming the path;
nothing is published and the previous complete tag stays the latest.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from typing import Callable, Optional, Tuple

import torch

from . import faults

COMPLETE_MARKER = "COMPLETE"
LATEST_FILE = "latest_complete"
RUN_IDENTITY_FILE = "run_identity.json"  # the settings a resume must share (config.run_identity)
_TAG_RE = re.compile(r"^step(\d+)$")
logger = logging.getLogger(__name__)


def tag_for(step: int) -> str:
    return f"step{step}"


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (disk full, permissions); the previous complete one is untouched."""


def read_run_identity(tag_dir: str) -> Optional[dict]:
    """The run settings recorded with a checkpoint, or None for a checkpoint that has none."""
    path = os.path.join(tag_dir, RUN_IDENTITY_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save(engine, root: str, step: int, client_state: dict, rank: int, barrier: Callable[[], None],
         run_identity: Optional[dict] = None) -> str:
    tag = tag_for(step)
    tag_dir = os.path.join(root, tag)
    if rank == 0 and os.path.exists(os.path.join(tag_dir, COMPLETE_MARKER)):
        # Re-saving the same step (a stop right after a periodic save): unpublish first.
        os.remove(os.path.join(tag_dir, COMPLETE_MARKER))
    barrier()
    errors = _save_recording_errors(engine, root, tag, client_state)
    _raise_if_any_rank_failed(errors, tag_dir, root)
    if rank == 0:
        faults.sleep_in_save(step)
        try:
            if run_identity is not None:
                _atomic_write(os.path.join(tag_dir, RUN_IDENTITY_FILE), json.dumps(run_identity, indent=1))
            _atomic_write(os.path.join(tag_dir, COMPLETE_MARKER), str(step))
            _atomic_write(os.path.join(root, LATEST_FILE), tag)
        except OSError as exc:
            errors.append(f"rank 0: publishing {tag_dir}: {exc}")
    _raise_if_any_rank_failed(errors, tag_dir, root)
    return tag


def _save_recording_errors(engine, root: str, tag: str, client_state: dict) -> list:
    """engine.save_checkpoint, with this rank's failed writes returned instead of raised.

    DeepSpeed's save runs collectives (barriers, tag check) between its writes; a rank that
    raised out of it would leave the others waiting in one. So the file writes of its
    checkpoint engine record their error and return, every rank finishes the save, and the
    ranks then decide together.
    """
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    errors = []
    writer = engine.checkpoint_engine

    def recording(write, what):
        def wrapper(*args, **kwargs):
            path = kwargs.get("path", args[-1] if args else "?")
            try:
                result = write(*args, **kwargs)
                if what == "writing" and isinstance(path, str) and os.path.isfile(path):
                    # On disk before COMPLETE is: after a node crash the marker must not name lost data.
                    _fsync(path)
                return result
            except Exception as exc:  # torch.save reports a full disk as RuntimeError
                errors.append(f"rank {rank}: {what} {path}: {type(exc).__name__}: {exc}")
        return wrapper

    writer.save = recording(writer.save, "writing")
    writer.makedirs = recording(writer.makedirs, "creating")
    try:
        engine.save_checkpoint(root, tag=tag, client_state=client_state, save_latest=False)
        _fsync(os.path.join(root, tag))  # the directory entries of the files just written
    except Exception as exc:  # a write outside the checkpoint engine (DeepSpeed copies a script)
        errors.append(f"rank {rank}: saving {os.path.join(root, tag)}: {type(exc).__name__}: {exc}")
    finally:
        del writer.save, writer.makedirs  # back to the class's methods
    return errors


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune(root: str, keep: int) -> list:
    """Delete all but the newest ``keep`` complete checkpoints (never the one ``latest_complete`` names)
    and any unfinished tag older than the newest complete one; return the deleted tags."""
    latest = latest_complete_tag(root)
    if latest is None:
        return []
    steps = sorted((int(m.group(1)), name) for name in os.listdir(root) if (m := _TAG_RE.match(name)))
    complete = [name for _, name in steps if is_complete(root, name)]
    newest = set(complete[-keep:]) | {latest}
    latest_step = int(_TAG_RE.match(latest).group(1))
    doomed = [name for step, name in steps if name not in newest and step < latest_step]
    for name in doomed:
        # Unpublish first: a kill mid-delete must not leave a COMPLETE tag with missing files.
        marker = os.path.join(root, name, COMPLETE_MARKER)
        if os.path.exists(marker):
            os.remove(marker)
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return doomed


def _raise_if_any_rank_failed(errors: list, tag_dir: str, root: str) -> None:
    import torch.distributed as dist

    everyone = [errors]
    if dist.is_initialized() and dist.get_world_size() > 1:
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, errors)
    failed = [line for rank_errors in everyone for line in rank_errors]
    if failed:
        previous = latest_complete_tag(root)
        raise CheckpointError(
            f"saving checkpoint {tag_dir} failed (disk full? permissions?):\n  " + "\n  ".join(failed)
            + "\nthe checkpoint is not published; the last complete one, "
            + (os.path.join(root, previous) if previous else "(none)") + ", is intact: free space and restart with --resume"
        )


def is_complete(root: str, tag: str) -> bool:
    return os.path.isfile(os.path.join(root, tag, COMPLETE_MARKER))


def latest_complete_tag(root: str) -> Optional[str]:
    """The newest complete tag: the one ``latest_complete`` names, else the highest complete step."""
    latest = os.path.join(root, LATEST_FILE)
    if os.path.isfile(latest):
        with open(latest) as f:
            tag = f.read().strip()
        if is_complete(root, tag):
            return tag
    if not os.path.isdir(root):
        return None
    steps = []
    for name in os.listdir(root):
        match = _TAG_RE.match(name)
        if match and is_complete(root, name):
            steps.append(int(match.group(1)))
    return tag_for(max(steps)) if steps else None


def find_resume_checkpoint(root: str, resume: str) -> Optional[Tuple[str, str]]:
    """(directory of tags, tag) to resume from, or None.

    ``auto``: the latest complete tag under ``root``, if any. A bare tag name (``step400``) is looked
    up under ``root``; a path (``runs/a/checkpoints/step400``) is taken where it is, so a run can
    start from another run's checkpoint. Either must be complete, else ValueError.
    """
    if resume in (None, "", "none"):
        return None
    if resume == "auto":
        tag = latest_complete_tag(root)
        return None if tag is None else (root, tag)
    path = os.path.normpath(resume)
    tags_dir, tag = os.path.split(path)
    tags_dir = tags_dir or root
    if not is_complete(tags_dir, tag):
        raise ValueError(f"--resume {resume}: {os.path.join(tags_dir, tag)} is not a complete checkpoint")
    return tags_dir, tag


def consolidated_state_dict(engine, root: str, step: int) -> Optional[dict]:
    """Full fp32 weights on rank 0 (None elsewhere), for the HF export."""
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    if engine.zero_optimization_stage() == 0:
        state = _stage0_fp32_state_dict(engine)  # every rank: the bf16 optimizer gathers by all-reduce
        return state if rank == 0 else None
    if rank != 0:
        return None
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(root, tag=tag_for(step))


def _stage0_fp32_state_dict(engine) -> dict:
    """The module's weights in fp32. Without ZeRO, DeepSpeed keeps a bf16/fp16 module and the fp32
    master weights inside its optimizer wrapper: export those, not the rounded module copy."""
    state = engine.module.state_dict(keep_vars=True)
    low_precision = any(v.is_floating_point() and v.dtype != torch.float32 for v in state.values())
    masters = _fp32_master_weights(engine) if low_precision else {}
    return {k: masters.get(id(v), v).detach().float() for k, v in state.items()}


def _fp32_master_weights(engine) -> dict:
    """{id(param): fp32 master weight} from DeepSpeed's stage-0 mixed-precision optimizers."""
    from deepspeed.utils import safe_get_full_fp32_param

    params = list(engine.module.parameters())
    if any(hasattr(p, "_hp_mapping") for p in params):  # BF16_Optimizer (public API; an all-reduce per parameter)
        masters = {id(p): safe_get_full_fp32_param(p) for p in params}
        return {key: value for key, value in masters.items() if value is not None}
    optimizer = engine.optimizer
    groups = getattr(optimizer, "fp16_groups", None)
    if groups is not None and hasattr(optimizer, "fp32_groups"):  # FP16_UnfusedOptimizer (e.g. Lamb + fp16)
        return {id(p): m for lp, hp in zip(groups, optimizer.fp32_groups) for p, m in zip(lp, hp)}
    if groups is not None and hasattr(optimizer, "fp32_groups_flat"):  # FP16_Optimizer: one flat buffer per group
        from torch._utils import _unflatten_dense_tensors

        # Copies, not views: safetensors refuses to write tensors that share one storage.
        return {id(p): m.clone() for lp, flat in zip(groups, optimizer.fp32_groups_flat)
                for p, m in zip(lp, _unflatten_dense_tensors(flat, lp))}
    logger.warning(
        "HF export: no fp32 master weights found in %s; exporting the %s module weights upcast to fp32 "
        "(the DeepSpeed checkpoint holds the full-precision state)", type(optimizer).__name__, params[0].dtype)
    return {}
