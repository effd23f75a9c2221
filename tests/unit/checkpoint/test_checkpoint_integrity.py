"""Checkpoints that survive damage (issue 20) and refuse what is not theirs (issue 21, item 3).

One uninterrupted real run per rank count (6 steps, a checkpoint every 2) is shared by every case:
each case damages one file of step4 in a copy of that run's directory, as if the run had stopped
at step 4, then checks what verify, ``mometas-checkpoint`` and a real ``--resume`` do with it. A
resume that falls back to step2 must end with the losses, objectives, traces and sampler states
of the uninterrupted run (exact resume is tested in test_pretrain/test_faults).
"""
import json
import logging
import os
import shutil
import types

import pytest
import torch

import mometas_ds
from mometas_ds import checkpoint as ckpt
from mometas_ds.checkpoint import layout as layout_mod, verify as verify_mod
from mometas_ds.cli.checkpoint import main as checkpoint_cli
from mometas_ds.config import ConfigError, PretrainConfig
from mometas_ds.train.preflight import validate_config
from mometas_ds.train.identity import check_resume_matches
from tests.pretrain_helpers import (
    CPU_CONFIG, make_corpus_and_tokenizer, pretrain_args, read_jsonl, read_trace, run_pretrain,
)

MAX_STEPS, SAVE_STEPS = 6, 2
MODEL_STATES = "mp_rank_00_model_states.pt"


def _optimizer_shard(ranks):
    return f"zero_pp_rank_{ranks - 1}_mp_rank_00_optim_states.pt"  # on 2 ranks: the shard rank 1 wrote


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("integrity_assets"))
    corpus, tokenizer_dir = make_corpus_and_tokenizer(root)
    return {"root": root, "corpus": corpus, "tokenizer": tokenizer_dir, "cache": os.path.join(root, "cache")}


def _args(assets, out, extra=()):
    return pretrain_args(assets["corpus"], assets["tokenizer"], out, assets["cache"], max_steps=MAX_STEPS,
                         extra=["--save_steps", str(SAVE_STEPS)] + list(extra))


@pytest.fixture(scope="module")
def reference(assets):
    """reference(ranks): the output_dir of the uninterrupted run on that many ranks (run once, on first use)."""
    done = {}

    def get(ranks):
        if ranks not in done:
            out = os.path.join(assets["root"], f"reference{ranks}")
            result = run_pretrain(_args(assets, out), ranks=ranks, timeout=600)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
            done[ranks] = out
        return done[ranks]

    return get


def _stopped_at_step4(reference_dir, dst):
    """A copy of the reference run as it was when it stopped after the save of step 4."""
    shutil.copytree(reference_dir, dst)
    checkpoints = os.path.join(dst, "checkpoints")
    shutil.rmtree(os.path.join(checkpoints, "step6"))
    with open(os.path.join(checkpoints, ckpt.LATEST_FILE), "w") as f:
        f.write("step4")
    return checkpoints


