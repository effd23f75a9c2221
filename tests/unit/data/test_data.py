"""Corpus reading, bad-input accounting, tokenization cache, packing, sharded batches, tokenizer, demo corpus."""
import gzip
import json
import logging
import os

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from mometas_ds.data import (
    CorpusReport,
    DataConfig,
    DataError,
    ShardedBatches,
    iter_texts,
    meta_split_rows,
    prepare_data,
    rows_as_tensors,
)
from mometas_ds.data.demo_corpus import generate_documents, write_demo_corpus
from mometas_ds.data.tokenizer import load_tokenizer, special_tokens_of, train_wordpiece_tokenizer

DOCS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Alice measured the stable molecule in Lisbon in 1999, then published it.",
    "A second line about sports: the home side won the decisive match.",
    "Bread was baked in the traditional oven of the small bakery in Oslo.",
]


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenizer")
    return train_wordpiece_tokenizer(generate_documents(300, seed=1) + DOCS, vocab_size=300, out_dir=str(out))


def token_ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prepare(tmp_path, tokenizer, files, **overrides):
    kwargs = dict(train_files=[str(f) for f in files], seq_len=16, cache_dir=str(tmp_path / "cache"),
                  meta_sequences=0, num_proc=1)
    kwargs.update(overrides)
    return prepare_data(DataConfig(**kwargs), tokenizer)


def rows_of(dataset):
    table = dataset.with_format("numpy")
    return np.asarray(table["input_ids"]), np.asarray(table["attention_mask"])


def inner_tokens(dataset, tokenizer):
    """The tokens between [CLS] and the closing [SEP] of every row, concatenated in row order, without the
    [SEP]s between documents: the documents' own tokens (corpus text never yields a special id)."""
    ids, mask = rows_of(dataset)
    out = []
    for row, m in zip(ids, mask):
        length = int(m.sum())
        out.extend(t for t in row[1: length - 1].tolist() if t != tokenizer.sep_token_id)
    return out


def write_jsonl(path, records, gz=False):
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path


# ------------------------------------------------------------------------------------------- formats

def write_format(kind, tmp_path, texts):
    if kind == "jsonl":
        return write_jsonl(tmp_path / "c.jsonl", [{"text": t, "id": i} for i, t in enumerate(texts)])
    if kind == "jsonl.gz":
        return write_jsonl(tmp_path / "c.jsonl.gz", [{"text": t} for t in texts], gz=True)
    if kind == "txt_lines":
        path = tmp_path / "c.txt"
        path.write_text("\n".join(texts) + "\n\n\n")  # trailing blank lines keep the line layout
        return path
    if kind == "parquet":
        path = tmp_path / "c.parquet"
        pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), path, row_group_size=2)
        return path
    if kind == "saved_dataset":
        path = tmp_path / "saved"
        datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(path))
        return path
    if kind == "saved_dataset_dict":
        path = tmp_path / "saved_dict"
        datasets.DatasetDict({
            "train": datasets.Dataset.from_dict({"text": texts}),
            "test": datasets.Dataset.from_dict({"text": ["held out test text that must not be read"]}),
        }).save_to_disk(str(path))
        return path
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "txt_lines", "parquet", "saved_dataset", "saved_dataset_dict"])
def test_each_format_reads_every_document_and_packs_its_tokens(kind, tmp_path, tokenizer):
    path = write_format(kind, tmp_path, DOCS)
    assert list(iter_texts([str(path)], "text")) == DOCS

    prepared = prepare(tmp_path, tokenizer, [path])
    expected = [t for doc in DOCS for t in token_ids(tokenizer, doc)]
    assert inner_tokens(prepared.train, tokenizer) == expected
    assert prepared.report.documents == len(DOCS)
    assert prepared.report.tokens == len(expected)
    assert prepared.report.skipped == {}


def test_txt_blank_line_separated_paragraphs_are_documents(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("First paragraph line one.\nline two of the first.\n\n  \nSecond paragraph.\n\nThird\nends here.\n")
    report = CorpusReport()
    assert list(iter_texts([str(path)], report=report)) == [
        "First paragraph line one.\nline two of the first.",
        "Second paragraph.",
        "Third\nends here.",
    ]
    assert report.documents == 3


def test_txt_without_inner_blank_line_is_one_document_per_line(tmp_path):
    path = tmp_path / "l.txt"
    path.write_text("\n\nline one\nline two\nline three\n\n")
    assert list(iter_texts([str(path)])) == ["line one", "line two", "line three"]


def test_globs_expand_sorted_and_unmatched_globs_count_as_missing(tmp_path, tokenizer):
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "b.jsonl", [{"text": DOCS[1]}])
    write_jsonl(tmp_path / "a.jsonl", [{"text": DOCS[0]}])
    write_jsonl(tmp_path / "sub" / "c.jsonl", [{"text": DOCS[2]}])
    (tmp_path / "d.txt").write_text(DOCS[3] + "\n")
    report = CorpusReport()
    texts = list(iter_texts([str(tmp_path / "*.jsonl"), str(tmp_path / "**" / "c.jsonl"),
                             str(tmp_path / "a.jsonl"), str(tmp_path / "nothing*.jsonl")], report=report))
    assert texts == [DOCS[0], DOCS[1], DOCS[2]]  # sorted within a glob; a file listed twice is read once
    assert report.skipped == {"missing_file": 1}
    assert "nothing*.jsonl" in report.examples["missing_file"][0]

    prepared = prepare(tmp_path, tokenizer, [tmp_path / "*.txt", tmp_path / "a.jsonl"])
    assert inner_tokens(prepared.train, tokenizer) == token_ids(tokenizer, DOCS[3]) + token_ids(tokenizer, DOCS[0])


