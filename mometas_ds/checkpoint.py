"""Checkpoints on top of DeepSpeed's save/load, published only when complete and verified on resume.

DeepSpeed writes its ``latest`` file from rank 0 without waiting for the other ranks'
shards. We save with ``save_latest=False``, wait for every rank, then rank 0 marks the
tag complete and replaces our own ``latest`` atomically. A kill during a save leaves an
unmarked tag directory that resume never picks. A write that fails on any rank (disk
full, permissions) fails the save on every rank with a CheckpointError naming the path;
nothing is published and the previous complete tag stays the latest.

Each published tag carries ``manifest.json``: every file of the tag with its size and xxh3_64
checksum, recorded by the rank that wrote it and gathered on rank 0; COMPLETE records the
manifest's own size and checksum. ``--resume auto`` verifies the newest complete tag against it
and falls back to the newest intact one; a damaged explicit tag is refused (exit 2). DeepSpeed's
files are read by ``torch.load(weights_only=True)`` with an allow-list of the few DeepSpeed types
they hold; our own state (``mometas_state.pt``) holds plain values only. See docs/checkpoints.md
and docs/security.md.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import pickle
import re
import shutil
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

from . import faults
from .errors import ConfigError

COMPLETE_MARKER = "COMPLETE"
LATEST_FILE = "latest_complete"
RUN_IDENTITY_FILE = "run_identity.json"  # the settings a resume must share (config.run_identity)
MANIFEST_FILE = "manifest.json"  # every file of the tag: size and checksum (COMPLETE records the manifest's)
CLIENT_STATE_FILE = "mometas_state.pt"  # step, sampler, data positions, RNG: plain values, weights_only-loadable
HASH = "xxh3_64"
FULL_VERIFY_MAX_BYTES = 4 << 30  # --verify_checkpoint auto hashes a tag of up to 4 GiB (docs/checkpoints.md)
VERIFY_LEVELS = ("auto", "size", "full")
_BLOCK = 1 << 20
_TAG_RE = re.compile(r"step(\d+)")  # always fullmatch: "step4\n" or "../x/step4" are not tags
logger = logging.getLogger(__name__)


def tag_for(step: int) -> str:
    return f"step{step}"


def step_of(tag: str) -> Optional[int]:
    """N for a tag ``stepN``, else None."""
    match = _TAG_RE.fullmatch(tag) if isinstance(tag, str) else None
    return int(match.group(1)) if match else None


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (disk full, permissions); the previous complete one is untouched."""


class ResumeRefused(ValueError):
    """--resume cannot use what it was pointed at (damaged, not a tag of this run, unsafe); the message says why."""


def _config_error(message: str) -> Exception:
    return ConfigError(message)


# ---------------------------------------------------------------- checksums
def file_digest(path: str) -> str:
    """xxh3_64 of a file, streamed in 1 MiB blocks (hex)."""
    import xxhash

    digest = xxhash.xxh3_64()
    buf = bytearray(_BLOCK)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            digest.update(view[:n])
    return digest.hexdigest()


def _record(path: str) -> dict:
    return {"size": os.path.getsize(path), HASH: file_digest(path)}


def _text_record(text: str) -> dict:
    import xxhash

    data = text.encode("utf-8")
    return {"size": len(data), HASH: xxhash.xxh3_64(data).hexdigest()}


