"""CoNLL NER building blocks: the reader, label alignment to word pieces, and entity F1 (checked vs seqeval)."""
import random
import subprocess
import sys

import numpy as np
import pytest

from mometas_ds.config import DataError
from mometas_ds.finetune import ner
from tests.finetune_task_helpers import make_tokenizer
from tests.pretrain_helpers import REPO_ROOT, subprocess_env


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(str(tmp_path_factory.mktemp("ner_tok")))


CONLL_4 = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
oops NN B-NP
-DOCSTART- -X- -X- O
Lisbon NNP B-NP I-LOC


"""


def test_read_conll_four_columns(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(CONLL_4, encoding="utf-8")
    examples, skipped = ner.read_conll(str(path))
    assert examples == [
        {"id": "0", "tokens": ["EU", "rejects", "German", "call", "."], "tags": ["B-ORG", "O", "B-MISC", "O", "O"]},
        {"id": "1", "tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"]},
        {"id": "2", "tokens": ["Lisbon"], "tags": ["I-LOC"]},
    ]
    assert dict(skipped) == {"wrong_column_count": 1}
    assert skipped.places["wrong_column_count"] == [11]
    assert "line" in skipped.summary() and "11" in skipped.summary()
    assert ner.label_list(examples) == ["B-MISC", "B-ORG", "B-PER", "I-LOC", "I-PER", "O"]


def test_read_conll_two_columns_tabs_and_no_final_blank(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("Alice\tB-PER\nmeasured\tO\n\n\nOslo\tB-LOC\nin winter O\ntoday\tO", encoding="utf-8")
    examples, skipped = ner.read_conll(str(path))
    assert [e["tokens"] for e in examples] == [["Alice", "measured"], ["Oslo", "today"]]
    assert [e["tags"] for e in examples] == [["B-PER", "O"], ["B-LOC", "O"]]
    assert skipped.places == {"wrong_column_count": [6]}


def test_read_conll_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"nothere\.txt"):
        ner.read_conll(str(tmp_path / "nothere.txt"))
    (tmp_path / "empty.txt").write_text("-DOCSTART- -X- O\n\n\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.txt: no usable sentence"):
        ner.read_conll(str(tmp_path / "empty.txt"))
    (tmp_path / "words.txt").write_text("just\nwords\nhere\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"words\.txt: expected CoNLL columns"):
        ner.read_conll(str(tmp_path / "words.txt"))


def test_labels_sit_on_the_first_piece_of_each_word(tokenizer):
    tokens = ["Alice", "measured", "Zanzibarian", "Lisbon"]
    assert len(tokenizer.tokenize("Zanzibarian")) > 2 and all(len(tokenizer.tokenize(w)) == 1 for w in
                                                             ("Alice", "measured", "Lisbon"))
    labels = ["B-LOC", "B-MISC", "B-PER", "O"]
    label_to_id = {tag: i for i, tag in enumerate(labels)}
    example = {"id": "0", "tokens": tokens, "tags": ["B-PER", "O", "B-MISC", "B-LOC"]}
    features = ner.prepare_features([example], tokenizer, 24, label_to_id)
    n_pieces = len(tokenizer.tokenize("Zanzibarian"))
    expected = ([-100, 2, 3, 1] + [-100] * (n_pieces - 1) + [0, -100])
    expected += [-100] * (24 - len(expected))
    assert features["labels"] == [expected]
    assert features["word_ids"][0][:4] == [None, 0, 1, 2] and features["n_words"] == [4]
    assert len(features["input_ids"][0]) == len(features["attention_mask"][0]) == 24
    with pytest.raises(DataError, match="'B-ORG' not in the label list"):
        ner.prepare_features([{"id": "7", "tokens": ["EU"], "tags": ["B-ORG"]}], tokenizer, 24, label_to_id)


def test_align_predictions_round_trip_and_truncation(tokenizer):
    examples = [{"id": "0", "tokens": ["Alice", "Zanzibarian", "measured", "Lisbon", "in", "May"],
                 "tags": ["B-PER", "B-MISC", "O", "B-LOC", "O", "O"]},
                {"id": "1", "tokens": ["Bruno", "Baker"], "tags": ["B-PER", "I-PER"]}]
    labels = ["B-LOC", "B-MISC", "B-PER", "I-PER", "O"]
    label_to_id = {tag: i for i, tag in enumerate(labels)}
    full = ner.prepare_features(examples, tokenizer, 32, label_to_id)
    rng = np.random.default_rng(0)
    # Predictions equal to the labels on first pieces, noise elsewhere: the words' tags come back.
    preds = np.array([[lab if lab != -100 else rng.integers(len(labels)) for lab in row] for row in full["labels"]])
    assert ner.align_predictions(preds, full, labels) == [e["tags"] for e in examples]
    logits = np.eye(len(labels))[preds]  # [n, seq, labels] is arg-maxed
    assert ner.align_predictions(logits, full, dict(enumerate(labels))) == [e["tags"] for e in examples]
    # A window of 6 tokens holds [CLS] Alice + 3 pieces of Zanzibarian [SEP]: later words are predicted O.
    cut = ner.prepare_features(examples, tokenizer, 6, label_to_id)
    preds = np.array([[lab if lab != -100 else 0 for lab in row] for row in cut["labels"]])
    assert ner.align_predictions(preds, cut, labels) == [["B-PER", "B-MISC", "O", "O", "O", "O"],
                                                         ["B-PER", "I-PER"]]


def test_entity_f1_hand_worked():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "I-ORG"]]
    # true: PER(0-1) LOC(3) ORG(0); pred: PER(0-1) ORG(3) ORG(0-1); 1 correct of 3 and 3; tags 4/6 equal.
    assert ner.entity_f1(true, pred) == pytest.approx({"precision": 1 / 3, "recall": 1 / 3, "f1": 1 / 3,
                                                       "accuracy": 4 / 6})
    # IOB1: B- only splits two adjacent chunks of one type; an I- after O starts a chunk.
    assert ner.entities(["I-PER", "I-PER", "B-PER", "O", "I-LOC"]) == {("PER", 0, 1), ("PER", 2, 2),
                                                                       ("LOC", 4, 4)}
    assert ner.entity_f1([["O", "I-LOC", "I-LOC"]], [["O", "B-LOC", "I-LOC"]])["f1"] == 1.0
    # Type change inside a run ends one chunk and starts another.
    assert ner.entities(["B-PER", "I-LOC", "I-LOC"]) == {("PER", 0, 0), ("LOC", 1, 2)}
    result = ner.entity_f1([["I-PER", "I-PER", "B-PER", "O"]], [["I-PER", "I-PER", "I-PER", "O"]])
    assert result == pytest.approx({"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.75})
    # 2 true, 1 predicted and right: p 1, r 1/2, f1 2/3.
    assert ner.entity_f1([["B-PER", "O", "B-LOC"]], [["B-PER", "O", "O"]]) == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "accuracy": 2 / 3})
    assert ner.entity_f1([["O", "O"]], [["O", "O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                                         "accuracy": 1.0}
    with pytest.raises(ValueError, match="sentence 0 has 2 true tags but 1"):
        ner.entity_f1([["O", "O"]], [["O"]])


TYPES = ["PER", "LOC", "ORG"]


def random_iob2(rng, n):
    tags, inside = [], None
    for _ in range(n):
        r = rng.random()
        if r < 0.4:
            tags.append("O")
            inside = None
        elif inside and r < 0.7:
            tags.append(f"I-{inside}")
        else:
            inside = rng.choice(TYPES)
            tags.append(f"B-{inside}")
    return tags


def random_iob1(rng, n):
    """IOB1: chunks are I- runs; B- only opens a chunk right after a chunk of the same type."""
    tags, inside = [], None
    for _ in range(n):
        r = rng.random()
        if r < 0.4:
            tags.append("O")
            inside = None
        elif inside and r < 0.55:
            tags.append(f"B-{inside}")
        elif inside and r < 0.8:
            tags.append(f"I-{inside}")
        else:
            inside = rng.choice(TYPES)
            tags.append(f"I-{inside}")
    return tags


def corrupt(rng, tags, alphabet):
    return [rng.choice(alphabet) if rng.random() < 0.25 else t for t in tags]


@pytest.mark.parametrize("scheme", ["iob2", "iob1", "any"])
def test_entity_f1_matches_seqeval_on_random_sequences(scheme):
    from seqeval import metrics as seqeval_metrics  # a test-only reference (requirements-ci pins it)

    alphabet = ["O"] + [f"{p}-{t}" for p in "BIES" for t in TYPES]
    make = {"iob2": random_iob2, "iob1": random_iob1,
            "any": lambda rng, n: [rng.choice(alphabet) for _ in range(n)]}[scheme]
    nontrivial = 0
    for seed in range(150):
        rng = random.Random(seed)
        true = [make(rng, rng.randint(1, 12)) for _ in range(rng.randint(1, 6))]
        pred = [corrupt(rng, t, alphabet if scheme == "any" else alphabet[:7]) for t in true]
        ours = ner.entity_f1(true, pred)
        reference = {"precision": seqeval_metrics.precision_score(true, pred, zero_division=0),
                     "recall": seqeval_metrics.recall_score(true, pred, zero_division=0),
                     "f1": seqeval_metrics.f1_score(true, pred, zero_division=0),
                     "accuracy": seqeval_metrics.accuracy_score(true, pred)}
        assert ours == pytest.approx(reference, abs=1e-12), (seed, true, pred)
        nontrivial += 0 < ours["f1"] < 1
    assert nontrivial > 50  # the sequences exercise partial matches, not just all-or-nothing


def test_runtime_does_not_import_seqeval():
    code = ("import sys; from mometas_ds.finetune import ner; "
            "r = ner.entity_f1([['B-PER', 'I-PER', 'O']], [['B-PER', 'I-PER', 'O']]); "
            "assert r['f1'] == 1.0, r; assert 'seqeval' not in sys.modules, 'seqeval imported'")
    done = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_align_predictions_reads_a_datasets_dataset(tokenizer):
    from datasets import Dataset

    labels = ["B-PER", "O"]
    example = {"id": "0", "tokens": ["Alice", "Zanzibarian", "measured"], "tags": ["B-PER", "O", "O"]}
    features = ner.prepare_features([example], tokenizer, 16, {tag: i for i, tag in enumerate(labels)})
    preds = np.array(features["labels"]).clip(0)  # -100 -> 0: later pieces say B-PER, which must be ignored
    assert ner.align_predictions(preds, Dataset.from_dict(features), labels) == [["B-PER", "O", "O"]]
