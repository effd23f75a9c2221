"""Writing the run's files without tracebacks and without leaving half of anything behind.

- ``check_writable_dir``: the early probe of --output_dir / --cache_dir (a file in the way, a
  read-only mount, a full disk), before any work.
- ``disk_errors``: an OSError from a write deep inside a library (HF datasets wraps a full disk in
  DatasetGenerationError) becomes a ConfigError naming the flag, the file and what to do.
- ``write_dir_atomically``: a directory (the HF export) is written under a temporary name next to
  it and renamed into place, so it is whole or absent; the temporary one is removed on failure.
- ``check_writable``: the same probe, for --output_dir and a folder under it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
from typing import Callable, Optional

from mometas_ds.errors import ConfigError

# errno values that mean "this place cannot take the write", as opposed to a bug.
DISK_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
               errno.EFBIG: "a file-size limit was reached", errno.EROFS: "the file system is read-only",
               errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
               errno.ENOTDIR: "a file is in the way of a directory", errno.EEXIST: "a file is in the way"}


def describe(exc: OSError) -> str:
    what = DISK_ERRNOS.get(exc.errno, exc.strerror or type(exc).__name__)
    where = exc.filename if exc.filename else None
    return f"{what} ({where})" if where else what


def check_writable_dir(path: str, flag: str) -> None:
    """Create ``path`` and write a probe file in it, or raise ConfigError naming ``flag``."""
    probe = os.path.join(path, f".write_test.{socket.gethostname()}.{os.getpid()}")
    try:
        os.makedirs(path, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
            f.flush()
            os.fsync(f.fileno())
        os.remove(probe)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.remove(probe)
        raise ConfigError(f"{flag}: {path} cannot be written: {describe(exc)}; give a writable directory "
                          f"with {flag}") from None


def disk_error_in(exc: BaseException) -> Optional[OSError]:
    """The OSError of a write failure (disk full, read-only...) in ``exc`` or the exceptions it wraps."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            return exc
        # safetensors (Rust) reports an I/O error as text: "I/O error: No space left on device (os error 28)".
        found = re.search(r"\(os error (\d+)\)|Os \{ code: (\d+)", str(exc))
        code = int(found.group(1) or found.group(2)) if found else None
        if code in DISK_ERRNOS:
            return OSError(code, os.strerror(code))
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def disk_errors(flag: str, path: str, what_to_do: str = ""):
    """Turn a write failure under ``path`` into a ConfigError naming ``flag`` and the file."""
    try:
        yield
    except Exception as exc:
        cause = disk_error_in(exc)
        if cause is None:
            raise
        raise ConfigError(f"{flag}: writing {path} failed: {describe(cause)}. "
                          f"{what_to_do or f'Free some space or give another {flag}, then run again.'}") from None


def write_dir_atomically(out_dir: str, write: Callable[[str], None], flag: str = "--output_dir",
                         what_to_do: str = "") -> None:
    """``write(tmp_dir)`` then rename tmp_dir to ``out_dir`` (replacing an earlier one), so ``out_dir``
    is either the earlier whole directory, the new whole one, or absent; never half-written."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    tmp = os.path.join(parent, f"{os.path.basename(out_dir)}.tmp-{os.getpid()}")
    old = os.path.join(parent, f"{os.path.basename(out_dir)}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # our own (same pid) leftover only
    try:
        with disk_errors(flag, out_dir, what_to_do):
            write(tmp)
            _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # A directory cannot replace a non-empty one in one rename: move the earlier export aside first.
    if os.path.exists(out_dir):
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(root: str) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames + ["."]:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def export_retry_hint(cfg, step: int) -> str:
    """What to do after a failed HF export: the final checkpoint is complete, a resume re-exports."""
    return (f"The checkpoint of step {step} is complete and {os.path.join(cfg.output_dir, 'hf_model')} was left as "
            "it was: free some space, then run the same command with --resume (it has nothing left to train and "
            "writes the export again)")


def check_writable(output_dir: str, sub: str = "") -> None:
    """Create output_dir[/sub] and write a probe file in it, or stop with a ConfigError naming --output_dir."""
    path = os.path.join(output_dir, sub) if sub else output_dir
    probe = os.path.join(path, f".write_test.{socket.gethostname()}.{os.getpid()}")
    try:
        os.makedirs(path, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as exc:
        raise ConfigError(f"--output_dir: {path} cannot be written ({exc})") from exc