def _damage(path, how):
    if how == "delete":
        os.remove(path)
        return
    size = os.path.getsize(path)
    if how == "truncate":
        os.truncate(path, min(1000, size // 2))  # the 1,000 bytes; the manifest is smaller than that
    elif how == "zero-fill":
        with open(path, "r+b") as f:  # same size: only a checksum can tell
            f.write(bytes(size))
    else:
        raise ValueError(how)


def _expected_problem(path, how):
    if how == "delete":
        return f"{path}: missing"
    if how == "truncate":
        return f"{path}: {min(1000, os.path.getsize(path))} bytes, "
    return f"{path}: {ckpt.HASH} checksum differs"


def _assert_equals_reference(out, reference_dir, ranks):
    got, want = read_jsonl(os.path.join(out, "metrics.jsonl")), read_jsonl(os.path.join(reference_dir, "metrics.jsonl"))
    assert [m["step"] for m in got] == list(range(1, MAX_STEPS + 1))
    assert [(m["objective"], m["loss"]) for m in got] == [(m["objective"], m["loss"]) for m in want]
    for rank in range(ranks):
        assert read_trace(out, rank) == read_trace(reference_dir, rank)
    got_s = read_jsonl(os.path.join(out, "sampler.jsonl"))
    want_s = read_jsonl(os.path.join(reference_dir, "sampler.jsonl"))
    assert [(u["step"], u["probs"]) for u in got_s] == [(u["step"], u["probs"]) for u in want_s]


FILES = ["model states", "optimizer shard", "client state", "manifest"]


def _file(which, ranks):
    return {"model states": MODEL_STATES, "optimizer shard": _optimizer_shard(ranks),
            "client state": ckpt.CLIENT_STATE_FILE, "manifest": ckpt.MANIFEST_FILE}[which]


# ---------------------------------------------------------------- what a save writes
@pytest.mark.integration
@pytest.mark.parametrize("ranks", [1, 2])
def test_every_file_of_a_checkpoint_is_in_its_manifest_with_the_rank_that_wrote_it(reference, ranks):
    checkpoints = os.path.join(reference(ranks), "checkpoints")
    assert ckpt.complete_tags(checkpoints) == ["step6", "step4", "step2"]
    for tag in ("step2", "step4", "step6"):
        tag_dir = os.path.join(checkpoints, tag)
        manifest, problems = ckpt.read_manifest(tag_dir)
        assert problems == [] and manifest["step"] == ckpt.step_of(tag)
        on_disk = sorted(set(os.listdir(tag_dir)) - {ckpt.COMPLETE_MARKER, ckpt.MANIFEST_FILE})
        assert sorted(manifest["files"]) == on_disk
        for name, record in manifest["files"].items():
            path = os.path.join(tag_dir, name)
            assert record["size"] == os.path.getsize(path) and record[ckpt.HASH] == ckpt.file_digest(path)
        owners = {name: record["rank"] for name, record in manifest["files"].items()}
        for rank in range(ranks):  # each optimizer shard is recorded by the rank that wrote it
            assert owners[f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"] == rank
        assert owners[MODEL_STATES] == owners[ckpt.CLIENT_STATE_FILE] == 0
        verdict = ckpt.verify_tag(checkpoints, tag)
        assert (verdict.intact, verdict.level, verdict.problems) == (True, "full", [])
    # Our state loads without unpickling code; DeepSpeed's files load with the allow-list.
    state = torch.load(os.path.join(checkpoints, "step6", ckpt.CLIENT_STATE_FILE), weights_only=True)
    assert state["mometas"]["step"] == 6 and len(state["mometas"]["rng"]) == ranks
    for name in (MODEL_STATES, _optimizer_shard(ranks)):
        assert isinstance(ckpt.safe_load(os.path.join(checkpoints, "step6", name)), dict)


# ---------------------------------------------------------------- every damage, without training
@pytest.mark.integration
@pytest.mark.parametrize("ranks", [1, 2])
@pytest.mark.parametrize("which", FILES)
@pytest.mark.parametrize("how", ["truncate", "zero-fill", "delete"])
def test_each_damage_is_found_skipped_by_auto_refused_when_named_and_reported_by_verify(
        reference, tmp_path, capsys, caplog, ranks, which, how):
    checkpoints = _stopped_at_step4(reference(ranks), str(tmp_path / "run"))
    path = os.path.join(checkpoints, "step4", _file(which, ranks))
    _damage(path, how)
    expected = _expected_problem(path, how)

    verdict = ckpt.verify_tag(checkpoints, "step4", "full")
    assert verdict.intact is False and any(p.startswith(expected) for p in verdict.problems), verdict.problems
    assert ckpt.verify_tag(checkpoints, "step2", "full").intact is True
    if how == "zero-fill" and which != "manifest":
        # Sizes alone cannot see a same-size overwrite; the manifest itself is always checked against COMPLETE.
        assert ckpt.verify_tag(checkpoints, "step4", "size").intact is True

    with caplog.at_level(logging.WARNING, logger="mometas_ds.checkpoint"):
        assert verify_mod._choose(checkpoints, "auto", "auto") == (checkpoints, "step2")
    assert f"skipping checkpoint {os.path.join(checkpoints, 'step4')} is damaged: {expected}" in caplog.text
    with pytest.raises(ckpt.ResumeRefused, match="pass --resume step2") as refused:
        verify_mod._choose(checkpoints, "step4", "auto")
    assert expected in str(refused.value)

    assert checkpoint_cli(["verify", checkpoints]) == 1
    out = capsys.readouterr().out
    assert "step4: DAMAGED\n  " + expected in out and "step2: intact (sizes and checksums" in out
    assert "--resume auto resumes from step2" in out
    assert checkpoint_cli(["verify", os.path.join(checkpoints, "step2")]) == 0


# ---------------------------------------------------------------- real resumes
@pytest.mark.integration
@pytest.mark.parametrize("ranks, which, how", [
    (1, "model states", "truncate"),  # the case: a traceback from torch.load before
    (1, "optimizer shard", "zero-fill"),
    (1, "client state", "delete"),
    (1, "manifest", "zero-fill"),
    (2, "optimizer shard", "zero-fill"),  # the shard rank 1 wrote and hashed
    (2, "manifest", "delete"),
])
def test_resume_after_damage_falls_back_to_the_previous_intact_checkpoint_and_ends_like_the_reference(
        assets, reference, tmp_path, ranks, which, how):
    ref = reference(ranks)
    out = str(tmp_path / "run")
    checkpoints = _stopped_at_step4(ref, out)
    path = os.path.join(checkpoints, "step4", _file(which, ranks))
    _damage(path, how)
    expected = _expected_problem(path, how)
    result = run_pretrain(_args(assets, out, ["--resume"]), ranks=ranks, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert f"skipping checkpoint {os.path.join(checkpoints, 'step4')} is damaged: {expected}" in log, log[-4000:]
    assert f"resumed from {os.path.join(checkpoints, 'step2')} at step 2" in log
    _assert_equals_reference(out, ref, ranks)
    assert checkpoint_cli(["verify", checkpoints]) == 0  # step4 was written again, whole


@pytest.mark.integration
@pytest.mark.parametrize("ranks, which, how", [(1, "model states", "truncate"), (2, "optimizer shard", "zero-fill")])
def test_a_damaged_checkpoint_named_by_resume_stops_with_exit_2_and_the_intact_tag_to_use(
        assets, reference, tmp_path, ranks, which, how):
    out = str(tmp_path / "run")
    checkpoints = _stopped_at_step4(reference(ranks), out)
    path = os.path.join(checkpoints, "step4", _file(which, ranks))
    _damage(path, how)
    metrics_before = read_jsonl(os.path.join(out, "metrics.jsonl"))
    result = run_pretrain(_args(assets, out, ["--resume", "step4"]), ranks=ranks, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 2, log[-4000:]
    assert (f"mometas-pretrain: error: --resume step4: checkpoint {os.path.join(checkpoints, 'step4')} is damaged: "
            f"{_expected_problem(path, how)}") in log, log[-4000:]
    assert "the newest intact checkpoint there is step2: pass --resume step2" in log
    assert "Traceback" not in log
    assert read_jsonl(os.path.join(out, "metrics.jsonl")) == metrics_before, "nothing was rewound or trained"


def _payload_checkpoint(reference_dir, tags_dir, marker):
    """A complete, manifest-consistent copy of step2 whose model states file runs code when unpickled."""
    class Payload:
        def __reduce__(self):
            return os.makedirs, (marker,)

    tag_dir = os.path.join(tags_dir, "step4")
    shutil.copytree(os.path.join(reference_dir, "checkpoints", "step2"), tag_dir)
    torch.save({"module": Payload()}, os.path.join(tag_dir, MODEL_STATES))
    os.remove(os.path.join(tag_dir, ckpt.COMPLETE_MARKER))
    ckpt.publish(tags_dir, 4, ckpt.file_records(tag_dir))
    return tag_dir


@pytest.mark.integration
def test_latest_complete_pointing_elsewhere_is_refused_and_a_foreign_payload_never_runs(
        assets, reference, tmp_path):
    ref = reference(1)
    marker = str(tmp_path / "payload_ran")
    elsewhere = str(tmp_path / "elsewhere" / "checkpoints")
    os.makedirs(elsewhere)
    payload_dir = _payload_checkpoint(ref, elsewhere, marker)
    assert ckpt.verify_tag(elsewhere, "step4").intact, "the crafted checkpoint passes verification"

    # 1. latest_complete in this run's directory names a tag elsewhere: refused before anything is loaded.
    out = str(tmp_path / "victim")
    os.makedirs(os.path.join(out, "checkpoints"))
    with open(os.path.join(out, "checkpoints", ckpt.LATEST_FILE), "w") as f:
        f.write("../../elsewhere/checkpoints/step4")
    result = run_pretrain(_args(assets, out, ["--resume"]))
    log = result.stdout + result.stderr
    assert result.returncode == 2, log[-4000:]
    assert "holds '../../elsewhere/checkpoints/step4', not a checkpoint tag of this run (step<N>), refused" in log
    assert "Traceback" not in log and not os.path.exists(marker)

    # 2. The same checkpoint named by path: DeepSpeed's file is read with weights_only=True and refused.
    result = run_pretrain(_args(assets, str(tmp_path / "victim2"), ["--resume", payload_dir]))
    log = result.stdout + result.stderr
    assert result.returncode == 2, log[-4000:]
    assert f"{os.path.join(payload_dir, MODEL_STATES)} holds a Python object of type os.makedirs" in log, log[-4000:]
    assert "Traceback" not in log and not os.path.exists(marker)

    # 3. Listing and verifying it only read bytes.
    assert checkpoint_cli(["list", elsewhere]) == 0 and checkpoint_cli(["verify", elsewhere]) == 0
    assert not os.path.exists(marker)


# ---------------------------------------------------------------- cheap cases, no training
def _legacy_tags(root, steps, identity=None):
    """Tags as checkpoints before manifests were (COMPLETE holding the step), with a run identity."""
    for step in steps:
        tag_dir = os.path.join(root, ckpt.tag_for(step))
        os.makedirs(tag_dir)
        with open(os.path.join(tag_dir, ckpt.COMPLETE_MARKER), "w") as f:
            f.write(str(step))
        if identity is not None:
            with open(os.path.join(tag_dir, ckpt.RUN_IDENTITY_FILE), "w") as f:
                json.dump(identity, f)


def test_bare_tags_must_be_step_n_and_latest_complete_missing_tag_falls_back(tmp_path, caplog):
    root = str(tmp_path / "run" / "checkpoints")
    _legacy_tags(root, [2, 4])
    with open(os.path.join(root, ckpt.LATEST_FILE), "w") as f:
        f.write("step8")  # a tag that is gone (deleted by hand): the newest complete one is used
    with caplog.at_level(logging.WARNING, logger="mometas_ds.checkpoint"):
        assert verify_mod._choose(root, "auto", "auto") == (root, "step4")
    assert "written before checkpoints carried a manifest: not verified" in caplog.text
    for bad in ("latest", "4", "step-1", "../step4x", "step4 "):
        with pytest.raises(ckpt.ResumeRefused, match="is not a checkpoint tag"):
            ckpt.find_resume_checkpoint(root, bad)
    cfg = PretrainConfig(deepspeed_config=CPU_CONFIG, train_files=["x.jsonl"], model_config="tiny", train_tokenizer=100,
                         output_dir=str(tmp_path / "run"), resume="../elsewhere")
    with pytest.raises(ConfigError, match=r"--resume: 'elsewhere' is not a checkpoint tag \(step<N>\)"):
        validate_config(cfg)
    for pointer in ("../../elsewhere/checkpoints/step4", "step4\nstep2", "/abs/step4"):
        with open(os.path.join(root, ckpt.LATEST_FILE), "w") as f:
            f.write(pointer)
        with pytest.raises(ConfigError, match="not a checkpoint tag of this run"):
            ckpt.resume_checkpoint(root, "auto")
        assert ckpt.latest_complete_tag(root) == "step4", "pruning and the fresh-run check ignore a bad pointer"


def test_a_malformed_run_identity_names_the_file_and_the_intact_tag_to_resume_from(tmp_path):
    out = tmp_path / "run"
    root = str(out / "checkpoints")
    cfg = PretrainConfig(deepspeed_config=CPU_CONFIG, train_files=["x.jsonl"], model_config="tiny", train_tokenizer=100,
                         output_dir=str(out), resume="auto")
    ds_config = validate_config(cfg)
    from mometas_ds.train.identity import run_identity

    _legacy_tags(root, [2, 4], identity=run_identity(cfg, ds_config, 1))
    bad = os.path.join(root, "step4", ckpt.RUN_IDENTITY_FILE)
    with open(bad, "w") as f:
        f.write('{"--objectives": [')
    with pytest.raises(ConfigError, match=f"--resume: {bad} is unreadable .*: the checkpoint is damaged; "
                                          r"pass --resume step2 \(the newest intact checkpoint\)"):
        check_resume_matches(cfg, ds_config, 1)
    check_resume_matches(PretrainConfig(**{**cfg.__dict__, "resume": "step2"}), ds_config, 1)


def test_a_load_that_fails_inside_deepspeed_is_an_error_naming_the_tag_not_a_traceback(tmp_path):
    """A file missing under a COMPLETE marker of a checkpoint without a manifest: DeepSpeed's bare AssertionError."""
    class Engine:
        checkpoint_engine = types.SimpleNamespace()

        def load_checkpoint(self, tags_dir, tag):
            assert self.checkpoint_engine.load is not None  # our weights_only loader is in place
            raise AssertionError("")

    refusal = r"--resume: loading checkpoint .*step4 failed: AssertionError: .*earlier tag"
    with pytest.raises(ConfigError, match=refusal):
        ckpt.load(Engine(), str(tmp_path), "step4")


def test_safe_load_refuses_a_pickle_that_runs_code_and_keeps_plain_state_exact(tmp_path):
    import numpy as np

    marker = str(tmp_path / "ran")

    class Payload:
        def __reduce__(self):
            return os.makedirs, (marker,)

    torch.save({"x": Payload()}, tmp_path / "bad.pt")
    with pytest.raises(ckpt.ResumeRefused, match=r"bad.pt holds a Python object of type os.makedirs.*refused"):
        ckpt.safe_load(str(tmp_path / "bad.pt"))
    assert not os.path.exists(marker)
    state = {"rng": [{"numpy": np.random.RandomState(3).get_state(), "torch": torch.get_rng_state()}], "step": 4}
    torch.save(layout_mod._plain(state), tmp_path / "ok.pt")
    back = layout_mod._unplain(torch.load(tmp_path / "ok.pt", weights_only=True))
    restored = np.random.RandomState()
    restored.set_state(back["rng"][0]["numpy"])
    assert restored.randint(0, 2**31, 5).tolist() == np.random.RandomState(3).randint(0, 2**31, 5).tolist()
    assert torch.equal(back["rng"][0]["torch"], state["rng"][0]["torch"]) and back["step"] == 4


def test_no_code_of_ours_passes_trust_remote_code():
    package = os.path.dirname(mometas_ds.__file__)  # all of mometas_ds, not only mometas_ds/checkpoint/
    for base, _, names in os.walk(package):
        for name in names:
            if name.endswith(".py"):
                with open(os.path.join(base, name), encoding="utf-8") as f:
                    assert "trust_remote_code" not in f.read(), os.path.join(base, name)