def test_dangling_symlinks_and_vanished_files_count_as_missing(tmp_path, tokenizer, monkeypatch):
    import mometas_ds.data.readers as readers

    write_jsonl(tmp_path / "a.jsonl", [{"text": DOCS[0]}])
    os.symlink(tmp_path / "gone.jsonl", tmp_path / "b.jsonl")  # matched by the glob, points nowhere
    prepared = prepare(tmp_path, tokenizer, [tmp_path / "*.jsonl"])
    assert prepared.report.skipped == {"missing_file": 1}
    assert prepared.report.examples["missing_file"] == [f"{tmp_path / 'b.jsonl'}: dangling symlink"]
    assert inner_tokens(prepared.train, tokenizer) == token_ids(tokenizer, DOCS[0])

    # A file that the glob found but that is gone when the cache key and the reader look at it.
    real_resolve = readers.resolve_files
    vanished = str(tmp_path / "vanished.jsonl")
    monkeypatch.setattr(readers, "resolve_files", lambda files: (real_resolve(files)[0] + [vanished], []))
    prepared = prepare(tmp_path, tokenizer, [tmp_path / "a.jsonl"], cache_dir=str(tmp_path / "cache2"))
    assert prepared.report.skipped == {"missing_file": 1}
    assert prepared.report.examples["missing_file"] == [f"{vanished}: no such file"]


# ----------------------------------------------------------------------------------------- bad input

GOOD_BEFORE, GOOD_AFTER = DOCS[0], DOCS[1]


def _jsonl_with_bad_line(bad_line: bytes):
    def write(path):
        path = path.with_suffix(".jsonl")
        path.write_bytes(json.dumps({"text": GOOD_BEFORE}).encode() + b"\n" + bad_line + b"\n"
                         + json.dumps({"text": GOOD_AFTER}).encode() + b"\n")
        return path, f"{path}:2"
    return write


def _txt_with_non_utf8(path):
    path = path.with_suffix(".txt")
    path.write_bytes(GOOD_BEFORE.encode() + b"\nbad \xff\xfe bytes here\n" + GOOD_AFTER.encode() + b"\n")
    return path, f"{path}:2"


def _parquet_with_null_text(path):
    path = path.with_suffix(".parquet")
    pq.write_table(pa.table({"text": [GOOD_BEFORE, None, GOOD_AFTER]}), path)
    return path, f"{path}:2"


