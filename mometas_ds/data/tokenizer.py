"""BERT WordPiece tokenizers: train one on a corpus, load a local one, read its special-token ids.

A trained tokenizer is a ``transformers`` BertTokenizer backed by HF ``tokenizers``
(lowercasing BertNormalizer, BertPreTokenizer, WordPiece with ``##`` continuations),
with ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4``. It is saved with
``save_pretrained`` so ``AutoTokenizer.from_pretrained(out_dir)`` loads it, next to
``TRAINING_RECORD`` (how it was trained: vocabulary size, documents read and sampled).
"""
from __future__ import annotations

import json
import math
import os
import random
import re
from collections import Counter
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from mometas_ds.config import ConfigError, DataError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Files save_pretrained may write; a directory holding none of them is not a tokenizer.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model")
# Written next to the tokenizer by train_wordpiece_tokenizer: its training settings and the sample it read.
TRAINING_RECORD = "mometas_tokenizer_training.json"
# The seed of --tokenizer_sample's draw: fixed, so the sample depends on the corpus and N only (runs that
# differ only in --seed train the same tokenizer).
SAMPLE_SEED = 0
# Strings per batch handed to HF's trainer (its guidance: batches of texts, with a length).
_TRAIN_BATCH = 1000

# A corpus: documents, or batches (lists) of documents, or a function returning a fresh such iterable.
Corpus = Union[Iterable[Union[str, List[str]]], Callable[[], Iterable[Union[str, List[str]]]]]


