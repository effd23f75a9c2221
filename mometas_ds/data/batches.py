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

    ``seq_len`` (tokens per row; read from the first row when not given) is saved with the position, so a
    resume with another ``--seq_len`` (another packing of the corpus) can carry the position in tokens.
    """

    def __init__(self, dataset: datasets.Dataset, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, seq_len: Optional[int] = None):
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
        self.seq_len = int(seq_len) if seq_len is not None else len(self._rows[0]["input_ids"])
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
        # seq_len and tokens (consumed in this epoch): what a resume at another --seq_len needs (carry_position).
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed, "num_rows": self.num_rows,
                "batch_size": self.batch_size, "world_size": self.world_size, "seq_len": self.seq_len,
                "tokens": self.offset * self.global_batch_size * self.seq_len}

    def load_state_dict(self, state: dict, saved_seq_len: Optional[int] = None) -> None:
        """Continue where ``state`` left off (any rank's state: they hold the same global position).

        With another batch size or world size the position is carried over in samples (exact when the
        global batch size is unchanged). With another ``seq_len`` the rows are another packing of the
        corpus, so it is carried in tokens (carry_position). ``saved_seq_len``: the seq_len of a state saved
        before states recorded it (the run identity's --seq_len); without either it is taken as this one."""
        saved_seq = state.get("seq_len", saved_seq_len if saved_seq_len is not None else self.seq_len)
        if state["seed"] != self.seed or (saved_seq == self.seq_len and state["num_rows"] != self.num_rows):
            raise ValueError(
                f"cannot resume the data order: the saved position is for {state['num_rows']} training sequences "
                f"with seed {state['seed']}, this run has {self.num_rows} with seed {self.seed} "
                f"(did --train_files or --seed change?)"
            )
        epoch, offset = carry_position(state, saved_seq, self.num_rows, self.seq_len, self.global_batch_size)
        if offset >= self.steps_per_epoch:  # the new packing's epoch is shorter than the share consumed: next one
            epoch, offset = epoch + 1, 0
        self.epoch, self.offset, self._order = epoch, offset, None


def carry_position(state: dict, saved_seq_len: int, num_rows: int, seq_len: int, global_batch_size: int):
    """(epoch, offset in global batches) of a saved data position, in a run with ``num_rows`` rows of
    ``seq_len`` tokens and ``global_batch_size`` rows per optimizer step.

    Same seq_len: the samples consumed in the epoch carry over (exact when the global batch size is
    unchanged; else rounded down to a whole global batch, with a warning). Another seq_len: the corpus
    was packed again, so the rows are not the same ones; the share of the epoch's tokens consumed carries
    over: ``tokens / (saved rows x saved seq_len)`` of this epoch's ``num_rows x seq_len`` tokens, i.e.
    ``tokens / seq_len`` samples when the corpus packs to the same number of tokens. The epoch number is
    kept; the order within it is this packing's own seeded permutation."""
    epoch, offset = int(state["epoch"]), int(state["offset"])
    saved_global = int(state["batch_size"]) * int(state["world_size"])
    consumed = offset * saved_global
    if saved_seq_len == seq_len:
        if saved_global == global_batch_size:
            return epoch, offset
        new_offset = consumed // global_batch_size
        if consumed % global_batch_size:
            logger.warning("global batch size changed from %d to %d: resuming the data order at sample %d "
                           "of epoch %d instead of %d", saved_global, global_batch_size,
                           new_offset * global_batch_size, epoch, consumed)
        return epoch, new_offset
    tokens = int(state.get("tokens", consumed * saved_seq_len))  # states written before "tokens": rows x seq_len
    saved_rows = int(state["num_rows"])
    samples = tokens * num_rows // (saved_rows * saved_seq_len)
    new_offset = samples // global_batch_size
    logger.warning("--seq_len changed from %d to %d: the corpus is another packing (%d rows, was %d), so the data "
                   "position is carried in tokens: %d of the %d tokens of epoch %d were consumed -> resuming at "
                   "sample %d of %d of the new packing's epoch %d", saved_seq_len, seq_len, num_rows, saved_rows,
                   tokens, saved_rows * saved_seq_len, epoch, new_offset * global_batch_size, num_rows, epoch)
    return epoch, new_offset


def rows_as_tensors(dataset: datasets.Dataset) -> Dict[str, torch.Tensor]:
    """Every row of ``dataset`` as int64 tensors [rows, seq_len], read from Arrow once.

    For the meta-validation split: it is small (2 x --meta_batch_size sequences) and each sampler
    update indexes it chunk by chunk, which through Python lists costs milliseconds per chunk.
    """
    return _to_batch(dataset.with_format("numpy", columns=["input_ids", "attention_mask"])[:])