BAD_CASES = {
    "malformed_json": ("malformed_json", _jsonl_with_bad_line(b'{"text": "unterminated')),
    "json_array_line": ("malformed_json", _jsonl_with_bad_line(b'["a", "list"]')),
    "deeply_nested_json": ("malformed_json", _jsonl_with_bad_line(b"[" * 100_000)),
    "missing_text_field": ("missing_text_field", _jsonl_with_bad_line(b'{"body": "no text field here"}')),
    "null_text_field": ("missing_text_field", _jsonl_with_bad_line(b'{"text": null}')),
    "non_string_text": ("non_string_text", _jsonl_with_bad_line(b'{"text": 42}')),
    "non_utf8_jsonl": ("non_utf8", _jsonl_with_bad_line(b'{"text": "caf\xe9 latte"}')),
    "lone_surrogate": ("non_utf8", _jsonl_with_bad_line(b'{"text": "broken \\ud800 escape"}')),
    "too_short_jsonl": ("too_short", _jsonl_with_bad_line(b'{"text": "a"}')),
    "empty_text": ("too_short", _jsonl_with_bad_line(b'{"text": "   "}')),
    "non_utf8_txt": ("non_utf8", _txt_with_non_utf8),
    "null_in_parquet": ("missing_text_field", _parquet_with_null_text),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_record_is_skipped_counted_and_located_while_good_ones_survive(case, tmp_path, tokenizer):
    reason, write = BAD_CASES[case]
    path, where = write(tmp_path / "corpus")
    prepared = prepare(tmp_path, tokenizer, [path])
    report = prepared.report
    assert report.skipped == {reason: 1}
    assert report.examples[reason][0].startswith(where)
    assert reason in report.summary() and where in report.summary()
    assert report.documents == 2
    expected = token_ids(tokenizer, GOOD_BEFORE) + token_ids(tokenizer, GOOD_AFTER)
    assert inner_tokens(prepared.train, tokenizer) == expected


def test_whole_file_problems_are_skipped_and_counted(tmp_path, tokenizer):
    good = write_jsonl(tmp_path / "good.jsonl", [{"text": GOOD_BEFORE}])
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    unsupported = tmp_path / "notes.csv"
    unsupported.write_text("text\nhello there\n")
    no_column = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"body": ["a b c", "d e f"]}), no_column)
    plain_dir = tmp_path / "plain_dir"
    plain_dir.mkdir()
    # A gzip stream cut short: the documents before the cut are kept.
    whole = gzip.compress(b"".join(json.dumps({"text": f"{GOOD_AFTER} number {i}"}).encode() + b"\n"
                                   for i in range(400)))
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(whole[: len(whole) // 2])
    missing = tmp_path / "missing.jsonl"

    files = [good, empty, blank, unsupported, no_column, plain_dir, truncated, missing]
    prepared = prepare(tmp_path, tokenizer, files)
    report = prepared.report
    assert report.skipped == {"empty_file": 2, "unsupported_format": 2, "missing_text_field": 2,
                              "unreadable_file": 1, "missing_file": 1}
    assert str(missing) in report.examples["missing_file"][0]
    assert report.examples["empty_file"] == [str(empty), str(blank)]
    assert "no column 'text'" in report.examples["missing_text_field"][0]
    assert report.examples["unreadable_file"][0].startswith(f"{truncated}:")
    assert 1 < report.documents < 401  # good.jsonl plus the part of cut.jsonl.gz before the cut
    first = token_ids(tokenizer, GOOD_BEFORE) + token_ids(tokenizer, f"{GOOD_AFTER} number 0")
    assert inner_tokens(prepared.train, tokenizer)[: len(first)] == first


def test_examples_are_capped_but_every_skip_is_counted(tmp_path, tokenizer):
    lines = [{"text": GOOD_BEFORE}] + [{"text": "x"} for _ in range(30)] + [{"body": 1} for _ in range(12)]
    path = write_jsonl(tmp_path / "many.jsonl", lines)
    prepared = prepare(tmp_path, tokenizer, [path], max_examples=3)
    assert prepared.report.skipped == {"too_short": 30, "missing_text_field": 12}
    assert prepared.report.examples["too_short"] == [f"{path}:2", f"{path}:3", f"{path}:4"]
    assert prepared.report.examples["missing_text_field"] == [f"{path}:32", f"{path}:33", f"{path}:34"]
    assert prepared.report.documents == 1


@pytest.mark.parametrize("content", [b"", b'{"body": "x"}\nnot json\n',
                                     b'{"text": "a"}\n{"text": ""}\n{"text": "!"}\n'])
def test_no_usable_document_stops_at_start_with_the_report(content, tmp_path, tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match="no usable document") as err:
        prepare(tmp_path, tokenizer, [path, tmp_path / "missing.txt"])
    assert "missing.txt" in str(err.value)
    leftovers = os.listdir(tmp_path / "cache")
    assert leftovers == [], f"a failed preparation left {leftovers}"


def test_meta_split_larger_than_corpus_names_the_flag(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": d} for d in DOCS])
    with pytest.raises(DataError, match="--meta_batch_size"):
        prepare(tmp_path, tokenizer, [path], meta_sequences=1000)


def test_config_validation_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="--train_files"):
        DataConfig(train_files=[], cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="--seq_len"):
        DataConfig(train_files=["x.jsonl"], seq_len=2, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="--text_field"):
        DataConfig(train_files=["x.jsonl"], text_field="", cache_dir=str(tmp_path))


# --------------------------------------------------------------------------------------------- cache

def test_second_call_reuses_cache_and_file_changes_invalidate_it(tmp_path, tokenizer, caplog):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": d} for d in DOCS * 5])
    first = prepare(tmp_path, tokenizer, [path], meta_sequences=2)
    assert not first.cache_hit
    with caplog.at_level(logging.INFO, logger="mometas_ds.data"):
        second = prepare(tmp_path, tokenizer, [path], meta_sequences=2)
    assert second.cache_hit and second.shard_paths == first.shard_paths and second.shards_built == 0
    assert f"reusing tokenized cache at {first.cache_path} (1 shard(s), nothing to tokenize)" in caplog.text
    assert rows_of(second.train)[0].tolist() == rows_of(first.train)[0].tolist()
    assert rows_of(second.meta)[0].tolist() == rows_of(first.meta)[0].tolist()
    assert second.report == first.report
    assert not [name for name in os.listdir(first.cache_path) if name.startswith(".tmp")]

    # Same size, new content and mtime.
    path.write_text(path.read_text().replace("fox", "cat"))
    third = prepare(tmp_path, tokenizer, [path], meta_sequences=2)
    assert not third.cache_hit and third.shard_paths != first.shard_paths and third.shards_built == 1
    # Only the mtime changes.
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    assert not prepare(tmp_path, tokenizer, [path], meta_sequences=2).cache_hit
    # Other settings are part of the key too.
    assert not prepare(tmp_path, tokenizer, [path], meta_sequences=2, seq_len=24).cache_hit


def test_seed_and_meta_split_size_share_one_cache(tmp_path, tokenizer, caplog):
    """The cache holds the packed rows; the meta split is drawn on load, so new seeds and meta sizes reuse it."""
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in generate_documents(40, seed=3)])
    first = prepare(tmp_path, tokenizer, [path], meta_sequences=4, seed=1)
    assert not first.cache_hit
    cached = sorted(os.listdir(first.shard_paths[0]))
    with caplog.at_level(logging.INFO, logger="mometas_ds.data"):
        other_seed = prepare(tmp_path, tokenizer, [path], meta_sequences=4, seed=2)
        other_size = prepare(tmp_path, tokenizer, [path], meta_sequences=7, seed=1)
        no_meta = prepare(tmp_path, tokenizer, [path], meta_sequences=0, seed=1)
    assert caplog.text.count(f"reusing tokenized cache at {first.cache_path}") == 3
    for prepared in (other_seed, other_size, no_meta):
        assert prepared.cache_hit and prepared.shard_paths == first.shard_paths
    assert os.listdir(tmp_path / "cache") == ["shards"]
    assert os.listdir(first.cache_path) == [os.path.basename(first.shard_paths[0])]  # one shard, no tmp dirs
    assert sorted(os.listdir(first.shard_paths[0])) == cached  # loading and splitting wrote nothing there

    all_rows = rows_of(no_meta.train)[0]
    assert len(no_meta.meta) == 0
    assert (no_meta.report.train_sequences, no_meta.report.meta_sequences) == (len(all_rows), 0)
    for prepared, meta in ((first, 4), (other_seed, 4), (other_size, 7)):
        assert (prepared.report.train_sequences, prepared.report.meta_sequences) == (len(all_rows) - meta, meta)
        assert (len(prepared.train), len(prepared.meta)) == (len(all_rows) - meta, meta)
        together = np.concatenate([rows_of(prepared.train)[0], rows_of(prepared.meta)[0]])
        assert sorted(map(tuple, together.tolist())) == sorted(map(tuple, all_rows.tolist()))
    assert rows_of(first.meta)[0].tolist() != rows_of(other_seed.meta)[0].tolist()
    # The shared report file holds no split; each run's report has its own.
    with open(os.path.join(first.shard_paths[0], "shard.json")) as f:
        stored = json.load(f)["report"]
    assert "train_sequences" not in stored and "meta_sequences" not in stored and stored["documents"] == 40
    assert first.report.documents == other_size.report.documents == 40


