"""DeepSpeed checks DeepSpeed's config in preflight (mometas_ds/train/ds_trial.py): deepspeed.initialize and one step
on a stand-in model with the run's two parameter groups, before the corpus is read; our own refusals for what
DeepSpeed accepts but the trainer must not (string booleans, data_efficiency / curriculum sections, a monitor
that is not installed); schedulers with a total-steps field fitted to --max_steps.

tests/fixtures/ds_configs_real/ holds configs written in the shapes of DeepSpeedExamples' bing_bert,
BingBertSquad and HelloDeepSpeed configs and of DeepSpeed's documented sections; verdicts.json records, for
each, DeepSpeed's verdict (deepspeed.initialize and a step, as build_engine calls it, with none of our checks)
and ours (the whole preflight): they must agree, except where verdicts.json names our own refusal."""
import glob
import json
import os

import pytest

from mometas_ds.config import ConfigError, PretrainConfig

from mometas_ds.train.preflight import check_world_size, validate_config
from mometas_ds.train.ds_config import check_ds_config
from mometas_ds.train.ds_trial import StandIn, check_sections, trial_batch, trial_initialize
from mometas_ds.train.ds_config import check_schedule_fits, fit_schedule_to_max_steps
from tests.pretrain_helpers import REPO_ROOT

FIXTURES = os.path.join(REPO_ROOT, "tests", "fixtures", "ds_configs_real")
with open(os.path.join(FIXTURES, "verdicts.json")) as _f:
    VERDICTS = json.load(_f)
NAMES = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(FIXTURES, "*.json"))
               if not p.endswith("verdicts.json"))


@pytest.fixture(scope="module")
def process_group():
    """One rank's process group, as preflight has it when it runs the trial; torn down after the module."""
    import torch.distributed as dist

    from mometas_ds.distributed.launch import init_distributed

    saved = dict(os.environ)
    started = not dist.is_initialized()
    init_distributed(5.0)
    yield
    if started and dist.is_initialized():
        import deepspeed.comm

        deepspeed.comm.destroy_process_group()  # drops DeepSpeed's cached groups too
    os.environ.clear()
    os.environ.update(saved)


def _fixture(name: str, tmp_path) -> str:
    """The fixture as a file, its OUTPUT_PATH placeholders (monitor directories) pointing into tmp_path."""
    with open(os.path.join(FIXTURES, f"{name}.json")) as f:
        text = f.read().replace("OUTPUT_PATH", str(tmp_path / "monitor"))
    path = tmp_path / f"{name}.json"
    path.write_text(text)
    return str(path)


def our_verdict(path: str, tmp_dir: str) -> str:
    """The whole preflight but the writable probe and the process group: 'accept' or 'reject: <message>'."""
    cfg = PretrainConfig(deepspeed_config=path, train_files=["corpus.jsonl"], model_config="tiny",
                         train_tokenizer=100, output_dir=os.path.join(tmp_dir, "out"), max_steps=10)
    try:
        ds_config = validate_config(cfg)
        check_world_size(cfg, ds_config, 1)
        trial_initialize(ds_config, path, cfg.max_steps)
    except ConfigError as err:
        return f"reject: {err}"
    return "accept"


def deepspeed_verdict(path: str, tmp_dir: str) -> str:
    """DeepSpeed alone: deepspeed.initialize (as build_engine calls it) and one step on the stand-in, with one
    micro-batch per step and none of our checks: 'accept' or 'reject: <exception>'."""
    import torch

    from mometas_ds.train.engine import build_engine

    with open(path) as f:
        ds_config = trial_batch(json.load(f))
    try:
        engine = build_engine(StandIn(), ds_config, 10, rank=1)
        loss = engine(torch.ones(2, 8, dtype=next(engine.module.parameters()).dtype))
        engine.backward(loss)
        engine.step()
        engine.destroy()
    except Exception as err:  # whatever DeepSpeed raises is its verdict
        return f"reject: {type(err).__name__}: {err}"
    return "accept"


def test_every_fixture_has_a_recorded_verdict():
    assert NAMES and sorted(VERDICTS) == NAMES


@pytest.mark.parametrize("name", [n for n in NAMES if not VERDICTS[n].get("builds_op")])
def test_our_verdict_equals_deepspeeds(name, tmp_path, process_group):
    _check_verdicts(name, tmp_path)


@pytest.mark.integration  # DeepSpeed builds its fused Adam op for the CPU the first time (minutes)
@pytest.mark.parametrize("name", [n for n in NAMES if VERDICTS[n].get("builds_op")])
def test_our_verdict_equals_deepspeeds_with_a_deepspeed_op(name, tmp_path, process_group):
    _check_verdicts(name, tmp_path)


