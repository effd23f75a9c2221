"""Each rank's seeded, resumable shard of micro-batches, and rows as tensors."""
from __future__ import annotations

import logging
from typing import Dict, Optional

import datasets
import numpy as np
import torch

from mometas_ds.errors import DataError

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- batches

def _to_batch(rows: dict) -> Dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.asarray(rows[name], dtype=np.int64))
            for name in ("input_ids", "attention_mask")}


class ShardedBatches:
    """Infinite, seeded, resumable micro-batches of one rank's shard.

    Epoch ``e`` shuffles all rows with ``seed`` and ``e``; global step ``k`` takes permuted rows
    ``[k*G, (k+1)*G)`` with ``G = batch_size * world_size``, and rank ``r`` gets the ``r``-th block of
    ``batch_size`` of them. Ranks thus read disjoint rows, the rows past the last full global batch are
    dropped (equal step counts on every rank), and the data order depends only on the global batch size.
    """

    def __init__(self, dataset: datasets.Dataset, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0):
        for name, value, minimum in (("batch_size", batch_size, 1), ("world_size", world_size, 1), ("rank", rank, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if rank >= world_size:
            raise ValueError(f"rank {rank} is not < world_size {world_size}")
        self.num_rows = len(dataset)
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.global_batch_size = batch_size * world_size
        self.steps_per_epoch = self.num_rows // self.global_batch_size
        if self.steps_per_epoch == 0:
            raise DataError(
                f"the training split has {self.num_rows} sequence(s), fewer than one global batch of "
                f"{self.global_batch_size} (micro batch size {batch_size} x {world_size} rank(s)): add data or "
                f"lower the micro batch size"
            )
        self._rows = dataset.with_format("numpy", columns=["input_ids", "attention_mask"])
        self.epoch = 0
        self.offset = 0  # batches already served in this epoch
        self._order: Optional[np.ndarray] = None

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            self._order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_rows)
        return self._order

    def __iter__(self) -> "ShardedBatches":
        return self

    def __next__(self) -> Dict[str, torch.Tensor]:
        if self.offset >= self.steps_per_epoch:
            self.epoch, self.offset, self._order = self.epoch + 1, 0, None
        start = self.offset * self.global_batch_size + self.rank * self.batch_size
        indices = self._epoch_order()[start: start + self.batch_size]
        self.offset += 1
        return _to_batch(self._rows[indices.tolist()])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed, "num_rows": self.num_rows,
                "batch_size": self.batch_size, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        """Continue where ``state`` left off. With another batch size or world size the position is
        carried over in samples (exact when the global batch size is unchanged)."""
        if state["num_rows"] != self.num_rows or state["seed"] != self.seed:
            raise ValueError(
                f"cannot resume the data order: the saved position is for {state['num_rows']} training sequences "
                f"with seed {state['seed']}, this run has {self.num_rows} with seed {self.seed} "
                f"(did --train_files, --seq_len or --seed change?)"
            )
        epoch, offset = int(state["epoch"]), int(state["offset"])
        saved_global = int(state["batch_size"]) * int(state["world_size"])
        if saved_global != self.global_batch_size:
            consumed = offset * saved_global
            offset = consumed // self.global_batch_size
            if consumed % self.global_batch_size:
                logger.warning("global batch size changed from %d to %d: resuming the data order at sample %d "
                               "of epoch %d instead of %d", saved_global, self.global_batch_size,
                               offset * self.global_batch_size, epoch, consumed)
        self.epoch, self.offset, self._order = epoch, offset, None


def rows_as_tensors(dataset: datasets.Dataset) -> Dict[str, torch.Tensor]:
    """Every row of ``dataset`` as int64 tensors [rows, seq_len], read from Arrow once.

    For the meta-validation split: it is small (2 x --meta_batch_size sequences) and each sampler
    update indexes it chunk by chunk, which through Python lists costs milliseconds per chunk.
    """
    return _to_batch(dataset.with_format("numpy", columns=["input_ids", "attention_mask"])[:])
