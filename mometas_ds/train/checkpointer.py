"""The run's checkpointer: what a checkpoint saves beside DeepSpeed's engine state, when it saves, how a resume
picks, converts and loads one, and the HF export at the end.

Our client state (``state_dict``) is the counters (TrainState), the sampler's state, the objective names, and
every rank's data position and random state (gathered: they differ per rank). ``load_state_dict`` restores
them on any number of ranks: a rank the saving run did not have takes rank 0's data position (all hold the same
global one) and a seeded random state (train_state.seeded_rng_state). See docs/checkpoints.md.
"""
from __future__ import annotations

import logging
import os
from typing import Optional, Sequence

from mometas_ds.checkpoint.export import consolidated_state_dict
from mometas_ds.checkpoint.layout import ResumeRefused, latest_complete_tag, read_run_identity
from mometas_ds.checkpoint.loading import load
from mometas_ds.checkpoint.saving import prune, save
from mometas_ds.checkpoint.universal import (
    PRECISION_KEY, STAGE_KEY, convert_to_universal, load_universal, needs_universal, zero_partitions,
)
from mometas_ds.checkpoint.verify import resume_checkpoint
from mometas_ds.config import ConfigError, PretrainConfig
from mometas_ds.config.paths import RunPaths
from mometas_ds.distributed.ranks import Ranks
from mometas_ds.safe_io import export_retry_hint, write_dir_atomically
from mometas_ds.train.faults import Faults
from mometas_ds.train.identity import TOKENIZER_KEY, elastic_changes, tokenizer_refusal
from mometas_ds.train.state import TrainState, rng_state, seeded_rng_state, set_rng_state

logger = logging.getLogger("mometas_ds")


