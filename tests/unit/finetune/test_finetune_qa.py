"""SQuAD building blocks: reading, windowed features, n-best decoding, the official EM/F1."""
import json

import numpy as np
import pytest

from mometas_ds.config import ConfigError, DataError
from mometas_ds.finetune import qa
from tests.finetune_task_helpers import make_tokenizer

FILLER = "Alice measured the galaxy in Lisbon. Bruno baked bread in Oslo. "
ANSWER = "the telescope in Osaka"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(str(tmp_path_factory.mktemp("qa_tok")))


def example(qid, context, answer=None, question="What did the team find?", impossible=False):
    answers = {"text": [], "answer_start": []}
    if answer is not None:
        answers = {"text": [answer], "answer_start": [context.index(answer)]}
    return {"id": qid, "title": "t", "question": question, "context": context, "answers": answers,
            "is_impossible": impossible}


def context_span(features, i):
    """(first char, end char) of the context text window i covers."""
    offsets = [o for o in features["offset_mapping"][i] if o is not None]
    return offsets[0][0], offsets[-1][1]


# ------------------------------------------------------------------------------------------------- features

def test_answer_across_window_boundary_is_labelled_in_the_later_window(tokenizer):
    max_seq_len, stride = 40, 10
    # Grow the filler until the answer straddles the end of the first window.
    for n in range(1, 200):
        context = "word " * n + ANSWER + ". " + FILLER * 3
        ex = example("q", context, ANSWER)
        ev = qa.prepare_eval_features([ex], tokenizer, max_seq_len, stride, max_query_len=16)
        start_char = context.index(ANSWER)
        end_char = start_char + len(ANSWER)
        _, first_end = context_span(ev, 0)
        if start_char < first_end < end_char:
            break
    else:
        pytest.fail("could not build a context whose answer straddles the first window's end")
    train = qa.prepare_train_features([ex], tokenizer, max_seq_len, stride, max_query_len=16)
    assert len(train["input_ids"]) == len(ev["input_ids"]) >= 2
    assert (train["start_positions"][0], train["end_positions"][0]) == (0, 0)  # cut answer: [CLS]
    labelled = [i for i, s in enumerate(train["start_positions"]) if s != 0]
    assert labelled, "no window holds the whole answer"
    for i in range(len(train["input_ids"])):
        lo, hi = context_span(ev, i)
        holds = lo <= start_char and end_char <= hi
        assert (i in labelled) == holds
        if holds:
            s, e = train["start_positions"][i], train["end_positions"][i]
            offsets = ev["offset_mapping"][i]
            assert context[offsets[s][0]:offsets[e][1]] == ANSWER  # offsets map back to the exact text
            assert tokenizer.decode(train["input_ids"][i][s:e + 1]) == ANSWER.lower()
    # Consecutive windows overlap by exactly `stride` context tokens.
    tokens = [[t for t, o in zip(ev["input_ids"][i], ev["offset_mapping"][i]) if o is not None]
              for i in range(2)]
    assert tokens[0][-stride:] == tokens[1][:stride]
    assert all(len(ids) == max_seq_len for ids in train["input_ids"])
    assert set(train) == {"input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions"}


def test_unanswerable_question_points_every_window_at_cls(tokenizer):
    ex = example("q", FILLER * 6, None, impossible=True)
    train = qa.prepare_train_features([ex], tokenizer, 32, 8, max_query_len=12)
    assert len(train["input_ids"]) > 1
    assert train["start_positions"] == train["end_positions"] == [0] * len(train["input_ids"])
    assert all(ids[0] == tokenizer.cls_token_id for ids in train["input_ids"])


def test_eval_offsets_cover_context_tokens_only(tokenizer):
    context = "Bruno baked bread in Oslo."
    ev = qa.prepare_eval_features([example("q7", context, "bread")], tokenizer, 48, 8, max_query_len=16)
    assert ev["example_id"] == ["q7"]
    ids, offsets, types = ev["input_ids"][0], ev["offset_mapping"][0], ev["token_type_ids"][0]
    pieces = [(tokenizer.convert_ids_to_tokens(t), context[o[0]:o[1]]) for t, o in zip(ids, offsets) if o]
    assert pieces == [("bruno", "Bruno"), ("baked", "baked"), ("bread", "bread"), ("in", "in"),
                      ("oslo", "Oslo"), (".", ".")]
    for t, o, ty in zip(ids, offsets, types):
        if o is not None:
            assert ty == 1 and t not in (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)


