"""Extractive question answering (SQuAD v1.1 and v2.0): read the data, make windowed features, decode and score.

transformers ships the QA models and the Trainer but not the SQuAD pre/post-processing (``utils_qa.py`` lives
in its examples folder, outside the package), so these are ours. The model input is ``[CLS] question [SEP]
context [SEP]``; a context longer than the window is cut into several windows that overlap by ``doc_stride``
tokens (the fast tokenizer's overflow, as in HF's run_qa), and an answer outside a window is labelled with the
[CLS] position, which is also the label of an unanswerable (v2) question. The metric is the official SQuAD
script's: exact match and token F1 after ``normalize_answer``, each the max over the gold answers, in percent.
File layout and definitions: docs/finetuning-tasks.md.
"""
from __future__ import annotations

import collections
import json
import re
import string
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mometas_ds.config import ConfigError, DataError
from mometas_ds.finetune.skips import SkipCounter, no_examples_error
from mometas_ds.finetune.text_files import read_utf8

# ---------------------------------------------------------------------------------------------------- reading


def read_squad(path: str) -> Tuple[List[dict], SkipCounter]:
    """Read a SQuAD v1.1 / v2.0 JSON file into examples and a count of what was skipped.

    Each example is ``{id, title, question, context, answers: {"text": [...], "answer_start": [...]},
    is_impossible}``. An answer whose ``answer_start`` does not point at its text in the context is dropped
    (``answer_start_mismatch``); an answerable question left with no valid answer is skipped
    (``no_valid_answer``); a question marked ``is_impossible`` keeps no answers (v2 training files list
    ``plausible_answers`` separately; they are ignored). Malformed entries and repeated ids are skipped and
    counted too. An unreadable or malformed JSON file, a missing top-level ``data`` list, or a file with no
    usable question raises DataError naming the file.
    """
    text = read_utf8(path)  # BOM, non-UTF-8 bytes, an empty file: text_files' policy
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON (truncated or malformed?): {err.msg} "
                        f"at line {err.lineno} column {err.colno}") from err
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise DataError(f"{path}: not a SQuAD file: expected a JSON object with a top-level \"data\" list")

    skipped = SkipCounter(path=path)
    examples: List[dict] = []
    seen_ids = set()
    for a, article in enumerate(document["data"]):
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            skipped.skip("malformed_article", f"data[{a}]")
            continue
        title = article.get("title", "")
        title = title if isinstance(title, str) else str(title)
        for p, paragraph in enumerate(article["paragraphs"]):
            if (not isinstance(paragraph, dict) or not isinstance(paragraph.get("context"), str)
                    or not isinstance(paragraph.get("qas"), list)):
                skipped.skip("malformed_paragraph", f"data[{a}].paragraphs[{p}]")
                continue
            context = paragraph["context"]
            for q, qa in enumerate(paragraph["qas"]):
                place = f"data[{a}].paragraphs[{p}].qas[{q}]"
                example = _read_question(qa, context, title, place, skipped)
                if example is None:
                    continue
                if example["id"] in seen_ids:
                    skipped.skip("duplicate_id", example["id"])
                    continue
                seen_ids.add(example["id"])
                examples.append(example)
    if not examples:
        raise no_examples_error(path, skipped, "question")
    return examples, skipped


def _read_question(qa, context: str, title: str, place: str, skipped: SkipCounter):
    """One ``qas`` entry as an example, or None (counted in ``skipped``) when it cannot be used."""
    if (not isinstance(qa, dict) or not isinstance(qa.get("id"), (str, int)) or isinstance(qa.get("id"), bool)
            or not isinstance(qa.get("question"), str) or not isinstance(qa.get("answers", []), list)):
        skipped.skip("malformed_question", place)
        return None
    qid = str(qa["id"])
    if not qa["question"].strip():
        skipped.skip("empty_question", qid)
        return None
    is_impossible = bool(qa.get("is_impossible", False))
    texts: List[str] = []
    starts: List[int] = []
    if not is_impossible:
        for answer in qa.get("answers", []):
            text = answer.get("text") if isinstance(answer, dict) else None
            start = answer.get("answer_start") if isinstance(answer, dict) else None
            if not isinstance(text, str) or not text or not isinstance(start, int) or isinstance(start, bool):
                skipped.skip("malformed_answer", qid)
                continue
            if start < 0 or context[start:start + len(text)] != text:
                skipped.skip("answer_start_mismatch", qid)
                continue
            texts.append(text)
            starts.append(start)
        if not texts:
            skipped.skip("no_valid_answer", qid)
            return None
    return {"id": qid, "title": title, "question": qa["question"], "context": context,
            "answers": {"text": texts, "answer_start": starts}, "is_impossible": is_impossible}


# --------------------------------------------------------------------------------------------------- features


