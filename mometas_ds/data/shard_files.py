"""A shard directory's files as other processes see them: its build lock (``fcntl.flock`` on ``<key>.lock``
beside it, so that concurrent jobs on one cache split the missing shards; a lock dies with its process), the
stamp of its ``shard.json`` (has another process published it meanwhile?) and the check of its files against
the sizes and xxh3_64 checksums ``shard.json`` records (the checkpoints' scheme). No torch import but in
``check_shard``, which only the parent process calls."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from typing import Iterator, List, Optional, Tuple

from mometas_ds.data.report import CorpusReport

ROWS_FILE = "rows.arrow"
REPORT_FILE = "shard.json"  # written last: a shard directory without it is incomplete
LOCK_SUFFIX = ".lock"  # cache_dir/shards/<key>.lock: held (flock) by the process building <key>
FILES_FIELD = "files"  # in shard.json: {"rows.arrow": {"size": bytes, "xxh3_64": hex}}


def report_stamp(shard_dir: str) -> Optional[tuple]:
    """What identifies the shard.json on disk now (None: not there), to tell whether another process
    published the shard since it was looked at."""
    try:
        st = os.stat(os.path.join(shard_dir, REPORT_FILE))
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


@contextlib.contextmanager
def shard_lock(shard_dir: str, wait: bool) -> Iterator[bool]:
    """Hold the shard's build lock (``<shard_dir>.lock``, removed by its holder when done); yields False
    (holding nothing) when ``wait`` is False and another process holds it."""
    path = shard_dir.rstrip(os.sep) + LOCK_SUFFIX
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        try:  # the previous holder may have removed the file after this process opened it: lock the new one
            held = os.fstat(fd)
            now = os.stat(path)
            if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield True
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)
        os.close(fd)  # releases the lock


def check_shard(shard_dir: str, full: bool) -> Tuple[Optional[dict], List[str]]:
    """(shard.json's content or None when the shard is not built, problems found): the size of each file it
    records always, their xxh3_64 checksums when ``full``. No problem means intact."""
    from mometas_ds.checkpoint.layout import HASH, file_digest  # imports torch: only the parent process checks

    path = os.path.join(shard_dir, REPORT_FILE)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None, []
    except OSError as err:
        return {}, [f"{path}: unreadable ({err.strerror or err})"]
    try:
        stored = json.loads(data.decode("utf-8"))
        CorpusReport.from_dict(stored["report"])
        int(stored["rows"])
    except Exception:  # anything malformed is damage
        return {}, [f"{path}: not a shard report (truncated or overwritten)"]
    files = stored.get(FILES_FIELD)
    if not isinstance(files, dict) or ROWS_FILE not in files:
        return stored, [f"{path}: records no checksums (written before shards carried them)"]
    problems = []
    for name, record in sorted(files.items()):
        file = os.path.join(shard_dir, name)
        if os.path.basename(name) != name or not isinstance(record, dict):
            problems.append(f"{path}: a malformed entry {name!r}")
        elif not os.path.isfile(file):
            problems.append(f"{file}: missing")
        elif os.path.getsize(file) != record.get("size"):
            problems.append(f"{file}: {os.path.getsize(file)} bytes, {REPORT_FILE} records {record.get('size')}")
        elif full and file_digest(file) != record.get(HASH):
            problems.append(f"{file}: {HASH} checksum differs from the one {REPORT_FILE} records (same size: "
                            f"overwritten or corrupted in place)")
    return stored, problems
