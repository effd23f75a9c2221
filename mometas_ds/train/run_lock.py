"""One writer per run directory: rank 0 of a pre-training run holds an OS lock (``fcntl.flock``) on
``--output_dir/run.lock`` for the run's life, so a second run on the same directory (a SLURM double submit, a
requeue that overlaps the job it replaces) stops before any work with exit 2, naming the run that holds it.

The lock is the kernel's, not the file's: it is released when the holding process ends, however it ends (kill -9,
OOM, node crash on a local disk), so a run restarted after a kill starts at once; the file stays and only says who
held it last. Processes forked by the run (data workers) do not keep it: the forked copy of the descriptor is closed
in the child, so a worker outliving a killed run does not block its restart. On a filesystem without flock
support the run goes on without the lock, with a warning.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
from typing import Dict, Optional

from mometas_ds.errors import ConfigError

LOCK_FILE = "run.lock"
logger = logging.getLogger("mometas_ds")

_held: Dict[str, int] = {}  # lock file (real path) -> the descriptor holding it, for this process's life


def _close_in_child() -> None:
    # A fork shares the open file description, so the child would keep the lock after the run dies: close the
    # child's copy only (closing does not release the parent's lock; LOCK_UN would).
    for fd in _held.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)


def holder_of(path: str) -> str:
    """Who a lock file says holds it: "host H, pid P, started T", or what it holds."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        return f"unknown: {path} is unreadable ({exc.strerror})"
    try:
        info = json.loads(text)
        return f"host {info['host']}, pid {info['pid']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return f"unknown ({path} holds {text[:200]!r})"


def acquire(output_dir: str) -> Optional[str]:
    """Take the run lock of ``output_dir`` (which exists) for the life of this process; its path, or None where the
    filesystem has no locks. ConfigError naming the holder when another process holds it. Idempotent."""
    path = os.path.join(output_dir, LOCK_FILE)
    key = os.path.realpath(path)
    if key in _held:
        return path
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(f"--output_dir {output_dir}: cannot open the run lock {path} ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ConfigError(
                f"--output_dir {output_dir}: another run is writing to it ({holder_of(path)}; lock {path}). Two runs "
                "on one directory would mix their logs and delete each other's checkpoints: wait for that run to "
                "end or stop it, or give another --output_dir. (A run that died holds nothing: its lock is freed "
                "with its process.)") from None
        logger.warning("--output_dir %s: no lock on this filesystem (%s): nothing stops a second run from writing "
                       "to the same directory", output_dir, exc.strerror)
        return None
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    info = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": started}) + "\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, info.encode("utf-8"), 0)
    _held[key] = fd
    return path


def release(output_dir: str) -> None:
    """Give the lock back before the process ends (tests; a run holds it until it exits)."""
    fd = _held.pop(os.path.realpath(os.path.join(output_dir, LOCK_FILE)), None)
    if fd is not None:
        os.close(fd)
