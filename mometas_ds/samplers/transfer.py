"""MOMETAS with transfer credit: an objective is worth what its draws do for the *other* objectives' losses.

Why (issue 30): a reward made of summed loss drops -- the paper's, and ``mometas_credit``'s -- pays an
objective for lowering its own loss. An objective whose loss is easy to lower (a shortcut the model
learns in a few steps) then earns the most while teaching the shared encoder nothing, and one that
harms the others can still look good while its own loss falls. This sampler (``--sampler
mometas_transfer``) never credits an objective with its own loss:

  * per round t (the draws between two updates): the composition x_t = n_t / sum(n_t) and every
    objective's relative meta-validation loss drop d_t,i (the paper's term: dead zone 1e-3, clipped at -1);
  * targets: the objectives whose loss has fallen more than 2% below its first measurement
    (``learnt_mask``; one that never learnt -- no signal, or pushed up by the others -- says nothing);
  * per target i, over the last ``window`` rounds, a ridge regression d_t,i ~ c + s * t + sum_j B_ij x_tj
    (the trend in t absorbs the drops' decline over training). Shares sum to one, so only differences are
    identified; the transfer of j to i is C_ij = B_ij - mean_{k != i} B_ik for j != i -- how much more a
    draw of j lowers i's loss than a draw of an average *other* objective. i's own share is in the fit
    (it explains most of i's drop) but never in the credit;
  * each target's row is put on the scale of a correlation (times sd(x) / sd(d_i net of the trend)) and
    gated by the adjusted partial R^2 of the other objectives' shares beyond i's own share and the trend
    beyond twice the share chance explains (clipped to [0, 1]): a target whose drops the others' shares do
    not explain moves nothing;
  * i's own entry in its row is the largest C_ij of the others (its draws count as much for its own loss
    as the best other objective's, never more: a loss that is easy to lower earns nothing extra), and the
    row is centred; the credit b_j is the mean of the gated rows over the targets;
  * each target's row is weighted by how much that target is still learning (its mean relative drop per
    round over the window / ``progress_scale``, clipped to [0, 1]): once the useful objectives have
    plateaued, the small interference between them would otherwise make an objective that touches
    nothing (no signal, or a loss already at its floor) look best; what was learnt while they were
    learning is kept (a small ``decay``);
  * theta <- (1 - decay) * theta + lr * b; ``probs`` = (1 - prob_floor) * softmax(theta) + prob_floor / N;
  * ``ablate`` (default on): each round leaves one objective out (its probability 0, the others renormalised;
    the rounds cycle through the objectives), so the compositions vary far more than the draws' own noise
    makes them vary and the regression sees each objective's absence. Over a cycle every objective keeps
    about its share of ``probs``; a harmful objective's ablated rounds cost nothing. ``probs`` (what the
    trainer logs) is the policy; ``probs_at(step)`` is the round's distribution the draws come from.

It needs three or more objectives (with two, the only other objective is the average one). Cost: the
meta-validation losses the trainer already measures (no extra forward pass); per update, one
(N + 1) x (N + 1) solve per target on the CPU. State (saved, resumed and all-reduced as ``_policy_state``,
a fixed length for a given window): theta (N), the round counter, the first losses (N) and a ring buffer of
the last ``window`` rounds' (round index, composition (N), drops (N)).
"""

from __future__ import annotations

import bisect

import torch

from mometas_ds.samplers.base import check_float, inverse_cdf, uniform_from
from mometas_ds.samplers.credit import learnt_mask
from mometas_ds.samplers.registry import register_sampler
from mometas_ds.samplers.windowed import WindowedPolicySampler


# The gate counts only the variance the other shares explain beyond twice what chance explains on average
# (pure noise passes that rarely; at once chance, about half the noise windows would move the policy).
CHANCE_MULTIPLE = 2.0