def test_meta_split_rule(tmp_path, tokenizer):
    """Meta rows are ``sort(default_rng(seed).permutation(N)[:meta])`` of the packed rows, training the
    others; both in packed order."""
    assert meta_split_rows(10, 0, 3).tolist() == []
    assert meta_split_rows(10, 4, 3).tolist() == np.sort(np.random.default_rng(3).permutation(10)[:4]).tolist()
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in generate_documents(40, seed=3)])
    all_rows = rows_of(prepare(tmp_path, tokenizer, [path]).train)[0]
    num_rows = len(all_rows)
    for seed, meta in ((0, 5), (1, 5), (7, 3)):
        prepared = prepare(tmp_path, tokenizer, [path], meta_sequences=meta, seed=seed)
        held = np.sort(np.random.default_rng(seed).permutation(num_rows)[:meta])
        assert rows_of(prepared.meta)[0].tolist() == all_rows[held].tolist()
        assert rows_of(prepared.train)[0].tolist() == np.delete(all_rows, held, axis=0).tolist()
    # The split is checked on load: a cached corpus too small for this split still stops the run.
    with pytest.raises(DataError, match=rf"packs into {num_rows} sequence\(s\) of --seq_len 16, but the "
                                        rf"meta-validation split needs {num_rows} \(from --meta_batch_size\)"):
        prepare(tmp_path, tokenizer, [path], meta_sequences=num_rows)


def test_a_damaged_cache_directory_is_rebuilt(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": d} for d in DOCS])
    first = prepare(tmp_path, tokenizer, [path])
    os.remove(os.path.join(first.shard_paths[0], "shard.json"))
    again = prepare(tmp_path, tokenizer, [path])
    assert not again.cache_hit and again.shard_paths == first.shard_paths
    assert rows_of(again.train)[0].tolist() == rows_of(first.train)[0].tolist()


def test_tokenizing_with_two_processes_gives_the_same_data(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in generate_documents(40, seed=3)])
    one = prepare(tmp_path / "one", tokenizer, [path], meta_sequences=4)
    two = prepare(tmp_path / "two", tokenizer, [path], meta_sequences=4, num_proc=2)
    assert rows_of(one.train)[0].tolist() == rows_of(two.train)[0].tolist()
    assert rows_of(one.meta)[0].tolist() == rows_of(two.meta)[0].tolist()


# ------------------------------------------------------------------------------------------- packing

def reference_packed_rows(docs, seq_len, special):
    """The documented ``packed`` rule, written as plainly as possible: [SEP] between documents in a row,
    none as a row's first or last inner token (such a row closes one token early), [PAD] after."""
    inner, rows, row = seq_len - 2, [], []
    for doc in docs:
        if row and inner - len(row) == 1:
            rows.append(row)
            row = []
        if row:
            row.append(special.sep_id)
        for token in doc:
            row.append(token)
            if len(row) == inner:
                rows.append(row)
                row = []
    if row:
        rows.append(row)
    return [[special.cls_id] + r + [special.sep_id] + [special.pad_id] * (inner - len(r)) for r in rows]


def assert_row_invariants(ids, mask, special):
    lengths = mask.sum(axis=1)
    assert (ids[:, 0] == special.cls_id).all()
    assert (ids[np.arange(len(ids)), lengths - 1] == special.sep_id).all()
    for row, m, length in zip(ids, mask, lengths):
        assert m[:length].all() and not m[length:].any()  # padding on the right only
        assert (row[length:] == special.pad_id).all()
        inner = row[1: length - 1]
        assert not np.isin(inner, [special.pad_id, special.cls_id, special.mask_id]).any()
        assert inner[0] != special.sep_id and inner[-1] != special.sep_id  # no [CLS][SEP], no [SEP][SEP]
        assert not ((inner[1:] == special.sep_id) & (inner[:-1] == special.sep_id)).any()
    return lengths


