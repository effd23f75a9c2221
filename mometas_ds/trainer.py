"""The pre-training run, top to bottom: set up, train with the sampler choosing objectives, checkpoint, export.

Every rank runs this same code. The pieces have one job each: the checks before any work
(config.preflight), the engine (engine.py), one optimizer step and the sampler update (step.py,
meta_validation.py), the counters a checkpoint saves (train_state.py) and the log files (run_logs.py).
"""
from __future__ import annotations

import datetime
import logging
import os
import random
import time
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from . import checkpoint as ckpt
from . import faults, stop_signals
from .config import (
    ConfigError, DataError, Preflight, PretrainConfig, check_tokenizer_fits_model, check_writable, elastic_changes,
    preflight, sampler_kwargs,
)
from .data import CorpusReport, DataConfig, ShardedBatches, iter_texts, prefetched, prepare_data, rows_as_tensors
from .engine import build_engine
from .meta_validation import MetaValidation
from .model import MultiObjectiveBert, build_bert_config
from .objectives import build_objective, objective_class
from .run_logs import RunLogs, as_float
from .samplers import build_sampler
from .step import Corruption, NonFiniteLossError, StopRequest, TrainStep
from .tokenizer import load_tokenizer, special_tokens_of, train_wordpiece_tokenizer
from .train_state import TrainState, rng_state, seeded_rng_state, set_rng_state
from .safe_io import disk_errors, export_retry_hint, write_dir_atomically

logger = logging.getLogger("mometas_ds")

__all__ = ["Trainer", "NonFiniteLossError"]


