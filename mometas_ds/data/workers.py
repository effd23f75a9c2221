"""One function over many items in spawned worker processes (the shard builds and the pre-scan).

concurrent.futures, not multiprocessing.Pool: a Pool whose worker is killed (the OOM killer, a job limit)
loses that item and waits for it forever, so a preparation would hang to the end of its job; here the run
stops at once with an error saying what to do, and what was finished stays (shards are published whole).

A worker exits when its parent dies (kill -9 of mometas-prepare, a job's step killed): on Linux the kernel
sends it SIGKILL (prctl PR_SET_PDEATHSIG), elsewhere a thread of it watches the parent's pid; so no worker
is left behind, blocked on the parent's queue."""
from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, as_completed, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Iterator, Sequence, Tuple

from mometas_ds.errors import DataError


def run_in_processes(func: Callable, items: Sequence, processes: int, what: str, initializer=None,
                     initargs: tuple = ()) -> Iterator[Tuple[int, object]]:
    """Yield ``(index, func(items[index]))`` as each finishes, in ``processes`` spawned processes (spawn,
    not fork: the caller may hold threads, a tokenizer's or a process group's, that a fork would copy
    mid-state). An exception in ``func`` is raised here; a worker that dies raises DataError."""
    done = 0
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                             initargs=(os.getpid(), initializer, initargs)) as pool:
        futures = {pool.submit(func, item): i for i, item in enumerate(items)}
        try:
            for future in as_completed(futures):
                result = future.result()
                done += 1
                yield futures[future], result
        except BrokenProcessPool:
            raise DataError(
                f"a {what} process died (killed by a signal: out of memory, or a job limit?) after {done} of "
                f"{len(items)} item(s) finished: what was finished is kept, run the same command again to do the "
                f"rest (fewer --num_proc processes need less memory)") from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # on an error, the queued items are not started


def run_as_claimed(func: Callable, items: Iterable, processes: int, what: str, total: int, initializer=None,
                   initargs: tuple = ()) -> Iterator[Tuple[object, object]]:
    """Yield ``(item, func(item))`` as each finishes, in ``processes`` spawned processes, taking the next item
    from ``items`` only when a process is free (so an item can be claimed, e.g. locked, just before it is
    started). ``total``: the most items there can be, for the message when a worker dies. Errors as
    run_in_processes."""
    done = 0
    items = iter(items)
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                             initargs=(os.getpid(), initializer, initargs)) as pool:
        running = {}
        try:
            while True:
                for item in items:
                    running[pool.submit(func, item)] = item
                    if len(running) >= processes:
                        break
                if not running:
                    return
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    result = future.result()
                    done += 1
                    yield running.pop(future), result
        except BrokenProcessPool:
            raise DataError(
                f"a {what} process died (killed by a signal: out of memory, or a job limit?) after {done} of "
                f"{total} item(s) finished: what was finished is kept, run the same command again to do the "
                f"rest (fewer --num_proc processes need less memory)") from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_WATCH_SECONDS = 1.0


def _start_worker(parent: int, initializer, initargs: tuple) -> None:
    """A worker's first act: die with its parent, then the caller's own initializer."""
    if not _kill_me_with_parent():
        threading.Thread(target=_watch_parent, args=(parent,), name="parent-watchdog", daemon=True).start()
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)
    if initializer is not None:
        initializer(*initargs)


def _kill_me_with_parent() -> bool:
    """Ask the kernel for SIGKILL when the parent dies (Linux); False where that cannot be had.

    The signal comes when the thread that started this process ends: run_in_processes starts the workers
    from the caller's thread, which waits in it until the pool is shut down."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_WATCH_SECONDS)
    os._exit(1)
