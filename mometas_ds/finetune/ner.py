"""Named-entity recognition (CoNLL-2003 style token classification): read, align labels to pieces, score.

A sentence's words are tokenised with ``is_split_into_words``; the first piece of each word carries the
word's tag and every later piece, special token and pad is -100 (ignored by the loss), as in HF's run_ner.
Predictions are mapped back to one tag per word from the first piece. The score is entity-level precision,
recall and F1 with the chunk definition of conlleval (seqeval's default mode), plus token accuracy; it is
computed here so the runtime does not need seqeval (the tests check it against seqeval).
File layout and definitions: docs/finetuning-tasks.md.
"""
from __future__ import annotations

import collections
from typing import Dict, List, Mapping, Sequence, Set, Tuple, Union

import numpy as np

from mometas_ds.config import ConfigError, DataError
from mometas_ds.finetune.skips import SkipCounter, no_examples_error
from mometas_ds.finetune.text_files import read_utf8

IGNORE_INDEX = -100  # the label torch's cross-entropy (and HF's token-classification models) ignore
DOCSTART = "-DOCSTART-"


def read_conll(path: str) -> Tuple[List[dict], SkipCounter]:
    """Read a CoNLL column file (``word POS chunk NER`` as in CoNLL-2003, or ``word tag``) into sentences.

    Columns are whitespace-separated and the tag is the last one. A blank line ends a sentence;
    ``-DOCSTART-`` lines are dropped (and end a sentence). The expected column count is the file's most
    common one; a line with another count is skipped (``wrong_column_count``, its line number kept in
    ``skipped.places``) and the rest of its sentence kept. Returns examples ``{id, tokens, tags}`` (``id``
    is the sentence's index in the file, as a string). An unreadable file, one whose lines have fewer than 2
    columns, or one with no sentence raises DataError naming the file.
    """
    lines = read_utf8(path).splitlines()  # BOM, non-UTF-8 bytes, an empty file: text_files' policy
    rows = [(number, line.split()) for number, line in enumerate(lines, start=1)]
    widths = collections.Counter(len(cols) for _, cols in rows if cols and cols[0] != DOCSTART)
    skipped = SkipCounter(path=path)
    if not widths:
        raise no_examples_error(path, skipped, "sentence")
    width = widths.most_common(1)[0][0]
    if width < 2:
        raise DataError(f"{path}: expected CoNLL columns 'word ... tag' (at least 2 per line), but most lines "
                        f"have {width}")

    examples: List[dict] = []
    tokens: List[str] = []
    tags: List[str] = []

    def end_sentence():
        if tokens:
            examples.append({"id": str(len(examples)), "tokens": list(tokens), "tags": list(tags)})
        tokens.clear()
        tags.clear()

    for number, cols in rows:
        if not cols or cols[0] == DOCSTART:
            end_sentence()
        elif len(cols) != width:
            skipped.skip("wrong_column_count", number)
        else:
            tokens.append(cols[0])
            tags.append(cols[-1])
    end_sentence()
    if not examples:
        raise no_examples_error(path, skipped, "sentence")
    return examples, skipped


def label_list(examples: Sequence[dict]) -> List[str]:
    """Every tag seen in ``examples``, sorted (the same list, so the same ids, for the same tags)."""
    return sorted({tag for example in examples for tag in example["tags"]})