def _check_verdicts(name, tmp_path):
    import importlib.util

    expected = dict(VERDICTS[name])
    package = expected.get("accept_when_installed")
    if package and importlib.util.find_spec(package) is not None:  # e.g. with the [tensorboard] extra
        expected.update(deepspeed="accept", ours="accept")
    path = _fixture(name, tmp_path)
    theirs = deepspeed_verdict(path, str(tmp_path))
    ours = our_verdict(path, str(tmp_path))
    assert theirs.split(":")[0] == expected["deepspeed"], theirs
    assert ours.split(":")[0] == expected["ours"], ours
    if "ours_only" in expected:  # DeepSpeed accepts it; we refuse, for the reason recorded
        assert expected["deepspeed"] == "accept" and expected["ours"] == "reject"
    else:
        assert ours.split(":")[0] == theirs.split(":")[0]
    if expected["ours"] == "reject":
        assert expected["message"] in ours, ours


def _cfg(tmp_path, ds: dict, **flags) -> PretrainConfig:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds))
    return PretrainConfig(deepspeed_config=str(path), train_files=["corpus.jsonl"], model_config="tiny",
                          train_tokenizer=100, output_dir=str(tmp_path / "out"), **flags)


BASE = {"train_micro_batch_size_per_gpu": 8, "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "torch_adam": True}},
        "zero_optimization": {"stage": 2}}


@pytest.mark.parametrize("changes,message", [
    ({"comms_logger": {"enabled": "false"}}, "comms_logger.enabled must be true or false"),
    ({"bf16": {"enabled": "true"}}, "bf16.enabled must be true or false"),
    ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": "false"}}},
     "zero_optimization.offload_optimizer.pin_memory is the string 'false'"),
    ({"data_efficiency": {"enabled": True}}, "data_efficiency is not supported"),
    ({"curriculum_learning": {"enabled": True}}, "curriculum_learning is not supported"),
    ({"scheduler": {"type": "WarmupCosineLR", "params": {"warmup_num_steps": 10}}},
     "WarmupCosineLR needs params.total_num_steps"),
])
def test_what_deepspeed_accepts_but_we_must_not_stops_in_validate_config(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        validate_config(_cfg(tmp_path, {**BASE, **changes}))


def test_a_monitor_that_is_not_installed_names_its_extra(monkeypatch):
    import mometas_ds.train.ds_trial as ds_trial

    real = ds_trial.importlib.util.find_spec
    monkeypatch.setattr(ds_trial.importlib.util, "find_spec", lambda name, *a: None if name in ("tensorboard", "wandb")
                        else real(name, *a))
    with pytest.raises(ConfigError, match=r"tensorboard.enabled is true but tensorboard is not installed: "
                                          r"pip install 'mometas_ds\[tensorboard\]'"):
        check_sections({"tensorboard": {"enabled": True}}, "x.json")
    with pytest.raises(ConfigError, match=r"pip install 'mometas_ds\[wandb\]'"):
        check_sections({"wandb": {"enabled": True}}, "x.json")
    check_sections({"tensorboard": {"enabled": False}, "wandb": {"enabled": False}}, "x.json")


def test_torch_optimizer_arguments_pass_and_typos_of_ours_do_not():
    check_ds_config({**BASE, "optimizer": {"type": "Rprop", "params": {"lr": 0.01, "etas": [0.5, 1.2]}}}, "x.json")
    with pytest.raises(ConfigError, match="did you mean betas"):
        check_ds_config({**BASE, "optimizer": {"type": "AdamW", "params": {"lr": 0.01, "etas": [0.9, 0.99]}}},
                        "x.json")


@pytest.mark.parametrize("kind", ["WarmupDecayLR", "WarmupCosineLR"])
def test_schedulers_with_total_steps_follow_max_steps(kind):
    ds = {"scheduler": {"type": kind, "params": {"total_num_steps": 100000, "warmup_num_steps": 10000}}}
    check_schedule_fits(ds, "x.json")
    fit_schedule_to_max_steps(ds, 200)
    assert ds["scheduler"]["params"] == {"total_num_steps": 200, "warmup_num_steps": 20}


def test_the_trial_leaves_no_monitor_files_and_the_real_config_unchanged(tmp_path, process_group):
    ds = {**BASE, "csv_monitor": {"enabled": True, "output_path": str(tmp_path / "csv"), "job_name": "j"},
          "train_batch_size": 64, "gradient_accumulation_steps": 8}
    before = json.dumps(ds, sort_keys=True)
    trial_initialize(ds, "x.json", 10)
    assert json.dumps(ds, sort_keys=True) == before
    assert not os.path.exists(tmp_path / "csv")
