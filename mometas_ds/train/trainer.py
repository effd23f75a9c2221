"""The pre-training run, top to bottom: set up, train with the sampler choosing objectives, checkpoint, export.

Every rank runs this same code. The pieces have one job each: the checks before any work
(config.preflight), the ranks' agreement on rank 0's one-off work (ranks.py), the tokenizer, corpus and batch
stream (data.pretrain_data), the engine (engine.py), one optimizer step and the sampler update (step.py,
meta_validation.py), the counters (train_state.py), saving, resuming and the HF export (checkpoint.checkpointer)
and the log files (run_logs.py).
"""
from __future__ import annotations

import logging
import os
import random
import time
from typing import Optional

import numpy as np
import torch

from mometas_ds.config import ConfigError, PretrainConfig, sampler_kwargs
from mometas_ds.config.paths import RunPaths
from mometas_ds.distributed.ranks import Ranks
from mometas_ds.model import MultiObjectiveBert, build_bert_config
from mometas_ds.objectives import build_objective, objective_class
from mometas_ds.safe_io import check_writable
from mometas_ds.samplers import build_sampler
from mometas_ds.train import signals as stop_signals
from mometas_ds.train.checkpointer import Checkpointer
from mometas_ds.train.data import PretrainData
from mometas_ds.train.engine import build_engine
from mometas_ds.train.faults import Faults
from mometas_ds.train.logs import RunLogs, as_float
from mometas_ds.train.meta_validation import MetaValidation, fixed_meta_set
from mometas_ds.train.preflight import Preflight, preflight
from mometas_ds.train.identity import TOKENIZER_KEY, tokenizer_identity
from mometas_ds.train.state import TrainState
from mometas_ds.train.step import Corruption, NonFiniteLossError, StopRequest, TrainStep

logger = logging.getLogger("mometas_ds")

__all__ = ["Trainer", "NonFiniteLossError", "build_objectives"]


