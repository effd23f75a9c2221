"""What a checkpoint directory holds and how its names read: the tag names (``step<N>``), the marker, pointer,
manifest and state files, checksums, our client state as plain values, the run identity, and which tags are complete."""
from __future__ import annotations

import json
import logging
import os
import re
from typing import List, Optional, Tuple

import numpy as np
import xxhash

from mometas_ds.config.choices import VERIFY_LEVELS  # noqa: F401  (re-exported: the --verify_checkpoint choices)
from mometas_ds.errors import ConfigError

COMPLETE_MARKER = "COMPLETE"
LATEST_FILE = "latest_complete"
RUN_IDENTITY_FILE = "run_identity.json"  # the settings a resume must share (config.run_identity)
MANIFEST_FILE = "manifest.json"  # every file of the tag: size and checksum (COMPLETE records the manifest's)
CLIENT_STATE_FILE = "mometas_state.pt"  # step, sampler, data positions, RNG: plain values, weights_only-loadable
HASH = "xxh3_64"
FULL_VERIFY_MAX_BYTES = 4 << 30  # --verify_checkpoint auto hashes a tag of up to 4 GiB (docs/checkpoints.md)
_BLOCK = 1 << 20
_TAG_RE = re.compile(r"step(\d+)")  # always fullmatch: "step4\n" or "../x/step4" are not tags
logger = logging.getLogger(__package__)  # one logger for the package: "mometas_ds.checkpoint", as before the split


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


def text_record(text: str) -> dict:
    data = text.encode("utf-8")
    return {"size": len(data), HASH: xxhash.xxh3_64(data).hexdigest()}


# ---------------------------------------------------------------- our own state, as plain values
def _plain(value):
    """The client state with numpy arrays as tagged lists, so it loads with weights_only=True on any torch."""
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



# ---------------------------------------------------------------- finding tags
def is_complete(root: str, tag: str) -> bool:
    return step_of(tag) is not None and os.path.isfile(os.path.join(root, tag, COMPLETE_MARKER))


def complete_tags(root: str) -> List[str]:
    """The complete tags under ``root``, newest (highest step) first."""
    if not os.path.isdir(root):
        return []
    tags = [name for name in os.listdir(root) if is_complete(root, name)]
    return sorted(tags, key=step_of, reverse=True)


def read_pointer(root: str) -> Optional[str]:
    """What ``latest_complete`` holds (stripped), or None without one."""
    path = os.path.join(root, LATEST_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read().strip()


def latest_complete_tag(root: str) -> Optional[str]:
    """The newest complete tag: the one ``latest_complete`` names, else the highest complete step.

    A pointer that is not a tag of this directory (``step<N>``) is ignored here; resume refuses it."""
    tag = read_pointer(root)
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
