"""Held-out evaluation: each run's final DeepSpeed checkpoint (every objective head), one loss per objective on
the same held-out rows with the same corruption seeds."""

from __future__ import annotations

import math
import os
from typing import Dict

import torch

from mometas_ds import checkpoint as ckpt
from mometas_ds.config import DataError
from mometas_ds.model import MultiObjectiveBert, build_bert_config
from mometas_ds.objectives import build_objective
from mometas_ds.data.tokenizer import load_tokenizer, special_tokens_of
from mometas_ds.config.paths import RunPaths


class HeldOutEvaluator:
    """Every objective's loss on the same held-out rows with the same corruption seeds, for any checkpoint."""

    def __init__(self, args, inputs: Dict[str, str]):
        from mometas_ds.data import (  # imports HF datasets (~0.5 s): only when used
            DataConfig, prepare_data, rows_as_tensors,
        )

        self.args = args
        self.tokenizer = load_tokenizer(inputs["tokenizer"])
        self.special = special_tokens_of(self.tokenizer)
        data = prepare_data(
            DataConfig(
                train_files=[inputs["heldout"]], seq_len=args.seq_len, cache_dir=inputs["cache"], meta_sequences=0
            ),
            self.tokenizer,
        )
        rows = rows_as_tensors(data.train)
        self.num_rows = min(args.eval_sequences, len(rows["input_ids"]))
        self.rows = {key: column[: self.num_rows] for key, column in rows.items()}
        self.objectives = {name: build_objective(name, self.special) for name in args.objectives}

    def _model(self, out_dir: str):
        root = RunPaths(out_dir).checkpoints
        tag = ckpt.latest_complete_tag(root)
        if tag is None:
            raise DataError(f"{root}: no complete checkpoint")
        config = build_bert_config(self.args.model_config, vocab_size=len(self.tokenizer), seq_len=self.args.seq_len)
        model = MultiObjectiveBert.from_config(config, self.objectives)
        model.load_state_dict(_module_state(root, tag))  # strict: every head must be in the checkpoint
        return model.float().eval()

    def losses(self, out_dir: str) -> Dict[str, float]:
        model = self._model(out_dir)
        result = {}
        with torch.no_grad():
            for k, (name, objective) in enumerate(self.objectives.items()):
                generator = torch.Generator().manual_seed(104729 + k)  # fixed corruption, the same for every run
                total, count = 0.0, 0
                for start in range(0, self.num_rows, 32):
                    clean = {key: column[start : start + 32] for key, column in self.rows.items()}
                    if len(clean["input_ids"]) < objective.min_rows:
                        continue
                    batch = objective.corrupt(clean["input_ids"], clean["attention_mask"], generator=generator)
                    if objective.meta_eval_with_dropout:  # e.g. cse: its two views differ only by dropout
                        torch.manual_seed(7919 + start)
                        model.train()
                    loss = model(batch, name)["loss"]
                    model.eval()
                    total += float(loss) * len(clean["input_ids"])
                    count += len(clean["input_ids"])
                result[name] = total / count if count else math.nan
        return result


def _module_state(root: str, tag: str) -> dict:
    """The fp32 module weights of a DeepSpeed checkpoint: ZeRO's partitions merged, or stage 0's module; the tag is
    checked against its manifest first (as --resume checks it), a damaged one is a DataError naming the files."""
    verdict = ckpt.verify_tag(root, tag, "auto")
    if verdict.intact is False:
        raise DataError(f"{ckpt.describe(verdict)}; rerun that run (or resume it from an intact tag)")
    if any(name.endswith("optim_states.pt") and "zero_pp_rank" in name for name in os.listdir(os.path.join(root, tag))):
        # DeepSpeed is heavy and only ZeRO checkpoints need it
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with ckpt.weights_only_loads():
            return get_fp32_state_dict_from_zero_checkpoint(root, tag=tag)
    state = ckpt.safe_load(os.path.join(root, tag, "mp_rank_00_model_states.pt"), map_location="cpu")
    return {key: value.float() for key, value in state["module"].items()}
