"""Checkpoints on top of DeepSpeed's save/load, published only when complete.

DeepSpeed writes its ``latest`` file from rank 0 without waiting for the other ranks'
shards. We save with ``save_latest=False``, wait for every rank, then rank 0 marks the
tag complete and replaces our own ``latest`` atomically. A kill during a save leaves an
unmarked tag directory that resume never picks.
"""
from __future__ import annotations

import os
import re
from typing import Callable, Optional

COMPLETE_MARKER = "COMPLETE"
LATEST_FILE = "latest_complete"
_TAG_RE = re.compile(r"^step(\d+)$")


def tag_for(step: int) -> str:
    return f"step{step}"


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(engine, root: str, step: int, client_state: dict, rank: int, barrier: Callable[[], None]) -> str:
    tag = tag_for(step)
    tag_dir = os.path.join(root, tag)
    if rank == 0 and os.path.exists(os.path.join(tag_dir, COMPLETE_MARKER)):
        # Re-saving the same step (a stop right after a periodic save): unpublish first.
        os.remove(os.path.join(tag_dir, COMPLETE_MARKER))
    barrier()
    engine.save_checkpoint(root, tag=tag, client_state=client_state, save_latest=False)
    barrier()
    if rank == 0:
        _atomic_write(os.path.join(tag_dir, COMPLETE_MARKER), str(step))
        _atomic_write(os.path.join(root, LATEST_FILE), tag)
    barrier()
    return tag


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


def find_resume_tag(root: str, resume: str) -> Optional[str]:
    """``auto``: the latest complete tag or None; else a tag name or a tag directory, which must be complete."""
    if resume in (None, "", "none"):
        return None
    if resume == "auto":
        return latest_complete_tag(root)
    tag = os.path.basename(os.path.normpath(resume))
    if not is_complete(root, tag):
        raise ValueError(f"--resume {resume}: {os.path.join(root, tag)} is not a complete checkpoint")
    return tag


def consolidated_state_dict(engine, root: str, step: int) -> Optional[dict]:
    """Full fp32 weights on rank 0 (None elsewhere), for the HF export."""
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    if engine.zero_optimization_stage() == 0:
        return {k: v.float() for k, v in engine.module.state_dict().items()} if rank == 0 else None
    if rank != 0:
        return None
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(root, tag=tag_for(step))
