"""MOMETAS (Wu et al., Findings of EMNLP 2022): a REINFORCE policy over objectives, rewarded by meta-validation.

Faithful to the paper and its published code:
  * logits theta start at ones (uniform policy);
  * the first ``update(losses)`` only stores the losses as the baseline (and drops the draws made
    before it: no reward can be attributed to them);
  * every later update, with a = stored losses and b = new ones,
      r = sum_i max( (a_i - b_i + 1e-6) / (a_i + 1e-6) * [|a_i - b_i| > 1e-3], -1 )
      policy loss = -r * sum_{k in rollout} log softmax(theta)_k - gamma * H(softmax(theta))
      theta <- theta - lr * grad(policy loss);  store b;  clear the rollout.

Beyond the paper, all off by default:
  * ``reward_baseline=m``: subtract a moving average of past rewards from r (variance reduction);
    the average starts at 0 and after each update becomes m * average + (1 - m) * r.
  * ``prob_floor=eps``: draw from (1 - eps) * softmax(theta) + eps / N, as ODM and DoReMi do, so the
    policy cannot collapse onto one objective. The update itself still uses softmax(theta).
(Reusing one meta-validation batch for every update is a meta-validation setting: --meta_fixed_set.)
"""
from __future__ import annotations

from typing import List, Optional

import torch

from mometas_ds.samplers.base import Sampler, check_float
from mometas_ds.samplers.registry import register_sampler


@register_sampler("mometas")
class MometasSampler(Sampler):
    needs_meta_validation = True

    def __init__(self, num_objectives: int, seed: int = 0, *, lr: float = 0.1,
                 gamma: float = 2.0, reward_baseline: Optional[float] = None, prob_floor: float = 0.0):
        super().__init__(num_objectives, seed)
        owner = self._owner()
        self.lr = check_float(owner, "lr", lr, low=0.0, low_open=True)
        self.gamma = check_float(owner, "gamma", gamma, low=0.0)
        self.reward_baseline = (
            None if reward_baseline is None
            else check_float(owner, "reward_baseline", reward_baseline, low=0.0, high=1.0, high_open=True)
        )
        self.prob_floor = check_float(owner, "prob_floor", prob_floor, low=0.0, high=1.0)
        self.config.update(lr=self.lr, gamma=self.gamma, reward_baseline=self.reward_baseline,
                           prob_floor=self.prob_floor)
        self.logits = torch.ones(self.num_objectives, dtype=torch.float64)
        self.reward_average = 0.0  # moving average of rewards; used only with reward_baseline

    @property
    def policy_probs(self) -> torch.Tensor:
        """softmax(theta): the distribution the policy-gradient update acts on."""
        return torch.softmax(self.logits, dim=-1)

    @property
    def probs(self) -> torch.Tensor:
        """The distribution draws come from: softmax(theta), mixed with uniform when prob_floor > 0."""
        policy = self.policy_probs
        if self.prob_floor == 0.0:
            return policy
        return (1.0 - self.prob_floor) * policy + self.prob_floor / self.num_objectives

    def _update_policy(self, losses, counts: List[int]):
        drops = self._relative_drops(losses)
        if drops is None:
            return None, None, None  # first update: the losses are the baseline
        reward = float(drops.sum())
        advantage = reward if self.reward_baseline is None else reward - self.reward_average

        theta = self.logits.clone().requires_grad_(True)
        log_p = torch.log_softmax(theta, dim=-1)
        entropy = -(log_p.exp() * log_p).sum()
        rollout = torch.tensor(counts, dtype=torch.float64)
        policy_loss = -advantage * (rollout * log_p).sum() - self.gamma * entropy
        policy_loss.backward()
        self.logits = (theta - self.lr * theta.grad).detach()

        if self.reward_baseline is not None:
            m = self.reward_baseline
            self.reward_average = m * self.reward_average + (1.0 - m) * reward
        return reward, advantage, float(policy_loss.detach())

    def _policy_state(self) -> List[float]:
        return self.logits.tolist() + [self.reward_average]

    def _load_policy_state(self, values: List[float]) -> None:
        n = self.num_objectives
        if len(values) != n + 1:
            raise ValueError(f"{self._owner()}: policy state needs {n + 1} values, got {len(values)}")
        self.logits = torch.tensor(values[:n], dtype=torch.float64)
        self.reward_average = values[n]
