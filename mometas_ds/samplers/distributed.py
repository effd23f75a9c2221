"""The meta-validation update across ranks: shard the batch, average the losses, update on rank 0, share.

Each rank measures every objective's loss on its own shard of the meta-validation batch
(``shard_range``), so the cost per rank falls as ranks grow. One all-reduce sums the per-rank
loss sums and sequence counts; rank 0 runs ``sampler.update`` on the averaged losses; a second
all-reduce, to which the other ranks contribute zeros, hands rank 0's new state (and the
numbers of its ``info``) to every rank. Training steps need no communication at all: draws are
a pure function of (seed, step, state), and the state is now equal everywhere.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.distributed as dist

from mometas_ds.samplers.base import Sampler

_INFO_SCALARS = ("reward", "advantage", "policy_loss", "skipped")


def shard_range(total: int, rank: int, world: int) -> Tuple[int, int]:
    """[start, end) of ``rank``'s contiguous share of ``total`` items; shares differ in size by at most one."""
    for name, value in (("total", total), ("rank", rank), ("world", world)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"shard_range: {name} must be an integer, got {value!r}")
    if world < 1:
        raise ValueError(f"shard_range: world must be >= 1, got {world}")
    if not 0 <= rank < world:
        raise ValueError(f"shard_range: rank must lie in [0, {world}), got {rank}")
    if total < 0:
        raise ValueError(f"shard_range: total must be >= 0, got {total}")
    base, extra = divmod(total, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def meta_update_distributed(sampler: Sampler, local_loss_sums, local_counts, *, group=None,
                            device: Optional[torch.device] = None) -> Dict[str, object]:
    """Run ``sampler.update`` on the losses averaged over all ranks; every rank returns the same info.

    local_loss_sums[i]: this rank's summed per-sequence loss of objective i over its shard.
    local_counts[i]:    how many sequences went into that sum (0 is fine for a rank with an empty shard).
    An objective no rank measured gets a NaN loss, so the update is skipped and reported.
    Without an initialised process group (or with one rank) this is a plain ``sampler.update``.
    Collective tensors live on ``device``: by default CUDA for NCCL, CPU otherwise.
    """
    n = sampler.num_objectives
    sums = _as_vector("local_loss_sums", local_loss_sums, n)
    counts = _as_vector("local_counts", local_counts, n)
    if bool((counts < 0).any()) or not bool(torch.isfinite(counts).all()):
        raise ValueError(f"meta_update_distributed: local_counts must be finite and >= 0, got {counts.tolist()}")

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return sampler.update(_average(sums, counts))

    device = _collective_device(group, device)
    totals = torch.cat([sums, counts]).to(device)
    dist.all_reduce(totals, op=dist.ReduceOp.SUM, group=group)
    totals = totals.cpu()
    losses = _average(totals[:n], totals[n:])

    state_size = sampler.sync_state().numel()
    if dist.get_rank(group) == 0:
        info = sampler.update(losses)
        scalars = [math.nan if info[key] is None else float(info[key]) for key in _INFO_SCALARS]
        packed = torch.cat([sampler.sync_state(), torch.tensor(scalars + info["rollout_counts"], dtype=torch.float64)])
    else:
        packed = torch.zeros(state_size + len(_INFO_SCALARS) + n, dtype=torch.float64)
    packed = packed.to(device)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)  # other ranks add zeros: rank 0's values, exactly
    if dist.get_rank(group) == 0:
        return info

    packed = packed.cpu()
    sampler.load_sync_state(packed[:state_size])
    scalars = packed[state_size:state_size + len(_INFO_SCALARS)].tolist()
    values = {key: (None if math.isnan(v) else v) for key, v in zip(_INFO_SCALARS, scalars)}
    skipped = bool(values["skipped"])
    if not skipped:
        sampler.clear_rollout()  # as rank 0's update did; a skipped update keeps the rollout everywhere
    return {
        "reward": values["reward"],
        "advantage": values["advantage"],
        "policy_loss": values["policy_loss"],
        "probs": sampler.probs.tolist(),
        "rollout_counts": [int(c) for c in packed[state_size + len(_INFO_SCALARS):].tolist()],
        "val_losses": losses.tolist(),
        "skipped": skipped,
        "skipped_updates": sampler.skipped_updates,
        "num_updates": sampler.num_updates,
    }


def _as_vector(name: str, values, n: int) -> torch.Tensor:
    try:
        vector = torch.as_tensor(values).detach().to("cpu", torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"meta_update_distributed: {name} must be {n} numbers, got {values!r}") from err
    if vector.dim() != 1 or vector.numel() != n:
        raise ValueError(
            f"meta_update_distributed: {name} needs one entry per objective ({n}), got shape {tuple(vector.shape)}"
        )
    return vector


def _average(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    return torch.where(counts > 0, sums / counts.clamp(min=1e-300), torch.full_like(sums, math.nan))


def _collective_device(group, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    if "nccl" in str(dist.get_backend(group)).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
