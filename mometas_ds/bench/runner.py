"""The benchmark's arms: the model and engine built once, and per arm the run's own TrainStep (its sampler, its
batches, its TrainState), so that every timed step is the step a pre-training run takes."""
from __future__ import annotations

import dataclasses
import random
import time
from typing import Dict, List

import torch
from deepspeed.accelerator import get_accelerator

from mometas_ds.train.engine import build_engine
from mometas_ds.distributed.launch import init_distributed
from mometas_ds.train.meta_validation import MetaValidation
from mometas_ds.model import MultiObjectiveBert, build_bert_config
from mometas_ds.objectives import SpecialTokens, build_objective
from mometas_ds.samplers import build_sampler
from mometas_ds.train.step import Corruption, TrainStep
from mometas_ds.train.state import TrainState
from mometas_ds.bench.options import ARMS, CPU_CONFIG, GPU_CONFIG, BenchConfig, BenchError, load_ds_config
from mometas_ds.bench.report import summarize
from mometas_ds.bench.synthetic import BERT_SPECIAL_IDS, Discard, SyntheticBatches, synthetic_rows
from mometas_ds.bench.timing import Block, PhaseTimer, delta


class TimedCorruption(Corruption):
    """The run's corruption, its time booked to "<phase>_corrupt" (training or meta-validation)."""

    def __init__(self, objectives, device, timer: PhaseTimer):
        super().__init__(objectives, device)
        self.timer = timer

    def __call__(self, name, clean, generator):
        with self.timer.measure(f"{self.timer.phase}_corrupt"):
            return super().__call__(name, clean, generator)


class TimedMetaValidation(MetaValidation):
    """The run's meta-validation, its measurement (forwards and corruption) booked to "meta_measure"."""

    def __init__(self, *args, timer: PhaseTimer, **kwargs):
        super().__init__(*args, **kwargs)
        self.timer = timer

    def measure(self, draw_id: int):
        with self.timer.measure("meta_measure"):
            return super().measure(draw_id)


