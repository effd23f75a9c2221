"""Bad input, as a new user gives it: one table per command (issue 21).

Each row: what goes in, the exit code, a phrase the message must hold, and that nothing the user
had (corpus, tokenizer, configs, a file of theirs in the output directory) was removed or changed.
Rows that fail before any work run in this process (fast); the rest run the real command in a
subprocess. Disk-full and read-only cases use a real tmpfs: they need root (as `make test` does for its
system packages, and CI is), and fail with the reason without it.
"""
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.pretrain_helpers import CPU_CONFIG, make_corpus_and_tokenizer, pretrain_args, run_pretrain, subprocess_env

USER_FILE = "my_notes.txt"  # a file of the user's that every run finds in its output directory


# ------------------------------------------------------------------------------------------ helpers
def snapshot(root):
    """Every file under root with a hash of its content; but the run lock (--output_dir/run.lock), which every
    run that gets as far as the process group rewrites with its own pid and start time, and which holds no data."""
    from mometas_ds.train.run_lock import LOCK_FILE

    files = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if name == LOCK_FILE:
                continue
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    files[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return files


def assert_untouched(before, root):
    after = snapshot(root)
    missing = sorted(set(before) - set(after))
    changed = sorted(p for p in before if p in after and after[p] != before[p])
    assert not missing and not changed, f"removed: {missing}; changed: {changed}"


class TmpFs:
    """A real tmpfs of a given size (or read-only), unmounted at the end."""

    def __init__(self, root):
        self.root = root
        self.mounted = []

    def mount(self, name, size="1m", readonly=False):
        path = os.path.join(self.root, name)
        os.makedirs(path, exist_ok=True)
        options = f"size={size}" + (",ro" if readonly else "")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.fail(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {result.stderr.strip()}")
        self.mounted.append(path)
        return path

    def fill(self, path, leave_bytes=0):
        """Fill the file system holding path until only leave_bytes are free."""
        stat = os.statvfs(path)
        free = stat.f_bavail * stat.f_frsize
        with open(os.path.join(path, "filler"), "wb") as f:
            with contextlib.suppress(OSError):
                f.write(b"\0" * max(0, free - leave_bytes))

    def unmount_all(self):
        for path in reversed(self.mounted):
            subprocess.run(["umount", "-l", path], capture_output=True)


@pytest.fixture
def tmpfs(tmp_path):
    fs = TmpFs(str(tmp_path))
    yield fs
    fs.unmount_all()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("bad_input_assets"))
    corpus, tokenizer_dir = make_corpus_and_tokenizer(root)
    return {"root": root, "corpus": corpus, "tokenizer": tokenizer_dir, "cache": os.path.join(root, "cache")}


@pytest.fixture
def restore_environ():
    """In-process runs may set RANK/MASTER_PORT (launch.init_distributed); later subprocesses must not inherit them."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f)
    return path


def cpu_config(**changes):
    with open(CPU_CONFIG) as f:
        config = json.load(f)
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        node = config
        for parent in parents:
            node = node.setdefault(parent, {})
        if value is _DELETE:
            node.pop(key, None)
        else:
            node[key] = value
    return config


_DELETE = object()


def run_in_process(main, argv, capsys, with_stdout=False):
    """A command's main(); (exit code, stderr[, stdout]). argparse's errors arrive as SystemExit."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return (code, captured.err, captured.out) if with_stdout else (code, captured.err)


# ------------------------------------------------------------------------------------------ mometas-pretrain
# Each setup(case_dir, assets, tmpfs) returns (argv changes, dict of flag -> value); it may write files.
def _ds(**changes):
    def setup(d, assets, fs):
        return {"--deepspeed_config": write_json(os.path.join(d, "ds.json"), cpu_config(**changes))}
    return setup


def _ds_raw(text):
    def setup(d, assets, fs):
        path = os.path.join(d, "ds.json")
        with open(path, "w") as f:
            f.write(text)
        return {"--deepspeed_config": path}
    return setup


def _model(**fields):
    def setup(d, assets, fs):
        base = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 256}
        base.update(fields)
        base = {k: v for k, v in base.items() if v is not _DELETE}
        return {"--model_config": write_json(os.path.join(d, "bert.json"), base)}
    return setup


def _flags(**flags):
    def setup(d, assets, fs):
        return {f"--{k}": v for k, v in flags.items()}
    return setup


def _cache_is_file(d, assets, fs):
    path = os.path.join(d, "cache_file")
    with open(path, "w") as f:
        f.write("a file where the cache should go\n")
    return {"--cache_dir": path}


def _cache_read_only(d, assets, fs):
    return {"--cache_dir": fs.mount("ro_cache", readonly=True)}


def _cache_full(d, assets, fs):
    path = fs.mount("full_cache", size="256k")
    fs.fill(path)
    return {"--cache_dir": path}


def _output_under_file(d, assets, fs):
    path = os.path.join(d, "a_file")
    with open(path, "w") as f:
        f.write("x\n")
    return {"--output_dir": os.path.join(path, "run")}


