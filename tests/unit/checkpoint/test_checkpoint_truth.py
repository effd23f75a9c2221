"""A run never reads a stale or foreign file (issue 27, items 1-5): a tag is written into an empty directory and a
file its manifest does not name is damage; a universal copy is tied to the save it was converted from; one run per
--output_dir (an OS lock); the tokenizer and the model config are pinned by content; "damaged" is said of damage only.

The cheap cases build tags by hand (checkpoint.publish, as a save does); the real runs are marked integration.
"""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from mometas_ds import checkpoint as ckpt
from mometas_ds.checkpoint import verify as verify_mod
from mometas_ds.train import run_lock
from mometas_ds.cli.checkpoint import main as checkpoint_cli
from mometas_ds.config import ConfigError, PretrainConfig
from mometas_ds.train.preflight import validate_config
from mometas_ds.train.identity import check_resume_matches, run_identity
from tests.pretrain_helpers import (
    CPU_CONFIG, REPO_ROOT, make_corpus_and_tokenizer, pretrain_args, run_pretrain, subprocess_env,
)

OPTIM = "zero_pp_rank_{}_mp_rank_00_optim_states.pt"


def _tag(root, step, files=(OPTIM.format(0), "mp_rank_00_model_states.pt"), identity=None):
    """A published tag holding ``files`` (random bytes) and our client state, as a save leaves it."""
    tag_dir = os.path.join(root, ckpt.tag_for(step))
    os.makedirs(tag_dir)
    for name in files:
        with open(os.path.join(tag_dir, name), "wb") as f:
            f.write(os.urandom(2000))
    torch.save({"mometas": {"step": step}}, os.path.join(tag_dir, ckpt.CLIENT_STATE_FILE))
    if identity is not None:
        with open(os.path.join(tag_dir, ckpt.RUN_IDENTITY_FILE), "w") as f:
            json.dump(identity, f)
    ckpt.publish(root, step, ckpt.file_records(tag_dir))
    return tag_dir


# ---------------------------------------------------------------- 1. one truth per tag
def test_a_file_the_manifest_does_not_name_is_damage_for_verify_and_resume(tmp_path, caplog, capsys):
    """The issue's stale files: an optimizer file of another precision, a partition of a rank the saving run did not
    have. Before, verify called such a tag intact while DeepSpeed's readers took every file in the directory."""
    root = str(tmp_path / "run" / "checkpoints")
    _tag(root, 2)
    step4 = _tag(root, 4)
    stale = [os.path.join(step4, OPTIM.format(1)), os.path.join(step4, "bf16_" + OPTIM.format(0))]
    for path in stale:
        with open(path, "wb") as f:
            f.write(b"left by a killed save")
    for level in ckpt.VERIFY_LEVELS:
        verdict = ckpt.verify_tag(root, "step4", level)
        assert verdict.intact is False
        assert sorted(p.split(": ")[0] for p in verdict.problems) == sorted(stale)
        assert all("not in the manifest" in p for p in verdict.problems)
    with caplog.at_level(logging.WARNING, logger="mometas_ds.checkpoint"):
        assert verify_mod._choose(root, "auto", "auto") == (root, "step2")
    assert f"skipping checkpoint {step4} is damaged: {stale[1]}: not in the manifest" in caplog.text
    with pytest.raises(ckpt.ResumeRefused, match="not in the manifest.*pass --resume step2"):
        verify_mod._choose(root, "step4", "size")
    assert checkpoint_cli(["verify", root]) == 1
    assert f"step4: DAMAGED\n  {stale[1]}: not in the manifest" in capsys.readouterr().out


def test_rewriting_a_tag_unpublishes_it_first_then_clears_it_with_its_universal_copy(tmp_path, monkeypatch):
    root = str(tmp_path / "checkpoints")
    step4 = _tag(root, 4)
    universal = os.path.join(root, ckpt.universal_tag("step4"))
    os.makedirs(os.path.join(universal, "zero"))
    seen = []
    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        seen.append((path, ckpt.is_complete(root, "step4")))
        return real_rmtree(path, *args, **kwargs)

    from mometas_ds.checkpoint import saving

    monkeypatch.setattr(saving.shutil, "rmtree", rmtree)
    saving.clear_tag(root, "step4")
    assert seen == [(universal, False), (step4, False)], "COMPLETE goes before anything else of the tag"
    assert not os.path.exists(step4) and not os.path.exists(universal)
    # Pruning drops the universal copy with its tag.
    _tag(root, 2)
    _tag(root, 4)
    _tag(root, 6)
    os.makedirs(os.path.join(root, ckpt.universal_tag("step2")))
    assert ckpt.prune(root, 2) == ["step2"]
    assert sorted(os.listdir(root)) == [ckpt.LATEST_FILE, "step4", "step6"]


