"""The pre-training loop, top to bottom: set up, train with the sampler choosing objectives, checkpoint, export.

Every rank runs this same code. Agreement between ranks comes from determinism, not
messages: the sampler's draw for an optimizer step depends only on (seed, step,
probabilities), and the probabilities change only in the meta-validation update,
where they are all-reduced. Every micro-batch of a step trains that step's objective.
"""
from __future__ import annotations

import datetime
import json
import logging
import math
import os
import random
import socket
import time
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from . import checkpoint as ckpt
from . import faults, stop_signals
from .config import (
    ConfigError, DataError, PretrainConfig, check_tokenizer_fits_model, check_world_size, run_identity, sampler_kwargs,
    validate_config,
)
from .model import MultiObjectiveBert, build_bert_config
from .objectives import build_objective
from .optim import Lamb, bert_param_groups
from .safe_io import check_writable_dir, disk_errors, export_retry_hint, write_dir_atomically

logger = logging.getLogger("mometas_ds")


def meta_chunks(rows: torch.Tensor, size: int, min_rows: int) -> List[torch.Tensor]:
    """``rows`` in chunks of ``size``; a last chunk under ``min_rows`` joins the one before it."""
    chunks = list(torch.split(rows, size))
    if len(chunks) > 1 and len(chunks[-1]) < min_rows:
        chunks[-2:] = [torch.cat(chunks[-2:])]
    return chunks