def train_wordpiece_tokenizer(
    texts: Corpus,
    vocab_size: int,
    out_dir: str,
    *,
    min_frequency: int = 2,
    lowercase: bool = True,
    model_max_length: int = 512,
    sample: Optional[int] = None,
) -> PreTrainedTokenizerFast:
    """Train a BERT WordPiece tokenizer on ``texts``, save it to ``out_dir`` and return it.

    ``texts`` yields documents (str) or batches of them (lists of str, e.g. ``dataset.iter(batch_size=...)``
    columns); it may also be a function returning a fresh such iterable. Memory holds one count per distinct
    word, never the texts.

    The vocabulary holds at most ``vocab_size`` entries, unless the corpus has more
    distinct characters than that (WordPiece always keeps every character).

    ``sample=N`` trains on N documents drawn uniformly, without replacement, from the whole corpus (selection
    sampling with the fixed ``SAMPLE_SEED``: the same corpus and N give the same documents in any process);
    it reads the corpus twice (once to count the documents), so ``texts`` must be a list or a function, not a
    one-shot iterator. A corpus of at most N documents is read whole: the same tokenizer as ``sample=None``.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < len(SPECIAL_TOKENS) + 5:
        raise ValueError(
            f"--train_tokenizer: vocab_size must be an int >= {len(SPECIAL_TOKENS) + 5}, got {vocab_size!r}")
    if isinstance(texts, str):
        raise ValueError("texts must be an iterable of documents, not a single string")
    if sample is not None and (isinstance(sample, bool) or not isinstance(sample, int) or sample < 1):
        raise ValueError(f"--tokenizer_sample: must be a whole number of documents >= 1, got {sample!r}")

    def read():
        return _documents(texts() if callable(texts) else texts)

    if sample is not None and not callable(texts) and iter(texts) is texts:
        raise ValueError("--tokenizer_sample reads the corpus twice: pass a list of texts or a function "
                         "returning a fresh iterator, not a one-shot iterator")
    num_documents = _count_documents(read()) if sample is not None else None
    documents = read()
    if num_documents is not None and sample < num_documents:
        documents = _selection_sample(documents, num_documents, sample, random.Random(SAMPLE_SEED))

    normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    word_counts, num_texts = _count_words(documents, normalizer, pre_tokenizer)
    if num_texts == 0:
        raise DataError("cannot train a tokenizer: the corpus yielded no text (check --train_files and --text_field)")

    # HF's trainer numbers the "##c" continuation pieces in hash-map order (a new order in every process) and
    # breaks ties between equally frequent pairs by the smaller ids, so both the ids and the merges it picks
    # change from run to run. Registering the characters and then every "##c" up front, each sorted by code
    # point, gives the layout HF would give with a sorted map and fixes the whole training; the tokenizer is
    # then rebuilt from the trained vocabulary so that only the five special tokens are added tokens.
    characters = sorted({c for word in word_counts for c in word})
    continuations = sorted({"##" + c for word in word_counts for c in word[1:]})
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS) + characters + continuations,
        continuing_subword_prefix="##", show_progress=False,
    )
    counter = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    counter.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # the words are already normalized and split
    counter.train_from_iterator(_batches(_replay_words(word_counts), _TRAIN_BATCH), trainer=trainer,
                                length=math.ceil(_num_replay_strings(word_counts) / _TRAIN_BATCH))
    vocab = counter.get_vocab(with_added_tokens=False)

    tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))

    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    wrapped = BertTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", do_lower_case=lowercase, model_max_length=model_max_length,
    )
    os.makedirs(out_dir, exist_ok=True)
    wrapped.save_pretrained(out_dir)
    record = {"vocab_size": vocab_size, "trained_vocab_size": len(wrapped), "min_frequency": min_frequency,
              "lowercase": lowercase, "tokenizer_sample": sample, "sample_seed": SAMPLE_SEED if sample else None,
              "documents_in_corpus": num_documents, "documents_trained_on": num_texts}
    with open(os.path.join(out_dir, TRAINING_RECORD), "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write("\n")
    return wrapped


def load_tokenizer(path: str, flag: str = "--tokenizer") -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory written by ``save_pretrained`` (no hub access).

    A path that holds no loadable tokenizer raises ConfigError naming ``flag`` (a bad flag, so the run
    ends with "mometas-pretrain: error: ..." and exit code 2)."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ConfigError(f"{flag}: expected a local tokenizer directory, got {path!r}")
    path = str(path)
    if not os.path.exists(path):
        raise ConfigError(f"{flag}: directory {path!r} does not exist")
    if not os.path.isdir(path):
        raise ConfigError(f"{flag}: {path!r} is a file; pass the directory save_pretrained wrote")
    if not any(os.path.isfile(os.path.join(path, name)) for name in _TOKENIZER_FILES):
        raise ConfigError(
            f"{flag}: {path!r} is not a tokenizer directory (none of {', '.join(_TOKENIZER_FILES)} in it)"
        )
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as err:  # transformers raises many types here; the user needs the path and the cause
        raise ConfigError(f"{flag}: could not load a tokenizer from {path!r}: {type(err).__name__}: {err}") from err


def required_token_id(tokenizer: PreTrainedTokenizerBase, role: str, flag: str = "--tokenizer") -> int:
    """Id of the tokenizer's ``role`` token (pad, cls, sep, mask), or a ConfigError naming the missing one."""
    token_id = getattr(tokenizer, f"{role}_token_id", None)
    if token_id is None:
        where = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ConfigError(
            f"{flag}: tokenizer {where!r} has no {role} token ({role}_token_id is None); "
            f"BERT pre-training needs [PAD], [CLS], [SEP] and [MASK]"
        )
    return int(token_id)


_UNUSED_TOKEN = re.compile(r"\[unused\d+\]")  # BERT's placeholder vocabulary entries


