"""mometas-prepare (issue 19): the corpus prepared before training is the one training uses, its flags are
mometas-pretrain's, slurm/prepare_data.sh; and a real run on a prepared cache equals one from the raw corpus."""
import os
import shlex
import subprocess
import sys
from dataclasses import fields

import numpy as np
import pytest

from mometas_ds.config import parse_args
from mometas_ds.config.settings import PretrainConfig
from mometas_ds.data import DataConfig, ShardedBatches, prepare_data
from mometas_ds.cli.prepare import FLAGS, OWN_FLAGS, build_arg_parser, main, usable_cores
from mometas_ds.data.tokenizer import load_tokenizer
from tests.pretrain_helpers import (CPU_CONFIG, REPO_ROOT, assert_ok, make_corpus_and_tokenizer, pretrain_args,
                                    read_jsonl, run_pretrain, subprocess_env)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("prepare_assets"))
    corpus, tokenizer_dir = make_corpus_and_tokenizer(root, num_docs=300)
    # A second file, so the corpus has two shards.
    second = os.path.join(root, "corpus2.jsonl")
    with open(corpus, encoding="utf-8") as f:
        lines = f.readlines()
    with open(second, "w", encoding="utf-8") as f:
        f.writelines(lines[::-1][:150])
    return {"root": root, "corpus": corpus, "second": second, "tokenizer": tokenizer_dir}


def suggested_flags(stdout):
    line = next(line for line in stdout.splitlines() if line.strip().startswith("mometas-pretrain "))
    line = line.strip().removeprefix("mometas-pretrain --deepspeed_config CONFIG.json ")
    return shlex.split(line.removesuffix(" ..."))


def test_prepare_flags_are_the_pretrain_ones_with_their_help():
    parser = build_arg_parser()
    by_name = {f.name: f for f in fields(PretrainConfig)}
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert set(actions) == set(FLAGS) | set(OWN_FLAGS)
    for name, action in actions.items():
        if name in OWN_FLAGS:
            continue
        assert action.option_strings[0] == f"--{name}"
        assert action.help.startswith(by_name[name].metadata["help"])
    assert actions["packing"].choices == ("packed", "per_document") and actions["packing"].default == "packed"
    assert actions["cache_dir"].required and actions["train_files"].required
    # A preparation job uses every core it may; training keeps mometas-pretrain's default of one.
    assert actions["num_proc"].default == usable_cores() == len(os.sched_getaffinity(0))
    assert actions["shard_size_mb"].default == 64.0


