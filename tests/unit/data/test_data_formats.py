"""Corpus formats behind a registry (mometas_ds/data/formats/): files are matched by name, a format of the user's
(--user_modules) is read by mometas-prepare's spawned shard workers too, and a bad registration is refused."""
import csv
import os
import textwrap

import pytest

from mometas_ds.cli.prepare import main
from mometas_ds.data.formats import CorpusFormat, available_formats, format_of, get_format, register_format
from mometas_ds.data.formats.jsonl import read_jsonl

USER_MODULE = textwrap.dedent('''
    """Reviews exported as CSV: one document per row, the text in the column --text_field names."""
    import csv

    from mometas_ds.data.formats import CorpusFormat, register_format


    def read_csv(path, text_field, report, part=None):
        with open(path, encoding="utf-8", newline="") as f:
            for row, record in enumerate(csv.DictReader(f), 2):  # line 1 is the header
                text = record.get(text_field)
                if not text:
                    report.skip("missing_text_field", f"{path}:{row}")
                    continue
                yield text, row


    register_format(CorpusFormat("reviews_csv", (".csv",), read_csv), overwrite=True)
''')


def test_built_in_formats_are_matched_by_name():
    assert available_formats()[:3] == ["jsonl", "txt", "parquet"]
    assert format_of("/d/c4-train.00001-of-01024.json.gz").name == "jsonl"
    assert format_of("A.TXT").name == "txt" and format_of("b.txt.gz").name == "txt"
    assert format_of("wiki.parquet").name == "parquet"
    assert format_of("wiki.parquet.gz") is None  # a parquet file has its own compression
    assert format_of("notes.docx") is None
    assert get_format("txt").paragraphs and get_format("jsonl").split == "lines"


def test_a_bad_registration_is_refused_naming_it():
    with pytest.raises(ValueError, match="suffix .jsonl of format 'jsonl'"):
        register_format(CorpusFormat("other_jsonl", (".jsonl",), read_jsonl))
    with pytest.raises(ValueError, match="format 'txt' is already registered"):
        register_format(CorpusFormat("txt", (".text",), read_jsonl))
    with pytest.raises(ValueError, match="split must be one of"):
        CorpusFormat("x", (".x",), read_jsonl, split="bytes")
    with pytest.raises(ValueError, match="suffixes must be file endings"):
        CorpusFormat("x", ("x",), read_jsonl)
    with pytest.raises(TypeError, match="not a CorpusFormat"):
        register_format("csv")


def test_a_users_format_is_read_by_every_shard_worker(assets, tmp_path, capsys):
    module = tmp_path / "csv_format.py"
    module.write_text(USER_MODULE)
    files = []
    for i in range(2):
        path = tmp_path / f"reviews{i}.csv"
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["stars", "body"])
            for k in range(30):
                writer.writerow([k % 5, f"the team found the report number {k} in the old city archive today"])
            writer.writerow([3, ""])  # no text: skipped and counted
        files.append(str(path))
    argv = ["--user_modules", str(module), "--train_files", *files, "--text_field", "body",
            "--tokenizer", assets["tokenizer"], "--seq_len", "32", "--cache_dir", str(tmp_path / "cache"),
            "--num_proc", "2"]
    assert main(argv) == 0  # two files, two spawned workers: each imports the module before reading
    out = capsys.readouterr().out
    assert "2 source(s), 60 document(s)" in out and "missing_text_field" in out
    assert f"{files[0]}:32" in out  # the empty row, named by file and line
    assert "--user_modules" in out  # the printed mometas-pretrain flags keep the format


def test_without_the_module_the_files_are_reported_unsupported(assets, tmp_path, capsys):
    path = tmp_path / "a.unknownfmt"
    path.write_text("body\nsome text here\n")
    ok = tmp_path / "b.jsonl"
    ok.write_text('{"text": "the team found the report in the old city archive today"}\n' * 5)
    assert main(["--train_files", str(path), str(ok), "--tokenizer", assets["tokenizer"], "--seq_len", "32",
                 "--cache_dir", str(tmp_path / "cache"), "--num_proc", "1"]) == 0
    out = capsys.readouterr().out
    assert "unsupported_format" in out and os.path.basename(str(path)) in out
