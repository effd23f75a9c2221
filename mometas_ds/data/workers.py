"""One function over many items in spawned worker processes (the shard builds and the pre-scan).

concurrent.futures, not multiprocessing.Pool: a Pool whose worker is killed (the OOM killer, a job limit)
loses that item and waits for it forever, so a preparation would hang to the end of its job; here the run
stops at once with an error saying what to do, and what was finished stays (shards are published whole)."""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterator, Sequence, Tuple

from mometas_ds.errors import DataError


def run_in_processes(func: Callable, items: Sequence, processes: int, what: str, initializer=None,
                     initargs: tuple = ()) -> Iterator[Tuple[int, object]]:
    """Yield ``(index, func(items[index]))`` as each finishes, in ``processes`` spawned processes (spawn,
    not fork: the caller may hold threads, a tokenizer's or a process group's, that a fork would copy
    mid-state). An exception in ``func`` is raised here; a worker that dies raises DataError."""
    done = 0
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"), initializer=initializer,
                             initargs=initargs) as pool:
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
