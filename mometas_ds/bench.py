"""``mometas-bench``: what MOMETAS costs per step, against uniform sampling and a single objective.

One process (or one per rank) builds the model and the DeepSpeed engine once, then trains it in
three arms that differ only in the objective sampler:

  single   one objective (mlm by default): a fixed sampler with all weight on it
  uniform  every objective with probability 1/N
  mometas  the MOMETAS sampler, updated by the distributed meta-validation every --interval steps

Each arm runs the trainer's own per-step code (``Trainer._micro_step``, ``Trainer._meta_update``
and ``Trainer._measure_meta_losses``) on synthetic random token batches, so no corpus or tokenizer
is needed. The arms are interleaved finely: a round is --block_steps optimizer steps of each arm (a
whole number of sampler intervals), after a forward-cost probe; within it the arms take turns of
--turn_steps steps, in a random order each turn. Drift and bursts of other work on the machine thus
hit every arm alike. An arm's time in a round is the sum of its own timed steps and
sampler-update calls (on a GPU each is synchronized); samples/s = steps x samples per step / that
time. Figures are medians over rounds.

Overhead is measured against uniform sampling *at MOMETAS's objective mix*: objectives differ in
cost (cse encodes every row twice), so a MOMETAS block that happened to draw cse more often would
look slower for a reason that is not the sampler. Both samplers use the same seed, so they draw the
same objective at the same step until MOMETAS's probabilities move away from uniform (the agreement
is reported), and the remaining difference is removed by pricing MOMETAS's draws at the uniform
arm's per-objective micro-step cost of the same round:

  U* = sum_k n_k(mometas) * c_k(uniform)        overhead = T(mometas block) / U* - 1

The breakdown is timed directly inside the MOMETAS arm (per sampler update): meta-validation
forward passes, meta-validation corruption, and the sampler update with its all-reduces (none on
one rank); "rest" is the measured overhead they do not explain (MOMETAS-arm training steps slower
than uniform's, noise).
The prediction uses the config and two measured costs:

  predicted = objectives x (meta_batch_size / ranks) x forward_s_per_meta_sequence / (interval x train_step_s)

where forward_s_per_meta_sequence comes from the probe (each objective's forward as the
meta-validation runs it, i.e. eval mode with cse's dropout on, on as many rows as a meta-validation
chunk holds, corruption excluded, per row, averaged over objectives) and train_step_s = U* / steps.

    mometas-bench --quick --json runs/bench/mometas_quick.json
    mometas-bench --quick --ranks 2            # re-launches itself through the deepspeed launcher
    mometas-bench --model base --seq_len 256 --micro_batch 32 --torch_adam   # on a GPU: bert_base_zero2.json, bf16
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import logging
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

from .config import bundled_ds_config
from .model import MODEL_PRESETS
from .objectives import DEFAULT_OBJECTIVES, SpecialTokens

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_CONFIG = bundled_ds_config("cpu_demo.json")
GPU_CONFIG = bundled_ds_config("bert_base_zero2.json")
ARMS = ["single", "uniform", "mometas"]
# --quick: sized to finish in a few minutes on a 2-core CPU with 1 or 2 ranks.
# Its ratio of meta-validation forwards to training steps is the paper's: (8 / 8) x 5 per 25 steps = (128 / 32) x 5 per 100.
QUICK = dict(model="tiny", seq_len=32, interval=25, meta_batch_size=8, rounds=4, warmup_steps=3, probe_reps=3)
DEFAULTS = dict(model="tiny", seq_len=128, interval=100, meta_batch_size=128, rounds=5, warmup_steps=10, probe_reps=5)


class BenchError(ValueError):
    """A bad flag; the message names it."""


@dataclass
class BenchConfig:
    model: str = DEFAULTS["model"]
    seq_len: int = DEFAULTS["seq_len"]
    micro_batch: Optional[int] = None  # None: the DeepSpeed config's train_micro_batch_size_per_gpu
    interval: int = DEFAULTS["interval"]
    meta_batch_size: int = DEFAULTS["meta_batch_size"]
    objectives: List[str] = field(default_factory=lambda: list(DEFAULT_OBJECTIVES))
    single_objective: str = "mlm"
    deepspeed_config: Optional[str] = None  # None: cpu_demo.json on the CPU, bert_base_zero2.json on a GPU
    rounds: int = DEFAULTS["rounds"]
    block_steps: Optional[int] = None  # None: --interval (one sampler update per MOMETAS block)
    turn_steps: int = 1
    warmup_steps: int = DEFAULTS["warmup_steps"]
    probe_reps: int = DEFAULTS["probe_reps"]
    vocab_size: int = 30522
    meta_lr: float = 0.1
    meta_gamma: float = 2.0
    seed: int = 1234
    torch_adam: bool = False
    quick: bool = False
    ranks: Optional[int] = None
    json: Optional[str] = None
    argv: List[str] = field(default_factory=list)  # the command line, for the record


def _csv(value: str) -> List[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mometas-bench",
        description="Samples/s and tokens/s of one objective, uniform sampling and MOMETAS on the same model and "
        "DeepSpeed config (interleaved rounds, medians); MOMETAS's overhead against uniform, its breakdown, "
        "and the overhead predicted from the config.",
    )
    p.add_argument("--model", default=None, choices=sorted(MODEL_PRESETS),
                   help=f"model preset (default {DEFAULTS['model']}; --quick: {QUICK['model']})")
    p.add_argument("--seq_len", type=int, default=None,
                   help=f"tokens per sequence (default {DEFAULTS['seq_len']}; --quick: {QUICK['seq_len']})")
    p.add_argument("--micro_batch", type=int, default=None,
                   help="sequences per micro-batch per rank; overrides the DeepSpeed config's train_micro_batch_size_per_gpu")
    p.add_argument("--interval", type=int, default=None,
                   help=f"optimizer steps between MOMETAS updates (default {DEFAULTS['interval']}; --quick: {QUICK['interval']})")
    p.add_argument("--meta_batch_size", type=int, default=None,
                   help="meta-validation sequences per objective per update, split across ranks "
                   f"(default {DEFAULTS['meta_batch_size']}; --quick: {QUICK['meta_batch_size']})")
    p.add_argument("--objectives", type=_csv, default=list(DEFAULT_OBJECTIVES),
                   help="comma-separated objectives of the uniform and MOMETAS arms (default: mlm,gmlm,atd,dtd,cse)")
    p.add_argument("--single_objective", default=None,
                   help="objective of the single-objective arm (default: mlm if among --objectives, else the first)")
    p.add_argument("--deepspeed_config", "--deepspeed-config", dest="deepspeed_config", default=None,
                   help="DeepSpeed JSON config (default: ds_configs/cpu_demo.json on the CPU, "
                   "ds_configs/bert_base_zero2.json on a GPU)")
    p.add_argument("--rounds", type=int, default=None,
                   help=f"interleaved rounds; figures are medians over them (default {DEFAULTS['rounds']}; --quick: {QUICK['rounds']})")
    p.add_argument("--block_steps", type=int, default=None,
                   help="optimizer steps per arm per round (the arms take turns within it), a multiple of --interval "
                   "(default: --interval)")
    p.add_argument("--turn_steps", type=int, default=1,
                   help="consecutive steps of one arm before the next arm's turn (random arm order per turn)")
    p.add_argument("--warmup_steps", type=int, default=None, help="untimed steps of each arm before the rounds")
    p.add_argument("--probe_reps", type=int, default=None,
                   help="eval forwards of each objective per round in the forward-cost probe")
    p.add_argument("--vocab_size", type=int, default=30522, help="vocabulary of the synthetic tokens and the model (BERT: 30522)")
    p.add_argument("--meta_lr", type=float, default=0.1, help="MOMETAS policy learning rate")
    p.add_argument("--meta_gamma", type=float, default=2.0, help="MOMETAS entropy weight")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--torch_adam", action="store_true",
                   help="set the config's AdamW to torch.optim.AdamW (\"torch_adam\": true): no JIT build of DeepSpeed's "
                   "FusedAdam, which needs nvcc; the same optimizer in every arm")
    p.add_argument("--quick", action="store_true",
                   help="small settings that finish in a few minutes on a 2-core CPU (flags given explicitly still win)")
    p.add_argument("--ranks", type=int, default=None,
                   help="run on N ranks: re-launches this command through the deepspeed launcher (default: as launched)")
    p.add_argument("--json", default=None, metavar="PATH", help="write every figure to this JSON file")
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help="set by the deepspeed launcher")
    return p


def parse_args(argv=None) -> BenchConfig:
    ns = build_arg_parser().parse_args(argv)
    preset = QUICK if ns.quick else DEFAULTS
    values = {}
    for key in BenchConfig.__dataclass_fields__:
        value = getattr(ns, key, None)
        if value is None and key in preset:
            value = preset[key]
        if value is not None:
            values[key] = value
    if ns.single_objective is None:
        objectives = values.get("objectives", list(DEFAULT_OBJECTIVES))
        values["single_objective"] = "mlm" if "mlm" in objectives else (objectives[0] if objectives else "mlm")
    cfg = BenchConfig(**values)
    cfg.argv = [a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith(("--local_rank", "--local-rank"))]
    if cfg.block_steps is None:
        cfg.block_steps = cfg.interval
    validate(cfg)
    return cfg


def validate(cfg: BenchConfig) -> None:
    from .config import objective_names_problem

    def fail(flag, message):
        raise BenchError(f"--{flag}: {message}")

    for flag in ("seq_len", "interval", "meta_batch_size", "rounds", "block_steps", "turn_steps", "probe_reps"):
        if getattr(cfg, flag) < 1:
            fail(flag, f"must be >= 1, got {getattr(cfg, flag)}")
    if cfg.seq_len < 8:
        fail("seq_len", f"must be >= 8, got {cfg.seq_len}")
    if cfg.warmup_steps < 0:
        fail("warmup_steps", f"must be >= 0, got {cfg.warmup_steps}")
    if cfg.micro_batch is not None and cfg.micro_batch < 1:
        fail("micro_batch", f"must be >= 1, got {cfg.micro_batch}")
    if cfg.ranks is not None and cfg.ranks < 1:
        fail("ranks", f"must be >= 1, got {cfg.ranks}")
    if cfg.ranks is not None and cfg.meta_batch_size % cfg.ranks:
        fail("meta_batch_size", f"{cfg.meta_batch_size} sequences per objective do not divide across --ranks {cfg.ranks}")
    if cfg.block_steps % cfg.interval:
        fail("block_steps", f"{cfg.block_steps} is not a multiple of --interval {cfg.interval}: every MOMETAS block "
             "must hold whole update intervals, or its cost depends on where the block falls")
    if cfg.vocab_size < 200:
        fail("vocab_size", f"must be >= 200, got {cfg.vocab_size}")
    problem = objective_names_problem(cfg.objectives)
    if problem:
        fail("objectives", problem)
    if cfg.single_objective not in cfg.objectives:
        fail("single_objective", f"{cfg.single_objective!r} is not one of --objectives {','.join(cfg.objectives)}")
    if cfg.deepspeed_config is not None and not os.path.isfile(cfg.deepspeed_config):
        fail("deepspeed_config", f"file not found: {cfg.deepspeed_config}")
    if cfg.deepspeed_config is not None:  # strict field types, no unknown top-level key (issue 21)
        from .config import read_json_object
        from .ds_config_check import check_ds_config

        check_ds_config(read_json_object(cfg.deepspeed_config, "--deepspeed_config", BenchError),
                        cfg.deepspeed_config, error=BenchError)
    for flag in ("meta_lr", "meta_gamma"):
        if not math.isfinite(getattr(cfg, flag)) or getattr(cfg, flag) < 0 or (flag == "meta_lr" and cfg.meta_lr == 0):
            fail(flag, f"must be a finite number {'>' if flag == 'meta_lr' else '>='} 0, got {getattr(cfg, flag)}")


# ------------------------------------------------------------------------------------------ synthetic data

BERT_SPECIAL_IDS = dict(pad_id=0, cls_id=101, sep_id=102, mask_id=103)


def synthetic_rows(num_rows: int, seq_len: int, special: SpecialTokens, seed: int):
    """Rows like packed pre-training data: 70% filled to seq_len, 30% shorter (a document ended).

    Tokens are uniform over ordinary ids (from 999 up, above BERT's [unused] ids, for a BERT-sized vocabulary).
    """
    g = torch.Generator().manual_seed(seed)
    low = 999 if special.vocab_size > 2000 else max(special.ids) + 1
    full = torch.rand(num_rows, generator=g) < 0.7
    short = torch.randint(seq_len // 4, seq_len, (num_rows,), generator=g)
    lengths = torch.where(full, seq_len, short)
    positions = torch.arange(seq_len)
    inside = positions < lengths[:, None]
    ids = torch.randint(low, special.vocab_size, (num_rows, seq_len), generator=g)
    ids = torch.where(inside, ids, special.pad_id)
    ids[:, 0] = special.cls_id
    ids[torch.arange(num_rows), lengths - 1] = special.sep_id
    return ids, inside.long()


class SyntheticBatches:
    """Stands in for ``data.ShardedBatches``: cycles through a fixed pool, so drawing a batch costs ~nothing."""

    def __init__(self, batch_size: int, seq_len: int, special: SpecialTokens, seed: int, pool: int = 16):
        ids, mask = synthetic_rows(batch_size * pool, seq_len, special, seed)
        self._pool = [{"input_ids": i, "attention_mask": m}
                      for i, m in zip(ids.split(batch_size), mask.split(batch_size))]
        self._next = 0

    def __iter__(self):
        return self

    def __next__(self) -> Dict[str, torch.Tensor]:
        batch = self._pool[self._next % len(self._pool)]
        self._next += 1
        return batch


class _Discard:
    """The per-micro-step trace file of a real run; the benchmark keeps no trace."""

    def write(self, text):
        pass

    def flush(self):
        pass


# ------------------------------------------------------------------------------------------ timing


class PhaseTimer:
    """Seconds per named phase. ``sync`` waits for queued device work so that GPU time lands where it is spent."""

    def __init__(self, sync: Callable[[], None]):
        self.sync = sync
        self.totals: Dict[str, float] = defaultdict(float)
        self.phase = "train"  # corruption time is booked to "<phase>_corrupt"

    @contextmanager
    def measure(self, key: str):
        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.totals[key] += time.perf_counter() - start

    def snapshot(self) -> Dict[str, float]:
        return dict(self.totals)


def _delta(after: Dict[str, float], before: Dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


@dataclass
class Block:
    """One arm's share of one round: its steps' and sampler updates' timed seconds."""

    arm: str
    round: int
    steps: int = 0
    seconds: float = 0.0
    micro_steps: List[tuple] = field(default_factory=list)  # (objective, seconds) per micro-step
    updates: int = 0
    meta_update_s: float = 0.0
    meta_measure_s: float = 0.0
    meta_corrupt_s: float = 0.0
    train_corrupt_s: float = 0.0


# ------------------------------------------------------------------------------------------ the bench


class Bench:
    """The model and engine, built once; one Trainer per arm sharing them, differing in sampler and clocks."""

    def __init__(self, cfg: BenchConfig):
        from deepspeed.accelerator import get_accelerator

        from .config import PretrainConfig
        from .launch import init_distributed
        from .model import MultiObjectiveBert, build_bert_config
        from .objectives import build_objective
        from .samplers import build_sampler
        from .trainer import Trainer

        self.cfg = cfg
        self.launch = init_distributed(30.0)
        self.rank, self.world_size = self.launch.rank, self.launch.world_size
        if cfg.ranks is not None and cfg.ranks != self.world_size:
            raise BenchError(f"--ranks: asked for {cfg.ranks} rank(s), launched with {self.world_size}")
        if cfg.meta_batch_size % self.world_size:
            raise BenchError(f"--meta_batch_size: {cfg.meta_batch_size} sequences per objective do not divide "
                             f"across {self.world_size} ranks")
        accel = get_accelerator()
        self.device_type = accel.device_name()
        self.sync = accel.synchronize if self.device_type != "cpu" else (lambda: None)

        ds_path = cfg.deepspeed_config or (CPU_CONFIG if self.device_type == "cpu" else GPU_CONFIG)
        self.ds_path = ds_path
        self.ds_config = load_ds_config(ds_path, cfg.micro_batch, self.world_size, cfg.torch_adam)
        self.micro_batch = self.ds_config["train_micro_batch_size_per_gpu"]
        self.gas = self.ds_config.get("gradient_accumulation_steps", 1)

        torch.manual_seed(cfg.seed)
        self.special = SpecialTokens(vocab_size=cfg.vocab_size, **BERT_SPECIAL_IDS)
        objectives = {name: build_objective(name, self.special) for name in cfg.objectives}
        bert_config = build_bert_config(cfg.model, vocab_size=cfg.vocab_size,
                                        max_position_embeddings=max(512, cfg.seq_len))
        model = MultiObjectiveBert.from_config(bert_config, objectives)
        self.num_parameters = sum(p.numel() for p in model.parameters())
        self.planned_steps = len(cfg.objectives) + len(ARMS) * (cfg.warmup_steps + cfg.rounds * cfg.block_steps)

        # A Trainer without its corpus-dependent set-up: its per-step methods read only these attributes.
        base = Trainer.__new__(Trainer)
        base.cfg = PretrainConfig(deepspeed_config=ds_path, model_config=cfg.model, seq_len=cfg.seq_len,
                                  objectives=list(cfg.objectives), meta_interval=cfg.interval,
                                  meta_batch_size=cfg.meta_batch_size, max_steps=self.planned_steps, seed=cfg.seed)
        base.ds_config = self.ds_config
        base.rank, base.world_size = self.rank, self.world_size
        base.model = model
        base.objectives = objectives
        base.objective_names = list(cfg.objectives)
        base.engine = Trainer._build_engine(base)
        base.device = base.engine.device
        base.gas = base.engine.gradient_accumulation_steps()
        base.micro_batch = base.engine.train_micro_batch_size_per_gpu()
        # The meta-validation split in the form the trainer holds it (Trainer.meta_rows).
        ids, mask = synthetic_rows(2 * cfg.meta_batch_size, cfg.seq_len, self.special, seed=cfg.seed + 1_000_003)
        base.meta_rows = {"input_ids": ids, "attention_mask": mask}
        base.step = base.micro_step = base.num_updates = 0
        base.skipped_steps = base.skipped_updates = base.consecutive_skips = 0
        base.stop_requested = base.stop_agreed = False
        base._boundary_done = False
        self.engine = base.engine
        self.device = base.device
        self.probe_rows = min(base.micro_batch, cfg.meta_batch_size // self.world_size)

        n = len(cfg.objectives)
        one_hot = [1.0 if name == cfg.single_objective else 0.0 for name in cfg.objectives]
        samplers = {
            "single": build_sampler("fixed", num_objectives=n, seed=cfg.seed, interval=cfg.interval, weights=one_hot),
            # The same seed: uniform and MOMETAS draw the same objective at the same step while MOMETAS is near uniform.
            "uniform": build_sampler("uniform", num_objectives=n, seed=cfg.seed, interval=cfg.interval),
            "mometas": build_sampler("mometas", num_objectives=n, seed=cfg.seed, interval=cfg.interval,
                                     lr=cfg.meta_lr, gamma=cfg.meta_gamma),
        }
        self.timer = PhaseTimer(self.sync)
        self._update_due = {arm: False for arm in ARMS}
        self.trainers = {}
        for arm in ARMS:
            trainer = copy.copy(base)  # shares the engine, model, objectives and meta-validation split
            trainer.sampler = samplers[arm]
            # Every arm reads the same batches in the same order (each rank its own).
            trainer.batches = SyntheticBatches(base.micro_batch, cfg.seq_len, self.special, seed=cfg.seed + 1 + self.rank)
            self._instrument(trainer)
            self.trainers[arm] = trainer
        self._trace = _Discard()

    def _instrument(self, trainer) -> None:
        """Book the time of corruption and of the meta-validation as the trainer's own methods run."""
        timer = self.timer
        corrupt, measure = trainer._corrupt, trainer._measure_meta_losses

        def timed_corrupt(name, clean, generator):
            with timer.measure(f"{timer.phase}_corrupt"):
                return corrupt(name, clean, generator)

        def timed_measure():
            with timer.measure("meta_measure"):
                return measure()

        trainer._corrupt = timed_corrupt
        trainer._measure_meta_losses = timed_measure

    # -------------------------------------------------------------- running
    def _meta_update(self, trainer) -> None:
        # Every sampler gets its update call at the interval, as in Trainer.train (rule-based ones only clear the rollout).
        self.timer.phase = "meta"
        try:
            with self.timer.measure("meta_update"):
                trainer._meta_update(None)
        finally:
            self.timer.phase = "train"

    def _optimizer_step(self, trainer, micro_times: List[tuple]) -> None:
        while True:  # micro-steps until DeepSpeed's accumulation boundary, as in Trainer.train
            start = time.perf_counter()
            name, loss = trainer._micro_step(self._trace)
            self.sync()
            micro_times.append((name, time.perf_counter() - start))
            if loss is None:
                if trainer.consecutive_skips >= 10:
                    raise RuntimeError(f"{trainer.consecutive_skips} consecutive non-finite losses")
                continue
            if trainer._boundary_done:
                break
        trainer.step += 1

    def _warm_every_objective(self) -> None:
        from .samplers import build_sampler

        n = len(self.cfg.objectives)
        for k in range(n):
            trainer = copy.copy(self.trainers["single"])
            trainer.sampler = build_sampler("fixed", num_objectives=n, seed=self.cfg.seed, interval=self.cfg.interval,
                                            weights=[1.0 if i == k else 0.0 for i in range(n)])
            self._optimizer_step(trainer, [])

    def timed_step(self, arm: str, block: Block) -> None:
        """One optimizer step of ``arm``, preceded by the sampler update that its last step made due; booked to ``block``.

        The update runs at the start of the arm's next step rather than at the end of the step that
        completed the interval: the same order of work as in Trainer.train, and whatever the update
        leaves behind (caches filled by the meta-validation) slows this arm's own step, not another arm's.
        """
        trainer = self.trainers[arm]
        before = self.timer.snapshot()
        updates_before = trainer.num_updates
        if self._update_due[arm]:
            self._meta_update(trainer)
            self._update_due[arm] = False
        self._optimizer_step(trainer, block.micro_steps)
        self._update_due[arm] = trainer.step % self.cfg.interval == 0
        after = self.timer.snapshot()
        block.steps += 1
        block.updates += trainer.num_updates - updates_before
        block.meta_update_s += _delta(after, before, "meta_update")
        block.meta_measure_s += _delta(after, before, "meta_measure")
        block.meta_corrupt_s += _delta(after, before, "meta_corrupt")
        block.train_corrupt_s += _delta(after, before, "train_corrupt")
        block.seconds = sum(seconds for _, seconds in block.micro_steps) + block.meta_update_s

    @torch.no_grad()
    def probe_forward(self, reps: int) -> Dict[str, List[float]]:
        """Forward time per meta-validation sequence of each objective, corruption excluded, run as
        the meta-validation runs it (eval mode; with dropout for objectives that ask, i.e. cse).

        Each forward takes as many rows as a chunk of this rank's meta-validation does
        (``Trainer._measure_meta_losses`` evaluates its shard in chunks of the micro-batch).
        """
        trainer = self.trainers["mometas"]
        clean = {key: column[: self.probe_rows] for key, column in trainer.meta_rows.items()}
        generator = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
        from .trainer import Trainer

        batches = {name: Trainer._corrupt(trainer, name, clean, generator) for name in self.cfg.objectives}
        times: Dict[str, List[float]] = {name: [] for name in self.cfg.objectives}
        self.engine.eval()
        try:
            for _ in range(reps):
                for name, batch in batches.items():
                    self.sync()
                    start = time.perf_counter()
                    if trainer.objectives[name].meta_eval_with_dropout:  # as the meta-validation runs it
                        loss = Trainer._forward_with_dropout(trainer, batch, name, self.cfg.seed)
                    else:
                        loss = self.engine(batch, name)["loss"]
                    float(loss.float())
                    self.sync()
                    times[name].append((time.perf_counter() - start) / self.probe_rows)
        finally:
            self.engine.train()
        return times

    def run(self) -> dict:
        cfg = self.cfg
        started = time.perf_counter()
        # Warm-up (untimed): one training step of every objective (lazy allocations and, on a GPU, Triton
        # compiles land here, not in a timed step), every arm's code path, and MOMETAS's baseline update
        # as at step 0 of a real run.
        self._warm_every_objective()
        self._meta_update(self.trainers["mometas"])
        for arm in ARMS:
            micro: List[tuple] = []
            for _ in range(cfg.warmup_steps):
                self._optimizer_step(self.trainers[arm], micro)
        for arm in ARMS:  # every arm's interval clock starts at 0, with an update due (after the warm-up's draws)
            self.trainers[arm].step = 0
            self._update_due[arm] = True
        self.probe_forward(1)
        warmup_s = time.perf_counter() - started

        blocks: List[Block] = []
        probes: List[Dict[str, List[float]]] = []
        # The arms take turns (a step each by default), in a fresh random order every turn (the same on
        # every rank): load on the machine hits all alike, and no arm always runs right after another one.
        # (Uniform and MOMETAS mostly draw the same objective on the same batch; an arm that always
        # followed its twin would run on warm caches and look faster.)
        turn_order = random.Random(cfg.seed)
        for r in range(cfg.rounds):
            probes.append(self.probe_forward(cfg.probe_reps))
            round_blocks = {arm: Block(arm=arm, round=r) for arm in ARMS}
            done = 0
            while done < cfg.block_steps:
                steps = min(cfg.turn_steps, cfg.block_steps - done)
                order = list(ARMS)
                turn_order.shuffle(order)
                for arm in order:
                    for _ in range(steps):
                        self.timed_step(arm, round_blocks[arm])
                done += steps
            blocks.extend(round_blocks.values())
            if self.rank == 0:
                print(f"[mometas-bench] round {r + 1}/{cfg.rounds}: "
                      + ", ".join(f"{arm} {b.steps / b.seconds:.2f} steps/s" for arm, b in round_blocks.items()),
                      flush=True)
        return self._summarize(blocks, probes, warmup_s, time.perf_counter() - started)

    # -------------------------------------------------------------- figures
    def _summarize(self, blocks: List[Block], probes, warmup_s: float, elapsed_s: float) -> dict:
        cfg = self.cfg
        names = list(cfg.objectives)
        samples_per_step = self.micro_batch * self.gas * self.world_size
        by_arm = {arm: [b for b in blocks if b.arm == arm] for arm in ARMS}

        def per_objective_cost(block_list) -> Dict[str, float]:
            spent, count = defaultdict(float), Counter()
            for block in block_list:
                for name, seconds in block.micro_steps:
                    spent[name] += seconds
                    count[name] += 1
            return {name: spent[name] / count[name] for name in names if count[name]}

        arms = {}
        for arm, arm_blocks in by_arm.items():
            steps_per_s = [b.steps / b.seconds for b in arm_blocks]
            draws = Counter(name for b in arm_blocks for name, _ in b.micro_steps)
            arms[arm] = {
                "samples_per_s": statistics.median(samples_per_step * s for s in steps_per_s),
                "tokens_per_s": statistics.median(samples_per_step * cfg.seq_len * s for s in steps_per_s),
                "step_s": statistics.median(b.seconds / b.steps for b in arm_blocks),
                "samples_per_s_rounds": [samples_per_step * s for s in steps_per_s],
                "draws": {name: draws.get(name, 0) for name in names},
                "micro_step_s_by_objective": per_objective_cost(arm_blocks),
                "train_corrupt_s_per_step": sum(b.train_corrupt_s for b in arm_blocks) / sum(b.steps for b in arm_blocks),
                "sampler_updates": sum(b.updates for b in arm_blocks),
            }
        arms["single"]["objective"] = cfg.single_objective

        # Mix-adjusted comparison, round by round: MOMETAS's draws priced at the uniform arm's per-objective cost.
        pooled_uniform = arms["uniform"]["micro_step_s_by_objective"]
        pooled_mometas = arms["mometas"]["micro_step_s_by_objective"]
        overhead_rounds, train_step_rounds = [], []
        for r in range(cfg.rounds):
            uniform_block = next(b for b in by_arm["uniform"] if b.round == r)
            mometas_block = next(b for b in by_arm["mometas"] if b.round == r)
            cost = {**pooled_uniform, **per_objective_cost([uniform_block])}
            # An objective uniform never drew (only in tiny runs) is priced at MOMETAS's own cost of it.
            priced = sum(cost.get(name, pooled_mometas.get(name, 0.0)) for name, _ in mometas_block.micro_steps)
            overhead_rounds.append(100.0 * (mometas_block.seconds / priced - 1.0))
            train_step_rounds.append(priced / mometas_block.steps)
        overhead_pct = statistics.median(overhead_rounds)
        train_step_s = statistics.median(train_step_rounds)
        raw_overhead_pct = 100.0 * (arms["uniform"]["samples_per_s"] / arms["mometas"]["samples_per_s"] - 1.0)
        # Both arms run the same micro-steps of the sampler clock in the same order: compare draw by draw.
        draws = {arm: [name for b in by_arm[arm] for name, _ in b.micro_steps] for arm in ("uniform", "mometas")}
        same = sum(a == b for a, b in zip(draws["uniform"], draws["mometas"]))
        draw_agreement = same / max(1, min(len(draws["uniform"]), len(draws["mometas"])))

        # Directly timed pieces of MOMETAS's sampler updates (rank 0's clock; the all-reduces wait for the slowest rank).
        mometas_blocks = by_arm["mometas"]
        updates = sum(b.updates for b in mometas_blocks)
        meta_corrupt = sum(b.meta_corrupt_s for b in mometas_blocks) / updates
        meta_forward = sum(b.meta_measure_s - b.meta_corrupt_s for b in mometas_blocks) / updates
        sampler_update = sum(b.meta_update_s - b.meta_measure_s for b in mometas_blocks) / updates
        per_interval = cfg.interval * train_step_s
        breakdown = {
            "meta_forward_s_per_update": meta_forward,
            "meta_corrupt_s_per_update": meta_corrupt,
            "sampler_update_s_per_update": sampler_update,
            "meta_forward_pct": 100.0 * meta_forward / per_interval,
            "meta_corrupt_pct": 100.0 * meta_corrupt / per_interval,
            "sampler_update_pct": 100.0 * sampler_update / per_interval,
        }
        breakdown["direct_overhead_pct"] = (breakdown["meta_forward_pct"] + breakdown["meta_corrupt_pct"]
                                            + breakdown["sampler_update_pct"])
        # What the direct timings do not explain: MOMETAS-arm training steps slower than uniform's, and noise.
        breakdown["rest_pct"] = overhead_pct - breakdown["direct_overhead_pct"]
        uniform_updates = sum(b.updates for b in by_arm["uniform"])
        breakdown["uniform_update_call_s"] = sum(b.meta_update_s for b in by_arm["uniform"]) / max(1, uniform_updates)

        # Prediction from the config and two measured costs.
        forward_by_objective = {name: statistics.median(t for probe in probes for t in probe[name]) for name in names}
        forward_per_seq = statistics.fmean(forward_by_objective.values())
        meta_per_rank = cfg.meta_batch_size // self.world_size

        def predicted(ranks: int) -> float:
            return 100.0 * len(names) * (cfg.meta_batch_size / ranks) * forward_per_seq / (cfg.interval * train_step_s)

        # Rank counts a real run could use: the batch splits evenly and every rank's share holds
        # the rows each objective needs (check_world_size refuses e.g. one cse row per rank).
        min_rows = max(self.trainers["mometas"].objectives[name].min_rows for name in names)
        rank_counts = [r for r in (1, 2, 4, 8) if cfg.meta_batch_size % r == 0 and cfg.meta_batch_size // r >= min_rows]

        return {
            "benchmark": "mometas-bench",
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": "mometas-bench " + " ".join(cfg.argv),
            "machine": machine_info(self.device_type, self.world_size),
            "config": {
                "model": cfg.model, "num_parameters": self.num_parameters, "seq_len": cfg.seq_len,
                "micro_batch": self.micro_batch, "gradient_accumulation_steps": self.gas, "ranks": self.world_size,
                "samples_per_step": samples_per_step, "interval": cfg.interval, "meta_batch_size": cfg.meta_batch_size,
                "objectives": names, "single_objective": cfg.single_objective, "deepspeed_config": self.ds_path,
                "zero_stage": self.ds_config.get("zero_optimization", {}).get("stage", 0),
                "precision": precision_of(self.ds_config), "rounds": cfg.rounds, "block_steps": cfg.block_steps,
                "turn_steps": cfg.turn_steps,
                "warmup_steps": cfg.warmup_steps, "probe_reps": cfg.probe_reps, "vocab_size": cfg.vocab_size,
                "seed": cfg.seed, "quick": cfg.quick, "torch_adam": cfg.torch_adam,
            },
            "arms": arms,
            "overhead_pct": overhead_pct,
            "overhead_pct_rounds": overhead_rounds,
            "raw_overhead_pct": raw_overhead_pct,
            "draw_agreement": draw_agreement,
            "train_step_s": train_step_s,
            "breakdown": breakdown,
            "num_objectives": len(names),
            "meta_sequences_per_rank": meta_per_rank,
            "forward_s_per_meta_sequence": forward_per_seq,
            "forward_s_per_sequence_by_objective": forward_by_objective,
            "probe_rows_per_forward": self.probe_rows,
            "predicted_overhead_pct": predicted(self.world_size),
            "predicted_overhead_pct_at_ranks": {str(r): predicted(r) for r in rank_counts},
            "skipped_micro_steps": {arm: self.trainers[arm].skipped_steps for arm in ARMS},
            "warmup_s": warmup_s,
            "elapsed_s": elapsed_s,
            "method": (
                "rounds of block_steps steps per arm, arms taking turns of turn_steps steps in a random order per turn; an "
                "arm's time = sum of its timed steps and sampler-update calls; medians over rounds; overhead_pct = median over rounds of "
                "T(mometas block) / U* - 1, U* = MOMETAS's drawn micro-steps priced at the uniform arm's mean "
                "micro-step cost per objective in the same round; uniform and MOMETAS share the sampler seed "
                "(draw_agreement = fraction of steps with the same objective); train_step_s = U* / steps; "
                "predicted = objectives x meta_sequences_per_rank x forward_s_per_meta_sequence / "
                "(interval x train_step_s)"
            ),
        }


# ------------------------------------------------------------------------------------------ helpers


def load_ds_config(path: str, micro_batch: Optional[int], world_size: int, torch_adam: bool = False) -> dict:
    from .config import _check_batch_fields, read_json_object

    ds_config = read_json_object(path, "--deepspeed_config", BenchError)
    if micro_batch is not None:
        ds_config["train_micro_batch_size_per_gpu"] = micro_batch
    if "train_micro_batch_size_per_gpu" not in ds_config:
        raise BenchError(f"--deepspeed_config: {path} has no train_micro_batch_size_per_gpu; give --micro_batch")
    if "train_batch_size" in ds_config:  # keep it consistent with the (possibly overridden) micro batch
        ds_config["train_batch_size"] = (ds_config["train_micro_batch_size_per_gpu"]
                                         * ds_config.get("gradient_accumulation_steps", 1) * world_size)
    if torch_adam:
        optimizer = ds_config.get("optimizer", {})
        if optimizer.get("type", "").lower() not in ("adam", "adamw"):
            raise BenchError(f"--torch_adam: {path} does not use Adam/AdamW (optimizer type {optimizer.get('type')!r})")
        optimizer.setdefault("params", {})["torch_adam"] = True
    _check_batch_fields(ds_config, path, world_size)
    return ds_config


def precision_of(ds_config: dict) -> str:
    for key in ("bf16", "fp16"):
        if ds_config.get(key, {}).get("enabled", False):
            return key
    return "fp32"


def machine_info(device_type: str, world_size: int) -> dict:
    import deepspeed
    import transformers

    if device_type == "cuda":
        device_name = torch.cuda.get_device_name()
    else:
        device_name = platform.processor() or "cpu"
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                device_name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return {
        "device": device_type, "device_name": device_name, "ranks": world_size,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "deepspeed": deepspeed.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "hostname": platform.node(),
    }


def format_report(result: dict) -> str:
    c, m, b = result["config"], result["machine"], result["breakdown"]
    names = c["objectives"]
    lines = [
        f"mometas-bench  {result['date']}",
        f"  device: {m['device']} ({m['device_name']}), {m['ranks']} rank(s), torch {m['torch']}, "
        f"deepspeed {m['deepspeed']}, {m['torch_threads']} torch thread(s) per rank",
        f"  model {c['model']} ({c['num_parameters'] / 1e6:.1f}M params), seq_len {c['seq_len']}, micro-batch "
        f"{c['micro_batch']} x gas {c['gradient_accumulation_steps']} x {c['ranks']} rank(s), "
        f"{os.path.basename(c['deepspeed_config'])} (ZeRO {c['zero_stage']}, {c['precision']})",
        f"  {len(names)} objectives, interval {c['interval']}, {c['meta_batch_size']} meta-validation sequences per "
        f"objective ({result['meta_sequences_per_rank']} per rank); {c['rounds']} interleaved rounds x "
        f"{c['block_steps']} steps per arm",
        "",
        f"  {'arm':<18}{'samples/s':>11}{'tokens/s':>11}{'ms/step':>9}   draws ({'/'.join(names)})",
    ]
    labels = {"single": f"single ({c['single_objective']})", "uniform": "uniform",
              "mometas": f"mometas (K={c['interval']})"}
    for arm in ARMS:
        a = result["arms"][arm]
        draws = "/".join(str(a["draws"][n]) for n in names)
        lines.append(f"  {labels[arm]:<18}{a['samples_per_s']:>11.1f}{a['tokens_per_s']:>11.0f}"
                     f"{1e3 * a['step_s']:>9.1f}   {draws}")
    costs = result["arms"]["uniform"]["micro_step_s_by_objective"]
    # With one rank meta_update_distributed is a plain sampler.update: no collective ran.
    update_label = "sampler update + all-reduces" if c["ranks"] > 1 else "sampler update (1 rank: no all-reduce)"
    lines += [
        "  uniform ms/micro-step by objective: " + ", ".join(f"{n} {1e3 * costs[n]:.1f}" for n in names if n in costs),
        "",
        f"  MOMETAS overhead vs uniform at MOMETAS's objective mix (median of {c['rounds']} rounds): "
        f"{result['overhead_pct']:+.2f} %",
        f"    per round: {', '.join(f'{x:+.2f}' for x in result['overhead_pct_rounds'])} %;  raw samples/s ratio, "
        f"not mix-adjusted: {result['raw_overhead_pct']:+.2f} %;  same draw as uniform at {100 * result['draw_agreement']:.0f} % of steps",
        f"  breakdown per sampler update (timed directly), as % of {c['interval']} steps x "
        f"{1e3 * result['train_step_s']:.2f} ms:",
        f"    meta-validation forward      {1e3 * b['meta_forward_s_per_update']:9.1f} ms  {b['meta_forward_pct']:6.2f} %",
        f"    meta-validation corruption   {1e3 * b['meta_corrupt_s_per_update']:9.1f} ms  {b['meta_corrupt_pct']:6.2f} %",
        f"    {update_label:<28} {1e3 * b['sampler_update_s_per_update']:9.1f} ms  {b['sampler_update_pct']:6.2f} %",
        f"    sum of the above                            {b['direct_overhead_pct']:6.2f} %",
        f"    rest (slower training steps, noise)         {b['rest_pct']:6.2f} %",
        f"  predicted from the config: {len(names)} objectives x {result['meta_sequences_per_rank']} seq/rank x "
        f"{1e3 * result['forward_s_per_meta_sequence']:.3f} ms/seq forward / ({c['interval']} x "
        f"{1e3 * result['train_step_s']:.2f} ms/step) = {result['predicted_overhead_pct']:.2f} %",
        f"    ({result['probe_rows_per_forward']} rows per probe forward, as in the meta-validation's chunks)",
        "    same costs, meta-validation split over R ranks (per-sequence cost assumed constant): "
        + ", ".join(f"R={r}: {v:.2f} %" for r, v in result["predicted_overhead_pct_at_ranks"].items()),
        f"  elapsed {result['elapsed_s']:.0f} s (+ {result['warmup_s']:.0f} s warm-up)",
    ]
    return "\n".join(lines)


def _relaunch(cfg: BenchConfig, argv: List[str]) -> int:
    """Run this same command on cfg.ranks ranks through the deepspeed launcher."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # the launcher does not pin ranks to cores
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(cfg.ranks),
           "--master_port", str(port), "--module", "mometas_ds.bench"] + list(argv)
    print("mometas-bench: running " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, env=env).returncode


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_args(argv)
    except BenchError as exc:
        print(f"mometas-bench: error: {exc}", file=sys.stderr)
        return 2

    from .launch import detect_launcher

    if cfg.ranks is not None and cfg.ranks > 1 and detect_launcher() == "single":
        return _relaunch(cfg, argv)

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.WARNING,
                        format=f"[%(asctime)s] [rank {rank}] %(levelname)s %(name)s: %(message)s")
    for name in ("DeepSpeed", "deepspeed", "mometas_ds"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        bench = Bench(cfg)
    except BenchError as exc:
        print(f"mometas-bench: error: {exc}", file=sys.stderr)
        return 2
    result = bench.run()
    if bench.rank == 0:
        print(format_report(result), flush=True)
        if cfg.json:
            os.makedirs(os.path.dirname(os.path.abspath(cfg.json)), exist_ok=True)
            with open(cfg.json, "w", encoding="utf-8") as f:
                json.dump(result, f, indent=2)
                f.write("\n")
            print(f"  wrote {cfg.json}", flush=True)
    if not all(math.isfinite(result[key]) for key in ("overhead_pct", "predicted_overhead_pct")):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