def _ridge_fit(design: torch.Tensor, y: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    gram = design.T @ design
    return torch.linalg.solve(gram + torch.diag(penalty), design.T @ y)


def _sse(y: torch.Tensor, design: torch.Tensor) -> float:
    """Residual sum of squares of the least-squares fit of y on design (tiny ridge for a singular design)."""
    coef = _ridge_fit(design, y, torch.full((design.shape[1],), 1e-12, dtype=torch.float64))
    residual = y - design @ coef
    return float(residual @ residual)


def transfer_credit(
    shares: torch.Tensor,
    drops: torch.Tensor,
    rounds: torch.Tensor,
    targets: torch.Tensor,
    ridge: float,
    progress_scale: float = 0.0,
) -> torch.Tensor:
    """Per-objective credit from rounds' compositions [W, N], every objective's drops [W, N], round indices [W]
    and the target mask [N] (1.0: a target). Centred; zero when the window cannot say anything.

    ``progress_scale`` > 0 weights each target's row by how much it is still learning: its mean relative drop
    per round over the window divided by ``progress_scale``, clipped to [0, 1] (0: every row counts fully)."""
    w, n = shares.shape
    zero = torch.zeros(n, dtype=torch.float64)
    if w < 4 or n < 3:
        return zero
    x = shares - shares.mean(dim=0)
    t = rounds - rounds.mean()
    design = torch.cat([x, t[:, None]], dim=1)
    share_var = float((x * x).sum(dim=0).mean())
    if share_var <= 0:
        return zero
    penalty = torch.zeros(n + 1, dtype=torch.float64)
    penalty[:n] = ridge * share_var
    penalty[n] = 1e-12 * max(float(t @ t), 1.0)  # the trend is not shrunk; only kept solvable
    share_sd = (share_var / w) ** 0.5
    extra = n - 2  # the other shares' free directions beyond i's own share (the shares sum to one)
    chance = CHANCE_MULTIPLE * extra / (w - 3)
    total = torch.zeros(n, dtype=torch.float64)
    counted = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        if targets[i] <= 0:
            continue
        y = drops[:, i] - drops[:, i].mean()
        if float(y @ y) <= 0 or chance >= 1.0:
            continue
        coef = _ridge_fit(design, y, penalty)
        residual_sd = float((y - t * coef[n]).square().mean().sqrt())
        sse_reduced = _sse(y, torch.stack([x[:, i], t], dim=1))
        if residual_sd <= 0 or sse_reduced <= 0:
            continue
        sse_full = float((y - design @ coef) @ (y - design @ coef))
        explained = max(0.0, (sse_reduced - sse_full) / sse_reduced)
        gate = min(1.0, max(0.0, (explained - chance) / (1.0 - chance)))
        others = torch.ones(n, dtype=torch.bool)
        others[i] = False
        beta = coef[:n]
        row = torch.zeros(n, dtype=torch.float64)
        row[others] = beta[others] - beta[others].mean()
        row[i] = row[others].max()  # i's own draws: as good for i as the best other objective's, never more
        weight = 1.0
        if progress_scale > 0:
            weight = min(1.0, max(0.0, float(drops[:, i].mean()) / progress_scale))
        total += (row - row.mean()) * (share_sd / residual_sd) * gate * weight
        counted += 1.0
    if float(counted.sum()) == 0:
        return zero
    return total / counted


@register_sampler("mometas_transfer")
class MometasTransferSampler(WindowedPolicySampler):
    def __init__(
        self,
        num_objectives: int,
        seed: int = 0,
        *,
        lr: float = 8.0,
        window: int = 20,
        ridge: float = 0.1,
        decay: float = 0.01,
        prob_floor: float = 0.1,
        progress_scale: float = 0.003,
        ablate: bool = True,
    ):
        super().__init__(num_objectives, seed)
        self._init_policy(lr=lr, window=window, min_window=4, ridge=ridge, decay=decay, prob_floor=prob_floor)
        owner = self._owner()
        self.progress_scale = check_float(owner, "progress_scale", progress_scale, low=0.0)
        if not isinstance(ablate, bool):
            raise ValueError(f"{owner}: ablate must be True or False, got {ablate!r}")
        self.ablate = ablate
        self.config.update(
            ablate=self.ablate,
            lr=self.lr,
            window=self.window,
            ridge=self.ridge,
            decay=self.decay,
            prob_floor=self.prob_floor,
            progress_scale=self.progress_scale,
        )
        self.targets = torch.zeros(num_objectives, dtype=torch.float64)  # derived: the last update's learnt_mask

    @property
    def row_width(self) -> int:
        return 2 * self.num_objectives + 1  # [round index, shares (N), drops (N)]

    def ablated(self) -> int:
        """The objective left out of the current round (-1: none): the rounds cycle through the objectives."""
        if not self.ablate or self.num_objectives < 3:
            return -1
        return (self.num_updates + self.seed) % self.num_objectives

    def probs_at(self, step: int) -> torch.Tensor:
        """The current round's distribution: ``probs`` with the ablated objective left out (renormalised)."""
        probs = self.probs
        left_out = self.ablated()
        if left_out < 0 or float(probs[left_out]) > 1.0 - 1e-9:
            return probs
        probs = probs.clone()
        probs[left_out] = 0.0
        return probs / probs.sum()

    def _draw(self, step: int) -> int:
        if self._cdf is None:  # cleared by every update, when the round (and so the ablated objective) changes
            self._cdf = inverse_cdf(self.probs_at(step).tolist())
        return bisect.bisect_right(self._cdf, uniform_from(self.seed, step))

    def _window(self):
        n = self.num_objectives
        rows = self._rows()
        return rows[:, 1 : n + 1], rows[:, n + 1 :], rows[:, 0]

    def _round_row(self, losses, drops, shares):
        reward = float((learnt_mask(self.initial_losses, losses) * drops).sum())  # logged only
        return torch.cat([shares, drops.to(torch.float64)]), reward

    def _derive(self, losses) -> None:
        n = self.num_objectives
        learnt = self.rounds and losses is not None
        self.targets = learnt_mask(self.initial_losses, losses) if learnt else torch.zeros(n, dtype=torch.float64)
        super()._derive(losses)

    def _credit(self) -> torch.Tensor:
        shares, drops, rounds = self._window()
        return transfer_credit(shares, drops, rounds, self.targets, self.ridge, self.progress_scale)