# ---------------------------------------------------------------- our own state, as plain values
def _plain(value):
    """The client state with numpy arrays as tagged lists, so it loads with weights_only=True on any torch."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _unplain(value):
    import numpy as np

    if isinstance(value, dict):
        if set(value) == {"__ndarray__", "dtype"}:
            return np.array(value["__ndarray__"], dtype=value["dtype"])
        return {k: _unplain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_unplain(v) for v in value)
    return value


def read_run_identity(tag_dir: str) -> Optional[dict]:
    """The run settings recorded with a checkpoint, or None for a checkpoint that has none.

    ResumeRefused (naming the file) if it is not a JSON object."""
    path = os.path.join(tag_dir, RUN_IDENTITY_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResumeRefused(f"{path} is unreadable ({exc}): the checkpoint is damaged") from None
    if not isinstance(value, dict):
        raise ResumeRefused(f"{path} does not hold a JSON object: the checkpoint is damaged")
    return value


# ---------------------------------------------------------------- saving
def save(engine, root: str, step: int, client_state: dict, rank: int, barrier: Callable[[], None],
         run_identity: Optional[dict] = None) -> str:
    tag = tag_for(step)
    tag_dir = os.path.join(root, tag)
    if rank == 0 and os.path.exists(os.path.join(tag_dir, COMPLETE_MARKER)):
        # Re-saving the same step (a stop right after a periodic save): unpublish first.
        os.remove(os.path.join(tag_dir, COMPLETE_MARKER))
    barrier()
    written: Dict[str, dict] = {}  # this rank's files: name in the tag -> size, checksum
    errors = _save_recording_errors(engine, root, tag, written)
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
        faults.sleep_in_save(step)
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
    marker = {"step": step, "manifest": MANIFEST_FILE, **_text_record(manifest)}
    _atomic_write(os.path.join(tag_dir, COMPLETE_MARKER), json.dumps(marker))
    _atomic_write(os.path.join(root, LATEST_FILE), tag)


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
    import torch.distributed as dist

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
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, obj)
        return everyone
    return [obj]


def prune(root: str, keep: int) -> list:
    """Delete all but the newest ``keep`` complete checkpoints (never the one ``latest_complete`` names)
    and any unfinished tag older than the newest complete one; return the deleted tags."""
    latest = latest_complete_tag(root)
    if latest is None:
        return []
    steps = sorted((step_of(name), name) for name in os.listdir(root) if step_of(name) is not None)
    complete = [name for _, name in steps if is_complete(root, name)]
    newest = set(complete[-keep:]) | {latest}
    latest_step = step_of(latest)
    doomed = [name for step, name in steps if name not in newest and step < latest_step]
    for name in doomed:
        # Unpublish first: a kill mid-delete must not leave a COMPLETE tag with missing files.
        marker = os.path.join(root, name, COMPLETE_MARKER)
        if os.path.exists(marker):
            os.remove(marker)
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
            + (os.path.join(root, previous) if previous else "(none)") + ", is intact: free space and restart with --resume"
        )


# ---------------------------------------------------------------- finding tags
def is_complete(root: str, tag: str) -> bool:
    return step_of(tag) is not None and os.path.isfile(os.path.join(root, tag, COMPLETE_MARKER))


def complete_tags(root: str) -> List[str]:
    """The complete tags under ``root``, newest (highest step) first."""
    if not os.path.isdir(root):
        return []
    tags = [name for name in os.listdir(root) if is_complete(root, name)]
    return sorted(tags, key=step_of, reverse=True)


def _read_pointer(root: str) -> Optional[str]:
    """What ``latest_complete`` holds (stripped), or None without one."""
    path = os.path.join(root, LATEST_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read().strip()


def latest_complete_tag(root: str) -> Optional[str]:
    """The newest complete tag: the one ``latest_complete`` names, else the highest complete step.

    A pointer that is not a tag of this directory (``step<N>``) is ignored here; resume refuses it."""
    tag = _read_pointer(root)
    if tag is not None and is_complete(root, tag):
        return tag
    tags = complete_tags(root)
    return tags[0] if tags else None


def find_resume_checkpoint(root: str, resume: str) -> Optional[Tuple[str, str]]:
    """(directory of tags, tag) to resume from, or None; no verification (see resume_checkpoint).

    ``auto``: the latest complete tag under ``root``, if any. A bare tag name (``step400``) is looked
    up under ``root``; a path (``runs/a/checkpoints/step400``) is taken where it is, so a run can
    start from another run's checkpoint. Either must be a complete ``step<N>``, else ResumeRefused
    (a ValueError).
    """
    if resume in (None, "", "none"):
        return None
    if resume == "auto":
        tag = latest_complete_tag(root)
        return None if tag is None else (root, tag)
    tags_dir, tag = os.path.split(os.path.normpath(resume))
    if step_of(tag) is None:
        raise ResumeRefused(f"--resume {resume}: {tag!r} is not a checkpoint tag (step<N>)")
    tags_dir = tags_dir or root
    if not is_complete(tags_dir, tag):
        raise ResumeRefused(f"--resume {resume}: {os.path.join(tags_dir, tag)} is not a complete checkpoint")
    return tags_dir, tag


# ---------------------------------------------------------------- verification
@dataclass
class Verdict:
    """What verify_tag found. ``intact`` is None for a tag written before manifests (cannot be verified)."""

    tags_dir: str
    tag: str
    complete: bool
    intact: Optional[bool]
    level: str  # what was checked: "size", "full" or "none"
    size: int = 0  # bytes the manifest lists (or found on disk without one)
    problems: List[str] = field(default_factory=list)

    @property
    def step(self) -> Optional[int]:
        return step_of(self.tag)

    @property
    def path(self) -> str:
        return os.path.join(self.tags_dir, self.tag)


def _read_marker(tag_dir: str):
    """COMPLETE's content: a dict (manifest record), an int (written before manifests), or None (unreadable)."""
    try:
        with open(os.path.join(tag_dir, COMPLETE_MARKER), encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return None
    if text.strip().isdigit():
        return int(text.strip())
    try:
        marker = json.loads(text)
    except json.JSONDecodeError:
        return None
    if isinstance(marker, dict) and isinstance(marker.get("manifest"), str) and "size" in marker and HASH in marker:
        return marker
    return None


def read_manifest(tag_dir: str) -> Tuple[Optional[dict], List[str]]:
    """(manifest, problems) of a complete tag, checked against the record in COMPLETE."""
    marker = _read_marker(tag_dir)
    marker_path = os.path.join(tag_dir, COMPLETE_MARKER)
    if marker is None:
        return None, [f"{marker_path}: unreadable (not the record a save writes)"]
    if isinstance(marker, int):
        return None, []
    name = marker["manifest"]
    path = os.path.join(tag_dir, name)
    if os.path.basename(name) != name or not os.path.isfile(path):
        return None, [f"{path}: missing (COMPLETE records {marker['size']} bytes)"]
    with open(path, "rb") as f:
        data = f.read()
    import xxhash

    if len(data) != marker["size"]:
        return None, [f"{path}: {len(data)} bytes, COMPLETE records {marker['size']}"]
    if xxhash.xxh3_64(data).hexdigest() != marker[HASH]:
        return None, [f"{path}: {HASH} checksum differs from the one COMPLETE records"]
    try:
        manifest = json.loads(data.decode("utf-8"))
        files = manifest["files"]
        assert isinstance(files, dict) and all(isinstance(r["size"], int) for r in files.values())
    except Exception:  # a record written by another program: anything malformed is damage
        return None, [f"{path}: not a manifest of files"]
    return manifest, []


def verify_tag(tags_dir: str, tag: str, level: str = "auto") -> Verdict:
    """Check a tag's files against its manifest: sizes always, checksums at level ``full``
    (``auto``: full when the tag holds at most FULL_VERIFY_MAX_BYTES)."""
    if level not in VERIFY_LEVELS:
        raise ValueError(f"verify level must be one of {', '.join(VERIFY_LEVELS)}, got {level!r}")
    tag_dir = os.path.join(tags_dir, tag)
    if not is_complete(tags_dir, tag):
        return Verdict(tags_dir, tag, complete=False, intact=False, level="none",
                       size=_disk_size(tag_dir), problems=[f"{tag_dir}: not complete (no {COMPLETE_MARKER} marker)"])
    manifest, problems = read_manifest(tag_dir)
    if problems:
        return Verdict(tags_dir, tag, True, False, "size", _disk_size(tag_dir), problems)
    if manifest is None:  # written before manifests: nothing to check against
        return Verdict(tags_dir, tag, True, None, "none", _disk_size(tag_dir))
    files = manifest["files"]
    total = sum(record["size"] for record in files.values())
    if level == "auto":
        level = "full" if total <= FULL_VERIFY_MAX_BYTES else "size"
    for name, record in sorted(files.items()):
        path = os.path.normpath(os.path.join(tag_dir, name))
        who = f" (written by rank {record['rank']})" if "rank" in record else ""
        if os.path.isabs(name) or os.path.dirname(path) != os.path.normpath(tag_dir) and \
                not path.startswith(os.path.normpath(tag_dir) + os.sep):
            problems.append(f"{tag_dir}/{MANIFEST_FILE}: lists {name!r}, outside the tag")
        elif not os.path.isfile(path):
            problems.append(f"{path}: missing{who}")
        elif os.path.getsize(path) != record["size"]:
            problems.append(f"{path}: {os.path.getsize(path)} bytes, the manifest records {record['size']}{who}")
        elif level == "full" and file_digest(path) != record.get(HASH):
            problems.append(f"{path}: {HASH} checksum differs from the manifest's (same size: overwritten or "
                            f"corrupted in place){who}")
    return Verdict(tags_dir, tag, True, not problems, level, total, problems)


def _disk_size(tag_dir: str) -> int:
    total = 0
    for base, _, names in os.walk(tag_dir):
        total += sum(os.path.getsize(os.path.join(base, n)) for n in names if os.path.isfile(os.path.join(base, n)))
    return total


def _describe(verdict: Verdict) -> str:
    return f"checkpoint {verdict.path} is damaged: " + "; ".join(verdict.problems)


def _newest_intact(tags_dir: str, level: str, skip: str = "") -> Tuple[Optional[Verdict], List[Verdict]]:
    """(newest intact or unverifiable tag, the damaged ones passed on the way), pointer first."""
    pointer = _read_pointer(tags_dir)
    tags = complete_tags(tags_dir)
    if pointer in tags:
        tags.remove(pointer)
        tags.insert(0, pointer)
    damaged = []
    for tag in tags:
        if tag == skip:
            continue
        verdict = verify_tag(tags_dir, tag, level)
        if verdict.intact is False:
            damaged.append(verdict)
            continue
        return verdict, damaged
    return None, damaged


def _choose(root: str, resume: str, level: str) -> Optional[Tuple[str, str]]:
    """The verified (directory of tags, tag) to resume from, or None; ResumeRefused with the reason."""
    if resume in (None, "", "none"):
        return None
    if resume == "auto":
        pointer = _read_pointer(root)
        if pointer is not None and step_of(pointer) is None:
            # A pointer elsewhere would load files this run did not write (and DeepSpeed's files are pickles).
            raise ResumeRefused(
                f"--resume: {os.path.join(root, LATEST_FILE)} holds {pointer[:200]!r}, not a checkpoint tag of this "
                f"run (step<N>), refused; complete checkpoints here: {', '.join(complete_tags(root)) or '(none)'}. "
                f"Pass one with --resume step<N>, or delete the file")
        verdict, damaged = _newest_intact(root, level)
        for bad in damaged:
            logger.warning("--resume: skipping %s", _describe(bad))
        if verdict is None:
            if damaged:
                raise ResumeRefused(f"--resume: no intact checkpoint in {root}: "
                                    + "; ".join(_describe(bad) for bad in damaged)
                                    + ". Give a new --output_dir to start afresh")
            return None
        if verdict.intact is None:
            logger.warning("--resume: %s was written before checkpoints carried a manifest: not verified", verdict.path)
        elif damaged:
            logger.warning("--resume: resuming from %s, the newest intact checkpoint", verdict.path)
        return root, verdict.tag
    tags_dir, tag = find_resume_checkpoint(root, resume)
    verdict = verify_tag(tags_dir, tag, level)
    if verdict.intact is False:
        other, _ = _newest_intact(tags_dir, level, skip=tag)
        hint = (f"the newest intact checkpoint there is {other.tag}: pass --resume "
                f"{other.tag if tags_dir == root else other.path}") if other else "no other checkpoint there is intact"
        raise ResumeRefused(f"--resume {resume}: {_describe(verdict)}; {hint}")
    if verdict.intact is None:
        logger.warning("--resume: %s was written before checkpoints carried a manifest: not verified", verdict.path)
    return tags_dir, tag


_chosen: Dict[tuple, Optional[Tuple[str, str]]] = {}


def resume_checkpoint(root: str, resume: Optional[str], level: str = "auto", group=None,
                      reuse: bool = False, wait_minutes: Optional[float] = None) -> Optional[Tuple[str, str]]:
    """The checkpoint a --resume run starts from: (directory of tags, tag), or None to start at step 0.

    Rank 0 chooses and verifies it (a rank whose view of the directory is stale must not start from
    another step) and every rank gets its answer; a refusal is a ConfigError (exit 2) on every rank.
    A collective: call it on every rank. ``reuse``: take the answer an earlier call in this process
    gave (the pre-flight check verified it), once. ``wait_minutes`` (without ``group``): the others
    wait that long for rank 0's hashing, in a gloo group of their own, not the training timeout.
    """
    import datetime

    import torch.distributed as dist

    if resume in (None, "", "none"):
        return None  # every rank knows that much without asking rank 0
    key = (root, resume, level)
    if reuse and key in _chosen:
        return _chosen.pop(key)
    distributed = dist.is_initialized() and dist.get_world_size() > 1
    answer = None
    own_group = None
    if distributed and group is None and wait_minutes is not None:
        group = own_group = dist.new_group(backend="gloo", timeout=datetime.timedelta(minutes=wait_minutes))
    try:
        if not distributed or dist.get_rank() == 0:
            try:
                answer = ("ok", _choose(root, resume, level))
            except ResumeRefused as exc:
                answer = ("refused", str(exc))
        if distributed:
            box = [answer]
            dist.broadcast_object_list(box, src=0, group=group)
            answer = box[0]
    finally:
        if own_group is not None:
            dist.destroy_process_group(own_group)
    if answer[0] == "refused":
        raise _config_error(answer[1])
    _chosen[key] = answer[1]
    return answer[1]


def run_identity_of(tags_dir: str, tag: str) -> Optional[dict]:
    """read_run_identity, with a damaged file a ConfigError that names the newest intact tag to resume from."""
    try:
        return read_run_identity(os.path.join(tags_dir, tag))
    except ResumeRefused as exc:
        other, _ = _newest_intact(tags_dir, "size", skip=tag)
        raise _config_error(f"--resume: {exc}; " + (f"pass --resume {other.tag} (the newest intact checkpoint)"
                                                     if other else "no other checkpoint there is intact")) from None


# ---------------------------------------------------------------- loading
_DEEPSPEED_TYPES = (  # every non-plain type in DeepSpeed's checkpoint files (checked on 0.19.8, ZeRO 0-3, fp32/bf16)
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
    # numpy arrays: the RNG state of checkpoints written before mometas_state.pt held plain values
    "numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype",
)


def _allowed_types() -> list:
    import warnings

    found = []
    for name in _DEEPSPEED_TYPES:
        module, _, attr = name.rpartition(".")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # numpy.core is deprecated in numpy 2
                found.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            continue  # a DeepSpeed / numpy version without it: its files cannot hold it either
    try:
        import numpy as np

        found += [type(np.dtype(t)) for t in ("uint32", "int64", "float64")]  # numpy >= 1.25 dtype classes
    except Exception:
        pass
    return found


def safe_load(path: str, map_location=None):
    """torch.load(weights_only=True), allowing the DeepSpeed types of _DEEPSPEED_TYPES and nothing else.

    A file holding any other global is refused with ResumeRefused naming it (unpickling it could run
    code). Torch < 2.4 has no allow-list API: there DeepSpeed's own loader (weights_only=False) is kept,
    with a warning (docs/security.md)."""
    serialization = torch.serialization
    try:
        if hasattr(serialization, "safe_globals"):
            with serialization.safe_globals(_allowed_types()):
                return torch.load(path, map_location=map_location, weights_only=True)
        if hasattr(serialization, "add_safe_globals"):
            serialization.add_safe_globals(_allowed_types())
            return torch.load(path, map_location=map_location, weights_only=True)
        logger.warning("torch %s cannot allow-list DeepSpeed's types: loading %s with weights_only=False, which runs "
                       "any code the file holds (upgrade to torch >= 2.4; docs/security.md)", torch.__version__, path)
        return torch.load(path, map_location=map_location, weights_only=False)
    except pickle.UnpicklingError as exc:
        match = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"a Python object of type {match.group(1)}" if match else "Python objects"
        raise ResumeRefused(
            f"{path} holds {what}, which no checkpoint of mometas_ds/DeepSpeed holds: loading it could run code, "
            "so it is refused (see docs/security.md)") from None


def load(engine, tags_dir: str, tag: str) -> dict:
    """engine.load_checkpoint of a chosen tag, its files read by safe_load; returns our client state.

    Any failure is a ConfigError naming the tag (exit 2), never a traceback out of torch.load."""
    tag_dir = os.path.join(tags_dir, tag)
    writer = engine.checkpoint_engine

    def load_safely(path, map_location=None, *args, **kwargs):
        return safe_load(path, map_location=map_location)

    writer.load = load_safely
    try:
        load_path, ds_client_state = engine.load_checkpoint(tags_dir, tag=tag)
        own = os.path.join(tag_dir, CLIENT_STATE_FILE)
        client_state = _unplain(safe_load(own)) if os.path.isfile(own) else ds_client_state
    except ResumeRefused as exc:
        raise _config_error(f"--resume: {exc}") from None
    except Exception as exc:  # a damaged file a manifest could not catch (a checkpoint written before them)
        raise _config_error(f"--resume: loading checkpoint {tag_dir} failed: {type(exc).__name__}: {exc}. The "
                            "checkpoint is damaged or from another DeepSpeed version: resume from an earlier tag "
                            "(mometas-checkpoint list shows which are intact)") from None
    finally:
        del writer.load  # back to the class's method
    if load_path is None or not isinstance(client_state, dict) or "mometas" not in client_state:
        raise _config_error(f"--resume: checkpoint {tag_dir} holds no mometas_ds training state")
    return client_state


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
