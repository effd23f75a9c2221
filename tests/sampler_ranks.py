"""Two gloo ranks against one process for a windowed sampler (mometas_credit, mometas_transfer): the same draws,
update infos and policy state on every rank, equal to one process fed the mean of the same losses."""
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mometas_ds.samplers import build_sampler, meta_update_distributed, shard_range


def _gloo_worker(rank, world, init_file, out_dir, name, n, losses, steps, interval, meta_batch):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    sampler = build_sampler(name, n, seed=11, window=12)
    lo, hi = shard_range(meta_batch, rank, world)
    draws, infos = [], []
    for step in range(steps):
        draws.append(sampler.sample(step))
        if (step + 1) % interval == 0:
            shard = losses(step // interval, sampler.rollout_counts())[lo:hi]
            infos.append(meta_update_distributed(sampler, shard.sum(0), torch.full((n,), float(hi - lo))))
    torch.save({"draws": draws, "infos": infos, "state": sampler.state_dict()}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def assert_two_gloo_ranks_agree_with_one_process(tmp_path, name, n, losses, steps, interval, meta_batch):
    """``losses(update_index, counts)``: per-sequence losses [meta_batch, n] (a module-level function)."""
    args = (2, str(tmp_path / "init"), str(tmp_path), name, n, losses, steps, interval, meta_batch)
    mp.spawn(_gloo_worker, args=args, nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert r0["draws"] == r1["draws"] and json.dumps(r0["infos"]) == json.dumps(r1["infos"])
    assert r0["state"]["policy"] == r1["state"]["policy"]
    assert max(max(i["probs"]) - min(i["probs"]) for i in r0["infos"]) > 0.01  # the policy moved
    single = build_sampler(name, n, seed=11, window=12)
    draws = []
    for step in range(steps):
        draws.append(single.sample(step))
        if (step + 1) % interval == 0:
            single.update(losses(step // interval, single.rollout_counts()).mean(0))
    assert draws == r0["draws"]
    assert single.probs.tolist() == pytest.approx(r0["infos"][-1]["probs"], rel=1e-9)