def test_packing_invariants(tmp_path, tokenizer):
    """Moved to the separator rule of cache format 4 (documents were concatenated with no boundary): the
    same invariants plus the [SEP]s between documents; the documents' tokens all arrive, in order."""
    texts = generate_documents(25, seed=5) + ["x", " 7 "]  # the last two are under 2 tokens
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in texts])
    seq_len = 20
    prepared = prepare(tmp_path, tokenizer, [path], seq_len=seq_len)
    special = special_tokens_of(tokenizer)
    ids, mask = rows_of(prepared.train)
    assert ids.shape[1] == seq_len and mask.shape == ids.shape
    lengths = assert_row_invariants(ids, mask, special)
    # Full rows but the last, and those closed one token early at a document boundary.
    assert set(lengths[:-1].tolist()) <= {seq_len, seq_len - 1}
    kept = [t for t in texts if len(token_ids(tokenizer, t)) >= 2]
    assert len(kept) == len(texts) - 2
    assert inner_tokens(prepared.train, tokenizer) == [i for t in kept for i in token_ids(tokenizer, t)]
    assert ids.tolist() == reference_packed_rows([token_ids(tokenizer, t) for t in kept], seq_len, special)
    inner_seps = int(sum((row[1: n - 1] == special.sep_id).sum() for row, n in zip(ids, lengths)))
    assert 0 < inner_seps < len(kept)  # separators inside rows; some boundaries fall on a row's end
    assert prepared.report.skipped == {"too_short": 2}
    assert prepared.report.truncated_documents == 0

    # The meta split holds out whole rows of the same packing: disjoint from training, nothing lost.
    split = prepare(tmp_path, tokenizer, [path], seq_len=seq_len, meta_sequences=5)
    assert len(split.meta) == 5 and len(split.train) == len(ids) - 5
    together = np.concatenate([rows_of(split.train)[0], rows_of(split.meta)[0]])
    assert sorted(map(tuple, together.tolist())) == sorted(map(tuple, ids.tolist()))
    assert (split.report.train_sequences, split.report.meta_sequences) == (len(ids) - 5, 5)


def test_packed_separator_edge_cases_at_the_row_level(tmp_path, tokenizer):
    """Documents of chosen lengths (seq_len 10: 8 inner slots): a document ending on the row's last slot
    (the next row starts right after [CLS]); one ending a slot before it (no [SEP] there: the row closes
    early with one [PAD]); a document longer than a row (it goes on in the next)."""
    special = special_tokens_of(tokenizer)
    vocab = tokenizer.get_vocab()
    words = sorted(w for w in vocab if w.isalpha() and len(w) >= 3 and token_ids(tokenizer, w) == [vocab[w]])[:8]
    assert len(words) == 8
    ids_of = [vocab[w] for w in words]

    def doc(n):
        return [ids_of[i % len(ids_of)] for i in range(n)]

    lengths = [3, 4, 7, 2, 12, 5, 6]
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": " ".join(words[i % len(words)] for i in range(n))}
                                              for n in lengths])
    docs = [doc(n) for n in lengths]
    assert [token_ids(tokenizer, " ".join(words[i % len(words)] for i in range(n))) for n in lengths] == docs
    C, S, P = special.cls_id, special.sep_id, special.pad_id
    d = docs
    expected = [
        [C] + d[0] + [S] + d[1] + [S],  # 3 + sep + 4 = 8: the row is full, the closing [SEP] is the boundary
        [C] + d[2] + [S, P],  # 7 tokens, one slot left: no [SEP] there, one [PAD]
        [C] + d[3] + [S] + d[4][:5] + [S],  # 2 + sep + 5
        [C] + d[4][5:12] + [S, P],  # the rest, 7 tokens: closed early again
        [C] + d[5] + [S] + d[6][:2] + [S],
        [C] + d[6][2:] + [S] + [P] * 4,  # the file's last row
    ]
    prepared = prepare(tmp_path, tokenizer, [path], seq_len=10)
    ids, mask = rows_of(prepared.train)
    assert ids.tolist() == expected
    assert mask.tolist() == [[int(t != P) for t in row] for row in expected]
    assert_row_invariants(ids, mask, special)
    assert reference_packed_rows(docs, 10, special) == expected


def test_per_document_packing_one_truncated_padded_document_per_row(tmp_path, tokenizer):
    special = special_tokens_of(tokenizer)
    texts = generate_documents(12, seed=8) + ["the quick fox", "bread in oslo", "x"]  # "x": too short, skipped
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in texts])
    seq_len = 24
    prepared = prepare(tmp_path, tokenizer, [path], seq_len=seq_len, packing="per_document")
    ids, mask = rows_of(prepared.train)
    kept = [token_ids(tokenizer, t) for t in texts[:-1]]
    assert len(ids) == len(kept)
    for row, m, doc in zip(ids.tolist(), mask.tolist(), kept):
        body = doc[: seq_len - 2]
        assert row == [special.cls_id] + body + [special.sep_id] + [special.pad_id] * (seq_len - 2 - len(body))
        assert m == [1] * (len(body) + 2) + [0] * (seq_len - 2 - len(body))
    long_docs = [doc for doc in kept if len(doc) > seq_len - 2]
    assert long_docs and len(long_docs) < len(kept)  # both kinds are in the corpus
    report = prepared.report
    assert report.truncated_documents == len(long_docs)
    assert report.truncated_tokens == sum(len(doc) - (seq_len - 2) for doc in long_docs)
    assert report.tokens == sum(map(len, kept)) and report.skipped == {"too_short": 1}
    assert "truncated" in report.summary()
    # Its own shard: the packed rows of the same file are cached beside it.
    packed = prepare(tmp_path, tokenizer, [path], seq_len=seq_len)
    assert not packed.cache_hit and packed.shard_paths != prepared.shard_paths
    assert inner_tokens(packed.train, tokenizer) == [t for doc in kept for t in doc]
    with pytest.raises(ValueError, match="--packing must be one of packed, per_document"):
        DataConfig(train_files=[str(path)], packing="documents", cache_dir=str(tmp_path))


