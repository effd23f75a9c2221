"""MOMETAS with credit assignment: which objectives' draws go with a higher reward, by regression over rounds.

The paper-exact ``mometas`` gives every objective drawn in a round the same scalar reward (REINFORCE
over the round's K draws), so one noisy number per round has to tell all objectives apart. This
variant (``--sampler mometas_credit``) learns from how the reward varies with the rollout's
composition across rounds (Aioli-style, Chen et al. 2024):

  * reward of round t (the draws between two updates): the paper's summed relative loss drops
    (``relative_loss_drop``: dead zone 1e-3, clipped at -1), over the objectives whose meta-validation
    loss has by now fallen more than 2% below its first measurement (``learnt_mask``). An objective
    that never got there -- its loss at its floor from the start, or one that the others' training
    only pushes up -- has shown nothing learnable, and its loss moves would otherwise pay the
    objectives that hurt the learnable ones;
  * composition of round t: x_t = n_t / sum(n_t), the share of the round's draws per objective;
  * over the last ``window`` rounds, a ridge regression  y_t ~ c + s * t + sum_j beta_j x_tj
    (shares and round index centred; the linear trend in t absorbs the reward's decline over
    training; ridge = ``ridge`` * the shares' mean variance; the trend is not shrunk);
  * credit b_j = (beta_j - mean beta) * sd(x) / sd(y net of the trend) * g: centred over objectives
    (the shares sum to one, so only differences are identified), on the scale of a correlation, and
    gated by g, the adjusted partial R^2 of the shares (the reward variance they explain beyond the
    (N - 1) / (W - 2) that chance explains; clipped to [0, 1]), so a window of pure noise moves little;
  * theta <- (1 - decay) * theta + lr * b;  draw from (1 - prob_floor) * softmax(theta) + prob_floor / N.

The floor keeps every objective drawn now and then, so the compositions keep varying and the
regression keeps its signal; the decay bounds theta, so a credit that was noise fades. It asks for a
fixed meta-validation set (``fixed_meta_set``; --meta_fixed_set auto gives it): the trainer measures every
update on the same rows with the same corruption seeds, so a loss drop is the model's change, not the
batch's. Cost: the meta-validation losses the trainer already computes, no extra forward pass; per update, an
(N+1) x (N+1) solve on the CPU.

State (saved, resumed and all-reduced as ``_policy_state``, a fixed length for a given window):
theta (N), the round counter, the first update's losses (N), and a ring buffer of the last
``window`` rounds' (round index, composition (N), reward).
"""

from __future__ import annotations

import torch

from mometas_ds.samplers.registry import register_sampler
from mometas_ds.samplers.windowed import WindowedPolicySampler


def learnt_mask(initial: torch.Tensor, current: torch.Tensor, margin: float = 0.02) -> torch.Tensor:
    """1.0 for objectives whose loss has fallen more than ``margin`` (relative) below the first update's, else 0.0.

    An objective that has never got that far (a loss at its floor from the start, or one that other
    objectives' training only pushes up) has shown nothing learnable; its loss moves are left out of the reward.
    """
    return ((initial > 0) & (current < (1.0 - margin) * initial)).to(torch.float64)


def composition_credit(shares: torch.Tensor, rewards: torch.Tensor, rounds: torch.Tensor, ridge: float) -> torch.Tensor:
    """Per-objective credit from rounds' compositions [W, N] and rewards [W]; centred, correlation-scaled.

    Zero when the window cannot say anything (fewer than 3 rounds, or no variation in the reward).
    """
    w, n = shares.shape
    if w < 3:
        return torch.zeros(n, dtype=torch.float64)
    x = shares - shares.mean(dim=0)
    t = rounds - rounds.mean()
    y = rewards - rewards.mean()
    design = torch.cat([x, t[:, None]], dim=1)
    gram = design.T @ design
    share_var = float(torch.diagonal(gram)[:n].mean())
    if share_var <= 0 or float((y * y).sum()) <= 0:
        return torch.zeros(n, dtype=torch.float64)
    penalty = torch.zeros(n + 1, dtype=torch.float64)
    penalty[:n] = ridge * share_var
    penalty[n] = 1e-12 * max(float(gram[n, n]), 1.0)  # the trend is not shrunk; only kept solvable
    coef = torch.linalg.solve(gram + torch.diag(penalty), design.T @ y)
    beta = coef[:n]
    beta = beta - beta.mean()  # shares sum to one: only differences between objectives are identified
    residual_sd = float((y - t * coef[n]).square().mean().sqrt())  # the reward's spread net of the trend
    share_sd = (share_var / w) ** 0.5
    if residual_sd <= 0:
        return torch.zeros(n, dtype=torch.float64)
    return beta * share_sd / residual_sd * _significance(x, t, y, design @ coef)


def _significance(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, fitted: torch.Tensor) -> float:
    """How much of the reward's variance (net of the trend) the compositions explain beyond chance, in [0, 1].

    The partial R^2 of the shares, adjusted for the N - 1 of them a fit of W - 2 free rounds would
    explain by chance (adjusted R^2, clipped at 0): pure noise moves the policy little on average.
    """
    w, n = x.shape
    chance = (n - 1) / (w - 2) if w > 2 else 1.0
    if chance >= 1.0:
        return 0.0
    tt = float(t @ t)
    trend_only = y - t * (float(t @ y) / tt) if tt > 0 else y
    sse_trend = float(trend_only @ trend_only)
    sse_full = float((y - fitted) @ (y - fitted))
    if sse_trend <= 0:
        return 0.0
    explained = max(0.0, (sse_trend - sse_full) / sse_trend)
    return min(1.0, max(0.0, (explained - chance) / (1.0 - chance)))


@register_sampler("mometas_credit")
class MometasCreditSampler(WindowedPolicySampler):
    def __init__(
        self,
        num_objectives: int,
        seed: int = 0,
        *,
        lr: float = 1.5,
        window: int = 10,
        ridge: float = 0.1,
        decay: float = 0.0,
        prob_floor: float = 0.25,
    ):
        super().__init__(num_objectives, seed)
        self._init_policy(lr=lr, window=window, min_window=3, ridge=ridge, decay=decay, prob_floor=prob_floor)
        self.config.update(
            lr=self.lr,
            window=self.window,
            ridge=self.ridge,
            decay=self.decay,
            prob_floor=self.prob_floor,
        )

    @property
    def row_width(self) -> int:
        return self.num_objectives + 2  # [round index, shares (N), reward]

    def _window(self):
        rows = self._rows()
        return rows[:, 1:-1], rows[:, -1], rows[:, 0]

    def _round_row(self, losses, drops, shares):
        reward = float((learnt_mask(self.initial_losses, losses) * drops).sum())
        return torch.cat([shares, torch.tensor([reward], dtype=torch.float64)]), reward

    def _credit(self) -> torch.Tensor:
        return composition_credit(*self._window(), ridge=self.ridge)