PRETRAIN_CASES = [
    # (id, setup, exit code, phrase)  -- cases that already failed well are kept here too
    ("ds_config_missing", _flags(deepspeed_config="/nonexistent/ds.json"), 2, "--deepspeed_config: file not found"),
    ("ds_config_not_json", _ds_raw("{not json"), 2, "--deepspeed_config: cannot read"),
    ("bf16_enabled_string", _ds(**{"bf16.enabled": "false"}), 2, "bf16.enabled must be true or false"),
    ("fp16_enabled_int", _ds(**{"fp16.enabled": 1}), 2, "fp16.enabled must be true or false"),
    ("misspelt_top_level_key", _ds(gradient_acumulation_steps=4, gradient_accumulation_steps=_DELETE), 2,
     "did you mean gradient_accumulation_steps?"),
    ("unknown_top_level_key", _ds(my_setting=1), 2, "unknown top-level field 'my_setting'"),
    ("lr_string", _ds(**{"optimizer.params.lr": "5e-4"}), 2, "optimizer.params.lr must be a finite number"),
    ("lr_nan", _ds_raw(json.dumps(cpu_config()).replace('"lr": 0.0005', '"lr": NaN')), 2,
     "optimizer.params.lr must be a finite number"),
    ("gradient_clipping_string", _ds(gradient_clipping="1.0"), 2, "gradient_clipping must be a finite number"),
    ("betas_one_number", _ds(**{"optimizer.params.betas": 0.9}), 2, "optimizer.params.betas must be a list of two"),
    ("optimizer_param_typo", _ds(**{"optimizer.params.weight_decy": 0.01}), 2, "did you mean weight_decay?"),
    ("torch_adam_string", _ds(**{"optimizer.params.torch_adam": "true"}), 2,
     "optimizer.params.torch_adam must be true or false"),
    ("zero_stage_string", _ds(**{"zero_optimization.stage": "2"}), 2,
     "zero_optimization.stage must be a whole number (0, 1, 2 or 3)"),
    ("micro_batch_string", _ds(train_micro_batch_size_per_gpu="8"), 2,
     "train_micro_batch_size_per_gpu must be a positive"),
    ("warmup_steps_fraction", _ds(**{"scheduler.params.warmup_num_steps": 1.5}), 2,
     "scheduler.params.warmup_num_steps must be a whole number"),
    ("unknown_optimizer", _ds(**{"optimizer.type": "Adamm"}), 2, "neither a DeepSpeed optimizer"),
    # DeepSpeed's own verdict, asked in preflight on a stand-in model (mometas_ds/train/ds_trial.py), before the corpus
    ("no_optimizer_section", _ds(optimizer=_DELETE), 2, "zero stage 2 requires an optimizer"),
    ("torch_adam_with_bias_correction", _ds(**{"optimizer.params.bias_correction": False}), 2,
     "unexpected keyword argument 'bias_correction'"),
    ("sgd_with_zero_untested", _ds(optimizer={"type": "SGD", "params": {"lr": 0.01}}), 2,
     "zero_allow_untested_optimizer"),
    ("adagrad_with_zero2", _ds(optimizer={"type": "Adagrad", "params": {"lr": 0.01}}), 2,
     "DeepSpeed's Adagrad under ZeRO stage 1/2 fails with more than one parameter group"),
    ("tensorboard_not_installed", _ds(tensorboard={"enabled": True, "output_path": "/tmp/never"}), 2,
     "pip install 'mometas_ds[tensorboard]'"),
    ("data_efficiency_section", _ds(data_efficiency={"enabled": True}), 2, "data_efficiency is not supported"),
    ("comms_logger_enabled_string", _ds(comms_logger={"enabled": "false"}), 2,
     "comms_logger.enabled must be true or false"),
    ("warmup_cosine_without_total", _ds(scheduler={"type": "WarmupCosineLR", "params": {"warmup_num_steps": 5}}),
     2, "WarmupCosineLR needs params.total_num_steps"),
    ("model_config_max_positions_string", _model(max_position_embeddings="512"), 2,
     "max_position_embeddings must be a positive whole number"),
    ("model_config_heads_do_not_divide", _model(hidden_size=65), 2,
     "hidden_size 65 is not a multiple of num_attention_heads 2"),
    ("model_config_heads_default_do_not_divide", _model(num_attention_heads=_DELETE), 2,
     "not a multiple of num_attention_heads 12"),
    ("model_config_field_typo", _model(num_hidden_layer=2), 2, "did you mean num_hidden_layers?"),
    ("model_config_dropout_string", _model(hidden_dropout_prob="0.1"), 2,
     "hidden_dropout_prob must be a number in [0, 1)"),
    ("model_config_not_a_preset", _flags(model_config="tiniest"), 2, "neither a preset"),
    ("cache_dir_is_a_file", _cache_is_file, 2, "--cache_dir:"),
    ("cache_dir_read_only", _cache_read_only, 2, "the file system is read-only"),
    ("cache_dir_full", _cache_full, 2, "the disk is full"),
    ("output_dir_under_a_file", _output_under_file, 2, "--output_dir:"),
    ("unknown_objective", _flags(objectives="mlm,xyz"), 2, "--objectives: unknown objective(s) xyz"),
    ("duplicate_objective", _flags(objectives="mlm,mlm"), 2, "--objectives: duplicate names"),
    ("max_steps_zero", _flags(max_steps="0"), 2, "--max_steps: must be >= 1"),
    ("meta_lr_nan", _flags(meta_lr="nan"), 2, "--meta_lr: must be a finite number"),
    ("unknown_sampler", _flags(sampler="best"), 2, "--sampler: unknown sampler"),
    ("tokenizer_missing", _flags(tokenizer="/nonexistent/tok"), 2, "--tokenizer: /nonexistent/tok is not a directory"),
    ("resume_unknown_tag", _flags(resume="step999"), 2, "--resume"),
    ("max_steps_not_int", _flags(max_steps="ten"), 2, "--max_steps: invalid int value"),
    ("tokenizer_sample_zero", _flags(tokenizer_sample="0"), 2, "--tokenizer_sample: must be >= 1, got 0"),
    ("tokenizer_sample_not_int", _flags(tokenizer_sample="10%"), 2, "--tokenizer_sample: invalid positive_int value"),
    ("tokenizer_sample_without_training", _flags(tokenizer_sample="100"), 2,
     "--tokenizer_sample: samples the corpus for --train_tokenizer"),
]


