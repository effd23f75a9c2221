"""grad_norm on every step at every ZeRO stage: DeepSpeed's where its optimizer reports one (ZeRO 1-3), ours
(step.global_grad_norm, from the reduced gradients before clipping) where it gives none (stage 0 in fp32)."""
import json
import os

import pytest
import torch

from mometas_ds.train.ds_trial import StandIn
from mometas_ds.train.step import global_grad_norm


@pytest.fixture
def process_group():
    """A one-rank process group for one test, then gone with its MASTER_* variables (a later test's pre-training
    subprocess must not inherit the port this process listens on)."""
    import torch.distributed as dist

    from mometas_ds.distributed.launch import init_distributed

    saved = dict(os.environ)
    started = not dist.is_initialized()
    init_distributed(5.0)
    yield
    if started and dist.is_initialized():
        import deepspeed.comm

        deepspeed.comm.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)


def _engine(stage: int):
    from mometas_ds.train.engine import build_engine

    torch.manual_seed(0)
    config = {"train_micro_batch_size_per_gpu": 1, "gradient_clipping": 0.01,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
              "zero_optimization": {"stage": stage}}
    return build_engine(StandIn(), json.loads(json.dumps(config)), 10, rank=1)


def test_our_norm_at_stage_0_equals_deepspeeds_at_stage_2(process_group):
    x = torch.linspace(-1, 1, 16).reshape(2, 8)
    zero0 = _engine(0)
    assert not hasattr(zero0.optimizer, "_global_grad_norm"), "stage 0 in fp32: DeepSpeed reports no norm"
    zero0.backward(zero0(x))
    ours = float(global_grad_norm(zero0.module.parameters()))
    zero0.step()
    assert zero0.get_global_grad_norm() is None

    zero2 = _engine(2)
    zero2.backward(zero2(x))
    zero2.step()
    theirs = float(zero2.get_global_grad_norm())
    assert ours > 0.01, "the norm is taken before clipping (clipping at 0.01 here)"
    assert ours == pytest.approx(theirs, rel=1e-5)


def test_no_gradients_no_norm():
    assert global_grad_norm(StandIn().parameters()) is None


@pytest.mark.integration
def test_every_step_logs_a_grad_norm_at_zero_stage_0_with_lamb(assets, tmp_path):
    from tests.pretrain_helpers import CPU_CONFIG, assert_ok, pretrain_args, read_jsonl, run_pretrain

    with open(CPU_CONFIG) as f:
        config = {**json.load(f), "zero_optimization": {"stage": 0},
                  "optimizer": {"type": "Lamb", "params": {"lr": 1e-3, "weight_decay": 0.01}}}
    path = tmp_path / "lamb_stage0.json"
    path.write_text(json.dumps(config))
    out = str(tmp_path / "run")
    result = run_pretrain(pretrain_args(assets["corpus"], assets["tokenizer"], out, assets["cache"], max_steps=3,
                                        config=str(path), extra=["--objectives", "mlm,atd"]))
    assert_ok(result)
    norms = [m["grad_norm"] for m in read_jsonl(os.path.join(out, "metrics.jsonl"))]
    assert len(norms) == 3 and all(isinstance(n, float) and n > 0 for n in norms), norms