def _seed_for(*parts: int) -> int:
    """A 63-bit seed from integers, stable across processes (Python's hash() is salted)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 31
    return value & 0x7FFFFFFFFFFFFFFF


class NonFiniteLossError(RuntimeError):
    """--max_skipped_steps consecutive skips: the run stops without saving, keeping the last good checkpoint."""


class Trainer:
    def __init__(self, cfg: PretrainConfig):
        self.cfg = cfg
        # Every check that needs no work runs first: a bad flag stops the run here.
        self.ds_config = validate_config(cfg)
        _check_writable(cfg.output_dir)  # every rank, before any collective: a bad mount fails here
        if cfg.cache_dir:
            check_writable_dir(cfg.cache_dir, "--cache_dir")

        from .launch import init_distributed

        self.launch = init_distributed(cfg.dist_timeout_minutes)
        self.rank, self.world_size = self.launch.rank, self.launch.world_size
        check_world_size(cfg, self.ds_config, self.world_size)
        self.run_identity = run_identity(cfg, self.ds_config, self.world_size)  # recorded with every checkpoint
        # Rank 0's one-off work (tokenizing a large corpus: hours) must not run into --dist_timeout_minutes,
        # which is meant to catch a dead or hung rank during training: the others wait in their own group.
        self._setup_group = None
        if self.world_size > 1:
            self._setup_group = dist.new_group(
                backend="gloo", timeout=datetime.timedelta(minutes=cfg.setup_timeout_minutes))
        _setup_logging(self.rank)
        if self.rank == 0:
            logger.info("launcher: %s, %d rank(s)", self.launch.launcher, self.world_size)

        self.stop_requested = False  # a signal reached this rank
        self.stop_agreed = False     # some rank's request, as all ranks learned it in the same all-reduce
        self._install_signal_handlers()
        self._check_output_dir()

        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)

        self.tokenizer = self._load_tokenizer()
        check_tokenizer_fits_model(cfg, len(self.tokenizer))
        from .tokenizer import special_tokens_of

        self.special = special_tokens_of(self.tokenizer, self._tokenizer_flag())
        self.data = self._prepare_data()
        from .data import rows_as_tensors

        self.meta_rows = rows_as_tensors(self.data.meta)  # indexed by every sampler update
        self.objectives = {name: build_objective(name, self.special) for name in cfg.objectives}
        self.objective_names: List[str] = list(cfg.objectives)
        self.model = self._build_model()
        self.engine = self._build_engine()
        self.device = self.engine.device
        self.gas = self.engine.gradient_accumulation_steps()
        self.micro_batch = self.engine.train_micro_batch_size_per_gpu()

        from .data import ShardedBatches
        from .samplers import build_sampler

        self.batches = ShardedBatches(self.data.train, batch_size=self.micro_batch, rank=self.rank,
                                      world_size=self.world_size, seed=cfg.seed)
        self.sampler = build_sampler(cfg.sampler, num_objectives=len(self.objective_names), seed=cfg.seed,
                                     interval=cfg.meta_interval, **sampler_kwargs(cfg))
        self.step = 0            # optimizer steps done
        self.micro_step = 0      # micro-batches drawn
        self.num_updates = 0     # sampler updates done
        self.skipped_steps = 0   # micro-steps skipped for a non-finite loss
        self.skipped_updates = 0  # optimizer updates DeepSpeed skipped for a non-finite gradient norm (not fp16)
        self.consecutive_skips = 0  # both kinds since the last applied update
        if cfg.resume:
            self._resume(cfg.resume)
        else:
            self._rewind_logs()  # a fresh run's logs start empty (a run killed before its first save left some)

    # ---------------------------------------------------------------- set-up
    def _install_signal_handlers(self):
        # INT (Ctrl-C), TERM, USR1: finish the step, save, exit 0 (mometas_ds/stop_signals.py).
        self.signals = stop_signals.install(self.rank, lambda: setattr(self, "stop_requested", True))

    def _check_output_dir(self):
        cfg = self.cfg

        def prepare():
            _check_writable(cfg.output_dir, "checkpoints")
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
        from .tokenizer import load_tokenizer, train_wordpiece_tokenizer

        cfg = self.cfg
        if cfg.tokenizer:
            return load_tokenizer(cfg.tokenizer)
        if cfg.train_tokenizer is None:
            return load_tokenizer(cfg.model_name_or_path, flag="--model_name_or_path")
        out_dir = os.path.join(cfg.output_dir, "tokenizer")

        def train():
            if not os.path.exists(os.path.join(out_dir, "tokenizer.json")):
                from .data import CorpusReport, iter_texts

                logger.info("training a WordPiece tokenizer (vocab %d) on the corpus", cfg.train_tokenizer)
                trained = train_wordpiece_tokenizer(iter_texts(cfg.train_files, cfg.text_field, CorpusReport()),
                                                    cfg.train_tokenizer, out_dir)
                logger.info("trained a tokenizer of %d tokens (asked for at most %d), saved in %s",
                            len(trained), cfg.train_tokenizer, out_dir)

        self._on_rank0_first(train)
        return load_tokenizer(out_dir)

    def _prepare_data(self):
        from .data import DataConfig, prepare_data

        cfg = self.cfg
        cache_dir = cfg.cache_dir or os.path.join(cfg.output_dir, "cache")
        data_cfg = DataConfig(train_files=list(cfg.train_files), text_field=cfg.text_field, seq_len=cfg.seq_len,
                              cache_dir=cache_dir, num_proc=cfg.num_proc,
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

    def _build_engine(self):
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        ds_config = json.loads(json.dumps(self.ds_config))
        _fit_schedule_to_max_steps(ds_config, self.cfg.max_steps)
        opt_cfg = ds_config.get("optimizer", {})
        weight_decay = float(opt_cfg.get("params", {}).get("weight_decay", 0.01))
        groups = bert_param_groups(self.model, weight_decay)
        client_optimizer = None
        if opt_cfg.get("type", "").lower() == "lamb" and get_accelerator().device_name() == "cpu":
            # DeepSpeed's FusedLamb has no CPU kernel: same hyper-parameters, torch implementation.
            params = {k: v for k, v in opt_cfg.get("params", {}).items() if k in ("lr", "betas", "eps", "weight_decay", "max_coeff", "min_coeff", "bias_correction")}
            client_optimizer = Lamb(groups, **params)
            del ds_config["optimizer"]
            # ZeRO accepts optimizers outside its tested list only when told to; ours is a plain torch.optim one.
            ds_config["zero_allow_untested_optimizer"] = True
            if self.rank == 0:
                logger.info("optimizer: torch LAMB (FusedLamb is not available on the CPU)")
        engine, _, _, _ = deepspeed.initialize(
            model=self.model, model_parameters=groups if client_optimizer is None else None,
            optimizer=client_optimizer, config=ds_config,
        )
        return engine

    # ---------------------------------------------------------------- resume
    def _resume(self, resume: str):
        ckpt_root = os.path.join(self.cfg.output_dir, "checkpoints")
        found = ckpt.find_resume_checkpoint(ckpt_root, resume) if self.rank == 0 else None
        if self.world_size > 1:
            # Rank 0 decides: a rank whose view of output_dir is stale (node-local or lagging storage)
            # would otherwise start from another step, and training would go on with mixed weights.
            box = [found]
            dist.broadcast_object_list(box, src=0, group=self._setup_group)
            found = box[0]
        if found is None:
            if self.rank == 0:
                logger.info("--resume: no complete checkpoint in %s, starting from step 0", ckpt_root)
            self._rewind_logs()
            return
        tags_dir, tag = found
        load_path, client_state = self.engine.load_checkpoint(tags_dir, tag=tag)
        if load_path is None or client_state is None:
            raise RuntimeError(f"--resume: could not load checkpoint {tag} from {tags_dir}")
        state = client_state["mometas"]
        self.step = state["step"]
        self.micro_step = state["micro_step"]
        self.num_updates = state["num_updates"]
        self.skipped_steps = state.get("skipped_steps", 0)
        self.skipped_updates = state.get("skipped_updates", 0)
        self.sampler.load_state_dict(state["sampler"])
        self.batches.load_state_dict(state["data"][self.rank] if isinstance(state["data"], list) else state["data"])
        rng = state["rng"][self.rank]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if "accelerator" in rng:
            from deepspeed.accelerator import get_accelerator

            get_accelerator().set_rng_state(rng["accelerator"])
        self._rewind_logs()
        if self.rank == 0:
            logger.info("resumed from %s at step %d", os.path.join(tags_dir, tag), self.step)

    def _rewind_logs(self):
        """Cut the run's logs back to the resumed state, so steps redone after a crash are logged once.

        Every step writes one metrics line, every sampler update one sampler line, every micro-step
        one trace line; a kill may also have left half a line.
        """
        out = self.cfg.output_dir
        _keep_first_lines(os.path.join(out, "trace", f"rank{self.rank}.txt"), self.micro_step)
        if self.rank == 0:
            _keep_first_lines(os.path.join(out, "metrics.jsonl"), self.step)
            _keep_first_lines(os.path.join(out, "sampler.jsonl"), self.num_updates)

    def _client_state(self) -> dict:
        from deepspeed.accelerator import get_accelerator

        # RNG and data positions differ per rank: gather them so every rank's can be restored.
        mine = {
            "data": self.batches.state_dict(),
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                    # The device's generator drives dropout on a GPU (on the CPU it is the torch one).
                    "accelerator": get_accelerator().get_rng_state()},
        }
        per_rank = [None] * self.world_size
        if self.world_size > 1:
            dist.all_gather_object(per_rank, mine)
        else:
            per_rank = [mine]
        return {"mometas": {
            "step": self.step, "micro_step": self.micro_step, "num_updates": self.num_updates,
            "skipped_steps": self.skipped_steps, "skipped_updates": self.skipped_updates,
            "sampler": self.sampler.state_dict(),
            "objectives": self.objective_names,
            "data": [r["data"] for r in per_rank], "rng": [r["rng"] for r in per_rank],
        }}

    def save_checkpoint(self):
        ckpt_root = os.path.join(self.cfg.output_dir, "checkpoints")
        with self.signals.saving():
            ckpt.save(self.engine, ckpt_root, self.step, self._client_state(), self.rank, self._barrier,
                      self.run_identity)
        if self.rank == 0:
            logger.info("saved checkpoint step%d in %s", self.step, ckpt_root)
            if self.cfg.save_total_limit is not None:
                deleted = ckpt.prune(ckpt_root, self.cfg.save_total_limit)
                if deleted:
                    logger.info("deleted checkpoint(s) %s (--save_total_limit %d)", ", ".join(deleted),
                                self.cfg.save_total_limit)

    # ---------------------------------------------------------------- training
    def train(self) -> dict:
        cfg = self.cfg
        end_step = cfg.max_steps
        if cfg.steps_this_run is not None:
            end_step = min(end_step, self.step + cfg.steps_this_run)
        metrics_file = open(os.path.join(cfg.output_dir, "metrics.jsonl"), "a") if self.rank == 0 else None
        sampler_file = open(os.path.join(cfg.output_dir, "sampler.jsonl"), "a") if self.rank == 0 else None
        trace_file = open(os.path.join(cfg.output_dir, "trace", f"rank{self.rank}.txt"), "a")
        progress = None
        if self.rank == 0:
            from tqdm.auto import tqdm

            progress = tqdm(total=cfg.max_steps, initial=self.step, desc="pre-training", mininterval=1.0)

        # The first update only stores the baseline losses: take it before training starts.
        if self.step == 0 and self.num_updates == 0 and self.sampler.needs_meta_validation:
            self._meta_update(sampler_file)

        self.engine.train()
        tokens_per_step = self.micro_batch * self.gas * self.world_size * cfg.seq_len
        stopped_by_signal = False
        start_step = self.step
        while self.step < end_step:
            started = time.perf_counter()
            losses, names = [], []
            while True:  # micro-steps until DeepSpeed's accumulation boundary
                name, loss = self._micro_step(trace_file)
                if self.consecutive_skips >= cfg.max_skipped_steps:
                    # Every rank counts the same skips (all-reduced decisions), so all stop here together.
                    last = ckpt.latest_complete_tag(os.path.join(cfg.output_dir, "checkpoints"))
                    raise NonFiniteLossError(
                        f"stopping at step {self.step}: {self.consecutive_skips} consecutive skips for a non-finite "
                        f"loss or gradient norm (--max_skipped_steps {cfg.max_skipped_steps}); no checkpoint is "
                        f"written, the last good one is "
                        f"{os.path.join(cfg.output_dir, 'checkpoints', last) if last else '(none)'}"
                    )
                if loss is None:
                    continue
                losses.append(loss)
                names.append(name)
                if self._boundary_done:
                    break
            self.step += 1
            faults.hang_at_step(self.step)
            elapsed = time.perf_counter() - started
            if metrics_file is not None:
                record = {
                    "step": self.step, "objective": ",".join(dict.fromkeys(names)),
                    "loss": sum(losses) / len(losses), "lr": float(self.engine.get_lr()[0]),
                    "grad_norm": _as_float(self.engine.get_global_grad_norm()),
                    "samples_per_s": self.micro_batch * self.gas * self.world_size / elapsed,
                    "tokens_per_s": tokens_per_step / elapsed, "skipped_micro_steps": self.skipped_steps,
                    "skipped_updates": self.skipped_updates,
                }
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                self._monitor([("Train/loss", record["loss"]), ("Train/lr", record["lr"])])
                progress.update(1)
                if self.step % cfg.log_steps == 0 or self.step == end_step:
                    progress.set_postfix(loss=f"{record['loss']:.3f}", objective=record["objective"],
                                         samples_s=f"{record['samples_per_s']:.1f}")
            if self.step % cfg.meta_interval == 0:
                self._meta_update(sampler_file)
            if self._stop_agreed():
                stopped_by_signal = True
                break
            if self.step % cfg.save_steps == 0 and self.step < end_step:
                self.save_checkpoint()
        if self.step > start_step:
            self.save_checkpoint()
        elif self.rank == 0:
            # A resume of a finished run: re-saving would only unpublish and rewrite the final checkpoint.
            logger.info("nothing to train: the run is at step %d, --max_steps %d", self.step, cfg.max_steps)
        for f in (metrics_file, sampler_file, trace_file):
            if f is not None:
                f.close()
        if progress is not None:
            progress.close()
        finished = self.step >= cfg.max_steps
        if finished:
            self.export_hf()
        if self.rank == 0:
            logger.info("stopped at step %d (%s)", self.step,
                        "signal" if stopped_by_signal else "finished" if finished else "--steps_this_run")
        return {"step": self.step, "finished": finished, "stopped_by_signal": stopped_by_signal}

    def _micro_step(self, trace_file):
        """One micro-batch: draw the objective, corrupt, forward, backward, maybe the optimizer step.

        Returns (objective name, loss) or (name, None) when the micro-step was skipped
        because some rank's loss was not finite.
        """
        # Keyed by the optimizer step: every micro-batch of a step (a retried one too) trains the step's
        # objective, and the rollout holds one draw per step, as the policy update counts them.
        index = self.sampler.sample(self.step)
        name = self.objective_names[index]
        clean = next(self.batches)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(_seed_for(self.cfg.seed, self.micro_step, self.rank))
        batch = self._corrupt(name, clean, generator)
        trace_file.write(name + "\n")
        trace_file.flush()
        self.micro_step += 1
        loss = faults.nonfinite_loss(self.engine(batch, name)["loss"], self.micro_step - 1)
        if not self._all_finite(loss):
            self.skipped_steps += 1
            self.consecutive_skips += 1
            logger.warning("rank %d: non-finite loss at micro-step %d (%s): skipped on every rank",
                           self.rank, self.micro_step - 1, name)
            self._boundary_done = False
            return name, None
        # Read now: the finite check above already waited for the forward pass, whereas reading after
        # step() would wait for backward and the optimizer too.
        loss_value = float(loss.detach().float())
        self.engine.backward(faults.nonfinite_grad(loss, self.micro_step - 1))
        self._boundary_done = self.engine.is_gradient_accumulation_boundary()
        if self._boundary_done and self.engine.zero_optimization_stage() == 3:
            self._zero_unused_head_grads(name)
        self.engine.step()
        if self._boundary_done:
            self._count_update()
        return name, loss_value

    def _zero_unused_head_grads(self, objective: str) -> None:
        """Zero the gradients of the heads this step did not use, before a ZeRO-3 optimizer step.

        ZeRO-3 keeps each parameter's gradient partition in a buffer that only that parameter's
        own backward overwrites, so an unused head would hand the optimizer (and the clipping
        norm) the gradient of the last step that used it. ZeRO-1/2 give such parameters zeros;
        this does the same through DeepSpeed's public gradient API.
        """
        from deepspeed.utils import safe_set_local_grad

        used = self.model.heads[self.objectives[objective].head_name]
        trained = {id(param) for param in used.parameters()}  # a module two heads share keeps its gradient
        for head in self.model.heads.values():
            for param in head.parameters():
                if param.requires_grad and id(param) not in trained:
                    safe_set_local_grad(param, torch.zeros_like(param.ds_tensor))

    def _count_update(self):
        """After an optimizer step: was the update applied? DeepSpeed's ZeRO optimizers skip an update
        whose gradient norm is not finite, deciding by an all-reduce, so the global norm says it on
        every rank. Under fp16 that is the loss scaler's normal search and is not counted."""
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is None or math.isfinite(float(grad_norm)):
            self.consecutive_skips = 0
        elif not self.engine.fp16_enabled():
            self.skipped_updates += 1
            self.consecutive_skips += 1
            logger.warning("rank %d: non-finite gradient norm at step %d: update skipped", self.rank, self.step + 1)

    def _corrupt(self, name: str, clean: Dict[str, torch.Tensor], generator) -> Dict[str, torch.Tensor]:
        pinned = self.device.type == "cuda"  # from pinned memory the copy does not block the host

        def to_device(column):
            return (column.pin_memory() if pinned else column).to(self.device, non_blocking=pinned)

        return self.objectives[name].corrupt(to_device(clean["input_ids"]), to_device(clean["attention_mask"]),
                                             generator=generator)

    # ---------------------------------------------------------------- sampler update
    def _meta_update(self, sampler_file):
        """Measure every objective on the meta-validation batch across ranks, then update the sampler."""
        from .samplers import meta_update_distributed

        if self.sampler.needs_meta_validation:
            loss_sums, counts = self._measure_meta_losses()
            info = meta_update_distributed(self.sampler, loss_sums, counts, device=self.device)
        else:
            info = self.sampler.update()  # rule-based: clears the rollout, probabilities unchanged
        self.num_updates += 1
        if sampler_file is not None:
            names = self.objective_names
            val_losses = info.get("val_losses")
            record = {
                "step": self.step,
                "probs": dict(zip(names, [float(p) for p in self.sampler.probs.tolist()])),
                "reward": _as_float(info.get("reward")),
                "val_losses": dict(zip(names, [_as_float(v) for v in val_losses])) if val_losses is not None else None,
                "policy_loss": _as_float(info.get("policy_loss")),
                "skipped": bool(info.get("skipped", False)),
            }
            sampler_file.write(json.dumps(record) + "\n")
            sampler_file.flush()
            self._monitor([(f"Sampler/p_{name}", p) for name, p in record["probs"].items()])

    @torch.no_grad()
    def _measure_meta_losses(self):
        """This rank's per-objective loss sums and sequence counts on its shard of the meta-validation batch.

        Each rank evaluates meta_batch_size / world_size sequences per objective (the
        published code evaluates the whole batch on every rank).
        """
        from .samplers import shard_range

        cfg = self.cfg
        meta = self.meta_rows
        draw_id = 0 if getattr(self.sampler, "fixed_meta_set", False) else self.num_updates
        lo, hi = shard_range(cfg.meta_batch_size, self.rank, self.world_size)
        n = len(self.objective_names)
        # Summed on the device: one transfer per update instead of a host sync per chunk.
        loss_sums = torch.zeros(n, dtype=torch.float64, device=self.device)
        counts = torch.zeros(n, dtype=torch.float64)
        self.engine.eval()
        try:
            for k, name in enumerate(self.objective_names):
                # The same rows on every rank for a given update; each rank takes its own slice.
                rows_gen = torch.Generator().manual_seed(_seed_for(cfg.seed, 7, draw_id, k))
                rows = torch.randperm(len(meta["input_ids"]), generator=rows_gen)[: cfg.meta_batch_size][lo:hi]
                generator = torch.Generator(device=self.device)
                generator.manual_seed(_seed_for(cfg.seed, 11, draw_id, k, self.rank))
                objective = self.objectives[name]
                for chunk_rows in meta_chunks(rows, self.micro_batch, objective.min_rows):
                    clean = {key: column[chunk_rows] for key, column in meta.items()}
                    batch = self._corrupt(name, clean, generator)
                    if objective.meta_eval_with_dropout:
                        loss = self._forward_with_dropout(batch, name, _seed_for(cfg.seed, 13, draw_id, k, self.rank))
                    else:
                        loss = self.engine(batch, name)["loss"]
                    loss_sums[k] += loss.detach().double() * len(clean["input_ids"])
                    counts[k] += len(clean["input_ids"])
        finally:
            self.engine.train()
        return loss_sums.cpu(), counts

    def _forward_with_dropout(self, batch, name: str, seed: int) -> torch.Tensor:
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

    # ---------------------------------------------------------------- agreement between ranks
    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Whether every rank's loss is finite, and whether any rank asked to stop (same collective)."""
        # Built on the device and read once, after the all-reduce: on a GPU each host read is a sync.
        not_finite = (~torch.isfinite(loss.detach()).all()).to(torch.float32)
        flags = torch.stack([not_finite, not_finite.new_full((), float(self.stop_requested))])
        if self.world_size > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        any_not_finite, any_stop = flags.tolist()
        if any_stop > 0:
            self.stop_agreed = True
        return any_not_finite == 0

    def _stop_agreed(self) -> bool:
        # Only what the all-reduce said: a signal landing after the step's last all-reduce waits for
        # the next step, else the ranks could disagree and deadlock in a half-joined save.
        return self.stop_agreed

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

    def _monitor(self, events):
        monitor = getattr(self.engine, "monitor", None)
        if monitor is not None and getattr(monitor, "enabled", False):
            monitor.write_events([(tag, value, self.step) for tag, value in events])

    # ---------------------------------------------------------------- export
    def export_hf(self):
        out_dir = os.path.join(self.cfg.output_dir, "hf_model")
        state_dict = ckpt.consolidated_state_dict(self.engine, os.path.join(self.cfg.output_dir, "checkpoints"), self.step)

        def write():  # whole or absent (safe_io); a failure stops every rank, with a message
            write_dir_atomically(out_dir, lambda tmp: self.model.save_hf(tmp, self.tokenizer, state_dict=state_dict),
                                 what_to_do=export_retry_hint(self.cfg, self.step))
            logger.info("exported the model and tokenizer (HF format) to %s", out_dir)

        with self.signals.saving():  # on the setup group: writing a large model may outlast --dist_timeout_minutes
            self._on_rank0_first(write)