class Trainer:
    def __init__(self, cfg: PretrainConfig, checked: Optional[Preflight] = None):
        self.cfg = cfg
        # Every check that needs no work runs first: a bad flag stops the run here.
        checked = checked or preflight(cfg)
        self.ds_config, self.launch, self.run_identity = checked.ds_config, checked.launch, checked.run_identity
        self.rank, self.world_size = self.launch.rank, self.launch.world_size
        self.ranks = Ranks(self.rank, self.world_size, cfg.setup_timeout_minutes)
        _setup_logging(self.rank)
        if self.rank == 0:
            logger.info("launcher: %s, %d rank(s)", self.launch.launcher, self.world_size)

        self.stop = StopRequest()
        # INT (Ctrl-C), TERM, USR1: finish the step, save, exit 0 (mometas_ds/train/signals.py).
        self.signals = stop_signals.install(self.rank, lambda: setattr(self.stop, "requested", True))
        self._check_output_dir()

        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)

        self.faults = Faults.from_env()  # None: no fault injection (every real run)
        # The tokenizer, then the corpus cache and its meta split.
        self.data = PretrainData(cfg, self.ranks, self.faults)
        self.tokenizer = self.data.tokenizer
        # Pinned by content: a resume with another vocabulary (even the same tokens with other ids) stops.
        self.run_identity = {**self.run_identity, TOKENIZER_KEY: tokenizer_identity(self.tokenizer)}
        self.objectives = build_objectives(cfg, self.data.special)
        self.objective_names = tuple(self.objectives)  # the run's objective order: every component reads this one
        self.model = self._build_model()
        self.engine = build_engine(self.model, self.ds_config, cfg.max_steps, self.rank)
        self.device = self.engine.device
        self.gas = self.engine.gradient_accumulation_steps()
        self.micro_batch = self.engine.train_micro_batch_size_per_gpu()

        self.batches = self.data.batch_stream(self.micro_batch, self.device)
        self.sampler = build_sampler(cfg.sampler, num_objectives=len(self.objective_names), seed=cfg.seed,
                                     **sampler_kwargs(cfg))
        corrupt = Corruption(self.objectives, self.device)
        meta = MetaValidation(self.engine, self.objectives, self.data.meta_rows(), corrupt,
                              device=self.device, seed=cfg.seed, meta_batch_size=cfg.meta_batch_size,
                              micro_batch=self.micro_batch, rank=self.rank, world_size=self.world_size,
                              fixed_set=fixed_meta_set(cfg.meta_fixed_set, self.sampler))
        self.state = TrainState()
        self.steps = TrainStep(self.engine, self.model, self.objectives, self.sampler, self.batches, meta, corrupt,
                               self.state, seed=cfg.seed, rank=self.rank, world_size=self.world_size,
                               max_skipped_steps=cfg.max_skipped_steps, stop=self.stop, faults=self.faults)
        self.logs = RunLogs(cfg.output_dir, self.rank, self.objective_names, getattr(self.engine, "monitor", None))
        self.checkpointer = Checkpointer(cfg, self.engine, self.ranks, self.run_identity, state=self.state,
                                         sampler=self.sampler, data=self.data, objective_names=self.objective_names,
                                         signals=self.signals, faults=self.faults)
        if cfg.resume:
            self.checkpointer.resume(cfg.resume)
        # Cut the logs back to the resumed step (a fresh run's start empty: one killed before its first save
        # left some).
        self.logs.rewind(self.state)

    @property
    def step(self) -> int:
        return self.state.step

    # ---------------------------------------------------------------- set-up
    def _check_output_dir(self):
        cfg = self.cfg

        def prepare():
            check_writable(cfg.output_dir, "checkpoints")
            with open(RunPaths(cfg.output_dir).run_config, "w") as f:
                f.write(cfg.to_json())

        self.ranks.rank0_first(prepare)  # a failure stops every rank, not just rank 0
        os.makedirs(RunPaths(cfg.output_dir).trace_dir, exist_ok=True)

    def _build_model(self) -> MultiObjectiveBert:
        cfg = self.cfg
        if cfg.model_name_or_path:
            return MultiObjectiveBert.from_pretrained(cfg.model_name_or_path, self.objectives)
        config = build_bert_config(cfg.model_config, vocab_size=len(self.tokenizer), seq_len=cfg.seq_len)
        return MultiObjectiveBert.from_config(config, self.objectives)

    # ---------------------------------------------------------------- training
    def train(self) -> dict:
        cfg, state, logs = self.cfg, self.state, self.logs
        end_step = cfg.max_steps
        if cfg.steps_this_run is not None:
            end_step = min(end_step, state.step + cfg.steps_this_run)
        logs.open(state, cfg.max_steps)

        # The first update only stores the baseline losses: take it before training starts.
        if state.step == 0 and state.num_updates == 0 and self.sampler.needs_meta_validation:
            self._sampler_update()

        self.engine.train()
        samples_per_step = self.micro_batch * self.gas * self.world_size
        stopped_by_signal = False
        start_step = state.step
        while state.step < end_step:
            started = time.perf_counter()
            names, losses = self._optimizer_step()
            if self.faults is not None:
                self.faults.hang_at_step(state.step)
            elapsed = time.perf_counter() - started
            logs.step({
                "step": state.step, "objective": ",".join(dict.fromkeys(names)),
                "loss": sum(losses) / len(losses), "lr": float(self.engine.get_lr()[0]),
                "grad_norm": as_float(self.steps.grad_norm),
                "samples_per_s": samples_per_step / elapsed,
                "tokens_per_s": samples_per_step * cfg.seq_len / elapsed, "skipped_micro_steps": state.skipped_steps,
                "skipped_updates": state.skipped_updates,
            }, show_progress=state.step % cfg.log_steps == 0 or state.step == end_step)
            if state.step % cfg.meta_interval == 0:
                self._sampler_update()
            if self.stop.agreed:
                # Only what the all-reduce said: a signal landing after the step's last all-reduce waits for
                # the next step, else the ranks could disagree and deadlock in a half-joined save.
                stopped_by_signal = True
                break
            if state.step % cfg.save_steps == 0 and state.step < end_step:
                self.checkpointer.save()
        if state.step > start_step:
            self.checkpointer.save()
        elif self.rank == 0:
            # A resume of a finished run: re-saving would only unpublish and rewrite the final checkpoint.
            logger.info("nothing to train: the run is at step %d, --max_steps %d", state.step, cfg.max_steps)
        logs.close()
        finished = state.step >= cfg.max_steps
        if finished:
            self.checkpointer.export_hf(self.model, self.tokenizer)
        if self.rank == 0:
            logger.info("stopped at step %d (%s)", state.step,
                        "signal" if stopped_by_signal else "finished" if finished else "--steps_this_run")
        return {"step": state.step, "finished": finished, "stopped_by_signal": stopped_by_signal}

    def _optimizer_step(self):
        try:
            return self.steps.optimizer_step(self.logs.trace)
        except NonFiniteLossError as exc:
            raise NonFiniteLossError(
                f"{exc}; no checkpoint is written, the last good one is {self.checkpointer.last_good()}") from None

    def _sampler_update(self):
        """Measure every objective on the meta-validation batch across ranks, update the sampler, log it."""
        info = self.steps.sampler_update()
        self.logs.sampler_update(self.state.step, self.sampler.probs, info)


def build_objectives(cfg: PretrainConfig, special) -> dict:
    """The run's objectives by name; --whole_word_mask goes to those that take it (mlm, gmlm)."""
    def options(name):
        wants = cfg.whole_word_mask and objective_class(name).supports_whole_word_mask
        return {"whole_word_mask": True} if wants else {}

    try:
        return {name: build_objective(name, special, **options(name)) for name in cfg.objectives}
    except ValueError as err:  # e.g. a tokenizer without '##' pieces
        if not cfg.whole_word_mask:
            raise
        raise ConfigError(f"--whole_word_mask: {err}") from err


def _setup_logging(rank: int) -> None:
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"[%(asctime)s] [rank {rank}] %(levelname)s %(name)s: %(message)s",
    )
