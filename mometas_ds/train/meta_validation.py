"""The meta-validation, the core of MOMETAS: every ``interval`` steps each objective's loss is measured on a
held-out batch, split across ranks and all-reduced, and the sampler's policy is updated from it.

Every rank computes the same update: the rows measured depend only on (seed, update, objective),
each rank takes its own slice of them, and the losses are summed over ranks before the update.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import torch

from mometas_ds.samplers import meta_update_distributed, shard_range
from mometas_ds.train.state import seed_for


def meta_chunks(rows: torch.Tensor, size: int, min_rows: int) -> List[torch.Tensor]:
    """``rows`` in chunks of ``size``; a last chunk under ``min_rows`` joins the one before it."""
    chunks = list(torch.split(rows, size))
    if len(chunks) > 1 and len(chunks[-1]) < min_rows:
        chunks[-2:] = [torch.cat(chunks[-2:])]
    return chunks


def fixed_meta_set(setting: str, sampler) -> bool:
    """Whether every update is measured on one meta-validation batch: --meta_fixed_set on/off, or with auto what
    the sampler asks (``Sampler.fixed_meta_set``)."""
    return {"on": True, "off": False}.get(setting, bool(getattr(sampler, "fixed_meta_set", False)))


class MetaValidation:
    """Measures the objectives on the meta-validation split and updates a sampler from the measurement.

    ``meta_rows`` holds the split as tensors (``data.rows_as_tensors``); ``corrupt(name, clean,
    generator)`` moves clean rows to the device and corrupts them for objective ``name``.
    """

    def __init__(self, engine, objectives: Dict[str, object], meta_rows: Dict[str, torch.Tensor], corrupt: Callable,
                 *, device: torch.device, seed: int, meta_batch_size: int, micro_batch: int, rank: int = 0,
                 world_size: int = 1, fixed_set: bool = False):
        self.engine, self.objectives, self.meta_rows, self.corrupt = engine, objectives, meta_rows, corrupt
        self.objective_names = tuple(objectives)  # the mapping's order (the run's --objectives)
        self.device, self.seed = device, seed
        self.meta_batch_size, self.micro_batch = meta_batch_size, micro_batch
        self.rank, self.world_size = rank, world_size
        self.fixed_set = fixed_set  # --meta_fixed_set: one batch (draw 0) for every update

    def update(self, sampler, num_updates: int) -> dict:
        """The sampler's update number ``num_updates``: measured and all-reduced when the sampler learns from
        meta-validation losses; a rule-based one only clears its rollout (probabilities unchanged)."""
        if not sampler.needs_meta_validation:
            return sampler.update()
        draw_id = 0 if self.fixed_set else num_updates
        loss_sums, counts = self.measure(draw_id)
        return meta_update_distributed(sampler, loss_sums, counts, device=self.device)

    @torch.no_grad()
    def measure(self, draw_id: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """This rank's per-objective loss sums and sequence counts on its shard of the meta-validation batch.

        Each rank evaluates meta_batch_size / world_size sequences per objective (the
        published code evaluates the whole batch on every rank).
        """
        meta = self.meta_rows
        lo, hi = shard_range(self.meta_batch_size, self.rank, self.world_size)
        n = len(self.objective_names)
        # Summed on the device: one transfer per update instead of a host sync per chunk.
        loss_sums = torch.zeros(n, dtype=torch.float64, device=self.device)
        counts = torch.zeros(n, dtype=torch.float64)
        self.engine.eval()
        try:
            for k, name in enumerate(self.objective_names):
                # The same rows on every rank for a given update; each rank takes its own slice.
                rows_gen = torch.Generator().manual_seed(seed_for(self.seed, 7, draw_id, k))
                rows = torch.randperm(len(meta["input_ids"]), generator=rows_gen)[: self.meta_batch_size][lo:hi]
                generator = torch.Generator(device=self.device)
                generator.manual_seed(seed_for(self.seed, 11, draw_id, k, self.rank))
                objective = self.objectives[name]
                for chunk_rows in meta_chunks(rows, self.micro_batch, objective.min_rows):
                    clean = {key: column[chunk_rows] for key, column in meta.items()}
                    batch = self.corrupt(name, clean, generator)
                    if objective.meta_eval_with_dropout:
                        loss = self.forward_with_dropout(batch, name, seed_for(self.seed, 13, draw_id, k, self.rank))
                    else:
                        loss = self.engine(batch, name)["loss"]
                    loss_sums[k] += loss.detach().double() * len(clean["input_ids"])
                    counts[k] += len(clean["input_ids"])
        finally:
            self.engine.train()
        return loss_sums.cpu(), counts

    def forward_with_dropout(self, batch, name: str, seed: int) -> torch.Tensor:
        """A train-mode forward (dropout on) under no_grad, on its own seeded random stream, so
        the training run's random state is the same as if no meta-validation had run."""
        devices = [] if self.device.type == "cpu" else [self.device]
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            torch.manual_seed(seed)
            self.engine.train()
            try:
                return self.engine(batch, name)["loss"]
            finally:
                self.engine.eval()
