"""One optimizer step of a run (micro-batches up to DeepSpeed's accumulation boundary, each training the
objective the sampler drew for the step) and the sampler update; the trainer and mometas-bench both run it.

Agreement between ranks comes from determinism, not messages: the draw for a step depends only on
(seed, step, probabilities), and a skip (a non-finite loss) or a stop request is decided by one
all-reduce that every rank takes part in.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Dict, List, Optional, Tuple

import deepspeed.utils
import torch
import torch.distributed as dist

from mometas_ds.train.faults import Faults
from mometas_ds.train.meta_validation import MetaValidation
from mometas_ds.train.state import TrainState, seed_for

logger = logging.getLogger("mometas_ds")


class NonFiniteLossError(RuntimeError):
    """--max_skipped_steps consecutive skips: the run stops without saving, keeping the last good checkpoint."""


class StopRequest:
    """A signal reached this rank (``requested``); some rank's request, as all ranks learned it in the same
    all-reduce (``agreed``): only then do all stop after the same step."""

    def __init__(self):
        self.requested = False
        self.agreed = False


class Corruption:
    """Clean rows to the device, corrupted for one objective: ``corrupt(name, clean, generator)``."""

    def __init__(self, objectives: Dict[str, object], device: torch.device):
        self.objectives, self.device = objectives, device

    def __call__(self, name: str, clean: Dict[str, torch.Tensor], generator) -> Dict[str, torch.Tensor]:
        pinned = self.device.type == "cuda"  # from pinned memory the copy does not block the host

        def to_device(column):
            return (column.pin_memory() if pinned else column).to(self.device, non_blocking=pinned)

        return self.objectives[name].corrupt(to_device(clean["input_ids"]), to_device(clean["attention_mask"]),
                                             generator=generator)


def global_grad_norm(parameters) -> Optional[torch.Tensor]:
    """The L2 norm of all gradients together (fp32), as torch's clip_grad_norm_ computes it; None without any.
    Under ZeRO stage 0 every rank holds the whole reduced gradient, so every rank gets the same norm."""
    norms = [torch.linalg.vector_norm(p.grad.detach().float()) for p in parameters if p.grad is not None]
    if not norms:
        return None
    return torch.linalg.vector_norm(torch.stack(norms))


class TrainStep:
    def __init__(self, engine, model, objectives: Dict[str, object], sampler, batches, meta: MetaValidation,
                 corrupt: Callable, state: TrainState, *, seed: int, rank: int = 0, world_size: int = 1,
                 max_skipped_steps: int = 10, stop: Optional[StopRequest] = None,
                 faults: Optional[Faults] = None):
        self.engine, self.model, self.objectives = engine, model, objectives
        self.objective_names = tuple(objectives)  # the mapping's order (the run's --objectives)
        self.sampler, self.batches, self.meta, self.corrupt, self.state = sampler, batches, meta, corrupt, state
        self.device = engine.device
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.max_skipped_steps = max_skipped_steps
        self.stop = stop or StopRequest()
        self._boundary_done = False
        self.faults = faults  # None unless a test injects faults (train.faults)
        self.grad_norm = None  # the last optimizer step's global gradient norm (before clipping), for the logs

    def optimizer_step(self, trace, on_micro_step: Optional[Callable] = None) -> Tuple[List[str], List[float]]:
        """Micro-steps until DeepSpeed's accumulation boundary, then ``state.step += 1``; the names and losses of
        the micro-steps that were not skipped. ``on_micro_step(name, loss)`` is called after each micro-step."""
        losses, names = [], []
        while True:
            name, loss = self.micro_step(trace)
            if on_micro_step is not None:
                on_micro_step(name, loss)
            if self.state.consecutive_skips >= self.max_skipped_steps:
                # Every rank counts the same skips (all-reduced decisions), so all stop here together.
                raise NonFiniteLossError(
                    f"stopping at step {self.state.step}: {self.state.consecutive_skips} consecutive skips for a "
                    f"non-finite loss or gradient norm (--max_skipped_steps {self.max_skipped_steps})")
            if loss is None:
                continue
            losses.append(loss)
            names.append(name)
            if self._boundary_done:
                break
        self.state.step += 1
        return names, losses

    def sampler_update(self) -> dict:
        """The sampler update due every --meta_interval steps (and once before the first step)."""
        info = self.meta.update(self.sampler, self.state.num_updates)
        self.state.num_updates += 1
        return info

    def micro_step(self, trace):
        """One micro-batch: draw the objective, corrupt, forward, backward, maybe the optimizer step.

        Returns (objective name, loss) or (name, None) when the micro-step was skipped
        because some rank's loss was not finite.
        """
        state = self.state
        # Keyed by the optimizer step: every micro-batch of a step (a retried one too) trains the step's
        # objective, and the rollout holds one draw per step, as the policy update counts them.
        index = self.sampler.sample(state.step)
        name = self.objective_names[index]
        clean = next(self.batches)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed_for(self.seed, state.micro_step, self.rank))
        batch = self.corrupt(name, clean, generator)
        trace.write(name + "\n")
        trace.flush()
        state.micro_step += 1
        loss = self.engine(batch, name)["loss"]
        if self.faults is not None:
            loss = self.faults.nonfinite_loss(loss, state.micro_step - 1)
        # The loss value comes back in the same host read as the skip/stop flags: one sync per micro-step.
        all_finite, loss_value = self._all_finite(loss)
        if not all_finite:
            state.skipped_steps += 1
            state.consecutive_skips += 1
            logger.warning("rank %d: non-finite loss at micro-step %d (%s): skipped on every rank",
                           self.rank, state.micro_step - 1, name)
            self._boundary_done = False
            return name, None
        self.engine.backward(loss if self.faults is None else self.faults.nonfinite_grad(loss, state.micro_step - 1))
        self._boundary_done = self.engine.is_gradient_accumulation_boundary()
        if self._boundary_done and self.engine.zero_optimization_stage() == 3:
            self._zero_unused_head_grads(name)
        # DeepSpeed reports the norm only through optimizers that compute it (ZeRO 1-3, its fp16/bf16
        # wrappers); with a bare torch optimizer (ZeRO stage 0 in fp32, e.g. the Lamb path) ours is taken from
        # the reduced gradients before DeepSpeed clips them, so every step logs one.
        own_norm = self._boundary_done and not hasattr(self.engine.optimizer, "_global_grad_norm")
        if own_norm:
            self.grad_norm = global_grad_norm(self.model.parameters())
        self.engine.step()
        if self._boundary_done:
            if not own_norm:
                self.grad_norm = self.engine.get_global_grad_norm()
            self._count_update()
        return name, loss_value

    def _zero_unused_head_grads(self, objective: str) -> None:
        """Zero the gradients of the heads this step did not use, before a ZeRO-3 optimizer step.

        ZeRO-3 keeps each parameter's gradient partition in a buffer that only that parameter's
        own backward overwrites, so an unused head would hand the optimizer (and the clipping
        norm) the gradient of the last step that used it. ZeRO-1/2 give such parameters zeros;
        this does the same through DeepSpeed's public gradient API.
        """
        used = self.model.heads[self.objectives[objective].head_name]
        trained = {id(param) for param in used.parameters()}  # a module two heads share keeps its gradient
        for head in self.model.heads.values():
            for param in head.parameters():
                if param.requires_grad and id(param) not in trained:
                    deepspeed.utils.safe_set_local_grad(param, torch.zeros_like(param.ds_tensor))

    def _count_update(self):
        """After an optimizer step: was the update applied? DeepSpeed's ZeRO optimizers skip an update
        whose gradient norm is not finite, deciding by an all-reduce, so the global norm says it on
        every rank. Under fp16 that is the loss scaler's normal search and is not counted."""
        state = self.state
        # Read here, once per optimizer step (not per micro-step): the count is in this step's metrics line and
        # --max_skipped_steps stops the run at this step, so the read cannot wait for a later collective.
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is None or math.isfinite(float(grad_norm)):
            state.consecutive_skips = 0
        elif not self.engine.fp16_enabled():
            state.skipped_updates += 1
            state.consecutive_skips += 1
            logger.warning("rank %d: non-finite gradient norm at step %d: update skipped", self.rank, state.step + 1)

    def _all_finite(self, loss: torch.Tensor) -> Tuple[bool, float]:
        """Whether every rank's loss is finite, and this rank's loss value; whether any rank asked to stop is
        learned in the same collective (``stop.agreed``)."""
        # Built on the device and read once, after the all-reduce: on a GPU each host read is a sync. The local
        # loss rides along in that read (after the all-reduce, which takes the flags' maximum over ranks).
        loss = loss.detach().float()
        not_finite = (~torch.isfinite(loss).all()).to(torch.float32)
        flags = torch.stack([not_finite, not_finite.new_full((), float(self.stop.requested))])
        if self.world_size > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        any_not_finite, any_stop, loss_value = torch.cat([flags, loss.reshape(1)]).tolist()
        if any_stop > 0:
            self.stop.agreed = True
        return any_not_finite == 0, loss_value
