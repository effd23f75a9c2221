"""Pre-training data: read corpora, tokenize them once into cached packed Arrow shards (one per file), hold out a
seeded meta-validation split of it, and serve each rank its own seeded, resumable shard of batches.

Corpus formats (chosen by file name; ``--train_files`` entries may be globs):

* ``.jsonl`` / ``.json`` (JSON Lines), optionally ``.gz``: one JSON object per line, text under ``text_field``.
* ``.txt``, optionally ``.gz``. The layout is detected per file: if a blank line (empty or whitespace only)
  sits between two non-blank lines, documents are blocks of consecutive non-blank lines (paragraphs,
  joined with newlines); otherwise every non-blank line is a document. A file of single lines separated by
  blank lines reads the same either way.
* ``.parquet``: column ``text_field``.
* a directory written by ``datasets.save_to_disk``: column ``text_field``; of a ``DatasetDict`` only the
  ``train`` split is read when there is one, otherwise every split.

Bad input never stops a run midway. Each record that cannot be used is skipped and counted under one of
``SKIP_REASONS`` in a ``CorpusReport`` with up to ``max_examples`` "file:line" examples. Only when no
usable document is left does ``prepare_data`` raise ``DataError``, before any training.

Shards: each input file (a save_to_disk directory counts as one) is tokenized and packed on its own into
one shard of the cache (``cache_dir/shards/<key>/``), in file order, so packing never carries across
files: a file's last row is its only padded one (``--packing packed``). An input larger than
``shard_size_mb`` becomes one shard per part (``data.parts``: byte ranges, parquet row groups, dataset
rows), so that several processes share it. The corpus is the shards' rows in file (and part) order.

Packing (``--packing``; rows hold ``input_ids`` and ``attention_mask`` of length ``seq_len``, every row
starts with ``[CLS]`` and its last real token is ``[SEP]``; ``[PAD]`` follows with mask 0):

* ``packed`` (default): the documents of a file, in order and without special tokens, fill rows of
  ``seq_len - 2`` inner tokens, each row ``[CLS] inner [SEP]``. A document that continues where another
  ends in the same row is preceded by one ``[SEP]``; a document too long for the rest of its row goes on
  at the start of the next row (right after ``[CLS]``). The separator is left out where it would be
  the first inner token (the row just closed, its ``[SEP]`` is the boundary) or the last one (it would
  double the closing ``[SEP]``: that row closes after its document with one ``[PAD]``). So no row starts
  ``[CLS] [SEP]`` nor holds ``[SEP] [SEP]``; every row is full but a file's last one and those (about one
  document boundary in ``seq_len - 2``) closed one token early.
* ``per_document``: one document per row, ``[CLS] doc[:seq_len - 2] [SEP]`` then ``[PAD]``; the tokens of
  longer documents beyond ``seq_len - 2`` are dropped and counted (``truncated_documents``,
  ``truncated_tokens`` of the ``CorpusReport``), as the paper's code did.

Meta-validation split: of the ``N`` packed rows, the meta split is the rows
``np.sort(np.random.default_rng(seed).permutation(N)[:meta_sequences])`` and training gets the others, both
in packed order (``meta_split_rows``). The split is drawn each time the cache is loaded, so runs that differ
only in ``--seed`` or ``--meta_batch_size`` share one cache.
"""
import importlib

from mometas_ds.errors import DataError

# Imported on first use (PEP 562), so that a shard-building worker (data.shards) imports neither torch
# (batches, prefetch) nor transformers and HF datasets (cache).
_LAZY = {
    "ShardedBatches": "batches", "rows_as_tensors": "batches",
    "PrefetchedBatches": "prefetch", "prefetched": "prefetch",
    "CACHE_FORMAT_VERSION": "shards", "PACKING_MODES": "shards",
    "REPORT_FILE": "shard_files", "ROWS_FILE": "shard_files",
    "DataConfig": "cache", "PreparedData": "cache", "meta_split_rows": "cache", "prepare_data": "cache",
    "read_shard": "cache", "MIN_DOC_TOKENS": "report", "SKIP_REASONS": "report", "CorpusReport": "report",
    "iter_documents": "readers", "iter_path": "readers", "iter_texts": "readers", "resolve_files": "readers",
}
__all__ = ["DataError", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
