"""The fault hooks (mometas_ds/train/faults.py) are read once: a run without MOMETAS_FAULT_* gets no hook at all,
and a step set fires exactly on the steps it names."""
import math

import torch

from mometas_ds.train.faults import Faults


def test_no_variable_means_no_hooks():
    assert Faults.from_env({}) is None
    assert Faults.from_env({"MOMETAS_FAULT_NONFINITE_LOSS": "  ", "PATH": "/bin"}) is None


def test_step_sets_fire_on_the_named_micro_steps_only():
    faults = Faults.from_env({"MOMETAS_FAULT_NONFINITE_LOSS": "5,6,9-11,20-"})
    one = torch.tensor(1.0)
    fired = [step for step in range(25) if math.isnan(faults.nonfinite_loss(one, step).item())]
    assert fired == [5, 6, 9, 10, 11, 20, 21, 22, 23, 24]
    assert faults.nonfinite_grad(one, 5) is one  # another variable: untouched


def test_nan_gradient_hook_keeps_the_loss_and_poisons_the_gradient():
    faults = Faults.from_env({"MOMETAS_FAULT_NONFINITE_GRAD": "3"})
    x = torch.tensor(2.0, requires_grad=True)
    loss = faults.nonfinite_grad(x * 3, 3)
    assert loss.item() == 6.0
    loss.backward()
    assert math.isnan(x.grad.item())
