"""Large inputs split into several shards (--shard_size_mb, data.parts): every part together reads the whole
file's documents, line numbers and report; the corpus's rows do not depend on --num_proc."""
import gzip
import json
import os
import random

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mometas_ds.data import CorpusReport, DataConfig, iter_path, prepare_data
from mometas_ds.data.formats import format_of
from mometas_ds.data.parts import plan_parts, scan_ranges, txt_is_paragraphs, with_scans
from mometas_ds.data.formats.txt import txt_is_paragraphs as _txt_is_paragraphs
from mometas_ds.data.demo_corpus import generate_documents
from mometas_ds.data.tokenizer import train_wordpiece_tokenizer

WORDS = ["alpha", "beta", "gamma", "delta", "river", "stone", "Lisbon", "1999"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenizer")
    return train_wordpiece_tokenizer(generate_documents(200, seed=3) + [" ".join(WORDS)], vocab_size=300,
                                     out_dir=str(out))


def words(rng, low, high):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def write_paragraph_txt(path, rng, paragraphs=300):
    """Paragraphs of 1-6 lines (one of 40 lines, longer than several parts), 1-3 blank lines between them,
    whitespace-only lines, undecodable lines inside paragraphs, a BOM, no newline at the end."""
    lines = [b"\xef\xbb\xbf" + words(rng, 1, 5).encode()]
    for i in range(paragraphs):
        for _ in range(40 if i == 7 else rng.randint(1, 6)):
            lines.append(words(rng, 1, 12).encode())
            if rng.random() < 0.05:
                lines.append(b"\xff\xfe not utf-8")
        lines += [b""] * rng.randint(1, 3) + ([b"   \t"] if rng.random() < 0.2 else [])
    lines.append(words(rng, 1, 5).encode())
    path.write_bytes(b"\n".join(lines))
    return path


def write_line_txt(path, rng):
    """One document per line (no blank line between two non-blank ones), blank lines at both ends."""
    path.write_bytes(b"\n \n" + b"\n".join(words(rng, 1, 9).encode() for _ in range(800)) + b"\n\n\n")
    return path


def write_jsonl(path, rng, lines=900):
    with open(path, "w", encoding="utf-8") as f:
        for i in range(lines):
            r = rng.random()
            f.write("not json\n" if r < 0.03 else "\n" if r < 0.06 else '{"body": "x"}\n' if r < 0.08
                    else json.dumps({"text": words(rng, 1, 20), "id": i}) + "\n")
    return path


WRITERS = {"paragraph.txt": write_paragraph_txt, "lines.txt": write_line_txt, "corpus.jsonl": write_jsonl}


def read_whole(path):
    report = CorpusReport()
    return list(iter_path(str(path), "text", report)), report


def read_parts(path, shard_bytes, num_proc=1):
    parts = plan_parts(str(path), "text", shard_bytes)
    assert parts is not None and len(parts) > 1
    if parts[0].unit == "bytes":
        scans = scan_ranges([(str(path), p.start, p.stop) for p in parts], num_proc)
        parts = with_scans(parts, scans, format_of(str(path)).name)
    documents, merged = [], CorpusReport()
    for part in parts:
        report = CorpusReport()
        documents += list(iter_path(str(path), "text", report, part))
        merged.merge(report)
    return documents, merged, parts


@pytest.mark.parametrize("name", list(WRITERS))
def test_byte_range_parts_read_the_whole_files_documents_lines_and_report(name, tmp_path):
    path = WRITERS[name](tmp_path / name, random.Random(name))
    whole, whole_report = read_whole(path)
    assert len(whole) > 100 and (whole_report.total_skipped or name == "lines.txt")
    size = os.path.getsize(path)
    for shard_bytes in (61, 199, 1000, 2053, size // 3, size - 1):
        documents, report, parts = read_parts(path, shard_bytes)
        assert [p.start for p in parts[1:]] == [p.stop for p in parts[:-1]] and parts[-1].stop == size
        assert documents == whole, shard_bytes
        assert report.to_dict() == whole_report.to_dict(), shard_bytes


def test_a_paragraph_over_several_parts_is_read_once_by_the_part_it_begins_in(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("one\ntwo\n\n" + "\n".join(f"long {i}" for i in range(60)) + "\n\nlast words\n")
    whole, _ = read_whole(path)
    documents, _, parts = read_parts(path, 40)
    assert len(parts) > 10 and documents == whole and [line for _, _, line in whole] == [1, 4, 65]


def test_the_prescan_gives_the_whole_files_txt_layout_for_any_split(tmp_path):
    rng = random.Random(0)
    for trial in range(300):
        kinds = [rng.choice([b"", b"  ", b"text"]) for _ in range(rng.randint(1, 12))]
        path = tmp_path / f"t{trial}.txt"
        path.write_bytes(b"\n".join(kinds) + (b"\n" if rng.random() < 0.5 else b""))
        starts = [0] + sorted({sum(len(k) + 1 for k in kinds[:i]) for i in range(1, len(kinds))
                               if rng.random() < 0.4})
        stops = starts[1:] + [os.path.getsize(path)]
        scans = scan_ranges([(str(path), a, b) for a, b in zip(starts, stops)], 1)
        assert txt_is_paragraphs(scans) == _txt_is_paragraphs(str(path)), kinds
        assert sum(scan.lines for scan in scans) == path.read_bytes().count(b"\n")


def test_parquet_parts_are_row_groups_and_read_the_whole_files_rows(tmp_path):
    rng = random.Random(1)
    texts = [None if rng.random() < 0.05 else 7 if rng.random() < 0.03 else words(rng, 1, 15) for _ in range(400)]
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": list(range(400)), "text": pa.array([t if isinstance(t, str) or t is None
                                                                        else str(t) for t in texts])}),
                   path, row_group_size=37)
    whole, whole_report = read_whole(path)
    documents, report, parts = read_parts(path, 1000)
    assert {p.unit for p in parts} == {"row_groups"} and parts[-1].stop == pq.ParquetFile(path).num_row_groups
    assert documents == whole and report.to_dict() == whole_report.to_dict()
    assert whole_report.skipped == {"missing_text_field": texts.count(None)}


