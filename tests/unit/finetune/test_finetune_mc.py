"""Multiple-choice building blocks: the SWAG and HellaSwag readers, [n][k][seq] features, accuracy."""
import json

import numpy as np
import pytest

from mometas_ds.config import DataError
from mometas_ds.finetune import multiple_choice as mc
from tests.finetune_task_helpers import make_tokenizer

SWAG_HEADER = ",video-id,fold-ind,startphrase,sent1,sent2,gold-source,ending0,ending1,ending2,ending3,label\n"
SWAG_ROWS = [
    '0,anetv_a,3416,Alice measured the galaxy. The team,Alice measured the galaxy.,The team,gold,'
    '"published it, at last.",baked bread.,won the match.,signed the treaty.,0\n',
    '1,anetv_b,3417,Bruno baked bread. He,Bruno baked bread. He,gold,served it.,ate it.,sold it.,3\n',  # 11 fields
    '2,lsmdc_c,12,Chen scored a goal. The crowd,Chen scored a goal.,The crowd,gen,cheered.,slept.,cooked.,'
    'read.,7\n',  # label out of range
    '3,lsmdc_d,13,Dalia signed. She,Dalia signed.,She,gen,smiled.,left.,ran.,sang.,x\n',  # not an integer
    '4,lsmdc_e,14,Emeka baked bread. It,Emeka baked bread.,It,gold,was fresh.,flew.,sang.,swam.,0\n',
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(str(tmp_path_factory.mktemp("mc_tok")))


def test_read_swag_release_layout(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(SWAG_HEADER + "".join(SWAG_ROWS), encoding="utf-8")
    examples, skipped = mc.read_swag(str(path))
    assert examples == [
        {"id": "0", "context": "Alice measured the galaxy.", "label": 0,
         "endings": ["The team published it, at last.", "The team baked bread.", "The team won the match.",
                     "The team signed the treaty."]},
        {"id": "4", "context": "Emeka baked bread.", "label": 0,
         "endings": ["It was fresh.", "It flew.", "It sang.", "It swam."]},
    ]
    assert dict(skipped) == {"wrong_field_count": 1, "label_out_of_range": 1, "bad_label": 1}
    assert skipped.places == {"wrong_field_count": [3], "label_out_of_range": [4], "bad_label": [5]}


def test_read_swag_startphrase_form(tmp_path):
    path = tmp_path / "sp.csv"
    path.write_text("startphrase,ending0,ending1,ending2,label\nThe team,won.,lost.,slept.,2\n", encoding="utf-8")
    examples, _ = mc.read_swag(str(path))
    assert examples == [{"id": "0", "context": "The team", "endings": ["won.", "lost.", "slept."], "label": 2}]


@pytest.mark.parametrize("header, column", [
    ("video-id,sent1,sent2,ending0,ending1,ending2,ending3\n", "'label'"),
    ("video-id,sent1,ending0,ending1,ending2,ending3,label\n", "'sent1' and 'sent2'"),
    ("video-id,sent1,sent2,ending1,ending2,ending3,label\n", "'ending0'"),
])
def test_read_swag_missing_column_names_the_file(tmp_path, header, column):
    path = tmp_path / "bad.csv"
    path.write_text(header + "a,b,c,d,e,f,g\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"bad\.csv: missing column.*{column}"):
        mc.read_swag(str(path))


def hella(ind, label=1, endings=("stays.", "leaves.", "sings.", "runs."), **extra):
    record = {"ind": ind, "activity_label": "Cooking", "ctx_a": "The chef mixed the sauce.", "ctx_b": "then",
              "ctx": "The chef mixed the sauce. then", "split": "val", "split_type": "indomain",
              "label": label, "endings": list(endings), "source_id": "x"}
    record.update(extra)
    return json.dumps(record)


def test_read_hellaswag_skips_bad_lines(tmp_path):
    lines = [hella(10, 2),
             hella(11)[:40],  # truncated line
             "",
             json.dumps({"ind": 12, "ctx_a": "a", "ctx_b": "", "endings": ["x", "y", "z", "w"]}),  # no label
             hella(13, 4),  # out of range
             hella(14, 0, endings=("a.", "b.")),  # a different number of endings
             json.dumps({"ind": 15, "ctx": "The chef served it.", "endings": ["Then he ate.", "It sang.",
                                                                              "It ran.", "It flew."], "label": "0"}),
             hella(16, 3, ctx_b=""),
             "[1, 2]"]
    path = tmp_path / "hellaswag_val.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    examples, skipped = mc.read_hellaswag(str(path))
    assert examples == [
        {"id": "10", "context": "The chef mixed the sauce.", "label": 2,
         "endings": ["then stays.", "then leaves.", "then sings.", "then runs."]},
        {"id": "15", "context": "The chef served it.", "label": 0,
         "endings": ["Then he ate.", "It sang.", "It ran.", "It flew."]},
        {"id": "16", "context": "The chef mixed the sauce.", "label": 3,
         "endings": ["stays.", "leaves.", "sings.", "runs."]},
    ]
    assert skipped.places == {"malformed_json": [2, 9], "missing_label": [4], "label_out_of_range": [5],
                              "wrong_ending_count": [6]}
    assert sum(skipped.values()) == 5


def test_read_hellaswag_without_labels_anywhere_is_an_error(tmp_path):
    path = tmp_path / "hellaswag_test.jsonl"
    path.write_text("\n".join(json.dumps({"ind": i, "ctx_a": "a", "ctx_b": "b", "endings": ["x", "y"]})
                              for i in range(3)), encoding="utf-8")
    with pytest.raises(DataError, match=r"hellaswag_test\.jsonl: no usable HellaSwag line.*missing_label x3"):
        mc.read_hellaswag(str(path))
    with pytest.raises(DataError, match=r"nope\.jsonl"):
        mc.read_hellaswag(str(tmp_path / "nope.jsonl"))


def test_features_are_examples_by_choices_by_tokens(tokenizer):
    examples = [{"id": "0", "context": "Alice measured the galaxy.", "label": 2,
                 "endings": ["The team won.", "The team baked bread.", "The team lost.", "The team sang."]},
                {"id": "1", "context": "Bruno baked bread in Oslo. " * 10, "label": 0,
                 "endings": ["It was fresh.", "It flew.", "It sang.", "It swam."]}]
    features = mc.prepare_features(examples, tokenizer, 24)
    assert set(features) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert features["labels"] == [2, 0]
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert np.asarray(features[key]).shape == (2, 4, 24)
    pair = features["input_ids"][0][1]
    assert tokenizer.decode(pair, skip_special_tokens=True) == "alice measured the galaxy. the team baked bread."
    assert pair[0] == tokenizer.cls_token_id
    # The long context is cut, the ending kept whole (the longer side is trimmed first).
    long_pair = features["input_ids"][1][3]
    assert 0 not in features["attention_mask"][1][3] and long_pair[-1] == tokenizer.sep_token_id
    text = tokenizer.decode(long_pair, skip_special_tokens=True)
    assert text.startswith("bruno baked bread") and text.endswith(" it swam.")
    assert long_pair.count(tokenizer.sep_token_id) == 2  # both sides are still there
    with pytest.raises(ValueError, match="has 2 endings"):
        mc.prepare_features(examples + [{"id": "9", "context": "c", "endings": ["a", "b"], "label": 0}],
                            tokenizer, 24)


def test_accuracy():
    scores = [[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.0, 0.0, 1.0]]
    assert mc.accuracy(scores, [1, 1, 2, 2]) == pytest.approx(0.75)
    assert mc.accuracy([1, 0, 2, 0], [1, 1, 2, 2]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        mc.accuracy([1, 0], [1, 0, 1])
