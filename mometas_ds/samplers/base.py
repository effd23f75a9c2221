"""What every objective sampler shares: the deterministic draw, the rollout, input checks, state.

A sampler deals in objective indices ``0 .. num_objectives - 1``; the trainer maps
indices to objective names.

Determinism: ``sample(step)`` is a pure function of (seed, step, the sampler's
current probabilities). The uniform number behind a draw comes from hashing
(seed, step) with SplitMix64 -- there is no generator state to advance -- and the
objective is read off the inverse CDF of the probabilities in float64. Two
samplers with equal seed and state therefore draw the same objective for the same
step in any process, whatever else was called in between, and no rank has to
talk to another to agree on the next objective.
"""
from __future__ import annotations

import bisect
import itertools
import math
import numbers
import operator
from typing import Dict, List, Optional, Sequence

import torch

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    # SplitMix64 finaliser (Steele, Lea, Flood 2014): a bijection on 64-bit words with full avalanche.
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def uniform_from(seed: int, step: int) -> float:
    """A uniform number in [0, 1) that depends only on (seed, step); 53 random bits."""
    word = _splitmix64(_splitmix64(seed & _MASK64) ^ (step & _MASK64))
    return (word >> 11) * (1.0 / (1 << 53))


def inverse_cdf(probs: Sequence[float]) -> List[float]:
    """Cumulative sums with the last positive entry (and any zero-probability tail) pinned to 1.0.

    Pinning makes ``bisect_right(cdf, u)`` with ``u`` in [0, 1) always return an
    objective whose probability is positive, whatever the float rounding of the sums.
    """
    cdf = list(itertools.accumulate(float(p) for p in probs))
    last_positive = max(i for i, p in enumerate(probs) if p > 0)
    for i in range(last_positive, len(cdf)):
        cdf[i] = 1.0
    return cdf


def relative_loss_drop(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Per-objective reward of the MOMETAS paper: relative loss drop, zero inside a 1e-3 dead zone, clipped at -1.

    r_i = max( (a_i - b_i + 1e-6) / (a_i + 1e-6) * [|a_i - b_i| > 1e-3], -1 ).
    """
    moved = ((before - after).abs() > 1e-3).to(before.dtype)
    return torch.clamp((before - after + 1e-6) / (before + 1e-6) * moved, min=-1.0)


# --------------------------------------------------------------------------------------------------------------
# Hyper-parameter checks: every failure is a ValueError that names the parameter.


def check_int(owner: str, name: str, value, minimum: Optional[int] = None) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{owner}: {name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{owner}: {name} must be an integer, got {value!r}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")
    return value


def check_float(owner: str, name: str, value, *, low: float, high: float = math.inf,
                low_open: bool = False, high_open: bool = False) -> float:
    """A finite float in the interval [low, high] (ends open where asked)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}")
    value = float(value)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open or high == math.inf else ']'}"
        raise ValueError(f"{owner}: {name} must lie in {interval}, got {value}")
    return value


def check_weights(owner: str, name: str, weights, num_objectives: int) -> torch.Tensor:
    """Non-negative finite weights, one per objective, with a positive sum; returned normalised (float64)."""
    if hasattr(weights, "tolist"):  # torch tensor or numpy array
        weights = weights.tolist()
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
        raise ValueError(f"{owner}: {name} must be a list of {num_objectives} numbers, got {weights!r}")
    if len(weights) != num_objectives:
        raise ValueError(
            f"{owner}: {name} needs one weight per objective ({num_objectives}), got {len(weights)}: {list(weights)}"
        )
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w) or w < 0:
            raise ValueError(f"{owner}: {name}[{i}] must be a finite number >= 0, got {w!r}")
    total = math.fsum(float(w) for w in weights)
    if not total > 0:
        raise ValueError(f"{owner}: {name} must sum to a positive number, got {list(weights)}")
    return torch.tensor([float(w) / total for w in weights], dtype=torch.float64)


# --------------------------------------------------------------------------------------------------------------