def test_long_question_is_cut_to_max_query_len_on_a_word_boundary(tokenizer):
    question = "Where did Zanzibarian Alice measure the galaxy " * 6 + "?"
    ex = example("q", FILLER * 4, "galaxy", question=question)
    ev = qa.prepare_eval_features([ex], tokenizer, 64, 8, max_query_len=20)
    for types in ev["token_type_ids"]:
        n_question = types.index(1) - 2  # [CLS] question [SEP]
        assert 0 < n_question <= 20
    kept = tokenizer.convert_ids_to_tokens(ev["input_ids"][0][1:ev["token_type_ids"][0].index(1) - 1])
    words = question.split()
    fits = max(m for m in range(len(words) + 1) if len(tokenizer.tokenize(" ".join(words[:m]))) <= 20)
    assert fits < len(words) and kept == tokenizer.tokenize(" ".join(words[:fits]))  # the whole words that fit


def test_stride_that_leaves_no_progress_is_a_config_error(tokenizer):
    with pytest.raises(ConfigError, match="--doc_stride"):
        qa.prepare_train_features([example("q", FILLER, "Oslo")], tokenizer, 64, 40, max_query_len=24)


# ------------------------------------------------------------------------------------------------- decoding

def one_window(tokenizer, context="Alice measured the galaxy near Lisbon and Bruno baked bread in Oslo."):
    ex = example("q", context, "Lisbon")
    ev = qa.prepare_eval_features([ex], tokenizer, 64, 8, max_query_len=16)
    assert len(ev["input_ids"]) == 1
    ctx_index = {context[o[0]:o[1]]: k for k, o in enumerate(ev["offset_mapping"][0]) if o is not None}
    assert {"galaxy", "near", "Lisbon", "Bruno", "bread", "Oslo"} <= set(ctx_index)  # whole-word tokens
    return ex, ev, ctx_index


def test_decoding_picks_the_best_valid_span(tokenizer):
    ex, ev, at = one_window(tokenizer)
    start, end = np.full((1, 64), -10.0), np.full((1, 64), -10.0)
    start[0, at["galaxy"]], end[0, at["Lisbon"]] = 5.0, 5.0  # "galaxy near Lisbon": 10
    start[0, at["bread"]], end[0, at["Alice"]] = 9.0, 9.0  # 18, but it ends before it starts
    start[0, 3], end[0, 5] = 20.0, 20.0  # question tokens: outside the context
    assert qa.postprocess_predictions([ex], ev, start, end) == {"q": "galaxy near Lisbon"}
    start[0, at["near"]] = 4.0  # "near Lisbon": 9, 2 tokens
    end[0, at["galaxy"]] = 3.0  # "galaxy": 8, 1 token
    assert qa.postprocess_predictions([ex], ev, start, end, max_answer_len=3)["q"] == "galaxy near Lisbon"
    assert qa.postprocess_predictions([ex], ev, start, end, max_answer_len=2)["q"] == "near Lisbon"
    assert qa.postprocess_predictions([ex], ev, start, end, max_answer_len=1)["q"] == "galaxy"


def test_n_best_limits_the_candidates_per_window(tokenizer):
    ex, ev, at = one_window(tokenizer)
    start, end = np.full((1, 64), -10.0), np.full((1, 64), -10.0)
    start[0, at["Bruno"]], end[0, at["Alice"]] = 9.0, 9.0  # the top start and top end make no span
    start[0, at["galaxy"]], end[0, at["Lisbon"]] = 5.0, 5.0
    # With n_best=1 only the (Bruno, Alice) pair is looked at; it is invalid, so there is no answer.
    assert qa.postprocess_predictions([ex], ev, start, end, n_best=1) == {"q": ""}
    assert qa.postprocess_predictions([ex], ev, start, end, n_best=2) == {"q": "galaxy near Lisbon"}


def test_best_span_is_taken_over_all_windows_of_an_example(tokenizer):
    context = FILLER * 5
    ex = example("q", context, "Oslo")
    ev = qa.prepare_eval_features([ex], tokenizer, 32, 8, max_query_len=12)
    n = len(ev["input_ids"])
    assert n >= 3
    start, end = np.zeros((n, 32)), np.zeros((n, 32))
    for i in range(n):  # every window proposes its first context token, the last window the best
        k = next(k for k, o in enumerate(ev["offset_mapping"][i]) if o is not None)
        start[i, k] = end[i, k] = 1.0 + (i == n - 1)
    first = next(o for o in ev["offset_mapping"][0] if o is not None)
    last = next(o for o in ev["offset_mapping"][n - 1] if o is not None)
    assert context[first[0]:first[1]] != context[last[0]:last[1]]
    assert qa.postprocess_predictions([ex], ev, start, end) == {"q": context[last[0]:last[1]]}


