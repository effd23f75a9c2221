"""Pre-training data: read corpora, tokenize once into a cached packed Arrow dataset, hold out a
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

Packing: the token ids of all documents (no special tokens) are concatenated in corpus order and cut
into chunks of ``seq_len - 2``; each chunk becomes ``[CLS] chunk [SEP]``; the last, shorter chunk is
right-padded with ``[PAD]``. Rows hold ``input_ids`` and ``attention_mask`` of length ``seq_len``.

Meta-validation split: of the ``N`` packed rows, the meta split is the rows
``np.sort(np.random.default_rng(seed).permutation(N)[:meta_sequences])`` and training gets the others, both
in packed order (``meta_split_rows``). The split is drawn each time the cache is loaded, so runs that differ
only in ``--seed`` or ``--meta_batch_size`` share one cache.
"""
from ..errors import DataError
from .batches import ShardedBatches, rows_as_tensors
from .prefetch import PrefetchedBatches, prefetched
from .cache import CACHE_FORMAT_VERSION, REPORT_FILE, DataConfig, PreparedData, meta_split_rows, prepare_data
from .readers import MIN_DOC_TOKENS, SKIP_REASONS, CorpusReport, iter_documents, iter_texts, resolve_files

__all__ = [
    "DataError", "ShardedBatches", "PrefetchedBatches", "prefetched", "rows_as_tensors", "CACHE_FORMAT_VERSION",
    "REPORT_FILE", "DataConfig", "PreparedData", "meta_split_rows", "prepare_data", "MIN_DOC_TOKENS", "SKIP_REASONS",
    "CorpusReport", "iter_documents", "iter_texts", "resolve_files",
]