def prepare_features(examples: Sequence[dict], tokenizer, max_seq_len: int, label_to_id: Mapping[str, int],
                     *, pad_to_max_length: bool = True) -> Dict[str, list]:
    """Token-classification features: the model inputs, ``labels`` (the word's label id on its first piece,
    -100 on later pieces, specials and padding), and, for ``align_predictions``, ``word_ids`` (per token the
    index of its word, None for specials and padding) and ``n_words`` (the sentence's word count, including
    words cut off by ``max_seq_len``). A tag missing from ``label_to_id`` raises DataError naming it."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("--tokenizer: token classification needs a fast (Rust tokenizers) tokenizer "
                          "for its word ids")
    encoded = tokenizer([list(e["tokens"]) for e in examples], is_split_into_words=True, truncation=True,
                        max_length=max_seq_len, padding="max_length" if pad_to_max_length else False)
    features = {key: encoded[key] for key in ("input_ids", "token_type_ids", "attention_mask") if key in encoded}
    labels, word_ids_all = [], []
    for i, example in enumerate(examples):
        unknown = sorted(set(example["tags"]) - set(label_to_id))
        if unknown:
            raise DataError(f"sentence {example['id']}: tag(s) {', '.join(map(repr, unknown))} not in the label "
                            f"list ({len(label_to_id)} labels, built from the training file)")
        word_ids = encoded.word_ids(i)
        row, previous = [], None
        for word in word_ids:
            row.append(IGNORE_INDEX if word is None or word == previous else label_to_id[example["tags"][word]])
            previous = word
        labels.append(row)
        word_ids_all.append(list(word_ids))
    features["labels"] = labels
    features["word_ids"] = word_ids_all
    features["n_words"] = [len(e["tokens"]) for e in examples]
    return features


def align_predictions(pred_ids, features, id_to_label: Union[Mapping[int, str], Sequence[str]],
                      fill_label: str = "O") -> List[List[str]]:
    """One predicted tag per original word: the prediction at the word's first piece. ``pred_ids`` is
    [features][seq] label ids, or [features][seq][labels] logits (arg-maxed). A word with no piece in the
    window (cut by truncation) gets ``fill_label``. ``features`` is what ``prepare_features`` returned."""
    pred_ids = np.asarray(pred_ids)
    if pred_ids.ndim == 3:
        pred_ids = pred_ids.argmax(axis=-1)
    word_rows, n_words = list(features["word_ids"]), list(features["n_words"])
    if len(pred_ids) != len(word_rows):
        raise ValueError(f"align_predictions: {len(word_rows)} features but {len(pred_ids)} prediction rows")
    sequences = []
    for row, word_ids, count in zip(pred_ids, word_rows, n_words):
        tags = [fill_label] * count
        previous = None
        for position, word in enumerate(word_ids):
            if word is not None and word != previous and position < len(row):
                tags[word] = id_to_label[int(row[position])]
            previous = word
        sequences.append(tags)
    return sequences


def _split_tag(tag: str) -> Tuple[str, str]:
    """("B", "PER") for "B-PER"; ("O", "") for "O"."""
    prefix, _, kind = tag.partition("-")
    return prefix, kind


def _ends(prev_prefix: str, prev_kind: str, prefix: str, kind: str) -> bool:
    """conlleval's end of a chunk between the previous tag and this one."""
    if prev_prefix in ("E", "S"):
        return True
    if prev_prefix in ("B", "I") and prefix in ("B", "S", "O"):
        return True
    return prev_prefix not in ("O", ".") and prev_kind != kind


def _starts(prev_prefix: str, prev_kind: str, prefix: str, kind: str) -> bool:
    """conlleval's start of a chunk at this tag (an I- after O or another type starts one: IOB1 tolerant)."""
    if prefix in ("B", "S"):
        return True
    if prev_prefix in ("E", "S", "O") and prefix in ("E", "I"):
        return True
    return prefix not in ("O", ".") and prev_kind != kind


def entities(tags: Sequence[str]) -> Set[Tuple[str, int, int]]:
    """The chunks of one sentence as ``(type, first word, last word)``, with conlleval's chunk definition."""
    found = set()
    prev_prefix, prev_kind, begin = "O", "", 0
    for i, tag in enumerate(list(tags) + ["O"]):  # a final O closes the last chunk
        prefix, kind = _split_tag(tag)
        if _ends(prev_prefix, prev_kind, prefix, kind):
            found.add((prev_kind, begin, i - 1))
        if _starts(prev_prefix, prev_kind, prefix, kind):
            begin = i
        prev_prefix, prev_kind = prefix, kind
    return found


def entity_f1(true_seqs: Sequence[Sequence[str]], pred_seqs: Sequence[Sequence[str]]) -> Dict[str, float]:
    """Micro entity precision, recall and F1 over all sentences, and token accuracy, as fractions (0-1).

    An entity counts as correct only when its type and both ends match. A score whose denominator is 0
    (no predicted or no true entity) is 0.0, as seqeval reports it."""
    if len(true_seqs) != len(pred_seqs):
        raise ValueError(f"entity_f1: {len(true_seqs)} true sentences but {len(pred_seqs)} predicted")
    correct = n_true = n_pred = same_tags = n_tags = 0
    for k, (true, pred) in enumerate(zip(true_seqs, pred_seqs)):
        if len(true) != len(pred):
            raise ValueError(f"entity_f1: sentence {k} has {len(true)} true tags but {len(pred)} predicted")
        true_chunks, pred_chunks = entities(true), entities(pred)
        correct += len(true_chunks & pred_chunks)
        n_true += len(true_chunks)
        n_pred += len(pred_chunks)
        same_tags += sum(t == p for t, p in zip(true, pred))
        n_tags += len(true)
    if n_tags == 0:
        raise ValueError("entity_f1: no tags to score")
    precision = correct / n_pred if n_pred else 0.0
    recall = correct / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": same_tags / n_tags}