def test_the_universal_converter_and_the_study_loader_read_a_tag_only_through_its_manifest(tmp_path):
    from mometas_ds.config import DataError
    from mometas_ds.study.heldout import _module_state

    root = str(tmp_path / "checkpoints")
    step4 = _tag(root, 4)
    with open(os.path.join(step4, OPTIM.format(1)), "wb") as f:
        f.write(b"stale")
    with pytest.raises(ckpt.ResumeRefused, match=f"checkpoint {step4} is damaged: .*{OPTIM.format(1)}: not in the"):
        ckpt.convert_to_universal(root, "step4")
    assert not os.path.exists(os.path.join(root, ckpt.universal_tag("step4")))
    with pytest.raises(DataError, match=f"checkpoint {step4} is damaged: .*not in the manifest"):
        _module_state(root, "step4")
    os.remove(os.path.join(step4, OPTIM.format(1)))
    os.truncate(os.path.join(step4, "mp_rank_00_model_states.pt"), 10)
    with pytest.raises(DataError, match="mp_rank_00_model_states.pt: 10 bytes, the manifest records 2000"):
        _module_state(root, "step4")


# ---------------------------------------------------------------- 3. one writer per run directory
_HOLDER = """
import os, sys, time
sys.path.insert(0, {repo!r})
from mometas_ds.train import run_lock
run_lock.acquire({out!r})
if os.fork() == 0:  # a worker of the run (forked, like a data worker): must not keep the lock after the run dies
    time.sleep(120)
    os._exit(0)
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_frees_the_directory_at_once(tmp_path):
    out = str(tmp_path / "run")
    os.makedirs(out)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER.format(repo=REPO_ROOT, out=out)],
                              stdout=subprocess.PIPE, text=True, env=subprocess_env())
    child = None
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError) as refused:
            run_lock.acquire(out)
        message = str(refused.value)
        assert message.startswith(f"--output_dir {out}: another run is writing to it (host ")
        assert f", pid {holder.pid}, started 20" in message and os.path.join(out, run_lock.LOCK_FILE) in message
        child = [int(p) for p in subprocess.run(["pgrep", "-P", str(holder.pid)], capture_output=True,
                                                text=True).stdout.split()]
        assert len(child) == 1
        holder.send_signal(signal.SIGKILL)  # the job is killed; its forked worker lives on
        holder.wait()
        assert run_lock.acquire(out) == os.path.join(out, run_lock.LOCK_FILE), "the requeued run starts at once"
        assert run_lock.acquire(out) == os.path.join(out, run_lock.LOCK_FILE), "the same process: idempotent"
        with open(os.path.join(out, run_lock.LOCK_FILE)) as f:
            assert json.load(f)["pid"] == os.getpid()
    finally:
        run_lock.release(out)
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        for pid in child or []:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---------------------------------------------------------------- 4. pinned by content
def _permuted_tokenizer(src, dst):
    """The same tokens as ``src`` with two ids swapped (same size)."""
    from transformers import AutoTokenizer

    shutil.copytree(src, dst)
    with open(os.path.join(dst, "tokenizer.json"), encoding="utf-8") as f:
        data = json.load(f)
    vocab = data["model"]["vocab"]
    words = [w for w in vocab if not w.startswith("[")][-2:]
    vocab[words[0]], vocab[words[1]] = vocab[words[1]], vocab[words[0]]
    with open(os.path.join(dst, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(data, f)
    return AutoTokenizer.from_pretrained(dst, local_files_only=True)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from mometas_ds.data.tokenizer import train_wordpiece_tokenizer

    root = str(tmp_path_factory.mktemp("tok"))
    texts = [f"the match {i} ended in a draw after extra time number {i * 7}" for i in range(200)]
    train_wordpiece_tokenizer(texts, 120, os.path.join(root, "tokenizer"))
    return os.path.join(root, "tokenizer")


def test_resume_with_another_tokenizer_or_model_config_names_the_field_and_both_values(tmp_path, tokenizer_dir):
    from mometas_ds.train.identity import TOKENIZER_KEY, tokenizer_identity
    from mometas_ds.data.tokenizer import load_tokenizer

    model_json = tmp_path / "bert.json"
    model_json.write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                                      "intermediate_size": 256}))
    out = tmp_path / "run"
    cfg = PretrainConfig(deepspeed_config=CPU_CONFIG, train_files=["x.jsonl"], model_config=str(model_json),
                         tokenizer=tokenizer_dir, output_dir=str(out), resume="step4")
    ds_config = validate_config(PretrainConfig(**{**cfg.__dict__, "resume": None}))
    saved = {**run_identity(cfg, ds_config, 1), TOKENIZER_KEY: tokenizer_identity(load_tokenizer(tokenizer_dir))}
    _tag(str(out / "checkpoints"), 4, identity=saved)
    check_resume_matches(cfg, ds_config, 1)  # the same settings resume

    # The same model config file named another way is the same model.
    other_name = str(tmp_path / "sub" / ".." / "bert.json")
    os.makedirs(tmp_path / "sub")
    check_resume_matches(PretrainConfig(**{**cfg.__dict__, "model_config": other_name}), ds_config, 1)
    link = tmp_path / "same.json"
    link.symlink_to(model_json)
    check_resume_matches(PretrainConfig(**{**cfg.__dict__, "model_config": str(link)}), ds_config, 1)
    # A preset with the same fields is the same model too.
    check_resume_matches(PretrainConfig(**{**cfg.__dict__, "model_config": "tiny"}), ds_config, 1)

    # The same file edited in place: the field, both values, and no word of damage.
    model_json.write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
                                      "intermediate_size": 256}))
    with pytest.raises(ConfigError) as refused:
        check_resume_matches(cfg, ds_config, 1)
    assert "--model_config field num_hidden_layers was 2, now 3" in str(refused.value)
    assert "damaged" not in str(refused.value)
    model_json.write_text(json.dumps(saved["--model_config (its fields)"]))

    # The same tokens with two ids swapped: stopped, naming the vocabulary and both hashes.
    permuted = _permuted_tokenizer(tokenizer_dir, str(tmp_path / "permuted"))
    with pytest.raises(ConfigError) as refused:
        check_resume_matches(PretrainConfig(**{**cfg.__dict__, "tokenizer": str(tmp_path / "permuted")}),
                             ds_config, 1)
    ours = tokenizer_identity(permuted)
    assert ours["tokens"] == saved[TOKENIZER_KEY]["tokens"] and ours["xxh3_64"] != saved[TOKENIZER_KEY]["xxh3_64"]
    message = str(refused.value)
    assert (f"tokenizer vocabulary was {ours['tokens']} tokens (xxh3_64 {saved[TOKENIZER_KEY]['xxh3_64']}), "
            f"now {ours['tokens']} tokens (xxh3_64 {ours['xxh3_64']}) (as many tokens, other ids") in message
    assert "damaged" not in message


def test_a_load_failure_of_a_fully_verified_tag_does_not_call_it_damaged(tmp_path):
    class Engine:
        class checkpoint_engine:  # noqa: N801 (stands in for DeepSpeed's object)
            pass

        def load_checkpoint(self, tags_dir, tag):
            raise RuntimeError("size mismatch for bert.embeddings.word_embeddings.weight")

    root = str(tmp_path / "checkpoints")
    _tag(root, 4)
    assert verify_mod._choose(root, "step4", "full") == (root, "step4")
    with pytest.raises(ConfigError) as refused:
        ckpt.load(Engine(), root, "step4")
    assert "size mismatch" in str(refused.value) and "The checkpoint is intact" in str(refused.value)
    assert "damaged" not in str(refused.value)
    assert verify_mod._choose(root, "step4", "size") == (root, "step4")  # sizes only: damage cannot be ruled out
    with pytest.raises(ConfigError, match="damaged, or another model.*checksums not compared"):
        ckpt.load(Engine(), root, "step4")


# ---------------------------------------------------------------- real runs
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("truth_assets"))
    corpus, tokenizer_dir = make_corpus_and_tokenizer(root)
    return {"root": root, "corpus": corpus, "tokenizer": tokenizer_dir, "cache": os.path.join(root, "cache")}


def _args(assets, out, max_steps=4, extra=()):
    return pretrain_args(assets["corpus"], assets["tokenizer"], out, assets["cache"], max_steps=max_steps,
                         extra=["--save_steps", "2"] + list(extra))


def _log(result):
    return result.stdout + result.stderr


def _ok(result):
    assert result.returncode == 0, _log(result)[-5000:]
    return _log(result)


def _two_ranks_killed_in_the_save_of_step4(assets, out):
    """A 2-rank run killed (SIGKILL, every rank) after its ranks wrote step4 and before step4 was published."""
    from tests.integration.train.test_faults import TwoRanks

    run = TwoRanks(assets, out, extra=["--max_steps", "4", "--save_steps", "2"],
                   faults=({"MOMETAS_FAULT_SLEEP_IN_SAVE": "600@4"}, {}), tag="killed")
    try:
        run.wait_until(lambda: "fault injection: sleeping 600 s before publishing checkpoint step4" in run.log(0),
                       "rank 0 to sleep in the save of step4", timeout=600)
        for proc in run.procs:
            proc.send_signal(signal.SIGKILL)
        run.wait()
    finally:
        run.kill_left()


@pytest.mark.integration
def test_stale_files_of_a_killed_2_rank_save_never_reach_a_1_rank_resume_and_universal_copies_follow_their_tag(
        assets, tmp_path, caplog):
    out = str(tmp_path / "run")
    checkpoints = os.path.join(out, "checkpoints")
    _two_ranks_killed_in_the_save_of_step4(assets, out)
    step4 = os.path.join(checkpoints, "step4")
    assert os.path.isfile(os.path.join(step4, OPTIM.format(1))) and not ckpt.is_complete(checkpoints, "step4")
    # The requeued run starts at once (the killed run's lock went with it), on 1 rank: it resumes step2 through
    # its universal copy, trains past step 4 and saves step4 into an emptied directory.
    log = _ok(run_pretrain(_args(assets, out, extra=["--resume"])))
    assert f"resumed from {os.path.join(checkpoints, 'step2')} at step 2 (through its universal checkpoint)" in log
    assert ckpt.zero_partitions(step4) == 1 and not os.path.exists(os.path.join(step4, OPTIM.format(1)))
    manifest, _ = ckpt.read_manifest(step4)
    assert sorted(manifest["files"]) == sorted(set(os.listdir(step4)) - {ckpt.COMPLETE_MARKER, ckpt.MANIFEST_FILE})
    assert ckpt.verify_tag(checkpoints, "step4", "full").intact is True
    assert os.path.isfile(os.path.join(out, "hf_model", "config.json"))  # the final export read the tag alone

    # A universal copy of step4 (as a 2-rank resume from it makes), then step4 rewritten by a 2-rank resume from
    # step2: the rewrite removes the copy.
    with caplog.at_level(logging.INFO, logger="mometas_ds.checkpoint"):
        ckpt.convert_to_universal(checkpoints, "step4")
    universal = os.path.join(checkpoints, ckpt.universal_tag("step4"))
    stale = str(tmp_path / "stale.universal")
    shutil.copytree(universal, stale)
    from tests.integration.train.test_faults import TwoRanks

    run = TwoRanks(assets, out, extra=["--max_steps", "4", "--save_steps", "2", "--resume", "step2"], tag="rewrite")
    try:
        codes = run.wait(timeout=600)
    finally:
        run.kill_left()
    assert codes == [0, 0], run.log(0)[-4000:]
    assert f"resumed from {os.path.join(checkpoints, 'step2')} at step 2\n" in run.log(0)
    assert ckpt.zero_partitions(step4) == 2 and not os.path.exists(universal)

    # A copy that outlived its tag's rewrite (put back by hand) is converted again, never loaded.
    shutil.copytree(stale, universal)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mometas_ds.checkpoint"):
        ckpt.convert_to_universal(checkpoints, "step4")
    assert "was converted from another save of step4" in caplog.text
    from mometas_ds.checkpoint.universal import source_record, universal_source

    assert universal_source(universal) == source_record(step4) != universal_source(stale)

    # A later 1-rank --resume auto takes the rewritten step4 through the fresh copy.
    log = _ok(run_pretrain(_args(assets, out, max_steps=6, extra=["--resume"])))
    assert f"resumed from {step4} at step 4 (through its universal checkpoint)" in log
    assert "--resume: using the universal checkpoint" in log


@pytest.mark.integration
def test_two_runs_on_one_output_dir_the_second_stops_naming_the_first_and_a_requeue_checks_the_tokenizer(
        assets, tmp_path):
    from mometas_ds.train.identity import TOKENIZER_KEY, tokenizer_identity
    from mometas_ds.data.tokenizer import load_tokenizer, train_wordpiece_tokenizer

    out = str(tmp_path / "run")
    forever = ["--save_total_limit", "2"]  # a long run (killed below) that keeps two tags
    first = subprocess.Popen([sys.executable, "-m", "mometas_ds.pretrain"] + _args(assets, out, 10**6, forever),
                             env=subprocess_env(), cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while ckpt.latest_complete_tag(os.path.join(out, "checkpoints")) is None:
            assert first.poll() is None and time.monotonic() < deadline, "the first run never saved a checkpoint"
            time.sleep(0.2)
        # A double submit: the second run stops before reading anything; the first goes on.
        second = run_pretrain(_args(assets, out, 10**6, forever + ["--resume"]))
        assert second.returncode == 2, _log(second)[-4000:]
        assert (f"mometas-pretrain: error: --output_dir {out}: another run is writing to it (host "
                in second.stderr) and f", pid {first.pid}, started " in second.stderr
        assert "Traceback" not in _log(second)
        assert first.poll() is None, "the first run goes on"
    finally:
        first.kill()  # the job is killed (SIGKILL)
        first.wait()
    # The requeue starts at once (the lock went with the killed run). With the same tokens under other ids, or
    # another vocabulary size, it stops naming the tokenizer (before, the first trained on to exit 0, the second
    # was called "damaged").
    permuted = str(tmp_path / "permuted")
    _permuted_tokenizer(assets["tokenizer"], permuted)
    with open(os.path.join(assets["corpus"]), encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    bigger = str(tmp_path / "bigger")
    train_wordpiece_tokenizer(texts, 500, bigger)
    tokens = tokenizer_identity(load_tokenizer(assets["tokenizer"]))["tokens"]
    again = forever + ["--resume", "--steps_this_run", "2"]
    for tokenizer in (permuted, bigger):
        args = _args(assets, out, 10**6, again)
        args[args.index("--tokenizer") + 1] = tokenizer
        result = run_pretrain(args)
        log = _log(result)
        assert result.returncode == 2, log[-4000:]
        assert f"was written by a run with another tokenizer: {TOKENIZER_KEY} was {tokens} tokens" in log, log[-3000:]
        assert "damaged" not in log and "Traceback" not in log
    # The same tokenizer resumes.
    assert "resumed from" in _ok(run_pretrain(_args(assets, out, 10**6, again)))


@pytest.mark.integration
def test_a_killed_fp32_save_leaves_no_optimizer_file_beside_the_bf16_save_that_rewrites_the_tag(assets, tmp_path):
    """The issue's precision case: fp32 killed in the save of step4, resumed in bf16 from step2 (through the universal
    copy) past step 4. Before, the fp32 `zero_pp_rank_0_…optim_states.pt` stayed beside the bf16 one, verify called
    the tag intact, and the final export crashed ("Expected 1 of '*_optim_states.pt' … found 2")."""
    import glob

    with open(CPU_CONFIG) as f:
        bf16 = json.load(f)
    bf16["bf16"] = {"enabled": True}
    bf16_config = str(tmp_path / "bf16.json")
    with open(bf16_config, "w") as f:
        json.dump(bf16, f)
    out = str(tmp_path / "run")
    checkpoints, step4 = os.path.join(out, "checkpoints"), os.path.join(out, "checkpoints", "step4")
    log_path = str(tmp_path / "killed.log")
    env = dict(subprocess_env(), MOMETAS_FAULT_SLEEP_IN_SAVE="600@4")
    with open(log_path, "w") as log:
        killed = subprocess.Popen([sys.executable, "-m", "mometas_ds.pretrain"] + _args(assets, out), env=env,
                                  cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while "sleeping 600 s before publishing checkpoint step4" not in open(log_path).read():
            assert killed.poll() is None and time.monotonic() < deadline, open(log_path).read()[-3000:]
            time.sleep(0.2)
    finally:
        killed.kill()
        killed.wait()
    assert [os.path.basename(p) for p in glob.glob(os.path.join(step4, "*optim_states.pt"))] == [OPTIM.format(0)]
    assert not ckpt.is_complete(checkpoints, "step4")

    args = _args(assets, out, extra=["--resume"])
    args[args.index("--deepspeed_config") + 1] = bf16_config
    log = _ok(run_pretrain(args))
    assert f"resumed from {os.path.join(checkpoints, 'step2')} at step 2 (through its universal checkpoint)" in log
    assert [os.path.basename(p) for p in glob.glob(os.path.join(step4, "*optim_states.pt"))] == \
        ["bf16_" + OPTIM.format(0)]
    assert ckpt.verify_tag(checkpoints, "step4", "full").intact is True
    assert os.path.isfile(os.path.join(out, "hf_model", "config.json"))
    args = _args(assets, out, max_steps=6, extra=["--resume"])
    args[args.index("--deepspeed_config") + 1] = bf16_config
    log = _ok(run_pretrain(args))
    assert f"resumed from {step4} at step 4\n" in log