def _argv(assets, out, changes):
    argv = pretrain_args(assets["corpus"], assets["tokenizer"], out, assets["cache"], max_steps=4)
    for flag, value in changes.items():
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return argv


@pytest.mark.parametrize("case", PRETRAIN_CASES, ids=[c[0] for c in PRETRAIN_CASES])
def test_pretrain_bad_input_fails_before_any_work(case, assets, tmp_path, tmpfs, capsys, restore_environ):
    import torch.distributed as dist

    from mometas_ds.pretrain import main

    _, setup, code, phrase = case
    out = str(tmp_path / "run")
    os.makedirs(out)
    with open(os.path.join(out, USER_FILE), "w") as f:
        f.write("mine\n")
    changes = setup(str(tmp_path), assets, tmpfs)
    argv = _argv(assets, changes.pop("--output_dir", out), changes)
    before_user, before_assets = snapshot(str(tmp_path)), snapshot(assets["root"])

    got, err = run_in_process(main, argv, capsys)

    assert got == code, err[-3000:]
    assert phrase in err, err[-3000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(("mometas-pretrain: error:", "usage:", "mometas-pretrain: error"))
    assert not dist.is_initialized(), "stopped before any process group or work"
    assert not os.path.exists(os.path.join(out, "checkpoints")) and not os.path.exists(os.path.join(out, "cache"))
    assert_untouched(before_user, str(tmp_path))
    assert_untouched(before_assets, assets["root"])


# ---------------------------------------------------------------- cases that need a real checkpoint
@pytest.fixture(scope="module")
def finished_run(assets):
    """One real 4-step run (checkpoint step4 and hf_model/), copied by the cases below."""
    out = os.path.join(assets["root"], "finished")
    result = run_pretrain(pretrain_args(assets["corpus"], assets["tokenizer"], out, assets["cache"], max_steps=4,
                                        extra=["--objectives", "mlm,atd"]))
    assert result.returncode == 0, result.stderr[-4000:]
    return out


@pytest.mark.integration
def test_resume_of_a_checkpoint_without_run_identity_compares_its_stored_objectives(
        finished_run, assets, tmp_path, capsys, restore_environ):
    from mometas_ds import checkpoint as ckpt
    from mometas_ds.pretrain import main

    out = str(tmp_path / "old_run")
    shutil.copytree(finished_run, out)
    # As checkpoints written before run identities and manifests are: no run_identity.json, no manifest,
    # a COMPLETE holding only the step.
    tag_dir = os.path.join(out, "checkpoints", "step4")
    os.remove(os.path.join(tag_dir, ckpt.RUN_IDENTITY_FILE))
    os.remove(os.path.join(tag_dir, ckpt.MANIFEST_FILE))
    with open(os.path.join(tag_dir, ckpt.COMPLETE_MARKER), "w", encoding="utf-8") as f:
        f.write("4")
    before = snapshot(out)
    args = pretrain_args(assets["corpus"], assets["tokenizer"], out, assets["cache"], max_steps=4)
    got, err = run_in_process(main, args + ["--objectives", "atd,mlm", "--resume"], capsys)
    assert got == 2, err[-3000:]
    assert "--objectives: checkpoint" in err and "trained with mlm,atd" in err and "another order" in err, err[-3000:]
    assert_untouched(before, out)
    # The same objectives in the same order pass the check.
    from mometas_ds.checkpoint.loading import read_client_state
    from mometas_ds.train.identity import check_resume_objectives

    tag_dir = os.path.join(out, "checkpoints", "step4")
    assert read_client_state(tag_dir)["mometas"]["objectives"] == ["mlm", "atd"]
    check_resume_objectives(read_client_state(tag_dir), ["mlm", "atd"], tag_dir)


@pytest.mark.integration
def test_full_disk_during_the_hf_export_leaves_hf_model_whole_or_absent(finished_run, assets, tmp_path, tmpfs):
    from mometas_ds import checkpoint as ckpt

    disk = tmpfs.mount("small_disk", size="16m")
    out = os.path.join(disk, "run")
    shutil.copytree(finished_run, out)
    shutil.rmtree(os.path.join(out, "hf_model"))
    args = pretrain_args(assets["corpus"], assets["tokenizer"], out, assets["cache"], max_steps=4,
                         extra=["--objectives", "mlm,atd", "--resume"])
    with open(os.path.join(out, USER_FILE), "w") as f:
        f.write("mine\n")
    tmpfs.fill(disk, leave_bytes=64 * 1024)  # the resume re-exports (nothing left to train): ~700 kB do not fit
    before = {path: digest for path, digest in snapshot(out).items() if path != "run_config.json"}  # the run's own
    result = run_pretrain(args)
    assert result.returncode == 2, result.stderr[-4000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    assert "the disk is full" in result.stderr and os.path.join(out, "hf_model") in result.stderr
    assert "--resume" in result.stderr  # what to do
    assert not os.path.exists(os.path.join(out, "hf_model")), "absent, not half-written"
    assert not [name for name in os.listdir(out) if name.startswith("hf_model.")], "no temporary directory left"
    assert ckpt.is_complete(os.path.join(out, "checkpoints"), "step4")
    assert_untouched(before, out)

    # With space again, the same command writes the export whole.
    os.remove(os.path.join(disk, "filler"))
    result = run_pretrain(args)
    assert result.returncode == 0, result.stderr[-4000:]
    from transformers import BertForMaskedLM

    BertForMaskedLM.from_pretrained(os.path.join(out, "hf_model"))


@pytest.mark.integration
def test_disk_filling_up_while_the_corpus_is_tokenized(assets, tmp_path, tmpfs):
    cache = tmpfs.mount("small_cache", size="64k")  # the probe fits; the tokenized corpus does not
    out = str(tmp_path / "run")
    result = run_pretrain(pretrain_args(assets["corpus"], assets["tokenizer"], out, cache, max_steps=4))
    assert result.returncode == 2, result.stderr[-4000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    assert "--cache_dir: writing" in result.stderr and "the disk is full" in result.stderr, result.stderr[-4000:]
    assert "give another --cache_dir" in result.stderr


# ------------------------------------------------------------------------------------------ the demo
def _marked_dir(d, *, user_file=True, demo_files=True):
    from mometas_ds.cli.demo import MARKER

    out = os.path.join(d, "demo_out")
    os.makedirs(os.path.join(out, "checkpoints", "step100"))
    with open(os.path.join(out, MARKER), "w") as f:
        f.write("{}")
    if demo_files:
        for name in ("metrics.jsonl", "corpus.jsonl"):
            with open(os.path.join(out, name), "w") as f:
                f.write("{}\n")
    if user_file:
        with open(os.path.join(out, USER_FILE), "w") as f:
            f.write("mine\n")
    return out


def _unmarked_dir(d):
    out = os.path.join(d, "someone_elses")
    os.makedirs(out)
    with open(os.path.join(out, USER_FILE), "w") as f:
        f.write("mine\n")
    return out


def _a_file(d):
    path = os.path.join(d, "a_file")
    with open(path, "w") as f:
        f.write("x\n")
    return path


DEMO_CASES = [
    # (id, argv builder taking the case directory, exit code, phrase)
    ("non_empty_dir_without_marker", lambda d: ["--output_dir", _unmarked_dir(d)], 2, "is not an earlier demo output"),
    ("earlier_demo_output_without_overwrite", lambda d: ["--output_dir", _marked_dir(d)], 2, "add --overwrite"),
    ("output_dir_is_a_file", lambda d: ["--output_dir", _a_file(d)], 2, "is a file, not a directory"),
    ("overwrite_and_keep", lambda d: ["--output_dir", os.path.join(d, "new"), "--overwrite", "--keep"], 2,
     "give one of them"),
    # Relative to the user's directory (the test's cwd), where there is no ds_configs/: not the repository's.
    ("relative_deepspeed_config_is_the_users", lambda d: ["--output_dir", os.path.join(d, "new"),
                                                          "--deepspeed_config", "ds_configs/cpu_demo.json"], 2,
     f"looked for {os.path.join('CASE_DIR', 'ds_configs', 'cpu_demo.json')}"),
    ("ranks_zero", lambda d: ["--output_dir", os.path.join(d, "new"), "--ranks", "0"], 2, "must be >= 1"),
]


@pytest.mark.parametrize("case", DEMO_CASES, ids=[c[0] for c in DEMO_CASES])
def test_demo_bad_input_deletes_nothing(case, tmp_path, monkeypatch, capsys):
    from mometas_ds.cli import demo

    _, build, code, phrase = case
    d = str(tmp_path)
    monkeypatch.chdir(d)
    argv = build(d)
    before = snapshot(d)
    launched = []
    monkeypatch.setattr(demo, "run_pretraining", lambda *a, **k: launched.append(a) or pytest.fail("launched"))
    got, err = run_in_process(demo.main, argv, capsys)
    assert got == code, err
    assert phrase.replace("CASE_DIR", d) in err, err
    assert "Traceback" not in err and not launched
    assert_untouched(before, d)


def test_demo_overwrite_replaces_only_its_own_output_and_paths_are_the_users(tmp_path, monkeypatch, capsys):
    from mometas_ds.cli import demo

    d = str(tmp_path)
    out = _marked_dir(d)
    os.makedirs(os.path.join(d, "configs"))
    shutil.copy(CPU_CONFIG, os.path.join(d, "configs", "mine.json"))
    monkeypatch.chdir(d)
    launched = []

    def fake_run(cmd, env):
        launched.append(cmd)
        return 3, False

    monkeypatch.setattr(demo, "run_pretraining", fake_run)
    got, err, stdout = run_in_process(demo.main, ["--output_dir", "demo_out", "--overwrite", "--deepspeed_config",
                                                  "configs/mine.json"], capsys, with_stdout=True)
    assert got == 3  # the (faked) pre-training's exit code
    # The demo's own earlier files are gone; the user's file is kept, and said so.
    assert sorted(os.listdir(out)) == sorted([demo.MARKER, USER_FILE, "corpus.jsonl"])
    with open(os.path.join(out, USER_FILE)) as f:
        assert f.read() == "mine\n"
    assert f"kept {USER_FILE}" in stdout
    cmd, = launched
    assert cmd[cmd.index("--deepspeed_config") + 1] == os.path.join(d, "configs", "mine.json")
    assert cmd[cmd.index("--output_dir") + 1] == out


def test_demo_marks_a_new_directory_and_keep_resumes(tmp_path, monkeypatch, capsys):
    from mometas_ds.cli import demo

    launched = []

    monkeypatch.setattr(demo, "run_pretraining", lambda cmd, env: launched.append(cmd) or (1, False))
    out = str(tmp_path / "fresh")
    assert run_in_process(demo.main, ["--output_dir", out], capsys)[0] == 1
    assert os.path.isfile(os.path.join(out, demo.MARKER)) and "--resume" not in launched[-1]
    assert run_in_process(demo.main, ["--output_dir", out, "--keep"], capsys)[0] == 1
    assert "--resume" in launched[-1]


def test_demo_runs_as_a_module_with_an_error_not_a_traceback(tmp_path):
    out = _unmarked_dir(str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "mometas_ds.cli.demo", "--output_dir", out], cwd=str(tmp_path),
                            env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "error: --output_dir" in result.stderr and "Traceback" not in result.stderr
    assert os.listdir(out) == [USER_FILE]


# ------------------------------------------------------------------------------------------ mometas-bench
def _bench_ds(**changes):
    return lambda d: ["--deepspeed_config", write_json(os.path.join(d, "ds.json"), cpu_config(**changes))]


BENCH_CASES = [
    ("ds_config_missing", lambda d: ["--deepspeed_config", os.path.join(d, "none.json")], 2,
     "--deepspeed_config: file not found"),
    ("bf16_enabled_string", _bench_ds(**{"bf16.enabled": "false"}), 2, "bf16.enabled must be true or false"),
    ("misspelt_top_level_key", _bench_ds(gradient_acumulation_steps=2), 2, "did you mean gradient_accumulation_steps?"),
    ("lr_string", _bench_ds(**{"optimizer.params.lr": "1e-3"}), 2, "optimizer.params.lr must be a finite number"),
    ("meta_lr_nan", lambda d: ["--meta_lr", "nan"], 2, "--meta_lr: must be a finite number > 0"),
    ("meta_gamma_negative", lambda d: ["--meta_gamma", "-1"], 2, "--meta_gamma: must be a finite number >= 0"),
    ("interval_zero", lambda d: ["--interval", "0"], 2, "--interval: must be >= 1"),
    ("ranks_zero", lambda d: ["--ranks", "0"], 2, "--ranks: must be >= 1"),
]


@pytest.mark.parametrize("case", BENCH_CASES, ids=[c[0] for c in BENCH_CASES])
def test_bench_bad_input_fails_before_any_work(case, tmp_path, capsys, restore_environ):
    import torch.distributed as dist

    from mometas_ds.cli.bench import main

    _, build, code, phrase = case
    argv = ["--quick"] + build(str(tmp_path))
    before = snapshot(str(tmp_path))
    got, err = run_in_process(main, argv, capsys)
    assert got == code, err[-3000:]
    assert phrase in err and err.strip().splitlines()[-1].startswith("mometas-bench: error:"), err[-3000:]
    assert "Traceback" not in err and not dist.is_initialized()
    assert_untouched(before, str(tmp_path))


# ------------------------------------------------------------------------------------------ mometas-plot
def _plot_dir(d, metrics=None):
    run = os.path.join(d, "run")
    os.makedirs(run)
    if metrics is not None:
        with open(os.path.join(run, "metrics.jsonl"), "w") as f:
            f.write(metrics)
    return run


PLOT_CASES = [
    ("no_such_dir", lambda d: [os.path.join(d, "none")], 2, "metrics.jsonl not found"),
    ("dir_without_metrics", lambda d: [_plot_dir(d)], 2, "is '"),
    ("a_file_not_a_dir", lambda d: [_a_file(d)], 2, "metrics.jsonl not found"),
]


@pytest.mark.parametrize("case", PLOT_CASES, ids=[c[0] for c in PLOT_CASES])
def test_plot_bad_input(case, tmp_path, capsys):
    from mometas_ds.cli.plot import main

    _, build, code, phrase = case
    argv = build(str(tmp_path))
    before = snapshot(str(tmp_path))
    got, err = run_in_process(main, argv, capsys)
    assert got == code, err
    assert phrase in err and "mometas-plot: error:" in err and "Traceback" not in err, err
    assert_untouched(before, str(tmp_path))


# ------------------------------------------------------------------------------------------ the other commands
# (module of main, prog, argv builder over a case dir holding an empty dir "empty" and a file "notes.txt",
#  exit code, phrase). Every row: exit 2, "<prog>: error:" naming the flag or file, no traceback, nothing
#  the user had changed.
def _other_dir(d):
    os.makedirs(os.path.join(d, "empty"), exist_ok=True)
    with open(os.path.join(d, "notes.txt"), "w", encoding="utf-8") as f:
        f.write("mine\n")
    return d


def _eval_dir_with_bad_line(d, middle=False):
    path = os.path.join(d, "evaldir_middle" if middle else "evaldir")
    os.makedirs(path, exist_ok=True)
    truncated = '{"task": "sst2", "seed": 1, "learning_rate": 2e-5, "metrics": {"accuracy": 50.0}'
    whole = ('{"task": "sst2", "seed": 2, "learning_rate": 2e-5, "metrics": {"accuracy": 50.0}, '
             '"main_metric": "accuracy"}')
    with open(os.path.join(path, "results.jsonl"), "w", encoding="utf-8") as f:
        f.write(truncated + "\n" + whole + "\n" if middle else truncated)  # a killed run's last line is ignored
    return path


def _tiny_bert(d):
    from mometas_ds.finetune.synthetic import write_tiny_bert

    return write_tiny_bert(os.path.join(d, "bert"), vocab_size=300, hidden=32, layers=1)


def _good_eval_dir(d, name):
    path = os.path.join(d, name)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "results.jsonl"), "w", encoding="utf-8") as f:
        for seed, value in ((1, 50.0), (2, 52.0)):
            f.write(json.dumps({"task": "sst2", "seed": seed, "learning_rate": 2e-5, "main_metric": "accuracy",
                                "metrics": {"accuracy": value}}) + "\n")
    return path


def _finetune_to(d, output_dir):
    return ["--model_name_or_path", _tiny_bert(d), "--tasks", "sst2", "--data_dir", d, "--output_dir", output_dir]


OTHER_CASES = [
    # issue 27: an output that cannot be a directory was a traceback (NotADirectoryError, FileExistsError)
    ("finetune_output_is_a_file", "mometas_ds.cli.finetune", "mometas-finetune",
     lambda d: _finetune_to(d, f"{d}/notes.txt"), "--output_dir: "),
    ("finetune_output_under_a_file", "mometas_ds.cli.finetune", "mometas-finetune",
     lambda d: _finetune_to(d, f"{d}/notes.txt/eval"), "a file is in the way of a directory"),
    ("compare_out_is_a_file", "mometas_ds.cli.compare", "mometas-compare",
     lambda d: [_good_eval_dir(d, "a"), _good_eval_dir(d, "b"), "--out", f"{d}/notes.txt"], "--out: "),
    ("compare_out_under_a_file", "mometas_ds.cli.compare", "mometas-compare",
     lambda d: [_good_eval_dir(d, "a"), _good_eval_dir(d, "b"), "--out", f"{d}/notes.txt/cmp"],
     "a file is in the way of a directory"),
    ("finetune_model_not_a_dir", "mometas_ds.cli.finetune", "mometas-finetune",
     lambda d: ["--model_name_or_path", f"{d}/none", "--tasks", "sst2", "--data_dir", d, "--output_dir", f"{d}/o"],
     "--model_name_or_path"),
    ("finetune_model_not_hf", "mometas_ds.cli.finetune", "mometas-finetune",
     lambda d: ["--model_name_or_path", f"{d}/empty", "--tasks", "sst2", "--data_dir", d, "--output_dir", f"{d}/o"],
     "no config.json"),
    ("finetune_unknown_task", "mometas_ds.cli.finetune", "mometas-finetune",
     lambda d: ["--model_name_or_path", f"{d}/empty", "--tasks", "nope", "--data_dir", d, "--output_dir", f"{d}/o"],
     "--tasks: unknown task 'nope'"),
    ("finetune_bad_seeds", "mometas_ds.cli.finetune", "mometas-finetune",
     lambda d: ["--model_name_or_path", f"{d}/empty", "--tasks", "sst2", "--data_dir", d, "--output_dir", f"{d}/o",
                "--seeds", "x"], "--seeds"),
    ("finetune_negative_lr", "mometas_ds.cli.finetune", "mometas-finetune",
     lambda d: ["--model_name_or_path", f"{d}/empty", "--tasks", "sst2", "--data_dir", d, "--output_dir", f"{d}/o",
                "--learning_rates", "-1"], "--learning_rates"),
    ("export_not_a_dir", "mometas_ds.cli.export", "mometas-export",
     lambda d: ["--checkpoint", f"{d}/none", "--out", f"{d}/o"], "--checkpoint"),
    ("export_incomplete", "mometas_ds.cli.export", "mometas-export",
     lambda d: ["--checkpoint", f"{d}/empty", "--out", f"{d}/o"], "no COMPLETE marker"),
    ("export_out_is_a_file", "mometas_ds.cli.export", "mometas-export",
     lambda d: ["--checkpoint", f"{d}/empty", "--out", f"{d}/notes.txt"], "--out"),
    ("export_out_is_the_users_dir", "mometas_ds.cli.export", "mometas-export",
     lambda d: ["--checkpoint", f"{d}/empty", "--out", d], "not an earlier mometas-export output"),
    ("compare_missing_results", "mometas_ds.cli.compare", "mometas-compare",
     lambda d: [f"{d}/none", f"{d}/empty"], "results.jsonl: not found"),
    ("compare_names_mismatch", "mometas_ds.cli.compare", "mometas-compare",
     lambda d: [f"{d}/empty", f"{d}/empty", "--names", "a"], "--names"),
    ("compare_one_dir", "mometas_ds.cli.compare", "mometas-compare", lambda d: [f"{d}/empty"], "at least two"),
    ("compare_truncated_results", "mometas_ds.cli.compare", "mometas-compare",
     lambda d: [_eval_dir_with_bad_line(d), _eval_dir_with_bad_line(d), "--names", "a,b"], "no complete result"),
    ("compare_bad_line_in_the_middle", "mometas_ds.cli.compare", "mometas-compare",
     lambda d: [_eval_dir_with_bad_line(d, True), _eval_dir_with_bad_line(d, True), "--names", "a,b"],
     "results.jsonl:1: not a JSON line"),
    ("checkpoint_no_dir", "mometas_ds.cli.checkpoint", "mometas-checkpoint",
     lambda d: ["verify", f"{d}/none"], "no such directory"),
    ("checkpoint_bad_level", "mometas_ds.cli.checkpoint", "mometas-checkpoint",
     lambda d: ["verify", f"{d}/empty", "--level", "x"], "--level"),
    ("study_unknown_sampler", "mometas_ds.cli.study", "mometas-study",
     lambda d: ["--output_dir", f"{d}/o", "--samplers", "nope", "--seeds", "1"], "--samplers"),
    ("study_output_is_a_file", "mometas_ds.cli.study", "mometas-study",
     lambda d: ["--output_dir", f"{d}/notes.txt", "--samplers", "uniform", "--seeds", "1"], "--output_dir"),
    ("study_bad_seed", "mometas_ds.cli.study", "mometas-study",
     lambda d: ["--output_dir", f"{d}/o", "--samplers", "uniform", "--seeds", "x"], "--seeds"),
]


# ------------------------------------------------------------------------------------------ mometas-prepare
# (id, argv builder over (case dir, assets), phrase): every row exits 2 with "mometas-prepare: error:".
def _prepare_argv(d, assets, **changes):
    flags = {"--train_files": assets["corpus"], "--tokenizer": assets["tokenizer"], "--seq_len": "32",
             "--cache_dir": os.path.join(d, "cache")}
    flags.update({f"--{k}": v for k, v in changes.items()})
    return [item for flag, value in flags.items() if value is not None for item in (flag, value)]


def _bad_corpus(d):
    path = os.path.join(d, "bad.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.write('not json\n{"body": "no text"}\n{"text": "a"}\n')
    return path


PREPARE_CASES = [
    ("tokenizer_missing", lambda d, a: _prepare_argv(d, a, tokenizer=f"{d}/none"), "--tokenizer: directory"),
    ("no_tokenizer", lambda d, a: _prepare_argv(d, a, tokenizer=None), "--tokenizer: give the tokenizer directory"),
    ("model_without_tokenizer", lambda d, a: _prepare_argv(d, a, tokenizer=None, model_name_or_path=d),
     "--model_name_or_path: "),
    ("seq_len_too_small", lambda d, a: _prepare_argv(d, a, seq_len="2"), "--seq_len must be an int >= 8"),
    ("seq_len_not_int", lambda d, a: _prepare_argv(d, a, seq_len="x"), "--seq_len: invalid int value"),
    ("num_proc_zero", lambda d, a: _prepare_argv(d, a, num_proc="0"), "--num_proc must be an int >= 1"),
    ("shard_size_zero", lambda d, a: _prepare_argv(d, a, shard_size_mb="0"),
     "--shard_size_mb must be a number >= 0.001, got 0.0"),
    ("shard_size_tiny", lambda d, a: _prepare_argv(d, a, shard_size_mb="1e-7"),
     "--shard_size_mb must be a number >= 0.001, got 1e-07"),
    ("shard_size_nan", lambda d, a: _prepare_argv(d, a, shard_size_mb="nan"), "--shard_size_mb must be a number >= "),
    ("unknown_packing", lambda d, a: _prepare_argv(d, a, packing="docs"), "--packing: invalid choice: 'docs'"),
    ("no_cache_dir", lambda d, a: _prepare_argv(d, a, cache_dir=None),
     "the following arguments are required: --cache_dir"),
    ("cache_dir_is_a_file", lambda d, a: _prepare_argv(d, a, cache_dir=f"{d}/notes.txt"), "--cache_dir:"),
    ("no_usable_document", lambda d, a: _prepare_argv(d, a, train_files=_bad_corpus(d)), "no usable document"),
    ("every_file_missing", lambda d, a: _prepare_argv(d, a, train_files=f"{d}/nothing*.jsonl"), "nothing*.jsonl"),
    ("verify_without_input", lambda d, a: _prepare_argv(d, a, train_files=f"{d}/nothing*.jsonl") + ["--verify"],
     "no input file found, so no shard to verify"),
]


@pytest.mark.parametrize("case", PREPARE_CASES, ids=[c[0] for c in PREPARE_CASES])
def test_prepare_bad_input_exits_2_naming_it(case, assets, tmp_path, capsys):
    from mometas_ds.cli.prepare import main

    _, build, phrase = case
    d = _other_dir(str(tmp_path))
    argv = build(d, assets)
    before, before_assets = snapshot(d), snapshot(assets["root"])
    got, err = run_in_process(main, argv, capsys)
    assert got == 2, err[-3000:]
    assert re.search(r"^mometas-prepare: error:", err, re.M) and phrase in err and "Traceback" not in err, err[-3000:]
    assert_untouched(before, d)
    assert_untouched(before_assets, assets["root"])
    cache = os.path.join(d, "cache")
    assert not os.path.exists(cache) or not [n for _, _, names in os.walk(cache) for n in names], "nothing cached"


@pytest.mark.parametrize("case", OTHER_CASES, ids=[c[0] for c in OTHER_CASES])
def test_every_other_command_refuses_bad_input_with_exit_2_naming_it(case, tmp_path, capsys):
    import importlib

    _, module, prog, build, phrase = case
    d = _other_dir(str(tmp_path))
    argv = build(d)
    before = snapshot(d)
    got, err = run_in_process(importlib.import_module(module).main, argv, capsys)
    assert got == 2, err[-3000:]
    assert re.search(rf"^{prog}( \w+)?: error:", err, re.M) and phrase in err and "Traceback" not in err, err[-3000:]
    assert_untouched(before, d)


def _unwritable(monkeypatch, root):
    """os.makedirs and open for writing under ``root`` raise PermissionError, as a directory without write
    permission does for a user that is not root (these tests may run as root, which writes anywhere)."""
    import builtins
    import errno

    real_makedirs, real_open = os.makedirs, builtins.open
    root = os.path.abspath(root)

    def inside(path):
        return isinstance(path, (str, os.PathLike)) and os.path.abspath(os.fspath(path)).startswith(root)

    def makedirs(path, *args, **kwargs):
        if inside(path):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_makedirs(path, *args, **kwargs)

    def fake_open(file, mode="r", *args, **kwargs):
        if inside(file) and any(c in mode for c in "wax+"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "makedirs", makedirs)
    monkeypatch.setattr(builtins, "open", fake_open)


@pytest.mark.parametrize("command", ["finetune", "compare"])
def test_an_unwritable_output_is_an_exit_2_message_not_a_traceback(command, tmp_path, capsys, monkeypatch):
    """issue 27: mometas-finetune / mometas-compare with an output they may not write (PermissionError)."""
    import importlib

    d = _other_dir(str(tmp_path))
    out = os.path.join(d, "locked", "out")
    if command == "finetune":
        module, prog, flag, argv = "mometas_ds.cli.finetune", "mometas-finetune", "--output_dir", _finetune_to(d, out)
    else:
        module, prog, flag = "mometas_ds.cli.compare", "mometas-compare", "--out"
        argv = [_good_eval_dir(d, "a"), _good_eval_dir(d, "b"), "--out", out]
    before = snapshot(d)
    _unwritable(monkeypatch, os.path.join(d, "locked"))
    got, err = run_in_process(importlib.import_module(module).main, argv, capsys)
    assert got == 2, err[-3000:]
    assert re.search(rf"^{prog}: error: {flag}: ", err, re.M) and "permission denied" in err, err[-3000:]
    assert "Traceback" not in err and out in err, err[-3000:]
    assert_untouched(before, d)