class Checkpointer:
    def __init__(self, cfg: PretrainConfig, engine, ranks: Ranks, run_identity: dict, *, state: TrainState,
                 sampler, data, objective_names: Sequence[str], signals, faults: Optional[Faults] = None):
        self.cfg, self.engine, self.ranks, self.run_identity = cfg, engine, ranks, run_identity
        self.state, self.sampler, self.data, self.objective_names = state, sampler, data, objective_names
        self.faults = faults
        self.signals = signals  # a signal during a save or the export waits for its end (stop_signals)
        self.root = RunPaths(cfg.output_dir).checkpoints

    # ---------------------------------------------------------------- the client state
    def state_dict(self) -> dict:
        # RNG and data positions differ per rank: gather them so every rank's can be restored.
        per_rank = self.ranks.all_gather({"data": self.data.state_dict(), "rng": rng_state()})
        return {
            **self.state.state_dict(),
            "sampler": self.sampler.state_dict(),
            "objectives": list(self.objective_names),  # a list, as checkpoints have always held it
            "data": [r["data"] for r in per_rank], "rng": [r["rng"] for r in per_rank],
        }

    def load_state_dict(self, state: dict, tag_dir: str = "the checkpoint", saved_identity: Optional[dict] = None):
        rank, world_size = self.ranks.rank, self.ranks.world_size
        self.state.load_state_dict(state)
        self.sampler.load_state_dict(state["sampler"])
        # Every rank's data state holds the same global position: a rank the saving run did not have takes
        # rank 0's. One saved before it recorded its seq_len gets the run identity's.
        data = state["data"] if isinstance(state["data"], list) else [state["data"]]
        position = dict(data[rank] if rank < len(data) else data[0])
        if "seq_len" not in position and "--seq_len" in (saved_identity or {}):
            position["seq_len"] = saved_identity["--seq_len"]
        self.data.load_state_dict(position)
        rngs = state["rng"]
        if rank < len(rngs):
            set_rng_state(rngs[rank])
        else:  # more ranks than the saving run: a documented seeded state (train_state.seeded_rng_state)
            seeded_rng_state(self.cfg.seed, rank, self.state.step)
            logger.warning("--resume: %s holds no random state for rank %d (saved by %d rank(s)): seeded from "
                           "--seed, the rank and step %d", tag_dir, rank, len(rngs), self.state.step)
        if rank == 0 and len(rngs) > world_size:
            logger.info("--resume: the random state of rank(s) %d-%d of the saving run is not used (%d rank(s) now)",
                        world_size, len(rngs) - 1, world_size)

    # ---------------------------------------------------------------- resume
    def resume(self, resume: str) -> Optional[str]:
        """Load the checkpoint --resume names into the engine and the components; its directory, or None when
        ``auto`` found none (a fresh start)."""
        rank = self.ranks.rank
        # Rank 0 chose and verified it for every rank (check_world_size): a rank with a stale view of output_dir
        # must not start from another step.
        found = resume_checkpoint(self.root, resume, self.cfg.verify_checkpoint, group=self.ranks.setup_group,
                                  reuse=True)
        if found is None:
            if rank == 0:
                logger.info("--resume: no complete checkpoint in %s, starting from step 0", self.root)
            return None
        tags_dir, tag = found
        tag_dir = os.path.join(tags_dir, tag)
        saved = read_run_identity(tag_dir) or {}  # check_resume_matches read it already: not damaged
        # Another tokenizer vocabulary stops here, every rank alike (the pre-flight check compared it already
        # when the tokenizer was there to load; one --train_tokenizer trained just now was not).
        tokenizer_refusal(self.cfg, tag_dir, saved.get(TOKENIZER_KEY), self.run_identity.get(TOKENIZER_KEY))
        changes = elastic_changes(saved, self.run_identity)
        if rank == 0 and changes:
            logger.info("--resume: %s (docs/checkpoints.md, \"What a resume may change\")",
                        "; ".join(f"{key} {now} (was {was})" for key, (was, now) in changes.items()))
        # ZeRO 1/2 with another number of ranks: rank 0 converts the tag to DeepSpeed's universal checkpoint
        # (once; a later resume reuses an intact copy) while the others wait in the setup group.
        universal = needs_universal(self.engine, tag_dir)
        if universal:
            self.ranks.rank0_first(lambda: _convert_to_universal(tags_dir, tag))
        # weights_only loads; a failure is a ConfigError
        client_state = load(self.engine, tags_dir, tag, load_universal if universal else None)
        self.load_state_dict(client_state["mometas"], tag_dir, saved)
        if rank == 0:
            logger.info("resumed from %s at step %d%s", tag_dir, self.state.step,
                        " (through its universal checkpoint)" if universal else "")
        return tag_dir

    # ---------------------------------------------------------------- save
    def save(self) -> None:
        """A complete checkpoint of this step (every rank), then --save_total_limit's pruning (rank 0)."""
        with self.signals.saving():
            save(self.engine, self.root, self.state.step, {"mometas": self.state_dict()}, self.ranks.rank,
                 self.ranks.barrier, self.run_identity,
                 before_publish=self.faults.sleep_in_save if self.faults is not None else None)
        if self.ranks.rank == 0:
            logger.info("saved checkpoint step%d in %s", self.state.step, self.root)
            if self.cfg.save_total_limit is not None:
                deleted = prune(self.root, self.cfg.save_total_limit)
                if deleted:
                    logger.info("deleted checkpoint(s) %s (--save_total_limit %d)", ", ".join(deleted),
                                self.cfg.save_total_limit)

    def last_good(self) -> str:
        """The newest complete checkpoint's directory, or "(none)"."""
        last = latest_complete_tag(self.root)
        return os.path.join(self.root, last) if last else "(none)"

    # ---------------------------------------------------------------- export
    def export_hf(self, model, tokenizer) -> None:
        """The final weights and the tokenizer in HF format (output_dir/hf_model), whole or absent."""
        out_dir = RunPaths(self.cfg.output_dir).hf_model
        # Stage 0 gathers the fp32 master weights on every rank; under ZeRO rank 0 reads the saved tag, in write():
        # a damaged tag is a ConfigError that stops every rank.
        zero = self.engine.zero_optimization_stage() != 0
        state_dict = None if zero else consolidated_state_dict(self.engine, self.root, self.state.step)

        def write():  # whole or absent (safe_io); a failure stops every rank, with a message
            weights = consolidated_state_dict(self.engine, self.root, self.state.step) if zero else state_dict
            write_dir_atomically(out_dir, lambda tmp: model.save_hf(tmp, tokenizer, state_dict=weights),
                                 what_to_do=export_retry_hint(self.cfg, self.state.step))
            logger.info("exported the model and tokenizer (HF format) to %s", out_dir)

        with self.signals.saving():  # on the setup group: writing a large model may outlast --dist_timeout_minutes
            self.ranks.rank0_first(write)


def _convert_to_universal(tags_dir: str, tag: str) -> None:
    """Rank 0's conversion of a tag for a new ZeRO partitioning; a failure is a ConfigError every rank raises."""
    tag_dir = os.path.join(tags_dir, tag)
    try:
        convert_to_universal(tags_dir, tag, workers=1)
    except ResumeRefused as exc:  # the tag does not match its manifest
        raise ConfigError(f"--resume: {exc}") from None
    except Exception as exc:  # DeepSpeed's converter asserts and raises whatever its readers raise
        identity = read_run_identity(tag_dir) or {}
        raise ConfigError(
            f"--resume: converting checkpoint {tag_dir} to DeepSpeed's universal checkpoint "
            f"(needed: the number of ranks, the ZeRO stage or the precision changed) failed: "
            f"{type(exc).__name__}: {exc}. Resume on the number of ranks that saved it "
            f"({zero_partitions(tag_dir)}), with its ZeRO stage ({identity.get(STAGE_KEY, '?')}) and precision "
            f"({identity.get(PRECISION_KEY, '?')})") from None