# ------------------------------------------------------------------------------------------- batches

def numbered_dataset(num_rows, seq_len=4):
    """Row i holds the id i everywhere, so a batch names its rows."""
    return datasets.Dataset.from_dict({
        "input_ids": [[i] * seq_len for i in range(num_rows)],
        "attention_mask": [[1] * seq_len for _ in range(num_rows)],
    })


def row_ids(batch):
    return batch["input_ids"][:, 0].tolist()


def test_sharded_batches_are_disjoint_across_ranks_and_cover_the_epoch():
    dataset = numbered_dataset(50)
    ranks = [ShardedBatches(dataset, batch_size=4, rank=r, world_size=3, seed=7) for r in range(3)]
    assert ranks[0].steps_per_epoch == 4  # 50 // 12; the 2 leftover rows are dropped
    seen = []
    for _ in range(4):
        batches = [next(it) for it in ranks]
        for batch in batches:
            assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape == (4, 4)
            assert batch["attention_mask"].dtype == torch.long
        step_rows = [row_ids(b) for b in batches]
        assert len(set(sum(step_rows, []))) == 12
        seen += sum(step_rows, [])
    assert len(set(seen)) == 48 and set(seen) <= set(range(50))
    # The next epoch is a new permutation.
    next_epoch = [row_ids(next(it)) for _ in range(4) for it in ranks]
    assert ranks[0].epoch == 1 and sum(next_epoch, []) != seen


def test_sharded_batches_are_seeded_reshuffled_per_epoch_and_split_the_global_batch():
    dataset = numbered_dataset(40)
    a = ShardedBatches(dataset, batch_size=8, seed=3)
    b = ShardedBatches(dataset, batch_size=8, seed=3)
    c = ShardedBatches(dataset, batch_size=8, seed=4)
    first_a = [row_ids(next(a)) for _ in range(10)]
    assert first_a == [row_ids(next(b)) for _ in range(10)]
    assert first_a != [row_ids(next(c)) for _ in range(10)]
    assert first_a[:5] != first_a[5:]  # epoch 1 is reshuffled
    assert sorted(sum(first_a[:5], [])) == list(range(40))

    # Two ranks of 4 read exactly the rows one rank of 8 reads.
    halves = [ShardedBatches(dataset, batch_size=4, rank=r, world_size=2, seed=3) for r in range(2)]
    assert [row_ids(next(halves[0])) + row_ids(next(halves[1])) for _ in range(10)] == first_a


def test_sharded_batches_resume_exactly_from_state_dict():
    dataset = numbered_dataset(30)
    reference = ShardedBatches(dataset, batch_size=4, rank=1, world_size=2, seed=11)
    expected = [row_ids(next(reference)) for _ in range(12)]  # crosses two epoch boundaries (3 steps/epoch)

    stopped = ShardedBatches(dataset, batch_size=4, rank=1, world_size=2, seed=11)
    got = [row_ids(next(stopped)) for _ in range(5)]
    state = json.loads(json.dumps(stopped.state_dict()))  # survives serialization
    resumed = ShardedBatches(dataset, batch_size=4, rank=1, world_size=2, seed=11)
    resumed.load_state_dict(state)
    got += [row_ids(next(resumed)) for _ in range(7)]
    assert got == expected

    # The same global batch split differently resumes at the same sample.
    regrouped = ShardedBatches(dataset, batch_size=8, rank=0, world_size=1, seed=11)
    regrouped.load_state_dict(state)
    assert row_ids(next(regrouped))[4:] == expected[5]

    with pytest.raises(ValueError, match="cannot resume"):
        ShardedBatches(numbered_dataset(31), batch_size=4, rank=1, world_size=2, seed=11).load_state_dict(state)