def test_prepare_then_the_printed_pretrain_flags_find_the_cache(assets, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    argv = ["--train_files", assets["corpus"], assets["second"], "--tokenizer", assets["tokenizer"],
            "--seq_len", "32", "--cache_dir", cache, "--num_proc", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 shard(s), 2 built, 0 reused" in out and f"cache: {os.path.join(cache, 'shards')}" in out
    assert "450 document(s)" in out
    assert main(argv) == 0
    assert "2 shard(s), 0 built, 2 reused" in capsys.readouterr().out

    # The suggested mometas-pretrain flags build the same DataConfig the trainer does: the cache is hit.
    cfg = parse_args(["--deepspeed_config", CPU_CONFIG] + suggested_flags(out))
    assert (cfg.seq_len, cfg.packing, cfg.cache_dir) == (32, "packed", cache)
    data_cfg = DataConfig(train_files=cfg.train_files, text_field=cfg.text_field, seq_len=cfg.seq_len,
                          cache_dir=cfg.cache_dir, packing=cfg.packing, shard_size_mb=cfg.shard_size_mb,
                          meta_sequences=16)
    prepared = prepare_data(data_cfg, load_tokenizer(cfg.tokenizer))
    assert prepared.cache_hit and prepared.shards_built == 0 and len(prepared.shard_paths) == 2
    assert prepared.report.documents == 450

    # What training reads holds [SEP]s inside rows (document boundaries), under attention mask 1.
    tokenizer = load_tokenizer(cfg.tokenizer)
    batch = next(ShardedBatches(prepared.train, batch_size=64, seed=0))
    ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    last = mask.sum(axis=1) - 1
    inner_sep = (ids == tokenizer.sep_token_id) & (mask == 1) & (np.arange(ids.shape[1]) < last[:, None])
    assert inner_sep[:, 1:].any() and not inner_sep[:, 1].any()  # never right after [CLS]

    # Adding a file to the same command builds only its shard.
    third = tmp_path / "extra.jsonl"
    third.write_text(open(assets["second"], encoding="utf-8").read().replace("the", "a"), encoding="utf-8")
    assert main(argv[:3] + [str(third)] + argv[3:]) == 0
    assert "3 shard(s), 1 built, 2 reused" in capsys.readouterr().out


def test_one_large_file_is_prepared_as_several_shards_and_training_finds_them(assets, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    shard_mb = os.path.getsize(assets["corpus"]) / 3.5 / (1 << 20)  # 4 parts
    argv = ["--train_files", assets["corpus"], "--tokenizer", assets["tokenizer"], "--seq_len", "32",
            "--cache_dir", cache, "--num_proc", "2", "--shard_size_mb", repr(shard_mb)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "4 shard(s), 4 built, 0 reused" in out and "300 document(s)" in out
    cfg = parse_args(["--deepspeed_config", CPU_CONFIG] + suggested_flags(out))
    assert cfg.shard_size_mb == shard_mb  # printed exactly, so training finds these shards
    assert main(argv) == 0
    assert "4 shard(s), 0 built, 4 reused" in capsys.readouterr().out


def test_slurm_prepare_script_dry_run_passes_the_cpus_as_num_proc(assets, tmp_path):
    script = os.path.join(REPO_ROOT, "slurm", "prepare_data.sh")
    env = dict(subprocess_env(), TRAIN_FILES=f"{assets['root']}/*.jsonl", TOKENIZER=assets["tokenizer"],
               CACHE_DIR=str(tmp_path / "c"), SLURM_CPUS_PER_TASK="12", DRY_RUN="1", SEQ_LEN="64")
    result = subprocess.run(["bash", script, "--packing", "per_document"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    cmd = shlex.split(result.stdout)
    assert cmd[1:3] == ["-m", "mometas_ds.cli.prepare"]
    assert cmd[cmd.index("--train_files") + 1] == f"{assets['root']}/*.jsonl"  # the glob, for mometas-prepare
    assert cmd[cmd.index("--num_proc") + 1] == "12" and cmd[cmd.index("--seq_len") + 1] == "64"
    assert cmd[cmd.index("--shard_size_mb") + 1] == "64"
    assert cmd[-2:] == ["--packing", "per_document"]  # pass-through flags last, so they win
    ns = build_arg_parser().parse_args(cmd[3:])
    assert ns.packing == "per_document" and ns.cache_dir == str(tmp_path / "c")
    assert not (tmp_path / "c").exists()
    env.pop("TOKENIZER")
    result = subprocess.run(["bash", script], env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "set TOKENIZER" in result.stderr


@pytest.mark.integration
@pytest.mark.parametrize("split", [False, True], ids=["files", "first_file_in_parts"])
def test_training_on_a_prepared_corpus_equals_training_from_the_raw_corpus(assets, tmp_path, split):
    """Same rows, and the same loss at every step for the same seed: one run on a cache mometas-prepare
    wrote (it tokenizes nothing), one that tokenizes the raw corpus itself; also with the first file split
    into parts by --shard_size_mb (given to both commands)."""
    files = [assets["corpus"], assets["second"]]
    shards, size_flags = 2, []
    if split:  # the first file (121 kB) in parts of at most the second's size (60 kB, whole)
        from mometas_ds.data.parts import plan_parts

        shard_bytes = os.path.getsize(files[1])
        shards = len(plan_parts(files[0], "text", shard_bytes)) + 1
        size_flags = ["--shard_size_mb", repr(shard_bytes / (1 << 20))]
        assert shards >= 3
    prepared_cache, raw_cache = str(tmp_path / "prepared_cache"), str(tmp_path / "raw_cache")
    result = subprocess.run(
        [sys.executable, "-m", "mometas_ds.cli.prepare", "--train_files", *files,
         "--tokenizer", assets["tokenizer"], "--seq_len", "32", "--cache_dir", prepared_cache, "--num_proc", "2",
         *size_flags],
        env=subprocess_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert_ok(result)
    shards_before = {name: os.stat(os.path.join(prepared_cache, "shards", name, "rows.arrow")).st_mtime_ns
                     for name in os.listdir(os.path.join(prepared_cache, "shards"))}

    runs = {}
    for name, cache in (("prepared", prepared_cache), ("raw", raw_cache)):
        out = str(tmp_path / name)
        # Split: the raw run's rank 0 builds the shards in 2 workers spawned by the training process.
        args = pretrain_args(files[0], assets["tokenizer"], out, cache, max_steps=12,
                             extra=size_flags + (["--num_proc", "2"] if split else []))
        at = args.index("--train_files")
        args[at + 1: at + 2] = files
        result = run_pretrain(args)
        assert_ok(result)
        runs[name] = (result, read_jsonl(os.path.join(out, "metrics.jsonl")))
    assert f"corpus already prepared: {shards} shard(s)" in runs["prepared"][0].stderr
    assert "tokenizing" not in runs["prepared"][0].stderr
    assert f"corpus prepared: built {shards} of {shards} shard(s)" in runs["raw"][0].stderr
    prepared_metrics, raw_metrics = runs["prepared"][1], runs["raw"][1]
    assert len(prepared_metrics) == 12
    assert [(m["step"], m["objective"], m["loss"]) for m in prepared_metrics] == \
        [(m["step"], m["objective"], m["loss"]) for m in raw_metrics]
    # The same rows: byte-identical shards under the same keys; the prepared ones untouched by training.
    assert sorted(os.listdir(os.path.join(raw_cache, "shards"))) == sorted(shards_before)
    for name, mtime in shards_before.items():
        a = os.path.join(prepared_cache, "shards", name, "rows.arrow")
        b = os.path.join(raw_cache, "shards", name, "rows.arrow")
        assert os.stat(a).st_mtime_ns == mtime
        with open(a, "rb") as fa, open(b, "rb") as fb:
            assert fa.read() == fb.read()