def special_tokens_of(tokenizer: PreTrainedTokenizerBase, flag: str = "--tokenizer"):
    """The ``SpecialTokens`` the objectives need, read from ``tokenizer``; ``vocab_size`` is ``len(tokenizer)``.

    Its ``reserved_ids`` (never drawn as random tokens) are unk, every other special or added token, and
    ``[unusedN]`` placeholders: a random replacement or insertion should be a real word piece.
    Its ``continuation_ids`` (whole-word masking) are the vocabulary's continuation pieces: tokens that
    start with the WordPiece model's continuing-subword prefix ("##" unless the model says otherwise)."""
    from mometas_ds.objectives.base import SpecialTokens

    vocab_size = len(tokenizer)
    vocab = tokenizer.get_vocab()
    reserved = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", None) or {})
    reserved.update(i for token, i in vocab.items() if _UNUSED_TOKEN.fullmatch(token))
    prefix = continuation_prefix_of(tokenizer)
    continuation = [i for token, i in vocab.items() if token.startswith(prefix) and len(token) > len(prefix)]
    ids = {f"{role}_id": required_token_id(tokenizer, role, flag) for role in ("pad", "cls", "sep", "mask")}

    def in_range(found):
        return tuple(i for i in found if isinstance(i, int) and 0 <= i < vocab_size)

    try:
        return SpecialTokens(**ids, vocab_size=vocab_size, reserved_ids=in_range(reserved),
                             continuation_ids=in_range(continuation))
    except ValueError as err:  # e.g. pad and sep share an id: the tokenizer is unusable, not the code
        raise ConfigError(f"{flag}: {err}") from err


def continuation_prefix_of(tokenizer: PreTrainedTokenizerBase) -> str:
    """The prefix that marks a word piece continuing a word: the WordPiece model's own, else "##"."""
    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    prefix = getattr(model, "continuing_subword_prefix", None)
    return prefix if isinstance(prefix, str) and prefix else "##"


def _count_words(texts: Iterable[str], normalizer, pre_tokenizer) -> Tuple[Dict[str, int], int]:
    """How often each word occurs, as the trainer would count them (normalized, then pre-tokenized), and the
    number of texts read: one pass, so a generator over the corpus files works."""
    counts: Counter = Counter()
    num_texts = 0
    for text in texts:
        num_texts += 1
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    return dict(counts), num_texts


def _documents(items: Iterable) -> Iterator[str]:
    """The documents of ``items``: each str item, and each str of a list or tuple item (a batch)."""
    for item in items:
        if isinstance(item, str):
            yield item
        elif isinstance(item, (list, tuple)):
            for text in item:
                if not isinstance(text, str):
                    raise ValueError(f"texts: a batch holds a {type(text).__name__}, not a str")
                yield text
        else:
            raise ValueError(f"texts must yield documents (str) or batches of them (lists), got a "
                             f"{type(item).__name__}")


def _count_documents(documents: Iterable[str]) -> int:
    return sum(1 for _ in documents)


def _selection_sample(documents: Iterable[str], total: int, wanted: int, rng: random.Random) -> Iterator[str]:
    """Exactly ``wanted`` of the ``total`` documents, every subset equally likely, in corpus order, in one
    streaming pass (Knuth's selection sampling, Algorithm S: keep each with probability still-needed over
    still-left; no index list in memory)."""
    kept = 0
    for seen, text in enumerate(documents):
        if kept == wanted:
            return
        if seen >= total:  # the corpus grew between the two reads: stay within N
            return
        if rng.random() * (total - seen) < wanted - kept:
            kept += 1
            yield text


def _batches(items: Iterable[str], size: int) -> Iterator[List[str]]:
    batch: List[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _num_replay_strings(word_counts: Dict[str, int], chunk: int = 1024) -> int:
    """How many strings ``_replay_words`` yields (for the trainer's ``length``)."""
    return sum(-(-count // chunk) for count in word_counts.values())


def _replay_words(word_counts: Dict[str, int], chunk: int = 1024) -> Iterator[str]:
    """Each word ``count`` times, space-separated, in sorted order; at most ``chunk`` copies per string."""
    for word in sorted(word_counts):
        count = word_counts[word]
        while count > 0:
            n = min(count, chunk)
            yield " ".join([word] * n)
            count -= n