def test_sharded_batches_reject_too_small_data_and_bad_ranks():
    with pytest.raises(DataError, match="micro batch size"):
        ShardedBatches(numbered_dataset(7), batch_size=4, rank=0, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        ShardedBatches(numbered_dataset(20), batch_size=4, rank=2, world_size=2)


def test_rows_as_tensors_reads_the_whole_split_once_as_int64():
    rows = rows_as_tensors(numbered_dataset(23, seq_len=5))
    assert set(rows) == {"input_ids", "attention_mask"}
    assert rows["input_ids"].shape == rows["attention_mask"].shape == (23, 5)
    assert rows["input_ids"].dtype == rows["attention_mask"].dtype == torch.int64
    assert row_ids(rows) == list(range(23)) and bool((rows["attention_mask"] == 1).all())
    assert len(rows_as_tensors(numbered_dataset(0))["input_ids"]) == 0


# ----------------------------------------------------------------------------------------- tokenizer

def test_trained_tokenizer_round_trips_through_auto_tokenizer(tokenizer, tmp_path):
    saved = tmp_path / "tok"
    trained = train_wordpiece_tokenizer(DOCS * 20 + generate_documents(50), vocab_size=200, out_dir=str(saved))
    loaded = AutoTokenizer.from_pretrained(str(saved))
    assert len(loaded) == len(trained) <= 200
    text = "Alice baked 42 loaves of Bread in Lisbon!"
    assert loaded(text)["input_ids"] == trained(text)["input_ids"]
    assert loaded("ALICE BAKED")["input_ids"] == loaded("alice baked")["input_ids"]  # lowercasing
    assert [loaded.pad_token_id, loaded.unk_token_id, loaded.cls_token_id, loaded.sep_token_id,
            loaded.mask_token_id] == [0, 1, 2, 3, 4]
    encoded = loaded(text)["input_ids"]
    assert encoded[0] == 2 and encoded[-1] == 3
    assert load_tokenizer(str(saved))(text)["input_ids"] == encoded
    special = special_tokens_of(loaded)
    assert (special.pad_id, special.cls_id, special.sep_id, special.mask_id, special.vocab_size) == (
        0, 2, 3, 4, len(loaded))


def test_tokenizer_errors_are_clear(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="does not exist"):
        load_tokenizer(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a tokenizer directory"):
        load_tokenizer(str(tmp_path / "empty"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="could not load"):
        load_tokenizer(str(broken))
    with pytest.raises(ValueError, match="no text"):
        train_wordpiece_tokenizer([], vocab_size=100, out_dir=str(tmp_path / "t"))
    with pytest.raises(ValueError, match="vocab_size"):
        train_wordpiece_tokenizer(DOCS, vocab_size=3, out_dir=str(tmp_path / "t"))

    no_mask = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, pad_token="[PAD]",
                                      cls_token="[CLS]", sep_token="[SEP]", unk_token="[UNK]")
    with pytest.raises(ValueError, match="no mask token"):
        special_tokens_of(no_mask)
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": d} for d in DOCS])
    no_cls = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, pad_token="[PAD]",
                                     sep_token="[SEP]", unk_token="[UNK]")
    with pytest.raises(ValueError, match="no cls token"):
        prepare(tmp_path, no_cls, [path])


def test_special_token_text_in_a_document_is_ordinary_text(tmp_path, tokenizer):
    text = "the fox [MASK] said [SEP] then [CLS] and [PAD] [UNK] here"
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": text}])
    tokens = inner_tokens(prepare(tmp_path, tokenizer, [path]).train, tokenizer)
    special = special_tokens_of(tokenizer)
    assert not set(tokens) & {special.pad_id, special.cls_id, special.sep_id, special.mask_id}, tokens
    assert tokens == tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def test_a_different_tokenizer_gets_its_own_cache(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": d} for d in DOCS])
    other = train_wordpiece_tokenizer(DOCS * 10, vocab_size=120, out_dir=str(tmp_path / "other"))
    first = prepare(tmp_path, tokenizer, [path])
    second = prepare(tmp_path, other, [path])
    assert not second.cache_hit and second.shard_paths != first.shard_paths
    assert inner_tokens(second.train, other) == [i for d in DOCS for i in token_ids(other, d)]
    # A tokenizer loaded from disk is the same tokenizer: the cache is reused.
    assert prepare(tmp_path, load_tokenizer(str(tmp_path / "other")), [path]).cache_hit


# -------------------------------------------------------------------------------------- demo corpus

def test_demo_corpus_is_deterministic_jsonl(tmp_path, tokenizer):
    a = write_demo_corpus(str(tmp_path / "a.jsonl"), num_docs=60, seed=0)
    b = write_demo_corpus(str(tmp_path / "b.jsonl"), num_docs=60, seed=0)
    c = write_demo_corpus(str(tmp_path / "c.jsonl"), num_docs=60, seed=1)
    assert open(a, "rb").read() == open(b, "rb").read() != open(c, "rb").read()
    records = [json.loads(line) for line in open(a)]
    assert [r["id"] for r in records] == list(range(60))
    for record in records:
        sentences = [s for s in record["text"].split(". ") if s]
        assert 3 <= len(sentences) <= 8
    assert len({r["text"] for r in records}) == 60
    prepared = prepare(tmp_path, tokenizer, [a], seq_len=64, meta_sequences=4)
    assert prepared.report.documents == 60 and prepared.report.skipped == {}
    assert len(prepared.meta) == 4


# ------------------------------------------------------------------------------------ per-file shards

def shard_stats(prepared):
    """(inode, mtime_ns) of every file of every shard, by shard directory."""
    stats = {}
    for shard in prepared.shard_paths:
        for name in sorted(os.listdir(shard)):
            st = os.stat(os.path.join(shard, name))
            stats[(shard, name)] = (st.st_ino, st.st_mtime_ns)
    return stats


def corpus_files(tmp_path, count, docs_each=30):
    return [write_jsonl(tmp_path / f"part{i}.jsonl", [{"text": t} for t in generate_documents(docs_each, seed=20 + i)])
            for i in range(count)]


def test_adding_a_file_builds_only_its_shard_and_a_changed_file_only_its_own(tmp_path, tokenizer, monkeypatch):
    import mometas_ds.data.shards as shards

    files = corpus_files(tmp_path, 3)
    first = prepare(tmp_path, tokenizer, files[:2])
    assert first.shards_built == 2 and len(first.shard_paths) == 2
    before = shard_stats(first)

    built = []
    real_build = shards._build_shard
    monkeypatch.setattr(shards, "_build_shard", lambda job, encode: built.append(job.path) or real_build(job, encode))
    added = prepare(tmp_path, tokenizer, files)
    assert built == [str(files[2])] and added.shards_built == 1 and not added.cache_hit
    assert added.shard_paths[:2] == first.shard_paths
    assert {k: v for k, v in shard_stats(added).items() if k[0] in first.shard_paths} == before  # untouched
    # The corpus is the files' shards in order: the old rows, then the new file's.
    old_rows, new_rows = rows_of(first.train)[0], rows_of(added.train)[0]
    assert new_rows[: len(old_rows)].tolist() == old_rows.tolist()
    alone = prepare(tmp_path / "alone", tokenizer, [files[2]])
    assert new_rows[len(old_rows):].tolist() == rows_of(alone.train)[0].tolist()
    assert added.report.documents == first.report.documents + alone.report.documents

    # A changed file: only its shard is rebuilt, the others are reused as they are.
    built.clear()
    files[1].write_text(files[1].read_text().replace("the", "a"))
    changed = prepare(tmp_path, tokenizer, files)
    assert built == [str(files[1])] and changed.shards_built == 1
    assert changed.shard_paths[0] == added.shard_paths[0] and changed.shard_paths[2] == added.shard_paths[2]
    assert changed.shard_paths[1] != added.shard_paths[1]
    # Every file listed again: nothing built, nothing written.
    built.clear()
    again = prepare(tmp_path, tokenizer, files)
    assert built == [] and again.cache_hit and again.shard_paths == changed.shard_paths


def test_two_processes_build_the_same_shards_rows_and_report(tmp_path, tokenizer):
    files = corpus_files(tmp_path, 3, docs_each=25)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "good text to keep for the run"}\nnot json\n{"body": 1}\n')
    files.insert(1, bad)
    one = prepare(tmp_path / "one", tokenizer, files, meta_sequences=4)
    two = prepare(tmp_path / "two", tokenizer, files, meta_sequences=4, num_proc=2)
    assert two.shards_built == 4
    assert rows_of(one.train)[0].tolist() == rows_of(two.train)[0].tolist()
    assert rows_of(one.meta)[0].tolist() == rows_of(two.meta)[0].tolist()
    assert rows_of(one.train)[1].tolist() == rows_of(two.train)[1].tolist()
    assert one.report == two.report
    for a, b in zip(one.shard_paths, two.shard_paths):  # byte-identical shards, under the same keys
        assert os.path.basename(a) == os.path.basename(b)
        for name in ("rows.arrow", "shard.json"):
            with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
                assert fa.read() == fb.read()


def test_bad_lines_in_several_shards_merge_into_one_report_with_real_file_lines(tmp_path, tokenizer):
    """Each shard counts its own bad lines; the corpus report sums them and keeps the first max_examples
    "file:line" examples in corpus order (the missing entries first, as they are found first)."""
    good = json.dumps({"text": GOOD_BEFORE})
    a = tmp_path / "a.jsonl"
    a.write_text("\n".join([good, "{broken", good, "", "{also broken", good]) + "\n")  # bad: lines 2 and 5
    b = tmp_path / "b.jsonl"
    b.write_text("\n".join(["{x", good, json.dumps({"text": "q"}), "{y", "{z"]) + "\n")  # bad 1, 4, 5; short 3
    c = tmp_path / "c.txt"
    c.write_bytes(b"one good line of text here\n\xff\xfe\n" + GOOD_AFTER.encode() + b"\n")  # bad: line 2
    prepared = prepare(tmp_path, tokenizer, [a, tmp_path / "gone.jsonl", b, c], max_examples=3, num_proc=2)
    report = prepared.report
    assert report.skipped == {"missing_file": 1, "malformed_json": 5, "too_short": 1, "non_utf8": 1}
    assert report.examples["malformed_json"] == [f"{a}:2", f"{a}:5", f"{b}:1"]
    assert report.examples["too_short"] == [f"{b}:3"] and report.examples["non_utf8"] == [f"{c}:2"]
    assert report.examples["missing_file"] == [f"{tmp_path / 'gone.jsonl'}: no such file"]
    assert report.sources == [str(a), str(b), str(c)]
    assert report.documents == 3 + 1 + 2
    expected = token_ids(tokenizer, GOOD_BEFORE) * 4 + token_ids(tokenizer, "one good line of text here") + \
        token_ids(tokenizer, GOOD_AFTER)
    assert inner_tokens(prepared.train, tokenizer) == expected
    # Each shard's own report, with its own examples (at most max_examples).
    from mometas_ds.data import read_shard

    b_report, _ = read_shard(prepared.shard_paths[1])
    assert b_report.examples["malformed_json"] == [f"{b}:1", f"{b}:4", f"{b}:5"]
    assert prepare(tmp_path, tokenizer, [a, tmp_path / "gone.jsonl", b, c], max_examples=3).report == report
