"""Cache shards verified (issue 27): shard.json records the size and xxh3_64 of rows.arrow; a damaged shard
(truncated, a zeroed block, rewritten ids, a damaged shard.json) is named and rebuilt, never reused;
`mometas-prepare --verify`; concurrent preparations of one cache split the missing shards between them;
the workers of a killed preparation do not outlive it."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from mometas_ds.data import DataConfig, prepare_data
from mometas_ds.data.shard_files import REPORT_FILE, ROWS_FILE, shard_lock
from mometas_ds.cli.prepare import main as prepare_main
from mometas_ds.data.demo_corpus import generate_documents
from mometas_ds.data.tokenizer import train_wordpiece_tokenizer
from tests.pretrain_helpers import REPO_ROOT, assert_ok, pretrain_args, run_pretrain, subprocess_env


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("integrity")
    docs = generate_documents(240, seed=5)
    tokenizer_dir = str(root / "tokenizer")
    tokenizer = train_wordpiece_tokenizer(docs, vocab_size=400, out_dir=tokenizer_dir)
    files = []
    for i in range(4):
        path = root / f"c{i}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for text in docs[i * 60:(i + 1) * 60]:
                f.write(json.dumps({"text": text}) + "\n")
        files.append(str(path))
    return {"files": files, "tokenizer": tokenizer, "tokenizer_dir": tokenizer_dir}


def _prepare(assets, cache, files=None, **overrides):
    kwargs = dict(train_files=files or assets["files"], seq_len=32, cache_dir=str(cache), num_proc=1)
    kwargs.update(overrides)
    return prepare_data(DataConfig(**kwargs), assets["tokenizer"])


def _ids(prepared):
    return np.asarray(prepared.train.with_format("numpy")["input_ids"])


def _damage(rows_path, how):
    with open(rows_path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if how == "truncated":
            f.truncate(size - 700)
        elif how == "zeroed_block":
            f.seek(size // 2)
            f.write(b"\0" * 512)
        elif how == "rewritten_ids":  # int32 ids in the middle, each changed to a neighbouring valid one
            f.seek(size // 3)
            block = np.frombuffer(f.read(4 * 64), dtype=np.int32).copy()
            f.seek(size // 3)
            f.write((block ^ 1).tobytes())
        else:
            raise ValueError(how)
    return os.path.getsize(rows_path) == size


def _prepare_cli(assets, cache, *extra):
    return ["--train_files", *assets["files"], "--tokenizer", assets["tokenizer_dir"], "--seq_len", "32",
            "--cache_dir", str(cache), "--num_proc", "1", *extra]


def test_shard_json_records_the_size_and_xxh3_of_rows_arrow(assets, tmp_path):
    from mometas_ds.checkpoint import HASH, file_digest

    prepared = _prepare(assets, tmp_path / "cache")
    assert len(prepared.shard_paths) == 4
    for shard_dir in prepared.shard_paths:
        with open(os.path.join(shard_dir, REPORT_FILE)) as f:
            files = json.load(f)["files"]
        rows = os.path.join(shard_dir, ROWS_FILE)
        assert files == {ROWS_FILE: {"size": os.path.getsize(rows), HASH: file_digest(rows)}}
    assert sorted(os.listdir(prepared.cache_path)) == sorted(map(os.path.basename, prepared.shard_paths))


@pytest.mark.parametrize("how", ["truncated", "zeroed_block", "rewritten_ids"])
def test_a_damaged_shard_is_named_by_verify_and_rebuilt_by_the_next_prepare(how, assets, tmp_path, capsys):
    """The issue's reproductions: a truncated rows.arrow was a traceback naming no shard, and a rerun
    "reused" it; a zeroed block trained 4 steps then failed; rewritten ids trained on wrong data."""
    cache = tmp_path / "cache"
    clean = _prepare(assets, cache)
    expected = _ids(clean)
    victim = clean.shard_paths[2]
    same_size = _damage(os.path.join(victim, ROWS_FILE), how)
    assert same_size == (how != "truncated")

    assert prepare_main(_prepare_cli(assets, cache, "--verify")) == 1
    out = capsys.readouterr().out
    assert f"damaged: {victim} ({assets['files'][2]})" in out
    assert out.count("intact: ") == 3 and "4 shard(s): 3 intact, 1 damaged, 0 missing" in out
    assert ("checksum differs" if same_size else "bytes, shard.json records") in out

    assert prepare_main(_prepare_cli(assets, cache)) == 0
    out = capsys.readouterr().out
    assert "4 shard(s), 1 built, 3 reused" in out and f"rebuilt damaged shard {victim}" in out
    assert prepare_main(_prepare_cli(assets, cache, "--verify")) == 0
    assert "4 shard(s): 4 intact, 0 damaged, 0 missing" in capsys.readouterr().out
    again = _prepare(assets, cache)
    assert again.cache_hit
    np.testing.assert_array_equal(_ids(again), expected)


def test_the_run_itself_rebuilds_a_damaged_shard_and_the_check_follows_verify_checkpoint(assets, tmp_path, caplog,
                                                                                         monkeypatch):
    cache = tmp_path / "cache"
    expected = _ids(_prepare(assets, cache))
    victim = _prepare(assets, cache).shard_paths[1]
    _damage(os.path.join(victim, ROWS_FILE), "zeroed_block")
    # 'size' checks sizes only: a block overwritten in place is not seen (as for checkpoints)
    assert _prepare(assets, cache, verify="size").cache_hit
    # 'auto' over the 4 GiB limit checks sizes only too; under it, checksums
    from mometas_ds.checkpoint import layout
    monkeypatch.setattr(layout, "FULL_VERIFY_MAX_BYTES", 1000)
    assert _prepare(assets, cache, verify="auto").cache_hit
    monkeypatch.undo()
    with caplog.at_level("WARNING", logger="mometas_ds.data"):
        rebuilt = _prepare(assets, cache, verify="auto")
    assert rebuilt.shards_built == 1 and rebuilt.damaged == [victim]
    assert re.search(rf"tokenized shard {re.escape(victim)} \(.*c1.jsonl\) is damaged, rebuilding it: .*checksum",
                     caplog.text)
    np.testing.assert_array_equal(_ids(rebuilt), expected)
    with pytest.raises(ValueError, match="verify must be one of auto, size, full"):
        DataConfig(train_files=assets["files"], cache_dir=str(cache), verify="some")


@pytest.mark.integration
def test_a_training_run_rebuilds_a_shard_with_rewritten_ids_before_training(assets, tmp_path, capsys):
    """The issue's worst case: ids rewritten in place (same size) trained to exit 0 on the wrong data."""
    cache = tmp_path / "cache"
    assert prepare_main(_prepare_cli(assets, cache)) == 0
    clean = _ids(_prepare(assets, cache))
    victim = _prepare(assets, cache).shard_paths[3]
    _damage(os.path.join(victim, ROWS_FILE), "rewritten_ids")
    args = pretrain_args(",".join(assets["files"]), assets["tokenizer_dir"], str(tmp_path / "run"), str(cache),
                         max_steps=2)
    args[args.index("--train_files") + 1: args.index("--train_files") + 2] = assets["files"]
    result = run_pretrain(args)
    assert_ok(result)
    assert re.search(rf"tokenized shard {re.escape(victim)} \(.*c3.jsonl\) is damaged, rebuilding it: .*checksum",
                     result.stderr), result.stderr[-3000:]
    capsys.readouterr()
    assert prepare_main(_prepare_cli(assets, cache, "--verify")) == 0
    np.testing.assert_array_equal(_ids(_prepare(assets, cache)), clean)