class Trainer:
    def __init__(self, cfg: PretrainConfig, checked: Optional[Preflight] = None):
        self.cfg = cfg
        # Every check that needs no work runs first: a bad flag stops the run here.
        checked = checked or preflight(cfg)
        self.ds_config, self.launch, self.run_identity = checked.ds_config, checked.launch, checked.run_identity
        self.rank, self.world_size = self.launch.rank, self.launch.world_size
        # Rank 0's one-off work (tokenizing a large corpus: hours) must not run into --dist_timeout_minutes,
        # which is meant to catch a dead or hung rank during training: the others wait in their own group.
        self._setup_group = None
        if self.world_size > 1:
            self._setup_group = dist.new_group(
                backend="gloo", timeout=datetime.timedelta(minutes=cfg.setup_timeout_minutes))
        _setup_logging(self.rank)
        if self.rank == 0:
            logger.info("launcher: %s, %d rank(s)", self.launch.launcher, self.world_size)

        self.stop = StopRequest()
        self._install_signal_handlers()
        self._check_output_dir()

        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)

        self.tokenizer = self._load_tokenizer()
        check_tokenizer_fits_model(cfg, len(self.tokenizer))
        self.special = special_tokens_of(self.tokenizer, self._tokenizer_flag())
        self.data = self._prepare_data()
        self.objectives = build_objectives(cfg, self.special)
        self.objective_names = list(cfg.objectives)
        self.model = self._build_model()
        self.engine = build_engine(self.model, self.ds_config, cfg.max_steps, self.rank)
        self.device = self.engine.device
        self.gas = self.engine.gradient_accumulation_steps()
        self.micro_batch = self.engine.train_micro_batch_size_per_gpu()

        self.batches = prefetched(ShardedBatches(self.data.train, batch_size=self.micro_batch, rank=self.rank,
                                                 world_size=self.world_size, seed=cfg.seed, seq_len=cfg.seq_len),
                                  cfg.prefetch_batches, self.device)
        self.sampler = build_sampler(cfg.sampler, num_objectives=len(self.objective_names), seed=cfg.seed,
                                     interval=cfg.meta_interval, **sampler_kwargs(cfg))
        corrupt = Corruption(self.objectives, self.device)
        meta = MetaValidation(self.engine, self.objectives, rows_as_tensors(self.data.meta), corrupt,
                              device=self.device, seed=cfg.seed, meta_batch_size=cfg.meta_batch_size,
                              micro_batch=self.micro_batch, rank=self.rank, world_size=self.world_size)
        self.state = TrainState()
        self.steps = TrainStep(self.engine, self.model, self.objectives, self.sampler, self.batches, meta, corrupt,
                               self.state, seed=cfg.seed, rank=self.rank, world_size=self.world_size,
                               max_skipped_steps=cfg.max_skipped_steps, stop=self.stop)
        self.logs = RunLogs(cfg.output_dir, self.rank, self.objective_names, getattr(self.engine, "monitor", None))
        if cfg.resume:
            self._resume(cfg.resume)
        else:
            self.logs.rewind(self.state)  # a fresh run's logs start empty (a run killed before its first save left some)

    @property
    def step(self) -> int:
        return self.state.step

    # ---------------------------------------------------------------- set-up
    def _install_signal_handlers(self):
        # INT (Ctrl-C), TERM, USR1: finish the step, save, exit 0 (mometas_ds/stop_signals.py).
        self.signals = stop_signals.install(self.rank, lambda: setattr(self.stop, "requested", True))

    def _check_output_dir(self):
        cfg = self.cfg

        def prepare():
            check_writable(cfg.output_dir, "checkpoints")
            with open(os.path.join(cfg.output_dir, "run_config.json"), "w") as f:
                f.write(cfg.to_json())

        self._on_rank0_first(prepare)  # a failure stops every rank, not just rank 0
        os.makedirs(os.path.join(cfg.output_dir, "trace"), exist_ok=True)

    def _tokenizer_flag(self) -> str:
        """The flag that chose the tokenizer, for error messages."""
        if self.cfg.tokenizer:
            return "--tokenizer"
        return "--model_name_or_path" if self.cfg.train_tokenizer is None else "--train_tokenizer"

    def _load_tokenizer(self):
        cfg = self.cfg
        if cfg.tokenizer:
            return load_tokenizer(cfg.tokenizer)
        if cfg.train_tokenizer is None:
            return load_tokenizer(cfg.model_name_or_path, flag="--model_name_or_path")
        out_dir = os.path.join(cfg.output_dir, "tokenizer")

        def train():
            if not os.path.exists(os.path.join(out_dir, "tokenizer.json")):
                logger.info("training a WordPiece tokenizer (vocab %d) on the corpus", cfg.train_tokenizer)
                trained = train_wordpiece_tokenizer(  # a function: --tokenizer_sample reads the corpus twice
                    lambda: iter_texts(cfg.train_files, cfg.text_field, CorpusReport()), cfg.train_tokenizer,
                    out_dir, sample=cfg.tokenizer_sample)
                logger.info("trained a tokenizer of %d tokens (asked for at most %d), saved in %s",
                            len(trained), cfg.train_tokenizer, out_dir)

        self._on_rank0_first(train)
        return load_tokenizer(out_dir)

    def _prepare_data(self):
        cfg = self.cfg
        cache_dir = cfg.cache_dir or os.path.join(cfg.output_dir, "cache")
        data_cfg = DataConfig(train_files=list(cfg.train_files), text_field=cfg.text_field, seq_len=cfg.seq_len,
                              cache_dir=cache_dir, num_proc=cfg.num_proc, packing=cfg.packing,
                              meta_sequences=2 * cfg.meta_batch_size, seed=cfg.seed)
        def prepare_on_rank0():
            faults.sleep_in_setup()
            with disk_errors("--cache_dir" if cfg.cache_dir else "--output_dir", cache_dir):
                return prepare_data(data_cfg, self.tokenizer)

        # Rank 0 tokenizes and writes the cache; the others then read it.
        prepared = self._on_rank0_first(prepare_on_rank0)
        if self.rank != 0:
            prepared = prepare_data(data_cfg, self.tokenizer)
        if self.rank == 0:
            if prepared.cache_hit:
                logger.info("corpus already prepared: %d shard(s) in %s, nothing to tokenize",
                            len(prepared.shard_paths), prepared.cache_path)
            else:
                logger.info("corpus prepared: built %d of %d shard(s) in %s", prepared.shards_built,
                            len(prepared.shard_paths), prepared.cache_path)
            if prepared.report.total_skipped:
                logger.warning("corpus: %s", prepared.report.summary())
        return prepared

    def _build_model(self) -> MultiObjectiveBert:
        cfg = self.cfg
        if cfg.model_name_or_path:
            return MultiObjectiveBert.from_pretrained(cfg.model_name_or_path, self.objectives)
        config = build_bert_config(cfg.model_config, vocab_size=len(self.tokenizer),
                                   max_position_embeddings=max(512, cfg.seq_len))
        return MultiObjectiveBert.from_config(config, self.objectives)

    # ---------------------------------------------------------------- resume
    def _resume(self, resume: str):
        ckpt_root = os.path.join(self.cfg.output_dir, "checkpoints")
        # Rank 0 chose and verified it for every rank (check_world_size): a rank with a stale view of output_dir
        # must not start from another step.
        found = ckpt.resume_checkpoint(ckpt_root, resume, self.cfg.verify_checkpoint, group=self._setup_group, reuse=True)
        if found is None:
            if self.rank == 0:
                logger.info("--resume: no complete checkpoint in %s, starting from step 0", ckpt_root)
            self.logs.rewind(self.state)
            return
        tags_dir, tag = found
        tag_dir = os.path.join(tags_dir, tag)
        saved = ckpt.read_run_identity(tag_dir) or {}  # check_resume_matches read it already: not damaged
        changes = elastic_changes(saved, self.run_identity)
        if self.rank == 0 and changes:
            logger.info("--resume: %s (docs/checkpoints.md, \"What a resume may change\")",
                        "; ".join(f"{key} {now} (was {was})" for key, (was, now) in changes.items()))
        # ZeRO 1/2 with another number of ranks: rank 0 converts the tag to DeepSpeed's universal checkpoint
        # (once; a later resume reuses an intact copy) while the others wait in the setup group.
        universal = ckpt.needs_universal(self.engine, tag_dir)
        if universal:
            self._on_rank0_first(lambda: _convert_to_universal(tags_dir, tag))
        client_state = ckpt.load(self.engine, tags_dir, tag, universal)  # weights_only loads; failure: ConfigError
        state = client_state["mometas"]
        self.state.load_state_dict(state)
        self.sampler.load_state_dict(state["sampler"])
        # Every rank's data state holds the same global position: a rank the saving run did not have takes
        # rank 0's. One saved before it recorded its seq_len gets the run identity's.
        data = state["data"] if isinstance(state["data"], list) else [state["data"]]
        position = dict(data[self.rank] if self.rank < len(data) else data[0])
        if "seq_len" not in position and "--seq_len" in saved:
            position["seq_len"] = saved["--seq_len"]
        self.batches.load_state_dict(position)
        rngs = state["rng"]
        if self.rank < len(rngs):
            set_rng_state(rngs[self.rank])
        else:  # more ranks than the saving run: a documented seeded state (train_state.seeded_rng_state)
            seeded_rng_state(self.cfg.seed, self.rank, self.state.step)
            logger.warning("--resume: %s holds no random state for rank %d (saved by %d rank(s)): seeded from "
                           "--seed, the rank and step %d", tag_dir, self.rank, len(rngs), self.state.step)
        if self.rank == 0 and len(rngs) > self.world_size:
            logger.info("--resume: the random state of rank(s) %d-%d of the saving run is not used (%d rank(s) now)",
                        self.world_size, len(rngs) - 1, self.world_size)
        self.logs.rewind(self.state)
        if self.rank == 0:
            logger.info("resumed from %s at step %d%s", tag_dir, self.state.step,
                        " (through its universal checkpoint)" if universal else "")

    def _client_state(self) -> dict:
        # RNG and data positions differ per rank: gather them so every rank's can be restored.
        mine = {"data": self.batches.state_dict(), "rng": rng_state()}
        per_rank = [None] * self.world_size
        if self.world_size > 1:
            dist.all_gather_object(per_rank, mine)
        else:
            per_rank = [mine]
        return {"mometas": {
            **self.state.state_dict(),
            "sampler": self.sampler.state_dict(),
            "objectives": self.objective_names,
            "data": [r["data"] for r in per_rank], "rng": [r["rng"] for r in per_rank],
        }}

    def save_checkpoint(self):
        ckpt_root = os.path.join(self.cfg.output_dir, "checkpoints")
        with self.signals.saving():
            ckpt.save(self.engine, ckpt_root, self.state.step, self._client_state(), self.rank, self._barrier,
                      self.run_identity)
        if self.rank == 0:
            logger.info("saved checkpoint step%d in %s", self.state.step, ckpt_root)
            if self.cfg.save_total_limit is not None:
                deleted = ckpt.prune(ckpt_root, self.cfg.save_total_limit)
                if deleted:
                    logger.info("deleted checkpoint(s) %s (--save_total_limit %d)", ", ".join(deleted),
                                self.cfg.save_total_limit)

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
            faults.hang_at_step(state.step)
            elapsed = time.perf_counter() - started
            logs.step({
                "step": state.step, "objective": ",".join(dict.fromkeys(names)),
                "loss": sum(losses) / len(losses), "lr": float(self.engine.get_lr()[0]),
                "grad_norm": as_float(self.engine.get_global_grad_norm()),
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
                self.save_checkpoint()
        if state.step > start_step:
            self.save_checkpoint()
        elif self.rank == 0:
            # A resume of a finished run: re-saving would only unpublish and rewrite the final checkpoint.
            logger.info("nothing to train: the run is at step %d, --max_steps %d", state.step, cfg.max_steps)
        logs.close()
        finished = state.step >= cfg.max_steps
        if finished:
            self.export_hf()
        if self.rank == 0:
            logger.info("stopped at step %d (%s)", state.step,
                        "signal" if stopped_by_signal else "finished" if finished else "--steps_this_run")
        return {"step": state.step, "finished": finished, "stopped_by_signal": stopped_by_signal}

    def _optimizer_step(self):
        try:
            return self.steps.optimizer_step(self.logs.trace)
        except NonFiniteLossError as exc:
            last = ckpt.latest_complete_tag(os.path.join(self.cfg.output_dir, "checkpoints"))
            raise NonFiniteLossError(
                f"{exc}; no checkpoint is written, the last good one is "
                f"{os.path.join(self.cfg.output_dir, 'checkpoints', last) if last else '(none)'}"
            ) from None

    def _sampler_update(self):
        """Measure every objective on the meta-validation batch across ranks, update the sampler, log it."""
        info = self.steps.sampler_update()
        self.logs.sampler_update(self.state.step, self.sampler.probs, info)

    # ---------------------------------------------------------------- agreement between ranks
    def _on_rank0_first(self, work):
        """Run ``work`` on rank 0 while the others wait; if it fails, every rank raises its error
        (the others would otherwise wait at the barrier until the collective timeout)."""
        result, error = None, None
        if self.rank == 0:
            try:
                result = work()
            except (ConfigError, DataError) as exc:
                error = exc
        if self.world_size > 1:
            box = [None if error is None else (type(error).__name__, str(error))]
            dist.broadcast_object_list(box, src=0, group=self._setup_group)
            if box[0] is not None and error is None:
                error = (DataError if box[0][0] == "DataError" else ConfigError)(box[0][1])
        if error is not None:
            raise error
        return result

    def _barrier(self):
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier()

    # ---------------------------------------------------------------- export
    def export_hf(self):
        out_dir = os.path.join(self.cfg.output_dir, "hf_model")
        state_dict = ckpt.consolidated_state_dict(self.engine, os.path.join(self.cfg.output_dir, "checkpoints"), self.state.step)

        def write():  # whole or absent (safe_io); a failure stops every rank, with a message
            write_dir_atomically(out_dir, lambda tmp: self.model.save_hf(tmp, self.tokenizer, state_dict=state_dict),
                                 what_to_do=export_retry_hint(self.cfg, self.state.step))
            logger.info("exported the model and tokenizer (HF format) to %s", out_dir)

        with self.signals.saving():  # on the setup group: writing a large model may outlast --dist_timeout_minutes
            self._on_rank0_first(write)


def _convert_to_universal(tags_dir: str, tag: str) -> None:
    """Rank 0's conversion of a tag for a new ZeRO partitioning; a failure is a ConfigError every rank raises."""
    try:
        ckpt.convert_to_universal(tags_dir, tag, workers=1)
    except Exception as exc:  # DeepSpeed's converter asserts and raises whatever its readers raise
        raise ConfigError(
            f"--resume: converting checkpoint {os.path.join(tags_dir, tag)} to DeepSpeed's universal checkpoint "
            f"(needed: the number of ranks changed under ZeRO 1/2) failed: {type(exc).__name__}: {exc}. Resume "
            f"on the number of ranks that saved it") from None


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