def test_version_2_null_threshold_both_ways(tokenizer):
    ex, ev, at = one_window(tokenizer)
    start, end = np.zeros((1, 64)), np.zeros((1, 64))
    start[0, 0], end[0, 0] = 3.0, 2.0  # null score 5
    start[0, at["Oslo"]], end[0, at["Oslo"]] = 2.0, 2.0  # best span 4
    assert qa.postprocess_predictions([ex], ev, start, end) == {"q": "Oslo"}  # v1 never answers ""
    assert qa.postprocess_predictions([ex], ev, start, end, version_2=True) == {"q": ""}
    assert qa.postprocess_predictions([ex], ev, start, end, version_2=True, null_threshold=1.5) == {"q": "Oslo"}
    assert qa.postprocess_predictions([ex], ev, start, end, version_2=True, null_threshold=0.5) == {"q": ""}
    start[0, 0] = 1.0  # null 3 < 4
    assert qa.postprocess_predictions([ex], ev, start, end, version_2=True) == {"q": "Oslo"}
    assert qa.postprocess_predictions([ex], ev, start, end, version_2=True, null_threshold=-1.5) == {"q": ""}


def test_version_2_null_score_is_the_lowest_over_windows(tokenizer):
    ex = example("q", FILLER * 4, "Oslo")
    ev = qa.prepare_eval_features([ex], tokenizer, 32, 8, max_query_len=12)
    n = len(ev["input_ids"])
    start, end = np.zeros((n, 32)), np.zeros((n, 32))
    start[:, 0] = end[:, 0] = 3.0  # null 6 in every window ...
    start[1, 0] = end[1, 0] = 1.0  # ... but 2 in window 1
    k = next(k for k, o in enumerate(ev["offset_mapping"][0]) if o is not None)
    start[0, k], end[0, k] = 2.0, 2.0  # span score 4
    o = ev["offset_mapping"][0][k]
    assert qa.postprocess_predictions([ex], ev, start, end, version_2=True) == {"q": ex["context"][o[0]:o[1]]}


def test_round_trip_gold_positions_decode_to_the_gold_answers(tokenizer):
    contexts = [FILLER * 3 + "They found " + ANSWER + " at last. " + FILLER * 2,
                "Dalia signed the treaty in 1848, " + FILLER, FILLER * 2 + "The record was 42 goals."]
    answers = [ANSWER, "the treaty", "42 goals"]
    examples = [example(f"q{i}", c, a) for i, (c, a) in enumerate(zip(contexts, answers))]
    train = qa.prepare_train_features(examples, tokenizer, 40, 12, max_query_len=12)
    ev = qa.prepare_eval_features(examples, tokenizer, 40, 12, max_query_len=12)
    assert len(train["input_ids"]) == len(ev["input_ids"]) > len(examples)
    start, end = np.zeros((len(ev["input_ids"]), 40)), np.zeros((len(ev["input_ids"]), 40))
    for i, (s, e) in enumerate(zip(train["start_positions"], train["end_positions"])):
        start[i, s] += 10.0
        end[i, e] += 10.0
    predictions = qa.postprocess_predictions(examples, ev, start, end)
    assert predictions == {f"q{i}": a for i, a in enumerate(answers)}
    assert qa.squad_metrics(predictions, examples) == {"exact": 100.0, "f1": 100.0, "total": 3}


def test_logit_rows_must_match_features(tokenizer):
    ex, ev, _ = one_window(tokenizer)
    with pytest.raises(ValueError, match="1 features but 2"):
        qa.postprocess_predictions([ex], ev, np.zeros((2, 64)), np.zeros((2, 64)))


# --------------------------------------------------------------------------------------------------- metric

def test_normalize_answer():
    assert qa.normalize_answer("  The  Big, red (telescope)! ") == "big red telescope"
    assert qa.normalize_answer("An apple a day") == "apple day"
    assert qa.normalize_answer("theatre anthem") == "theatre anthem"  # articles only as whole words


def gold(qid, texts, impossible=False):
    return {"id": qid, "answers": {"text": list(texts), "answer_start": [0] * len(texts)},
            "is_impossible": impossible, "context": "", "question": "?"}


def test_squad_metrics_hand_worked_v1():
    examples = [gold("a", ["The Telescope!"]),
                gold("b", ["the big red telescope", "telescope in Osaka"]),
                gold("c", ["Lisbon"]),
                gold("d", ["Oslo"]),
                gold("e", ["The", "Oslo"])]
    predictions = {"a": "telescope", "b": "red telescope in Osaka", "c": "Oslo", "e": ""}  # d missing
    # a: EM 1, F1 1 after normalisation. b: vs gold 1 p=2/4 r=2/3 -> 4/7; vs gold 2 p=3/4 r=1 -> 6/7; max 6/7.
    # c: 0, 0. d: no prediction: 0, 0. e: "The" normalises to "" and is dropped, so "" scores 0 against "Oslo".
    result = qa.squad_metrics(predictions, examples)
    assert result["total"] == 5
    assert result["exact"] == pytest.approx(100.0 * 1 / 5)
    assert result["f1"] == pytest.approx(100.0 * (1 + 6 / 7) / 5)
    assert set(result) == {"exact", "f1", "total"}


