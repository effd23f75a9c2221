"""A huge document is tokenized in pieces (issue 27, bounded memory): the pieces join to the document, are cut
only where WordPiece's pre-tokenizer splits words too, and give the whole document's tokens and rows."""
import json
import random

import numpy as np
import pytest

from mometas_ds.data import DataConfig, pieces as pieces_module, prepare_data
from mometas_ds.data.pieces import split_pieces
from mometas_ds.data.shards import _encoder
from mometas_ds.data.demo_corpus import generate_documents
from mometas_ds.data.tokenizer import train_wordpiece_tokenizer

ODD = ["unbelievablyextraordinary", "naïve café", "Zürich,", "東京タワー", "emoji🙂ok", "a-b/c", "(x)", "...",
       "[MASK]", "tab\there", "two  spaces", "\n\n", " \t ", "1999-2024", "don't"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_wordpiece_tokenizer(generate_documents(200, seed=1), vocab_size=300,
                                     out_dir=str(tmp_path_factory.mktemp("tok")))


def _long_text(rng, words):
    parts = []
    for _ in range(words):
        parts.append(rng.choice(ODD) if rng.random() < 0.2 else rng.choice(generate_documents(5, seed=2)).split()[0])
        parts.append(rng.choice([" ", " ", " ", "\n", "  ", "\t", " \n "]))
    return "".join(parts)


def _spec(tokenizer):
    from mometas_ds.data.cache import _plain_backend, _tokenizer_spec

    return _tokenizer_spec(tokenizer, _plain_backend(tokenizer))


def test_pieces_join_to_the_text_and_are_cut_before_whitespace_after_a_word():
    rng = random.Random(0)
    for size in (60, 101, 257):  # more than twice the longest word and its separators
        text = _long_text(rng, 300)
        pieces = list(split_pieces(text, size))
        assert "".join(pieces) == text and all(0 < len(p) <= size for p in pieces) and len(pieces) > 1
        at = 0
        for piece in pieces[:-1]:
            at += len(piece)
            assert text[at] in " \t\n\r" and not text[at - 1].isspace(), (size, text[at - 3: at + 3])
    # No such place in the second half of a piece: cut at the size (only a "word" of size // 2 characters)
    assert list(split_pieces("x" * 25, 10)) == ["x" * 10, "x" * 10, "x" * 5]
    assert list(split_pieces("short", 10)) == ["short"]


def test_the_pieces_tokens_are_the_whole_documents(tokenizer):
    encode = _encoder(_spec(tokenizer))
    rng = random.Random(1)
    texts = [_long_text(rng, 400) for _ in range(6)]
    for size in (60, 77, 300):
        for text in texts:
            whole = encode([text])[0]
            pieces = [ids for piece in split_pieces(text, size) for ids in encode([piece])[0]]
            assert pieces == whole and len(whole) > 400


@pytest.mark.parametrize("packing", ["packed", "per_document"])
def test_a_corpus_of_long_documents_gives_the_same_rows_and_report_in_pieces(packing, tokenizer, tmp_path,
                                                                             monkeypatch):
    rng = random.Random(2)
    docs = [_long_text(rng, rng.randint(5, 400)) for _ in range(30)]
    docs += [" " * 300 + "a"]  # one token after a stretch with no place to cut: too short, whole or in pieces
    rng.shuffle(docs)
    path = tmp_path / "long.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for text in docs:
            f.write(json.dumps({"text": text}) + "\n")

    def prepare(name):
        return prepare_data(DataConfig(train_files=[str(path)], seq_len=24, cache_dir=str(tmp_path / name),
                                       packing=packing), tokenizer)

    whole = prepare("whole")
    monkeypatch.setattr(pieces_module, "PIECE_CHARS", 97)
    pieces = prepare("pieces")
    assert whole.report.to_dict() == pieces.report.to_dict()
    assert whole.report.skipped.get("too_short") == 1
    if packing == "per_document":
        assert whole.report.truncated_documents > 0
    for column in ("input_ids", "attention_mask"):
        np.testing.assert_array_equal(np.asarray(whole.train.with_format("numpy")[column]),
                                      np.asarray(pieces.train.with_format("numpy")[column]))
