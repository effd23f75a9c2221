"""Where a pre-training run keeps each of its files under --output_dir: the one place of that layout (the
trainer writes it; the study, mometas-plot, mometas-export and mometas-checkpoint read it)."""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class RunPaths:
    output_dir: str

    def _in(self, *parts: str) -> str:
        return os.path.join(self.output_dir, *parts)

    @property
    def checkpoints(self) -> str:
        """checkpoints/step<N>/: DeepSpeed's files, our state, the manifest (docs/checkpoints.md)."""
        return self._in("checkpoints")

    @property
    def cache(self) -> str:
        """The tokenized corpus when no --cache_dir is given."""
        return self._in("cache")

    @property
    def hf_model(self) -> str:
        """The final weights and tokenizer in HF format."""
        return self._in("hf_model")

    @property
    def tokenizer(self) -> str:
        """The tokenizer the run trained (--train_tokenizer)."""
        return self._in("tokenizer")

    @property
    def metrics(self) -> str:
        """One JSON line per optimizer step (rank 0)."""
        return self._in("metrics.jsonl")

    @property
    def sampler(self) -> str:
        """One JSON line per sampler update (rank 0)."""
        return self._in("sampler.jsonl")

    @property
    def trace_dir(self) -> str:
        return self._in("trace")

    def trace(self, rank: int) -> str:
        """The objective each micro-step of ``rank`` trained, one name a line."""
        return self._in("trace", f"rank{rank}.txt")

    @property
    def run_config(self) -> str:
        """The run's settings as JSON (rank 0, at the start)."""
        return self._in("run_config.json")