class Sampler:
    """Base class. Subclasses set the probabilities and, when adaptive, how ``update`` changes them.

    Subclass hooks:
      ``probs``                   the current sampling distribution (1-D float64, sums to 1)
      ``_update_policy(losses, counts)``  -> (reward, advantage, policy_loss), each float or None
      ``_policy_state()`` / ``_load_policy_state(values)``  the numbers, beyond the shared ones, that
                                  ``sample`` and ``update`` depend on (a list of floats)
    """

    name: str = ""  # set by register_sampler
    needs_meta_validation: bool = False  # True: update() needs one meta-validation loss per objective
    # What this sampler asks of the meta-validation (--meta_fixed_set auto): one batch reused for every update
    # (True), or a fresh batch each time (False, the paper's).
    fixed_meta_set: bool = False

    def __init__(self, num_objectives: int, seed: int = 0):
        owner = self._owner()
        self.num_objectives = check_int(owner, "num_objectives", num_objectives, minimum=1)
        self.seed = check_int(owner, "seed", seed)
        self.config: Dict[str, object] = {"num_objectives": self.num_objectives, "seed": self.seed}
        self.num_updates = 0
        self.skipped_updates = 0
        self._last_val_losses: Optional[torch.Tensor] = None  # meta-validation losses of the last update
        self._rollout: Dict[int, int] = {}  # step -> objective drawn since the last update
        self._cdf: Optional[List[float]] = None  # cache for step-independent probabilities

    def _owner(self) -> str:
        return f"sampler {self.name or type(self).__name__!r}"

    # ---------------------------------------------------------------- drawing

    @property
    def probs(self) -> torch.Tensor:
        raise NotImplementedError

    def probs_at(self, step: int) -> torch.Tensor:
        """The distribution ``sample(step)`` draws from; the same for every step unless the sampler has a schedule."""
        return self.probs

    def sample(self, step: int) -> int:
        """The objective for ``step``; a repeated call for a step in the current rollout returns the recorded draw."""
        step = check_int(self._owner(), "step", step, minimum=0)
        recorded = self._rollout.get(step)
        if recorded is not None:
            return recorded
        objective = self._draw(step)
        self._rollout[step] = objective
        return objective

    def _draw(self, step: int) -> int:
        # Overridden by samplers whose draw is not an inverse-CDF read of fixed probabilities.
        if self._cdf is None:
            self._cdf = inverse_cdf(self.probs.tolist())
        return bisect.bisect_right(self._cdf, uniform_from(self.seed, step))

    def rollout_counts(self) -> List[int]:
        """How often each objective was drawn since the last update."""
        counts = [0] * self.num_objectives
        for objective in self._rollout.values():
            counts[objective] += 1
        return counts

    def clear_rollout(self) -> None:
        self._rollout.clear()

    # ---------------------------------------------------------------- updating

    def update(self, val_losses=None) -> Dict[str, object]:
        """Feed one meta-validation loss per objective; returns a dict for logging.

        Rule-based samplers accept ``None`` (they need no meta-validation) and keep their
        probabilities. NaN or inf losses skip the update: state and rollout are kept, the
        skip is counted in ``skipped_updates`` and reported with ``skipped=True``.
        """
        losses = self._check_val_losses(val_losses)
        counts = self.rollout_counts()
        if losses is not None and not bool(torch.isfinite(losses).all()):
            self.skipped_updates += 1
            return self._info(None, None, None, counts, losses, skipped=True)
        reward, advantage, policy_loss = self._update_policy(losses, counts)
        self.num_updates += 1
        self._rollout.clear()
        self._cdf = None
        return self._info(reward, advantage, policy_loss, counts, losses, skipped=False)

    def _update_policy(self, losses: Optional[torch.Tensor], counts: List[int]):
        return None, None, None  # rule-based: probabilities do not change

    def _check_val_losses(self, val_losses) -> Optional[torch.Tensor]:
        n = self.num_objectives
        if val_losses is None:
            if self.needs_meta_validation:
                raise ValueError(
                    f"{self._owner()}: update() needs one meta-validation loss per objective ({n}), got None"
                )
            return None
        try:
            losses = torch.as_tensor(val_losses, dtype=torch.float64).detach().cpu()
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"{self._owner()}: update() val_losses must be {n} numbers, got {val_losses!r}") from err
        if losses.dim() != 1 or losses.numel() != n:
            raise ValueError(
                f"{self._owner()}: update() needs one val_loss per objective ({n}), got shape {tuple(losses.shape)}"
            )
        return losses.clone()

    def _relative_drops(self, losses: torch.Tensor) -> Optional[torch.Tensor]:
        """Per-objective reward against the stored losses; None the first time (the losses become the baseline)."""
        before = self._last_val_losses
        self._last_val_losses = losses.clone()
        return None if before is None else relative_loss_drop(before, losses)

    def _info(self, reward, advantage, policy_loss, counts, losses, *, skipped: bool) -> Dict[str, object]:
        return {
            "reward": reward,
            "advantage": advantage,
            "policy_loss": policy_loss,
            "probs": self.probs.tolist(),
            "rollout_counts": list(counts),
            "val_losses": None if losses is None else losses.tolist(),
            "skipped": skipped,
            "skipped_updates": self.skipped_updates,
            "num_updates": self.num_updates,
        }

    # ---------------------------------------------------------------- state

    def _policy_state(self) -> List[float]:
        return []

    def _load_policy_state(self, values: List[float]) -> None:
        if values:
            raise ValueError(f"{self._owner()}: expected no policy state, got {len(values)} values")

    def state_dict(self) -> Dict[str, object]:
        """Plain Python values only (JSON- and ``torch.load(weights_only=True)``-safe)."""
        return {
            "name": self.name,
            "num_objectives": self.num_objectives,
            "seed": self.seed,
            "num_updates": self.num_updates,
            "skipped_updates": self.skipped_updates,
            "last_val_losses": None if self._last_val_losses is None else self._last_val_losses.tolist(),
            "rollout": [[step, objective] for step, objective in self._rollout.items()],
            "policy": self._policy_state(),
        }

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Restore the seed, counters, stored losses, rollout and policy. Hyper-parameters stay as built."""
        owner = self._owner()
        for key in ("name", "num_objectives", "seed", "num_updates", "skipped_updates", "last_val_losses",
                    "rollout", "policy"):
            if key not in state:
                raise ValueError(f"{owner}: state_dict is missing {key!r}")
        if state["name"] != self.name:
            raise ValueError(f"{owner}: state_dict belongs to sampler {state['name']!r}")
        if state["num_objectives"] != self.num_objectives:
            raise ValueError(
                f"{owner}: state_dict has num_objectives={state['num_objectives']}, this sampler {self.num_objectives}"
            )
        self.seed = check_int(owner, "seed", state["seed"])
        self.config["seed"] = self.seed
        self.num_updates = int(state["num_updates"])
        self.skipped_updates = int(state["skipped_updates"])
        last = state["last_val_losses"]
        self._last_val_losses = None if last is None else torch.tensor(last, dtype=torch.float64)
        rollout = {}
        for step, objective in state["rollout"]:
            if not 0 <= int(objective) < self.num_objectives:
                raise ValueError(f"{owner}: state_dict rollout has objective {objective} at step {step}")
            rollout[int(step)] = int(objective)
        self._rollout = rollout
        self._load_policy_state([float(v) for v in state["policy"]])
        self._cdf = None

    def sync_state(self) -> torch.Tensor:
        """Everything ``sample`` and ``update`` depend on except the rollout, as one 1-D float64 tensor.

        Layout: [num_updates, skipped_updates, has_last_losses, last_losses (N), policy state...].
        Counters are exact in float64 below 2**53.
        """
        n = self.num_objectives
        has_last = self._last_val_losses is not None
        last = self._last_val_losses.tolist() if has_last else [0.0] * n
        values = [float(self.num_updates), float(self.skipped_updates), float(has_last)] + last
        return torch.tensor(values + self._policy_state(), dtype=torch.float64)

    def load_sync_state(self, values: torch.Tensor) -> None:
        n = self.num_objectives
        values = values.detach().to("cpu", torch.float64).tolist()
        expected = 3 + n + len(self._policy_state())
        if len(values) != expected:
            raise ValueError(f"{self._owner()}: sync state needs {expected} values, got {len(values)}")
        self.num_updates = int(values[0])
        self.skipped_updates = int(values[1])
        self._last_val_losses = torch.tensor(values[3:3 + n], dtype=torch.float64) if values[2] else None
        self._load_policy_state(values[3 + n:])
        self._cdf = None

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({options})"
