"""Micro-batches read ahead in a background thread while the current step runs (``--prefetch_batches``).

``PrefetchedBatches(batches, depth)`` hands out exactly the batches of ``batches`` (a resumable iterator such
as ``ShardedBatches``), in the same order, while a thread keeps up to ``depth`` of the next ones read (and, for
a CUDA run, in pinned memory, so the copy to the device does not block the host). Its ``state_dict()`` is the
position after the batches it has handed out, not after the ones read ahead: a checkpoint resumes at the
first batch the run has not trained on, exactly as without prefetching.

Hand-written rather than a torch DataLoader: its read-ahead needs worker processes (forks of a rank that
holds a process group and a DeepSpeed engine), and its iterator cannot say which batches were consumed.
"""
from __future__ import annotations

import queue
import threading
import weakref
from typing import Dict, Optional

import torch

_POLL_S = 0.1  # how often a blocked thread looks whether it should stop


def _read_ahead(batches, pin_device: Optional[torch.device], out: "queue.Queue", stopping: threading.Event) -> None:
    """The thread: (batch, position after it) into ``out``, in order; an error or the end goes in as ``(None, exc)``."""
    def put(item) -> bool:
        while not stopping.is_set():
            try:
                out.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    try:
        if pin_device is not None:
            torch.cuda.set_device(pin_device)  # pinned buffers belong to this rank's GPU (as DataLoader's pin thread)
        while not stopping.is_set():
            batch = next(batches)
            if pin_device is not None:
                batch = {name: column.pin_memory() for name, column in batch.items()}
            if not put((batch, batches.state_dict())):
                return
    except BaseException as exc:  # StopIteration and read errors reach the consumer, raised by __next__
        put((None, exc))


def _stop(stopping: threading.Event, thread: threading.Thread) -> None:
    stopping.set()
    thread.join()


class PrefetchedBatches:
    """``batches`` read up to ``depth`` micro-batches ahead in a thread; the same batches, the same resume."""

    def __init__(self, batches, depth: int, pin_device: Optional[torch.device] = None):
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"prefetch depth must be an int >= 1, got {depth!r}")
        self.batches, self.depth, self.pin_device = batches, depth, pin_device
        self._position = batches.state_dict()  # after the last batch handed out
        self._queue: Optional[queue.Queue] = None
        self._thread: Optional[threading.Thread] = None
        self._finalizer = None

    def __iter__(self) -> "PrefetchedBatches":
        return self

    def _start(self) -> None:
        # Started by the first __next__, not here: a resume's load_state_dict comes first and reads nothing twice.
        self._queue, stopping = queue.Queue(maxsize=self.depth), threading.Event()
        self._thread = threading.Thread(target=_read_ahead, args=(self.batches, self.pin_device, self._queue, stopping),
                                        name="mometas-prefetch", daemon=True)
        self._thread.start()
        # Ends the thread when this object goes away or at interpreter exit; the thread holds no reference to it.
        self._finalizer = weakref.finalize(self, _stop, stopping, self._thread)

    def __next__(self) -> Dict[str, torch.Tensor]:
        if self._thread is None:
            self._start()
        while True:
            try:
                batch, position = self._queue.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the prefetch thread ended without a batch or an error") from None
        if batch is None:
            self.close()  # a later __next__ starts over from the position consumed so far
            raise position
        self._position = position
        return batch

    @property
    def running(self) -> bool:
        """Whether the read-ahead thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Stop the thread and put ``batches`` back at the consumed position (the read-ahead ones are dropped)."""
        if self._thread is None:
            return
        self._finalizer()  # joins the thread: ``batches`` is ours again
        self._queue = self._thread = self._finalizer = None
        self.batches.load_state_dict(self._position)

    def state_dict(self) -> dict:
        return dict(self._position)

    def load_state_dict(self, state: dict) -> None:
        self.close()
        self.batches.load_state_dict(state)
        self._position = self.batches.state_dict()


def prefetched(batches, depth: int, device: Optional[torch.device] = None):
    """``batches`` read ``depth`` ahead (``PrefetchedBatches``, pinned for a CUDA ``device``), or ``batches``
    itself for ``depth == 0`` (``--prefetch_batches``)."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"--prefetch_batches must be an int >= 0, got {depth!r}")
    if depth == 0:
        return batches
    pin = device is not None and device.type == "cuda"
    return PrefetchedBatches(batches, depth, pin_device=device if pin else None)