def _fit_schedule_to_max_steps(ds_config: dict, max_steps: int) -> None:
    """WarmupDecayLR's total steps follow --max_steps; the warm-up keeps its fraction of the schedule."""
    scheduler = ds_config.get("scheduler")
    if not scheduler or scheduler.get("type") != "WarmupDecayLR":
        return
    params = scheduler.setdefault("params", {})
    total = params.get("total_num_steps")
    warmup = params.get("warmup_num_steps", 0)
    if total and total != max_steps:
        params["warmup_num_steps"] = max(1, round(warmup / total * max_steps)) if warmup else 0
        params["total_num_steps"] = max_steps


def _keep_first_lines(path: str, count: int) -> None:
    """Truncate a text file after its first ``count`` complete lines (a half-written last line goes too)."""
    if not os.path.isfile(path):
        return
    size = 0
    with open(path, "rb") as f:
        for _ in range(count):
            line = f.readline()
            if not line.endswith(b"\n"):
                break
            size += len(line)
    os.truncate(path, size)


def _check_writable(output_dir: str, sub: str = "") -> None:
    """Create output_dir[/sub] and write a probe file in it, or stop with a ConfigError naming --output_dir."""
    path = os.path.join(output_dir, sub) if sub else output_dir
    probe = os.path.join(path, f".write_test.{socket.gethostname()}.{os.getpid()}")
    try:
        os.makedirs(path, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as exc:
        raise ConfigError(f"--output_dir: {path} cannot be written ({exc})") from exc


def _as_float(value) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _setup_logging(rank: int) -> None:
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"[%(asctime)s] [rank {rank}] %(levelname)s %(name)s: %(message)s",
    )
