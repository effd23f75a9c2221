"""The ranks of a run and how they agree: rank 0's one-off work (tokenizer, corpus cache, universal checkpoint,
HF export) runs while the others wait in a setup group of their own, and its failure stops every rank."""
from __future__ import annotations

import datetime
from typing import Callable, Optional, TypeVar

import torch.distributed as dist

from mometas_ds.errors import ConfigError, DataError

T = TypeVar("T")


class Ranks:
    def __init__(self, rank: int, world_size: int, setup_timeout_minutes: Optional[float] = None):
        self.rank, self.world_size = rank, world_size
        # Rank 0's one-off work (tokenizing a large corpus: hours) must not run into --dist_timeout_minutes,
        # which is meant to catch a dead or hung rank during training: the others wait in their own group.
        self.setup_group = None
        if world_size > 1:
            self.setup_group = dist.new_group(
                backend="gloo", timeout=datetime.timedelta(minutes=setup_timeout_minutes))

    def rank0_first(self, work: Callable[[], T]) -> Optional[T]:
        """Run ``work`` on rank 0 while the others wait; if it fails, every rank raises its error
        (the others would otherwise wait at the barrier until the collective timeout). Rank 0 gets its result."""
        result, error = None, None
        if self.rank == 0:
            try:
                result = work()
            except (ConfigError, DataError) as exc:
                error = exc
        if self.world_size > 1:
            box = [None if error is None else (type(error).__name__, str(error))]
            dist.broadcast_object_list(box, src=0, group=self.setup_group)
            if box[0] is not None and error is None:
                error = (DataError if box[0][0] == "DataError" else ConfigError)(box[0][1])
        if error is not None:
            raise error
        return result

    def all_gather(self, mine):
        """Every rank's ``mine``, in rank order."""
        if self.world_size == 1:
            return [mine]
        per_rank = [None] * self.world_size
        dist.all_gather_object(per_rank, mine)
        return per_rank

    @staticmethod
    def barrier() -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier()
