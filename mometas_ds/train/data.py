"""The pre-training run's data, set up once on every rank: the tokenizer (loaded, or trained on the corpus by rank 0),
the corpus cache (built by rank 0, then read by every rank), its meta-validation split, and this rank's stream of
micro-batches, whose position is the component's state (state_dict / load_state_dict, saved with every checkpoint).
"""
from __future__ import annotations

import logging
import os
from typing import Optional

from mometas_ds.train.faults import Faults
from mometas_ds.config import PretrainConfig
from mometas_ds.model_config_check import check_tokenizer_fits_model
from mometas_ds.distributed.ranks import Ranks
from mometas_ds.safe_io import disk_errors
from mometas_ds.data.tokenizer import load_tokenizer, special_tokens_of, train_wordpiece_tokenizer
from mometas_ds.data.batches import ShardedBatches, rows_as_tensors
from mometas_ds.data.cache import DataConfig, PreparedData, prepare_data
from mometas_ds.data.prefetch import prefetched
from mometas_ds.data.readers import iter_texts
from mometas_ds.data.report import CorpusReport
from mometas_ds.config.paths import RunPaths

logger = logging.getLogger("mometas_ds")


class PretrainData:
    def __init__(self, cfg: PretrainConfig, ranks: Ranks, faults: Optional[Faults] = None):
        self.cfg, self.ranks, self.faults = cfg, ranks, faults
        self.tokenizer = load_run_tokenizer(cfg, ranks)
        check_tokenizer_fits_model(cfg, len(self.tokenizer))
        self.special = special_tokens_of(self.tokenizer, tokenizer_flag(cfg))
        self.prepared = self._prepare()
        self.batches = None  # the stream: built by batch_stream() once the engine has set the micro-batch

    def _prepare(self) -> PreparedData:
        cfg, rank = self.cfg, self.ranks.rank
        cache_dir = cfg.cache_dir or RunPaths(cfg.output_dir).cache
        data_cfg = DataConfig(train_files=list(cfg.train_files), text_field=cfg.text_field, seq_len=cfg.seq_len,
                              cache_dir=cache_dir, num_proc=cfg.num_proc, packing=cfg.packing,
                              shard_size_mb=cfg.shard_size_mb, user_modules=tuple(cfg.user_modules),
                              verify=cfg.verify_checkpoint,
                              meta_sequences=2 * cfg.meta_batch_size, seed=cfg.seed)

        def prepare_on_rank0():
            if self.faults is not None:
                self.faults.sleep_in_setup()
            with disk_errors("--cache_dir" if cfg.cache_dir else "--output_dir", cache_dir):
                return prepare_data(data_cfg, self.tokenizer)

        # Rank 0 tokenizes and writes the cache; the others then read it.
        prepared = self.ranks.rank0_first(prepare_on_rank0)
        if rank != 0:
            prepared = prepare_data(data_cfg, self.tokenizer)
        if rank == 0:
            if prepared.cache_hit:
                logger.info("corpus already prepared: %d shard(s) in %s, nothing to tokenize",
                            len(prepared.shard_paths), prepared.cache_path)
            else:
                logger.info("corpus prepared: built %d of %d shard(s) in %s", prepared.shards_built,
                            len(prepared.shard_paths), prepared.cache_path)
            if prepared.report.total_skipped:
                logger.warning("corpus: %s", prepared.report.summary())
        return prepared

    def batch_stream(self, micro_batch: int, device):
        """This rank's seeded, resumable micro-batches of the training rows, read ahead (--prefetch_batches)."""
        cfg = self.cfg
        self.batches = prefetched(
            ShardedBatches(self.prepared.train, batch_size=micro_batch, rank=self.ranks.rank,
                           world_size=self.ranks.world_size, seed=cfg.seed, seq_len=cfg.seq_len),
            cfg.prefetch_batches, device)
        return self.batches

    def meta_rows(self):
        """The meta-validation split, as the tensors MetaValidation indexes."""
        return rows_as_tensors(self.prepared.meta)

    def state_dict(self) -> dict:
        return self.batches.state_dict()

    def load_state_dict(self, position: dict) -> None:
        self.batches.load_state_dict(position)


def tokenizer_flag(cfg: PretrainConfig) -> str:
    """The flag that chose the tokenizer, for error messages."""
    if cfg.tokenizer:
        return "--tokenizer"
    return "--model_name_or_path" if cfg.train_tokenizer is None else "--train_tokenizer"


def load_run_tokenizer(cfg: PretrainConfig, ranks: Ranks):
    """--tokenizer, the --model_name_or_path one, or (--train_tokenizer) the one rank 0 trains on the corpus into
    output_dir/tokenizer, once: a resume reuses it."""
    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer)
    if cfg.train_tokenizer is None:
        return load_tokenizer(cfg.model_name_or_path, flag="--model_name_or_path")
    out_dir = RunPaths(cfg.output_dir).tokenizer

    def train():
        if not os.path.exists(os.path.join(out_dir, "tokenizer.json")):
            logger.info("training a WordPiece tokenizer (vocab %d) on the corpus", cfg.train_tokenizer)
            trained = train_wordpiece_tokenizer(  # a function: --tokenizer_sample reads the corpus twice
                lambda: iter_texts(cfg.train_files, cfg.text_field, CorpusReport()), cfg.train_tokenizer,
                out_dir, sample=cfg.tokenizer_sample)
            logger.info("trained a tokenizer of %d tokens (asked for at most %d), saved in %s",
                        len(trained), cfg.train_tokenizer, out_dir)

    ranks.rank0_first(train)
    return load_tokenizer(out_dir)