class Bench:
    """The model and engine, built once; one TrainStep per arm sharing them, differing in sampler and counters."""

    def __init__(self, cfg: BenchConfig):
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
        self.objectives = {name: build_objective(name, self.special) for name in cfg.objectives}
        bert_config = build_bert_config(cfg.model, vocab_size=cfg.vocab_size, seq_len=cfg.seq_len)
        self.model = MultiObjectiveBert.from_config(bert_config, self.objectives)
        self.num_parameters = sum(p.numel() for p in self.model.parameters())
        self.planned_steps = len(cfg.objectives) + len(ARMS) * (cfg.warmup_steps + cfg.rounds * cfg.block_steps)
        self.engine = build_engine(self.model, self.ds_config, self.planned_steps, self.rank)
        self.device = self.engine.device
        engine_micro_batch = self.engine.train_micro_batch_size_per_gpu()
        self.probe_rows = min(engine_micro_batch, cfg.meta_batch_size // self.world_size)

        self.timer = PhaseTimer(self.sync)
        self.corrupt = TimedCorruption(self.objectives, self.device, self.timer)
        # The meta-validation split in the form the trainer holds it (data.rows_as_tensors).
        ids, mask = synthetic_rows(2 * cfg.meta_batch_size, cfg.seq_len, self.special, seed=cfg.seed + 1_000_003)
        self.meta = TimedMetaValidation(
            self.engine, self.objectives, {"input_ids": ids, "attention_mask": mask}, self.corrupt,
            device=self.device, seed=cfg.seed, meta_batch_size=cfg.meta_batch_size, micro_batch=engine_micro_batch,
            rank=self.rank, world_size=self.world_size, timer=self.timer)

        n = len(cfg.objectives)
        one_hot = [1.0 if name == cfg.single_objective else 0.0 for name in cfg.objectives]
        samplers = {
            "single": build_sampler("fixed", num_objectives=n, seed=cfg.seed, weights=one_hot),
            # The same seed: uniform and MOMETAS draw the same objective at the same step while MOMETAS is near uniform.
            "uniform": build_sampler("uniform", num_objectives=n, seed=cfg.seed),
            "mometas": build_sampler("mometas", num_objectives=n, seed=cfg.seed,
                                     lr=cfg.meta_lr, gamma=cfg.meta_gamma),
        }
        self._update_due = {arm: False for arm in ARMS}
        # Every arm reads the same batches in the same order (each rank its own).
        self.arms: Dict[str, TrainStep] = {
            arm: self._train_step(samplers[arm], SyntheticBatches(engine_micro_batch, cfg.seq_len, self.special,
                                                                  seed=cfg.seed + 1 + self.rank), TrainState())
            for arm in ARMS}
        self._trace = Discard()

    def _train_step(self, sampler, batches, state: TrainState) -> TrainStep:
        return TrainStep(self.engine, self.model, self.objectives, sampler, batches, self.meta, self.corrupt, state,
                         seed=self.cfg.seed, rank=self.rank, world_size=self.world_size)

    # -------------------------------------------------------------- running
    def _meta_update(self, arm: TrainStep) -> None:
        # Every sampler gets its update call at the interval, as in Trainer.train (rule-based ones only clear the
        # rollout).
        self.timer.phase = "meta"
        try:
            with self.timer.measure("meta_update"):
                arm.sampler_update()
        finally:
            self.timer.phase = "train"

    def _optimizer_step(self, arm: TrainStep, micro_times: List[tuple]) -> None:
        """The run's optimizer step, each micro-step timed (on a GPU, synchronized)."""
        last = [time.perf_counter()]

        def book(name, loss):
            self.sync()
            now = time.perf_counter()
            micro_times.append((name, now - last[0]))
            last[0] = now

        arm.optimizer_step(self._trace, on_micro_step=book)

    def _warm_every_objective(self) -> None:
        single = self.arms["single"]
        n = len(self.cfg.objectives)
        for k in range(n):
            sampler = build_sampler("fixed", num_objectives=n, seed=self.cfg.seed,
                                    weights=[1.0 if i == k else 0.0 for i in range(n)])
            # On the single arm's batches, from a copy of its counters (which stay where they are).
            self._optimizer_step(self._train_step(sampler, single.batches, dataclasses.replace(single.state)), [])

    def timed_step(self, arm: str, block: Block) -> None:
        """One optimizer step of ``arm``, preceded by the sampler update that its last step made due; booked to
        ``block``.

        The update runs at the start of the arm's next step rather than at the end of the step that
        completed the interval: the same order of work as in Trainer.train, and whatever the update
        leaves behind (caches filled by the meta-validation) slows this arm's own step, not another arm's.
        """
        step = self.arms[arm]
        before = self.timer.snapshot()
        updates_before = step.state.num_updates
        if self._update_due[arm]:
            self._meta_update(step)
            self._update_due[arm] = False
        self._optimizer_step(step, block.micro_steps)
        self._update_due[arm] = step.state.step % self.cfg.interval == 0
        after = self.timer.snapshot()
        block.steps += 1
        block.updates += step.state.num_updates - updates_before
        block.meta_update_s += delta(after, before, "meta_update")
        block.meta_measure_s += delta(after, before, "meta_measure")
        block.meta_corrupt_s += delta(after, before, "meta_corrupt")
        block.train_corrupt_s += delta(after, before, "train_corrupt")
        block.seconds = sum(seconds for _, seconds in block.micro_steps) + block.meta_update_s

    @torch.no_grad()
    def probe_forward(self, reps: int) -> Dict[str, List[float]]:
        """Forward time per meta-validation sequence of each objective, corruption excluded, run as
        the meta-validation runs it (eval mode; with dropout for objectives that ask, i.e. cse).

        Each forward takes as many rows as a chunk of this rank's meta-validation does
        (``MetaValidation.measure`` evaluates its shard in chunks of the micro-batch).
        """
        clean = {key: column[: self.probe_rows] for key, column in self.meta.meta_rows.items()}
        generator = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
        untimed = Corruption(self.objectives, self.device)
        batches = {name: untimed(name, clean, generator) for name in self.cfg.objectives}
        times: Dict[str, List[float]] = {name: [] for name in self.cfg.objectives}
        self.engine.eval()
        try:
            for _ in range(reps):
                for name, batch in batches.items():
                    self.sync()
                    start = time.perf_counter()
                    if self.objectives[name].meta_eval_with_dropout:  # as the meta-validation runs it
                        loss = self.meta.forward_with_dropout(batch, name, self.cfg.seed)
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
        self._meta_update(self.arms["mometas"])
        for arm in ARMS:
            micro: List[tuple] = []
            for _ in range(cfg.warmup_steps):
                self._optimizer_step(self.arms[arm], micro)
        for arm in ARMS:  # every arm's interval clock starts at 0, with an update due (after the warm-up's draws)
            self.arms[arm].state.step = 0
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
        return summarize(self, blocks, probes, warmup_s, time.perf_counter() - started)