def _check_lengths(max_seq_len: int, doc_stride: int, max_query_len: int) -> None:
    for name, value in (("max_seq_len", max_seq_len), ("doc_stride", doc_stride), ("max_query_len", max_query_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "doc_stride" else 1):
            raise ConfigError(f"--{name}: expected a {'non-negative' if name == 'doc_stride' else 'positive'} "
                              f"integer, got {value!r}")
    room = max_seq_len - max_query_len - 3  # [CLS] question [SEP] context [SEP]
    if room <= doc_stride:
        raise ConfigError(
            f"--doc_stride ({doc_stride}) must be smaller than the context room of a window, max_seq_len "
            f"({max_seq_len}) - max_query_len ({max_query_len}) - 3 = {room}"
        )


def _truncate_questions(questions: Sequence[str], tokenizer, max_query_len: int) -> List[str]:
    """Questions cut to at most ``max_query_len`` tokens (the overflow only ever cuts the context).

    The cut falls at the start of the first word that does not fit whole, so re-tokenising the cut text gives
    the same, shorter, token sequence (cutting inside a word would re-split it into other pieces)."""
    stripped = [q.lstrip() for q in questions]  # leading blanks (seen in SQuAD v2) only waste window room
    encoded = tokenizer(stripped, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for i, question in enumerate(stripped):
        offsets = encoded["offset_mapping"][i]
        if len(offsets) <= max_query_len:
            out.append(question)
            continue
        word_ids = encoded.word_ids(i)
        first_out = max_query_len
        while first_out > 0 and word_ids[first_out - 1] == word_ids[first_out]:
            first_out -= 1  # back to the first piece of the word that does not fit
        cut = offsets[first_out][0] if first_out > 0 else offsets[max_query_len - 1][1]
        out.append(question[:cut].rstrip())
    return out


def _tokenize_windows(examples: Sequence[dict], tokenizer, max_seq_len: int, doc_stride: int,
                      max_query_len: int, pad_to_max_length: bool):
    _check_lengths(max_seq_len, doc_stride, max_query_len)
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("--tokenizer: question answering needs a fast (Rust tokenizers) tokenizer for its "
                          "offset mapping")
    questions = _truncate_questions([e["question"] for e in examples], tokenizer, max_query_len)
    return tokenizer(
        questions, [e["context"] for e in examples], truncation="only_second", max_length=max_seq_len,
        stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True,
        padding="max_length" if pad_to_max_length else False,
    )


def _model_inputs(encoded) -> Dict[str, list]:
    return {key: encoded[key] for key in ("input_ids", "token_type_ids", "attention_mask") if key in encoded}


def prepare_train_features(examples: Sequence[dict], tokenizer, max_seq_len: int, doc_stride: int,
                           max_query_len: int = 64, *, pad_to_max_length: bool = True) -> Dict[str, list]:
    """Training features: one row per window, labelled with the answer's first and last token.

    Returns ``input_ids``, ``token_type_ids`` (when the tokenizer makes them), ``attention_mask``,
    ``start_positions`` and ``end_positions``. The label is the example's first answer; a window that does
    not hold the whole answer, and every window of an unanswerable question, points at [CLS] (index 0).
    ``doc_stride`` is the overlap, in tokens, between consecutive windows (HF's meaning of ``stride``).
    """
    encoded = _tokenize_windows(examples, tokenizer, max_seq_len, doc_stride, max_query_len, pad_to_max_length)
    features = _model_inputs(encoded)
    starts, ends = [], []
    for i, offsets in enumerate(encoded["offset_mapping"]):
        input_ids = encoded["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
        example = examples[encoded["overflow_to_sample_mapping"][i]]
        answers = example["answers"]
        if example.get("is_impossible") or not answers["text"]:
            starts.append(cls_index)
            ends.append(cls_index)
            continue
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        context_tokens = [k for k, s in enumerate(encoded.sequence_ids(i)) if s == 1]
        first, last = context_tokens[0], context_tokens[-1]
        if offsets[first][0] > start_char or offsets[last][1] < end_char:
            starts.append(cls_index)  # the answer is not (wholly) inside this window
            ends.append(cls_index)
            continue
        start = first
        while start + 1 <= last and offsets[start + 1][0] <= start_char:
            start += 1  # the last token starting at or before the answer's first character
        end = last
        while end - 1 >= first and offsets[end - 1][1] >= end_char:
            end -= 1  # the first token ending at or after the answer's last character
        starts.append(start)
        ends.append(end)
    features["start_positions"] = starts
    features["end_positions"] = ends
    return features


def prepare_eval_features(examples: Sequence[dict], tokenizer, max_seq_len: int, doc_stride: int,
                          max_query_len: int = 64, *, pad_to_max_length: bool = True) -> Dict[str, list]:
    """Evaluation features: the model inputs plus ``example_id`` (the example each window came from) and
    ``offset_mapping`` (per token, ``(start, end)`` character offsets into the context, None for tokens
    outside the context: question, specials, padding). Same windows as ``prepare_train_features``."""
    encoded = _tokenize_windows(examples, tokenizer, max_seq_len, doc_stride, max_query_len, pad_to_max_length)
    features = _model_inputs(encoded)
    features["example_id"] = [examples[k]["id"] for k in encoded["overflow_to_sample_mapping"]]
    features["offset_mapping"] = [
        [tuple(offset) if seq == 1 else None for offset, seq in zip(offsets, encoded.sequence_ids(i))]
        for i, offsets in enumerate(encoded["offset_mapping"])
    ]
    return features


# ---------------------------------------------------------------------------------------------------- decoding


def postprocess_predictions(examples: Sequence[dict], features, start_logits, end_logits, n_best: int = 20,
                            max_answer_len: int = 30, version_2: bool = False,
                            null_threshold: float = 0.0) -> Dict[str, str]:
    """Answer text per example id from the windows' start/end logits ("" means no answer).

    For each example the candidates are, in every one of its windows, the pairs of its ``n_best`` highest
    start and ``n_best`` highest end logits, minus spans that end before they start, are longer than
    ``max_answer_len`` tokens or touch a token outside the context; the best candidate (highest
    start + end logit over all windows) gives the text, cut from the context by the offsets. With
    ``version_2`` the null score is start[0] + end[0] ([CLS]) of the window where it is lowest (as in
    BERT's and HF's SQuAD v2 code), and the answer is "" when the null score > best span score +
    ``null_threshold`` (or when no span is valid). ``features`` is what ``prepare_eval_features`` returned
    (a dict of lists, or a ``datasets.Dataset`` of it); the logits have one row per feature.
    """
    example_ids = list(features["example_id"])
    offset_rows = list(features["offset_mapping"])
    start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
    if len(start_logits) != len(example_ids) or len(end_logits) != len(example_ids):
        raise ValueError(f"postprocess_predictions: {len(example_ids)} features but {len(start_logits)} start "
                         f"and {len(end_logits)} end logit rows")
    windows = collections.defaultdict(list)
    for i, example_id in enumerate(example_ids):
        windows[example_id].append(i)

    predictions: Dict[str, str] = {}
    for example in examples:
        best_score, best_text = None, ""
        null_score = None
        for i in windows.get(example["id"], ()):
            starts, ends, offsets = start_logits[i], end_logits[i], offset_rows[i]
            window_null = float(starts[0] + ends[0])
            null_score = window_null if null_score is None else min(null_score, window_null)
            top_starts = np.argsort(starts)[::-1][:n_best]
            top_ends = np.argsort(ends)[::-1][:n_best]
            for s in top_starts:
                if s >= len(offsets) or offsets[s] is None:
                    continue
                for e in top_ends:
                    if e >= len(offsets) or offsets[e] is None or e < s or e - s + 1 > max_answer_len:
                        continue
                    score = float(starts[s] + ends[e])
                    if best_score is None or score > best_score:
                        best_score = score
                        best_text = example["context"][offsets[s][0]:offsets[e][1]]
        if version_2 and (best_score is None or (null_score is not None
                                                 and null_score > best_score + null_threshold)):
            best_text = ""
        predictions[example["id"]] = best_text
    return predictions


# ----------------------------------------------------------------------------------------------------- metric

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official SQuAD normalisation: lower case, drop punctuation, drop the articles a/an/the, and
    collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _f1(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)  # an empty side scores 1 only against another empty side
    same = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: Mapping[str, str], examples: Sequence[dict],
                  version_2: Optional[bool] = None) -> Dict[str, float]:
    """Exact match and F1 in percent (0-100) like the official SQuAD v1.1/v2.0 scripts.

    Per question: the max over its gold answers (golds that normalise to "" are dropped; an unanswerable
    question's gold is [""]) of exact match of the normalised texts and of token F1. A question with no
    prediction scores 0. ``version_2`` (default: whether any example is unanswerable) adds
    ``HasAns_*`` / ``NoAns_*`` (exact, f1, total) over the answerable and unanswerable questions
    (exact and f1 are 0.0 when that subset is empty).
    """
    if version_2 is None:
        version_2 = any(e.get("is_impossible") for e in examples)
    scores = {"all": [], "has": [], "no": []}
    for example in examples:
        golds = [g for g in example["answers"]["text"] if normalize_answer(g)] or [""]
        if example["id"] in predictions:
            prediction = predictions[example["id"]]
            exact = max(float(normalize_answer(prediction) == normalize_answer(g)) for g in golds)
            f1 = max(_f1(prediction, g) for g in golds)
        else:
            exact = f1 = 0.0
        scores["all"].append((exact, f1))
        answerable = not example.get("is_impossible") and bool(example["answers"]["text"])
        scores["has" if answerable else "no"].append((exact, f1))

    def summary(pairs, prefix=""):
        total = len(pairs)
        return {f"{prefix}exact": 100.0 * sum(p[0] for p in pairs) / total if total else 0.0,
                f"{prefix}f1": 100.0 * sum(p[1] for p in pairs) / total if total else 0.0,
                f"{prefix}total": total}

    result = summary(scores["all"])
    if version_2:
        result.update(summary(scores["has"], "HasAns_"))
        result.update(summary(scores["no"], "NoAns_"))
    return result
