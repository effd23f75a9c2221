"""Saving a checkpoint: DeepSpeed's save with every rank's write errors gathered, then rank 0 publishes the tag
(manifest, COMPLETE, ``latest_complete``); pruning old tags."""
from __future__ import annotations

import json
import os
import shutil
from typing import Callable, Dict, Optional

import torch
import torch.distributed as dist

from mometas_ds.checkpoint.layout import (
    CLIENT_STATE_FILE, COMPLETE_MARKER, HASH, LATEST_FILE, MANIFEST_FILE, RUN_IDENTITY_FILE, CheckpointError,
    _atomic_write, _plain, _record, text_record, is_complete, latest_complete_tag, step_of, tag_for,
)
from mometas_ds.checkpoint.universal import universal_tag

# ---------------------------------------------------------------- saving
def save(engine, root: str, step: int, client_state: dict, rank: int, barrier: Callable[[], None],
         run_identity: Optional[dict] = None, before_publish: Optional[Callable[[int], None]] = None) -> str:
    tag = tag_for(step)
    tag_dir = os.path.join(root, tag)
    cleared = []
    if rank == 0:
        # The tag is written into an empty directory, so its manifest names every file in it: a directory left by
        # a killed save, or an earlier save of this step (a resume from an earlier tag, a stop right after a
        # periodic save) is unpublished and cleared first, with its universal copy.
        try:
            clear_tag(root, tag)
        except OSError as exc:
            cleared.append(f"rank 0: clearing {tag_dir} before the save: {exc}")
    barrier()
    written: Dict[str, dict] = {}  # this rank's files: name in the tag -> size, checksum
    errors = cleared + _save_recording_errors(engine, root, tag, written)
    if rank == 0:
        path = os.path.join(tag_dir, CLIENT_STATE_FILE)
        try:
            # Our state in a file of its own, plain values only: it loads with weights_only=True.
            torch.save(_plain(client_state), path)
            _fsync(path)
            written[CLIENT_STATE_FILE] = _record(path)
            if run_identity is not None:
                path = os.path.join(tag_dir, RUN_IDENTITY_FILE)
                _atomic_write(path, json.dumps(run_identity, indent=1))
                written[RUN_IDENTITY_FILE] = _record(path)
        except Exception as exc:  # torch.save reports a full disk as RuntimeError
            errors.append(f"rank 0: writing {path}: {type(exc).__name__}: {exc}")
    everyone = _gather((errors, written))
    _raise_if_failed([line for rank_errors, _ in everyone for line in rank_errors], tag_dir, root)
    errors = []
    if rank == 0:
        if before_publish is not None:  # a test's fault hook (train.faults): a kill while the tag is unpublished
            before_publish(step)
        try:
            files = {}
            for writer_rank, (_, rank_files) in enumerate(everyone):
                for name, record in rank_files.items():
                    files.setdefault(name, dict(record, rank=writer_rank))
            publish(root, step, files)
        except OSError as exc:
            errors.append(f"rank 0: publishing {tag_dir}: {exc}")
    _raise_if_any_rank_failed(errors, tag_dir, root)
    return tag


def publish(root: str, step: int, files: Dict[str, dict]) -> None:
    """Write the tag's manifest (``files``: name -> size, checksum, writing rank), then COMPLETE recording the
    manifest's size and checksum, then point ``latest_complete`` at the tag. Rank 0, once every file is on disk."""
    tag = tag_for(step)
    tag_dir = os.path.join(root, tag)
    manifest = json.dumps({"format": 1, "step": step, "hash": HASH, "files": files}, indent=1, sort_keys=True)
    _atomic_write(os.path.join(tag_dir, MANIFEST_FILE), manifest)
    marker = {"step": step, "manifest": MANIFEST_FILE, **text_record(manifest)}
    _atomic_write(os.path.join(tag_dir, COMPLETE_MARKER), json.dumps(marker))
    _atomic_write(os.path.join(root, LATEST_FILE), tag)


def unpublish(root: str, tag: str) -> None:
    """Make ``tag`` not complete (its COMPLETE marker removed, before anything else of it is touched) and remove its
    universal copy: no reader takes it from now on."""
    marker = os.path.join(root, tag, COMPLETE_MARKER)
    if os.path.lexists(marker):
        os.remove(marker)
    universal = os.path.join(root, universal_tag(tag))
    if os.path.lexists(universal):
        shutil.rmtree(universal)