@pytest.mark.parametrize("how", ["truncated_json", "no_checksums", "rows_missing"])
def test_a_damaged_or_unverifiable_shard_json_is_rebuilt(how, assets, tmp_path):
    cache = tmp_path / "cache"
    clean = _prepare(assets, cache)
    victim = clean.shard_paths[0]
    report = os.path.join(victim, REPORT_FILE)
    if how == "truncated_json":
        with open(report, "r+b") as f:
            f.truncate(40)
    elif how == "no_checksums":  # as a shard written before shards carried checksums
        with open(report) as f:
            stored = json.load(f)
        del stored["files"]
        with open(report, "w") as f:
            json.dump(stored, f)
    else:
        os.remove(os.path.join(victim, ROWS_FILE))
    again = _prepare(assets, cache, verify="size")
    assert again.shards_built == 1 and again.damaged == [victim]
    np.testing.assert_array_equal(_ids(again), _ids(clean))


def test_a_shard_another_process_is_building_is_left_to_it(assets, tmp_path):
    """Another process's lock on a missing shard: this one builds the others, waits, and does not build it
    again once the other has published it; if the other dies without publishing, this one builds it."""
    reference = _prepare(assets, tmp_path / "reference")
    keys = [os.path.basename(p) for p in reference.shard_paths]
    expected = _ids(reference)
    for holder_publishes in (True, False):
        cache = tmp_path / f"cache_{holder_publishes}"
        root = cache / "shards"
        root.mkdir(parents=True)
        result = {}
        with shard_lock(str(root / keys[1]), wait=True):
            thread = threading.Thread(target=lambda: result.update(prepared=_prepare(assets, cache)))
            thread.start()
            deadline = time.monotonic() + 120
            while sum((root / k / REPORT_FILE).exists() for k in keys) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert [(root / k / REPORT_FILE).exists() for k in keys] == [True, False, True, True]
            assert thread.is_alive()  # waiting for the lock
            if holder_publishes:
                os.rename(reference.shard_paths[1], root / keys[1])
        thread.join(120)
        assert not thread.is_alive()
        prepared = result["prepared"]
        assert prepared.shards_built == (3 if holder_publishes else 4)
        np.testing.assert_array_equal(_ids(prepared), expected)
        assert sorted(os.listdir(root)) == sorted(keys)  # no lock file left behind


def test_two_preparations_of_one_cache_build_each_shard_once(assets, tmp_path):
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "mometas_ds.cli.prepare", *_prepare_cli(assets, cache)]
    procs = [subprocess.Popen(cmd, env=subprocess_env(), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    built = [int(re.search(r"4 shard\(s\), (\d) built", out).group(1)) for out, _ in outs]
    assert sum(built) == 4, built
    assert prepare_main(_prepare_cli(assets, cache, "--verify")) == 0


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_the_preparation_does_not_orphan_its_workers(assets, tmp_path):
    """The issue's reproduction: kill -9 of the mometas-prepare parent left its workers blocked for good."""
    cmd = [sys.executable, "-m", "mometas_ds.cli.prepare", *_prepare_cli(assets, tmp_path / "cache")]
    cmd[cmd.index("--num_proc") + 1] = "2"
    env = subprocess_env()
    env["MOMETAS_FAULT_BLOCK_SHARD_WORKER"] = ".jsonl"  # every shard's worker blocks
    proc = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    workers = []
    try:
        for line in proc.stderr:
            found = re.match(r"fault injection: shard worker (\d+) blocks", line)
            if found:
                workers.append(int(found.group(1)))
                if len(workers) == 2:
                    break
        assert len(workers) == 2 and all(_alive(pid) for pid in workers)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        deadline = time.monotonic() + 60
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers), "workers outlived their killed parent"
    finally:
        proc.kill()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
