"""One policy for what a user's fine-tuning file may hold, in every reader (GLUE tsv, --task_file csv/tsv/jsonl,
SQuAD json, SWAG csv, HellaSwag jsonl, CoNLL): a BOM is dropped, non-UTF-8 bytes stop with file:line, an
empty file is named as empty; and a giant text is cut before tokenizing without changing the tokens kept."""
import json
import os
import types

import pytest

from mometas_ds.config import DataError
from mometas_ds.finetune import multiple_choice, ner, qa
from mometas_ds.finetune.kinds import SequenceClassification
from mometas_ds.finetune.readers import read_glue_tsv, read_task_file
from mometas_ds.finetune.tasks import TASKS
from mometas_ds.finetune.text_files import TEXT_CHARS_PER_TOKEN, bound_text

BOM = "\ufeff"

SQUAD = {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": "Paris is in France.", "qas": [
    {"id": "q1", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]}]}]}]}

# (name, file name, text of a good file whose first header/key is what a BOM would hide, reader -> examples)
READERS = [
    ("glue_tsv", "MRPC/train.tsv",
     "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA b.\tC d.\n0\t3\t4\tE f.\tG h.\n",
     lambda p: read_glue_tsv(TASKS["mrpc"], p)[0]),
    ("task_csv", "t.csv", "text,label\nfine day,pos\nbad day,neg\n",
     lambda p: read_task_file(p, "text", None, "label", regression=False)[0]),
    ("task_tsv", "t.tsv", "text\tlabel\nfine day\tpos\nbad day\tneg\n",
     lambda p: read_task_file(p, "text", None, "label", regression=False)[0]),
    ("task_jsonl", "t.jsonl", '{"text": "fine day", "label": "pos"}\n{"text": "bad day", "label": "neg"}\n',
     lambda p: read_task_file(p, "text", None, "label", regression=False)[0]),
    ("squad_json", "train.json", json.dumps(SQUAD), lambda p: qa.read_squad(p)[0]),
    ("swag_csv", "swag.csv", "sent1,sent2,ending0,ending1,label\nHe sat.,Then he,ate.,slept.,1\n",
     lambda p: multiple_choice.read_swag(p)[0]),
    ("hellaswag_jsonl", "h.jsonl", json.dumps({"ind": 1, "ctx_a": "A man", "ctx_b": "then", "endings": ["a", "b"],
                                                "label": 0}) + "\n", lambda p: multiple_choice.read_hellaswag(p)[0]),
    ("conll", "ner.txt", "Alice B-PER\nsleeps O\n\nOslo B-LOC\n", lambda p: ner.read_conll(p)[0]),
]


def _write_bytes(tmp_path, name, data: bytes) -> str:
    path = tmp_path / name
    os.makedirs(path.parent, exist_ok=True)
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("name,file_name,text,read", READERS, ids=[r[0] for r in READERS])
def test_a_bom_is_dropped_and_the_file_reads_as_without_it(tmp_path, name, file_name, text, read):
    plain = read(_write_bytes(tmp_path / "plain", file_name, text.encode("utf-8")))
    with_bom = read(_write_bytes(tmp_path / "bom", file_name, (BOM + text).encode("utf-8")))
    strip = lambda rows: [{k: v for k, v in e.items() if k != "where"} for e in rows]  # noqa: E731
    assert strip(with_bom) == strip(plain) and plain


@pytest.mark.parametrize("name,file_name,text,read", READERS, ids=[r[0] for r in READERS])
def test_non_utf8_bytes_stop_naming_file_and_line(tmp_path, name, file_name, text, read):
    lines = text.encode("utf-8").split(b"\n")
    bad_line = min(2, len(lines))  # the second line where there is one (a SQuAD file is one line)
    lines[bad_line - 1] = lines[bad_line - 1][:-1] + b"\xe9" + lines[bad_line - 1][-1:]  # latin-1 'é'
    path = _write_bytes(tmp_path, file_name, b"\n".join(lines))
    with pytest.raises(DataError, match=rf"{file_name}:{bad_line}: not UTF-8 text \(byte 0xe9"):
        read(path)


@pytest.mark.parametrize("name,file_name,text,read", READERS, ids=[r[0] for r in READERS])
@pytest.mark.parametrize("content", [b"", b"\n\n", BOM.encode("utf-8")], ids=["zero_bytes", "blank_lines", "bom_only"])
def test_an_empty_file_is_named_as_empty(tmp_path, name, file_name, text, read, content):
    path = _write_bytes(tmp_path, file_name, content)
    with pytest.raises(DataError, match=rf"{file_name}: the file is empty"):
        read(path)


def test_a_csv_field_over_csvs_limit_is_skipped_and_counted(tmp_path):
    path = _write_bytes(tmp_path, "t.csv", b"text,label\nfine,pos\n\"" + b"x" * 200_000 + b"\",neg\nbad,neg\n")
    examples, skipped = read_task_file(path, "text", None, "label", regression=False)
    assert [e["text_a"] for e in examples] == ["fine", "bad"]
    assert sum(skipped.values()) == 1 and "field larger than field limit" in next(iter(skipped))


def test_bound_text_cuts_only_texts_over_the_limit():
    assert bound_text("short", 8) == ("short", False)
    text = "w " * (TEXT_CHARS_PER_TOKEN * 8)
    cut, was_cut = bound_text(text, 8)
    assert was_cut and cut == text[:TEXT_CHARS_PER_TOKEN * 8]


def test_a_giant_glue_line_is_read_and_encoded_to_the_same_tokens_as_uncut(tmp_path):
    """A 2 MB sentence in SST-2: kept, and its features equal those of tokenizing the whole text (the cut
    only spares the tokenizer the characters it would throw away)."""
    from finetune_task_helpers import make_tokenizer

    tokenizer = make_tokenizer(str(tmp_path / "tok"))
    giant = " ".join(["the quick brown fox jumps over a lazy dog"] * 50_000)
    path = _write_bytes(tmp_path, "SST-2/train.tsv", f"sentence\tlabel\n{giant}\t1\nshort one\t0\n".encode("utf-8"))
    examples, skipped = read_glue_tsv(TASKS["sst2"], path)
    assert [len(e["text_a"]) for e in examples] == [len(giant), len("short one")] and not skipped
    kind = SequenceClassification(TASKS["sst2"])
    args = types.SimpleNamespace(max_seq_len=32)
    dataset = kind._encode(examples, tokenizer, args, ["0", "1"])
    whole = tokenizer([e["text_a"] for e in examples], truncation=True, max_length=32)
    assert dataset["input_ids"] == whole["input_ids"] and len(dataset["input_ids"][0]) == 32
    assert dataset["labels"] == [1, 0]