def clear_tag(root: str, tag: str) -> None:
    """Unpublish ``tag`` and delete its directory, so that a new save of it starts from an empty one."""
    unpublish(root, tag)
    tag_dir = os.path.join(root, tag)
    if os.path.islink(tag_dir) or os.path.isfile(tag_dir):
        os.remove(tag_dir)
    elif os.path.isdir(tag_dir):
        shutil.rmtree(tag_dir)


def file_records(tag_dir: str, rank: int = 0) -> Dict[str, dict]:
    """Size and checksum of every file directly in ``tag_dir`` but COMPLETE and the manifest (tools, tests)."""
    return {name: dict(_record(os.path.join(tag_dir, name)), rank=rank) for name in sorted(os.listdir(tag_dir))
            if name not in (COMPLETE_MARKER, MANIFEST_FILE) and os.path.isfile(os.path.join(tag_dir, name))}


def _save_recording_errors(engine, root: str, tag: str, written: Optional[dict] = None) -> list:
    """engine.save_checkpoint, with this rank's failed writes returned instead of raised, and the size
    and checksum of each file it wrote added to ``written``.

    DeepSpeed's save runs collectives (barriers, tag check) between its writes; a rank that
    raised out of it would leave the others waiting in one. So the file writes of its
    checkpoint engine record their error and return, every rank finishes the save, and the
    ranks then decide together. Our client state goes into a file of its own (see save).
    """
    rank = dist.get_rank() if dist.is_initialized() else 0
    errors = []
    written = {} if written is None else written
    tag_dir = os.path.join(root, tag)
    writer = engine.checkpoint_engine

    def recording(write, what):
        def wrapper(*args, **kwargs):
            path = kwargs.get("path", args[-1] if args else "?")
            try:
                result = write(*args, **kwargs)
                if what == "writing" and isinstance(path, str) and os.path.isfile(path):
                    # On disk before COMPLETE is: after a node crash the marker must not name lost data.
                    _fsync(path)
                    name = os.path.relpath(path, tag_dir)
                    if not name.startswith(os.pardir):
                        written[name] = _record(path)  # read back from the page cache just written
                return result
            except Exception as exc:  # torch.save reports a full disk as RuntimeError
                errors.append(f"rank {rank}: {what} {path}: {type(exc).__name__}: {exc}")
        return wrapper

    writer.save = recording(writer.save, "writing")
    writer.makedirs = recording(writer.makedirs, "creating")
    try:
        engine.save_checkpoint(root, tag=tag, client_state={}, save_latest=False)
        _fsync(tag_dir)  # the directory entries of the files just written
    except Exception as exc:  # a write outside the checkpoint engine (DeepSpeed copies a script)
        errors.append(f"rank {rank}: saving {tag_dir}: {type(exc).__name__}: {exc}")
    finally:
        del writer.save, writer.makedirs  # back to the class's methods
    return errors


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _gather(obj) -> list:
    """Every rank's ``obj``, in rank order (all_gather_object in the default group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, obj)
        return everyone
    return [obj]


def prune(root: str, keep: int) -> list:
    """Delete all but the newest ``keep`` complete checkpoints (never the one ``latest_complete`` names)
    and any unfinished tag older than the newest complete one, each with its universal copy; return the
    deleted tags."""
    latest = latest_complete_tag(root)
    if latest is None:
        return []
    steps = sorted((step_of(name), name) for name in os.listdir(root) if step_of(name) is not None)
    complete = [name for _, name in steps if is_complete(root, name)]
    newest = set(complete[-keep:]) | {latest}
    latest_step = step_of(latest)
    doomed = [name for step, name in steps if name not in newest and step < latest_step]
    for name in doomed:
        # Unpublish first (and drop its universal copy): a kill mid-delete must not leave a COMPLETE tag with
        # missing files.
        unpublish(root, name)
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return doomed


def _raise_if_any_rank_failed(errors: list, tag_dir: str, root: str) -> None:
    _raise_if_failed([line for rank_errors in _gather(errors) for line in rank_errors], tag_dir, root)


def _raise_if_failed(failed: list, tag_dir: str, root: str) -> None:
    if failed:
        previous = latest_complete_tag(root)
        raise CheckpointError(
            f"saving checkpoint {tag_dir} failed (disk full? permissions?):\n  " + "\n  ".join(failed)
            + "\nthe checkpoint is not published; the last complete one, "
            + (os.path.join(root, previous) if previous else "(none)")
            + ", is intact: free space and restart with --resume"
        )

