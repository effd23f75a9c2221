"""EXP3 as used for online data mixing (ODM; Albalak et al., 2023), with objectives as the arms.

Policy after t rounds (one round = the draws between two updates), K = num_objectives:
    eps_t  = min(1/K, sqrt(ln K / (K t))),  eps_0 = 1/K            (ODM's decaying exploration)
    gamma_t = K * eps_t,  eta_t = eps_{t-1}                          (unless gamma / eta are given)
    p = (1 - gamma_t) * softmax(eta_t * R) + gamma_t / K
which is ODM's (1 - K eps_t) * softmax(eps_{t-1} R) + eps_t. R starts at 0 (uniform policy).

Reward: each arm's relative meta-validation loss drop over the round, the same per-objective
term MOMETAS sums (dead zone 1e-3, clipped at -1); the first update only stores the baseline losses.
Importance weighting: an arm drawn n_i times out of M in the round adds
    R_i += r_i * (n_i / M) / p_i,
an unbiased estimate of r_i (E[n_i / M] = p_i) that reduces to ODM's r / p_i when a round is one draw.
Arms not drawn in a round get no credit for it.
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch

from mometas_ds.samplers.base import Sampler, check_float
from mometas_ds.samplers.registry import register_sampler


def odm_exploration(num_arms: int, rounds: int) -> float:
    """ODM's eps_t = min(1/K, sqrt(ln K / (K t))), with eps_0 = 1/K."""
    if rounds <= 0:
        return 1.0 / num_arms
    return min(1.0 / num_arms, math.sqrt(math.log(num_arms) / (num_arms * rounds)))


@register_sampler("exp3")
class Exp3Sampler(Sampler):
    needs_meta_validation = True

    def __init__(self, num_objectives: int, seed: int = 0, *, gamma: Optional[float] = None,
                 eta: Optional[float] = None):
        super().__init__(num_objectives, seed)
        owner = self._owner()
        self.gamma = None if gamma is None else check_float(owner, "gamma", gamma, low=0.0, high=1.0)
        self.eta = None if eta is None else check_float(owner, "eta", eta, low=0.0, low_open=True)
        self.config.update(gamma=self.gamma, eta=self.eta)
        self.estimated_rewards = torch.zeros(self.num_objectives, dtype=torch.float64)  # R, cumulative
        self.rounds = 0

    def exploration(self) -> float:
        """gamma_t: the weight of the uniform component in the current policy."""
        k = self.num_objectives
        return self.gamma if self.gamma is not None else k * odm_exploration(k, self.rounds)

    def learning_rate(self) -> float:
        """eta_t: the scale on the cumulative estimated rewards."""
        return self.eta if self.eta is not None else odm_exploration(self.num_objectives, self.rounds - 1)

    @property
    def probs(self) -> torch.Tensor:
        gamma = self.exploration()
        exploit = torch.softmax(self.learning_rate() * self.estimated_rewards, dim=-1)
        return (1.0 - gamma) * exploit + gamma / self.num_objectives

    def _update_policy(self, losses, counts: List[int]):
        drops = self._relative_drops(losses)
        if drops is None:
            return None, None, None  # first update: the losses are the baseline
        probs_in_round = self.probs
        total = sum(counts)
        if total > 0:
            drawn = torch.tensor(counts, dtype=torch.float64)
            estimate = torch.where(drawn > 0, drops * (drawn / total) / probs_in_round, torch.zeros_like(drops))
            self.estimated_rewards = self.estimated_rewards + estimate
        self.rounds += 1
        reward = float(drops.sum())
        return reward, reward, None

    def _policy_state(self) -> List[float]:
        return self.estimated_rewards.tolist() + [float(self.rounds)]

    def _load_policy_state(self, values: List[float]) -> None:
        n = self.num_objectives
        if len(values) != n + 1:
            raise ValueError(f"{self._owner()}: policy state needs {n + 1} values, got {len(values)}")
        self.estimated_rewards = torch.tensor(values[:n], dtype=torch.float64)
        self.rounds = int(values[n])