def test_squad_metrics_hand_worked_v2_split():
    examples = [gold("a", ["Lisbon harbor"]), gold("b", ["Oslo"]),
                gold("n1", [], impossible=True), gold("n2", [], impossible=True), gold("n3", [], True)]
    predictions = {"a": "the harbor", "b": "Oslo", "n1": "", "n2": "Oslo", "n3": ""}
    # a: EM 0, F1 p=1 r=1/2 -> 2/3. b: 1, 1. n1: 1, 1. n2: 0, 0. n3: 1, 1.
    result = qa.squad_metrics(predictions, examples)
    assert result["total"] == 5 and result["HasAns_total"] == 2 and result["NoAns_total"] == 3
    assert result["exact"] == pytest.approx(100 * 3 / 5)
    assert result["f1"] == pytest.approx(100 * (2 / 3 + 3) / 5)
    assert result["HasAns_exact"] == pytest.approx(50.0)
    assert result["HasAns_f1"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert result["NoAns_exact"] == result["NoAns_f1"] == pytest.approx(100 * 2 / 3)
    v1 = qa.squad_metrics(predictions, examples, version_2=False)
    assert set(v1) == {"exact", "f1", "total"}


# -------------------------------------------------------------------------------------------------- reading

def write_json(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")
    return str(path)


def test_read_squad_counts_what_it_skips(tmp_path):
    context = "Alice measured the galaxy in Lisbon."
    data = {"version": "v2.0", "data": [{"title": "Space", "paragraphs": [{"context": context, "qas": [
        {"id": "ok", "question": "Where?", "answers": [{"text": "Lisbon", "answer_start": 29},
                                                       {"text": "Lisbon", "answer_start": 3}]},
        {"id": "bad", "question": "Who?", "answers": [{"text": "Alice", "answer_start": 5}]},
        {"id": "imp", "question": "Why?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "galaxy", "answer_start": 19}]},
        {"id": "ok", "question": "Again?", "answers": [{"text": "Alice", "answer_start": 0}]},
        {"question": "no id", "answers": []},
    ]}, {"context": 7, "qas": []}]}, "not an article"]}
    examples, skipped = qa.read_squad(write_json(tmp_path / "train.json", data))
    assert [e["id"] for e in examples] == ["ok", "imp"]
    assert examples[0] == {"id": "ok", "title": "Space", "question": "Where?", "context": context,
                           "answers": {"text": ["Lisbon"], "answer_start": [29]}, "is_impossible": False}
    assert examples[1]["is_impossible"] and examples[1]["answers"] == {"text": [], "answer_start": []}
    assert dict(skipped) == {"answer_start_mismatch": 2, "no_valid_answer": 1, "duplicate_id": 1,
                             "malformed_question": 1, "malformed_paragraph": 1, "malformed_article": 1}
    assert skipped.places["no_valid_answer"] == ["bad"]
    assert "train.json" in skipped.summary()


def test_read_squad_errors_name_the_file(tmp_path):
    good = json.dumps({"data": [{"title": "x", "paragraphs": [{"context": "abc", "qas": [
        {"id": "1", "question": "q", "answers": [{"text": "abc", "answer_start": 0}]}]}]}]}, indent=1)
    truncated = tmp_path / "cut.json"
    truncated.write_text(good[: len(good) // 2], encoding="utf-8")
    with pytest.raises(DataError, match=r"cut\.json.*line \d+ column \d+"):
        qa.read_squad(str(truncated))
    with pytest.raises(DataError, match=r"nodata\.json.*\"data\""):
        qa.read_squad(write_json(tmp_path / "nodata.json", {"version": "1.1"}))
    with pytest.raises(DataError, match=r"missing\.json"):
        qa.read_squad(str(tmp_path / "missing.json"))
    with pytest.raises(DataError, match=r"empty\.json: no usable question"):
        qa.read_squad(write_json(tmp_path / "empty.json", {"data": []}))
    (tmp_path / "good.json").write_text(good, encoding="utf-8")
    assert len(qa.read_squad(str(tmp_path / "good.json"))[0]) == 1


def test_eval_features_survive_a_datasets_round_trip(tokenizer):
    from datasets import Dataset

    context = FILLER * 4 + "They found " + ANSWER + "."
    ex = example("q", context, ANSWER)
    train = qa.prepare_train_features([ex], tokenizer, 32, 8, max_query_len=12)
    ds = Dataset.from_dict(qa.prepare_eval_features([ex], tokenizer, 32, 8, max_query_len=12))
    start, end = np.zeros((len(ds), 32)), np.zeros((len(ds), 32))
    for i, (s, e) in enumerate(zip(train["start_positions"], train["end_positions"])):
        start[i, s] += 5.0
        end[i, e] += 5.0
    assert qa.postprocess_predictions([ex], ds, start, end) == {"q": ANSWER}
