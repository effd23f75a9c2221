"""``mometas-bench``: what MOMETAS costs per step, against uniform sampling and a single objective.

One process (or one per rank) builds the model and the DeepSpeed engine once, then trains it in
three arms that differ only in the objective sampler:

  single   one objective (mlm by default): a fixed sampler with all weight on it
  uniform  every objective with probability 1/N
  mometas  the MOMETAS sampler, updated by the distributed meta-validation every --interval steps

Each arm runs a pre-training run's own step (``step.TrainStep``: its optimizer step and its sampler
update with ``meta_validation.MetaValidation``) on synthetic random token batches, so no corpus or tokenizer
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
from mometas_ds.bench.options import (
    ARMS, CPU_CONFIG, DEFAULTS, GPU_CONFIG, QUICK, BenchConfig, BenchError, build_arg_parser, load_ds_config,
    parse_args, validate,
)
from mometas_ds.bench.report import format_report, machine_info, precision_of, summarize
from mometas_ds.bench.runner import Bench
from mometas_ds.bench.synthetic import BERT_SPECIAL_IDS, SyntheticBatches, synthetic_rows
from mometas_ds.bench.timing import Block, PhaseTimer

__all__ = [
    "ARMS", "CPU_CONFIG", "DEFAULTS", "GPU_CONFIG", "QUICK", "BenchConfig", "BenchError", "build_arg_parser",
    "load_ds_config", "parse_args", "validate", "format_report", "machine_info", "precision_of", "summarize", "Bench",
    "BERT_SPECIAL_IDS", "SyntheticBatches", "synthetic_rows", "Block", "PhaseTimer",
]
