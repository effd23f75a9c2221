"""Verifying a tag against its manifest and choosing the checkpoint a --resume run starts from."""
from __future__ import annotations

import datetime
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch.distributed as dist
import xxhash

from mometas_ds.checkpoint.layout import (
    COMPLETE_MARKER, FULL_VERIFY_MAX_BYTES, HASH, LATEST_FILE, MANIFEST_FILE, VERIFY_LEVELS, ResumeRefused,
    _config_error, complete_tags, file_digest, find_resume_checkpoint, is_complete, read_pointer, read_run_identity,
    step_of,
)

logger = logging.getLogger(__package__)  # one logger for the package: "mometas_ds.checkpoint", as before the split


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
    (``auto``: full when the tag holds at most FULL_VERIFY_MAX_BYTES), and that it holds no file the manifest does
    not name."""
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
    problems += _unlisted(tag_dir, files)
    return Verdict(tags_dir, tag, True, not problems, level, total, problems)


def _unlisted(tag_dir: str, files: dict) -> List[str]:
    """A problem for each file in the tag that its manifest does not name: a save writes into an empty directory,
    so such a file was left by an earlier save of the tag or added since, and DeepSpeed's readers (its load, ZeRO
    consolidation, the universal converter) would read it beside the tag's own."""
    listed = {os.path.normpath(name) for name in files} | {COMPLETE_MARKER, MANIFEST_FILE}
    problems = []
    for base, dirs, names in os.walk(tag_dir):
        dirs.sort()
        for name in sorted(names):
            rel = os.path.relpath(os.path.join(base, name), tag_dir)
            if rel not in listed:
                problems.append(f"{os.path.join(tag_dir, rel)}: not in the manifest (left by an earlier save of "
                                f"this tag, or added since; DeepSpeed would read it with the tag's own files)")
    return problems


def _disk_size(tag_dir: str) -> int:
    total = 0
    for base, _, names in os.walk(tag_dir):
        total += sum(os.path.getsize(os.path.join(base, n)) for n in names if os.path.isfile(os.path.join(base, n)))
    return total


def describe(verdict: Verdict) -> str:
    return f"checkpoint {verdict.path} is damaged: " + "; ".join(verdict.problems)


def newest_intact(tags_dir: str, level: str, skip: str = "") -> Tuple[Optional[Verdict], List[Verdict]]:
    """(newest intact or unverifiable tag, the damaged ones passed on the way), pointer first."""
    pointer = read_pointer(tags_dir)
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


_verdicts: Dict[Tuple[str, str], Verdict] = {}  # what _choose found of each tag it chose (for load's messages)


def verified(tags_dir: str, tag: str) -> Optional[Verdict]:
    """The verdict of the tag --resume chose in this process (rank 0), or None."""
    return _verdicts.get((tags_dir, tag))


def _choose(root: str, resume: str, level: str) -> Optional[Tuple[str, str]]:
    """The verified (directory of tags, tag) to resume from, or None; ResumeRefused with the reason."""
    if resume in (None, "", "none"):
        return None
    if resume == "auto":
        pointer = read_pointer(root)
        if pointer is not None and step_of(pointer) is None:
            # A pointer elsewhere would load files this run did not write (and DeepSpeed's files are pickles).
            raise ResumeRefused(
                f"--resume: {os.path.join(root, LATEST_FILE)} holds {pointer[:200]!r}, not a checkpoint tag of this "
                f"run (step<N>), refused; complete checkpoints here: {', '.join(complete_tags(root)) or '(none)'}. "
                f"Pass one with --resume step<N>, or delete the file")
        verdict, damaged = newest_intact(root, level)
        for bad in damaged:
            logger.warning("--resume: skipping %s", describe(bad))
        if verdict is None:
            if damaged:
                raise ResumeRefused(f"--resume: no intact checkpoint in {root}: "
                                    + "; ".join(describe(bad) for bad in damaged)
                                    + ". Give a new --output_dir to start afresh")
            return None
        if verdict.intact is None:
            logger.warning("--resume: %s was written before checkpoints carried a manifest: not verified", verdict.path)
        elif damaged:
            logger.warning("--resume: resuming from %s, the newest intact checkpoint", verdict.path)
        _verdicts[(root, verdict.tag)] = verdict
        return root, verdict.tag
    tags_dir, tag = find_resume_checkpoint(root, resume)
    verdict = verify_tag(tags_dir, tag, level)
    if verdict.intact is False:
        other, _ = newest_intact(tags_dir, level, skip=tag)
        hint = (f"the newest intact checkpoint there is {other.tag}: pass --resume "
                f"{other.tag if tags_dir == root else other.path}") if other else "no other checkpoint there is intact"
        raise ResumeRefused(f"--resume {resume}: {describe(verdict)}; {hint}")
    if verdict.intact is None:
        logger.warning("--resume: %s was written before checkpoints carried a manifest: not verified", verdict.path)
    _verdicts[(tags_dir, tag)] = verdict
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
                chosen = _choose(root, resume, level)
                answer = ("ok", chosen, _verdicts.get(chosen) if chosen else None)
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
    if answer[1] is not None and answer[2] is not None:
        _verdicts[answer[1]] = answer[2]  # every rank's load message says what rank 0 found
    _chosen[key] = answer[1]
    return answer[1]


def run_identity_of(tags_dir: str, tag: str) -> Optional[dict]:
    """read_run_identity, with a damaged file a ConfigError that names the newest intact tag to resume from."""
    try:
        return read_run_identity(os.path.join(tags_dir, tag))
    except ResumeRefused as exc:
        other, _ = newest_intact(tags_dir, "size", skip=tag)
        raise _config_error(f"--resume: {exc}; " + (f"pass --resume {other.tag} (the newest intact checkpoint)"
                                                     if other else "no other checkpoint there is intact")) from None

