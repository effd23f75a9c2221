"""The benchmark's figures from its timed blocks, the machine they ran on, and the printed table."""
from __future__ import annotations

import datetime
import os
import platform
import statistics
from collections import Counter, defaultdict
from typing import Dict, List

import deepspeed
import torch
import transformers

from mometas_ds.bench.options import ARMS
from mometas_ds.bench.timing import Block


def summarize(bench, blocks: List[Block], probes, warmup_s: float, elapsed_s: float) -> dict:
    """Every figure of the benchmark, from the timed blocks and the forward-cost probes of ``bench`` (a Bench)."""
    cfg = bench.cfg
    names = list(cfg.objectives)
    samples_per_step = bench.micro_batch * bench.gas * bench.world_size
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
    meta_per_rank = cfg.meta_batch_size // bench.world_size

    def predicted(ranks: int) -> float:
        return 100.0 * len(names) * (cfg.meta_batch_size / ranks) * forward_per_seq / (cfg.interval * train_step_s)

    # Rank counts a real run could use: the batch splits evenly and every rank's share holds
    # the rows each objective needs (check_world_size refuses e.g. one cse row per rank).
    min_rows = max(bench.objectives[name].min_rows for name in names)
    rank_counts = [r for r in (1, 2, 4, 8) if cfg.meta_batch_size % r == 0 and cfg.meta_batch_size // r >= min_rows]

    return {
        "benchmark": "mometas-bench",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "mometas-bench " + " ".join(cfg.argv),
        "machine": machine_info(bench.device_type, bench.world_size),
        "config": {
            "model": cfg.model, "num_parameters": bench.num_parameters, "seq_len": cfg.seq_len,
            "micro_batch": bench.micro_batch, "gradient_accumulation_steps": bench.gas, "ranks": bench.world_size,
            "samples_per_step": samples_per_step, "interval": cfg.interval, "meta_batch_size": cfg.meta_batch_size,
            "objectives": names, "single_objective": cfg.single_objective, "deepspeed_config": bench.ds_path,
            "zero_stage": bench.ds_config.get("zero_optimization", {}).get("stage", 0),
            "precision": precision_of(bench.ds_config), "rounds": cfg.rounds, "block_steps": cfg.block_steps,
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
        "probe_rows_per_forward": bench.probe_rows,
        "predicted_overhead_pct": predicted(bench.world_size),
        "predicted_overhead_pct_at_ranks": {str(r): predicted(r) for r in rank_counts},
        "skipped_micro_steps": {arm: bench.arms[arm].state.skipped_steps for arm in ARMS},
        "warmup_s": warmup_s,
        "elapsed_s": elapsed_s,
        "method": (
            "rounds of block_steps steps per arm, arms taking turns of turn_steps steps in a random order per turn; an "
            "arm's time = sum of its timed steps and sampler-update calls; medians over rounds; "
            "overhead_pct = median over rounds of "
            "T(mometas block) / U* - 1, U* = MOMETAS's drawn micro-steps priced at the uniform arm's mean "
            "micro-step cost per objective in the same round; uniform and MOMETAS share the sampler seed "
            "(draw_agreement = fraction of steps with the same objective); train_step_s = U* / steps; "
            "predicted = objectives x meta_sequences_per_rank x forward_s_per_meta_sequence / "
            "(interval x train_step_s)"
        ),
    }




def precision_of(ds_config: dict) -> str:
    for key in ("bf16", "fp16"):
        if ds_config.get(key, {}).get("enabled", False):
            return key
    return "fp32"


def machine_info(device_type: str, world_size: int) -> dict:
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
        f"not mix-adjusted: {result['raw_overhead_pct']:+.2f} %;  "
        f"same draw as uniform at {100 * result['draw_agreement']:.0f} % of steps",
        f"  breakdown per sampler update (timed directly), as % of {c['interval']} steps x "
        f"{1e3 * result['train_step_s']:.2f} ms:",
        f"    meta-validation forward      {1e3 * b['meta_forward_s_per_update']:9.1f} ms  "
        f"{b['meta_forward_pct']:6.2f} %",
        f"    meta-validation corruption   {1e3 * b['meta_corrupt_s_per_update']:9.1f} ms  "
        f"{b['meta_corrupt_pct']:6.2f} %",
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