def test_parquet_parts_hold_similar_bytes_not_similar_numbers_of_row_groups(tmp_path):
    path = tmp_path / "uneven.parquet"
    schema = pa.schema([("text", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:  # one large row group, then nine of one short row
        writer.write_table(pa.table({"text": [f"row {i} " + "word " * 50 for i in range(2000)]}, schema=schema))
        for i in range(9):
            writer.write_table(pa.table({"text": [f"short {i}"]}, schema=schema))
    parts = plan_parts(str(path), "text", os.path.getsize(path) // 5)
    assert [(p.start, p.stop, p.first_line) for p in parts] == [(0, 1, 1), (1, 10, 2001)]
    even = tmp_path / "even.parquet"
    pq.write_table(pa.table({"text": [f"row {i} " + "word " * 50 for i in range(1000)]}), even, row_group_size=100)
    parts = plan_parts(str(even), "text", os.path.getsize(even) // 4)
    meta = pq.read_metadata(even)
    sizes = [meta.row_group(g).total_byte_size for g in range(meta.num_row_groups)]
    part_bytes = [sum(sizes[p.start: p.stop]) for p in parts]
    assert len(parts) >= 4 and max(part_bytes) - min(part_bytes) <= max(sizes)  # balanced to one row group


def test_a_file_gone_after_planning_is_counted_once_not_once_per_part(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", random.Random(6))
    parts = plan_parts(str(path), "text", os.path.getsize(path) // 3)
    parts = with_scans(parts, scan_ranges([(str(path), p.start, p.stop) for p in parts], 1), "jsonl")
    os.remove(path)
    merged = CorpusReport()
    for part in parts:
        report = CorpusReport()
        assert list(iter_path(str(path), "text", report, part)) == []
        merged.merge(report)
    assert len(parts) >= 3 and merged.skipped == {"missing_file": 1} and merged.sources == []


@pytest.mark.parametrize("layout", ["dataset", "dict_with_train", "dict_without_train"])
def test_save_to_disk_parts_are_row_ranges_and_read_the_whole_datasets_rows(layout, tmp_path):
    rng = random.Random(2)

    def split(n):
        return datasets.Dataset.from_dict({"text": [None if rng.random() < 0.05 else words(rng, 1, 15)
                                                    for _ in range(n)]})

    path = str(tmp_path / "saved")
    if layout == "dataset":
        split(500).save_to_disk(path)
    else:
        names = ["train", "test"] if layout == "dict_with_train" else ["a", "b"]
        datasets.DatasetDict({names[0]: split(500), names[1]: split(300)}).save_to_disk(path)
    whole, whole_report = read_whole(path)
    documents, report, parts = read_parts(path, 4000)
    assert {p.unit for p in parts} == {"rows"}
    assert {p.split for p in parts} == {"dataset": {None}, "dict_with_train": {"train"},
                                        "dict_without_train": {"a", "b"}}[layout]
    assert documents == whole and report.to_dict() == whole_report.to_dict()


def test_inputs_that_stay_whole(tmp_path):
    small = tmp_path / "small.jsonl"
    small.write_text(json.dumps({"text": "a b c"}) + "\n")
    assert plan_parts(str(small), "text", 1 << 20) is None
    big_gz = tmp_path / "big.jsonl.gz"
    with gzip.open(big_gz, "wt") as f:
        f.writelines(json.dumps({"text": f"line {i} " + "x" * (i % 97)}) + "\n" for i in range(3000))
    assert os.path.getsize(big_gz) > 2000 and plan_parts(str(big_gz), "text", 1000) is None
    one_line = tmp_path / "one.txt"
    one_line.write_text("word " * 2000)
    assert plan_parts(str(one_line), "text", 100) is None
    one_group = tmp_path / "one.parquet"
    pq.write_table(pa.table({"text": ["a b"] * 3000}), one_group)
    assert plan_parts(str(one_group), "text", 100) is None
    no_column = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"body": ["a b"] * 3000}), no_column, row_group_size=10)
    assert plan_parts(str(no_column), "text", 100) is None  # read whole: its one report line, as before
    empty_split = str(tmp_path / "saved")
    datasets.DatasetDict({"a": datasets.Dataset.from_dict({"text": ["a b"] * 3000}),
                          "b": datasets.Dataset.from_dict({"text": []})}).save_to_disk(empty_split)
    assert plan_parts(empty_split, "text", 100) is None
    unsupported = tmp_path / "c.csv"
    unsupported.write_text("text\n" + "a b\n" * 3000)
    assert plan_parts(str(unsupported), "text", 100) is None


def _prepare(tmp_path, tokenizer, files, name, **overrides):
    kwargs = dict(train_files=[str(f) for f in files], seq_len=24, cache_dir=str(tmp_path / name),
                  meta_sequences=0, num_proc=1)
    kwargs.update(overrides)
    return prepare_data(DataConfig(**kwargs), tokenizer)


def _rows(prepared):
    table = prepared.train.with_format("numpy")
    return np.asarray(table["input_ids"]), np.asarray(table["attention_mask"])


def test_a_split_corpus_has_the_same_rows_in_one_or_two_processes_and_the_unsplit_documents(tmp_path, tokenizer):
    rng = random.Random(4)
    big = write_paragraph_txt(tmp_path / "big.txt", rng, paragraphs=400)
    small = write_jsonl(tmp_path / "small.jsonl", rng, lines=50)
    files = [big, small]
    shard_mb = os.path.getsize(big) / 6.5 / (1 << 20)  # 7 parts
    one = _prepare(tmp_path, tokenizer, files, "one", shard_size_mb=shard_mb)
    two = _prepare(tmp_path, tokenizer, files, "two", shard_size_mb=shard_mb, num_proc=2)
    whole = _prepare(tmp_path, tokenizer, files, "whole")
    assert len(one.shard_paths) == 8 and len(whole.shard_paths) == 2 and one.shards_built == 8
    for a, b in zip(_rows(one), _rows(two)):
        np.testing.assert_array_equal(a, b)
    assert one.report.to_dict() == two.report.to_dict()

    def read(prepared):  # what was read and skipped, and where (not the rows)
        return {k: v for k, v in prepared.report.to_dict().items() if k not in ("train_sequences", "meta_sequences")}
    assert read(one) == read(whole) and one.report.skipped["non_utf8"] > 0
    assert one.report.sources == [str(big), str(small)]

    # The same tokens in the same order; only the rows around the 6 inner part boundaries differ.
    def tokens(prepared):
        ids, mask = _rows(prepared)
        special = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id}
        return [t for row, m in zip(ids, mask) for t in row[m == 1].tolist() if t not in special]
    assert tokens(one) == tokens(whole)
    assert 0 < len(one.train) - len(whole.train) <= 6

    # One document per row: the rows are the unsplit corpus's, exactly.
    per_doc = _prepare(tmp_path, tokenizer, files, "pd", shard_size_mb=shard_mb, packing="per_document")
    per_doc_whole = _prepare(tmp_path, tokenizer, files, "pdw", packing="per_document")
    for a, b in zip(_rows(per_doc), _rows(per_doc_whole)):
        np.testing.assert_array_equal(a, b)

    # Loading again reads the cache (no pre-scan, no building).
    again = _prepare(tmp_path, tokenizer, files, "one", shard_size_mb=shard_mb, num_proc=2)
    assert again.cache_hit and again.shard_paths == one.shard_paths


def test_a_killed_preparation_rebuilds_only_the_missing_parts_with_their_line_numbers(tmp_path, tokenizer):
    import shutil

    path = write_jsonl(tmp_path / "c.jsonl", random.Random(5), lines=600)
    shard_mb = os.path.getsize(path) / 5 / (1 << 20)
    first = _prepare(tmp_path, tokenizer, [path], "c", shard_size_mb=shard_mb)
    shutil.rmtree(first.shard_paths[3])  # as if the job had been killed before this part was published
    again = _prepare(tmp_path, tokenizer, [path], "c", shard_size_mb=shard_mb)
    assert again.shards_built == 1 and again.shard_paths == first.shard_paths
    assert again.report.to_dict() == first.report.to_dict()
    for a, b in zip(_rows(first), _rows(again)):
        np.testing.assert_array_equal(a, b)


def test_a_killed_worker_stops_the_preparation_at_once_and_a_rerun_builds_the_rest(tmp_path, tokenizer, monkeypatch):
    """A worker killed mid-build (the OOM killer) used to leave multiprocessing.Pool waiting for its shard
    forever; now the preparation stops with a DataError, and running it again builds only what is missing."""
    from mometas_ds.data import DataError

    path = write_jsonl(tmp_path / "c.jsonl", random.Random(7), lines=800)
    shard_mb = os.path.getsize(path) / 3.5 / (1 << 20)  # 4 parts
    clean = _prepare(tmp_path, tokenizer, [path], "clean", shard_size_mb=shard_mb)
    monkeypatch.setenv("MOMETAS_FAULT_KILL_SHARD_WORKER", "(part 3/4)")
    with pytest.raises(DataError, match=r"a shard-building process died \(killed by a signal: out of memory, or a job "
                                        r"limit\?\) after \d of 4 item\(s\) finished: what was finished is kept"):
        _prepare(tmp_path, tokenizer, [path], "killed", shard_size_mb=shard_mb, num_proc=2)
    monkeypatch.delenv("MOMETAS_FAULT_KILL_SHARD_WORKER")
    shards = tmp_path / "killed" / "shards"
    kept = [d for d in os.listdir(shards) if os.path.isfile(shards / d / "shard.json")]
    assert len(kept) < 4
    again = _prepare(tmp_path, tokenizer, [path], "killed", shard_size_mb=shard_mb, num_proc=2)
    assert again.shards_built == 4 - len(kept)
    assert [os.path.basename(p) for p in again.shard_paths] == [os.path.basename(p) for p in clean.shard_paths]
    for a, b in zip(_rows(again), _rows(clean)):
        np.testing.assert_array_equal(a, b)


def test_shards_are_started_largest_first_so_a_big_unsplit_file_does_not_run_alone_at_the_end(tmp_path):
    from mometas_ds.data.shards import ShardJob, largest_first

    rng = random.Random(8)
    small = [write_jsonl(tmp_path / f"a{i}.jsonl", random.Random(9), lines=50) for i in range(3)]  # equal sizes
    big = write_jsonl(tmp_path / "b.jsonl", rng, lines=900)
    with open(big, "rb") as f, gzip.open(tmp_path / "z.jsonl.gz", "wb") as g:  # listed last, cannot be split
        g.write(f.read() * 20)
    parts = plan_parts(str(big), "text", os.path.getsize(big) // 3)

    def job(path, part=None):
        return ShardJob(str(path), "", "text", 16, "packed", (0, 1, 2), 5, part)
    jobs = [job(p) for p in small] + [job(big, part) for part in parts] + [job(tmp_path / "z.jsonl.gz")]
    order = largest_first(jobs)
    n = len(parts)
    assert order[0].path.endswith("z.jsonl.gz") and {j.path for j in order[1: 1 + n]} == {str(big)}
    sizes = [j.part.stop - j.part.start for j in order[1: 1 + n]]
    assert sizes == sorted(sizes, reverse=True)
    assert [j.path for j in order[1 + n:]] == [str(p) for p in small]  # equal sizes keep the corpus order
