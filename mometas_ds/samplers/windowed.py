"""What ``mometas_credit`` and ``mometas_transfer`` share: a softmax policy with a uniform floor, learnt from a
ring buffer of the last ``window`` rounds, and one layout of their saved state.

A subclass says what one round's row holds (``row_width``), turns a round into a row (``_round_row``) and
the window into a credit (``_credit``); this base keeps the logits, the round counter, the first update's
losses and the ring buffer, applies ``theta <- (1 - decay) * theta + lr * credit``, and saves, resumes and
all-reduces all of it as ``_policy_state`` (a fixed length for a given window):
theta (N), the round counter, the first losses (N), then the ring buffer row by row.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from mometas_ds.samplers.base import Sampler, check_float, check_int


class WindowedPolicySampler(Sampler):
    """Base of the samplers that regress over the last ``window`` rounds (not registered itself)."""

    needs_meta_validation = True
    fixed_meta_set = True  # asks --meta_fixed_set auto for one meta-validation batch (see mometas_credit)

    def _init_policy(
        self, *, lr: float, window: int, min_window: int, ridge: float, decay: float, prob_floor: float
    ) -> None:
        """Checks the options every windowed sampler has (an error names the option) and sets up the policy."""
        owner = self._owner()
        self.lr = check_float(owner, "lr", lr, low=0.0, low_open=True)
        self.window = check_int(owner, "window", window, minimum=min_window)
        self.ridge = check_float(owner, "ridge", ridge, low=0.0)
        self.decay = check_float(owner, "decay", decay, low=0.0, high=1.0, high_open=True)
        self.prob_floor = check_float(owner, "prob_floor", prob_floor, low=0.0, high=1.0)
        n = self.num_objectives
        self.logits = torch.zeros(n, dtype=torch.float64)
        self.rounds = 0  # rounds credited so far
        self.history = torch.zeros(self.window, self.row_width, dtype=torch.float64)  # ring buffer, one row a round
        self.initial_losses = torch.zeros(n, dtype=torch.float64)  # the first update's losses (0: none yet)
        self.credit = torch.zeros(n, dtype=torch.float64)  # derived: the last update's credit (for logging)

    @property
    def row_width(self) -> int:
        raise NotImplementedError

    @property
    def probs(self) -> torch.Tensor:
        eps = self.prob_floor
        return (1.0 - eps) * torch.softmax(self.logits, dim=-1) + eps / self.num_objectives

    def _rows(self) -> torch.Tensor:
        """The rounds in the window (at most ``window``; in ring order, which no regression here depends on)."""
        return self.history[: min(self.rounds, self.window)]

    def _round_row(self, losses: torch.Tensor, drops: torch.Tensor, shares: torch.Tensor) -> Tuple[torch.Tensor, float]:
        """(the round's row without its leading round index, the reward to log)."""
        raise NotImplementedError

    def _credit(self) -> torch.Tensor:
        raise NotImplementedError

    def _derive(self, losses: Optional[torch.Tensor]) -> None:
        """Recompute what the window implies after a round or a resume (``losses``: the last update's, if any)."""
        self.credit = self._credit() if self.rounds else torch.zeros(self.num_objectives, dtype=torch.float64)

    def _update_policy(self, losses, counts: List[int]):
        drops = self._relative_drops(losses)
        total = sum(counts)
        if drops is None:
            self.initial_losses = losses.clone()
        if drops is None or total == 0:
            return None, None, None  # first update: the losses become the baseline; or no draw to credit
        shares = torch.tensor(counts, dtype=torch.float64) / total
        row, reward = self._round_row(losses, drops, shares)
        index = torch.tensor([float(self.rounds)], dtype=torch.float64)
        self.history[self.rounds % self.window] = torch.cat([index, row])
        self.rounds += 1
        self._derive(losses)
        self.logits = (1.0 - self.decay) * self.logits + self.lr * self.credit
        return reward, float(self.credit.abs().max()), None

    def _policy_state(self) -> List[float]:
        return (
            self.logits.tolist()
            + [float(self.rounds)]
            + self.initial_losses.tolist()
            + self.history.reshape(-1).tolist()
        )

    def _load_policy_state(self, values: List[float]) -> None:
        n, w = self.num_objectives, self.window
        expected = 2 * n + 1 + w * self.row_width
        if len(values) != expected:
            raise ValueError(f"{self._owner()}: policy state needs {expected} values (window {w}), got {len(values)}")
        self.logits = torch.tensor(values[:n], dtype=torch.float64)
        self.rounds = int(values[n])
        self.initial_losses = torch.tensor(values[n + 1 : 2 * n + 1], dtype=torch.float64)
        self.history = torch.tensor(values[2 * n + 1 :], dtype=torch.float64).reshape(w, self.row_width)
        self._derive(self._last_val_losses)
