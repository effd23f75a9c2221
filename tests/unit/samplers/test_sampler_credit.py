"""mometas_credit: the regression credit on synthetic bandits whose best and harmful arms are known; state and ranks."""

import json

import pytest
import torch

from mometas_ds.samplers import MometasSampler, build_sampler
from mometas_ds.samplers.credit import composition_credit, learnt_mask
from tests.sampler_ranks import assert_two_gloo_ranks_agree_with_one_process

N = 5


class MultiObjectiveBandit:
    """Losses that the arms' draws move, as in multi-objective pre-training (all effects known).

    Arms 0-2 are useful: each draw takes 1.5% of the way from the arm's loss to its floor, and the
    other useful losses drift up a little (forgetting). Arm 3 is harmful: each draw pulls arm 0's loss
    2% of the way back to its start, and its own loss cannot fall (its floor is its start). Arm 4
    carries no signal: its draws change nothing. Measurements carry multiplicative noise.
    """

    start = torch.tensor([7.0, 0.9, 1.0, 7.3, 0.75], dtype=torch.float64)
    floor = torch.tensor([3.0, 0.3, 0.15, 7.3, 0.75], dtype=torch.float64)

    def __init__(self, seed: int, noise: float = 0.002):
        self.losses = self.start.clone()
        self.noise = noise
        self.gen = torch.Generator().manual_seed(seed)

    def measure(self):
        return self.losses * (1 + self.noise * torch.randn(N, generator=self.gen, dtype=torch.float64))

    def draw(self, arm: int):
        L = self.losses
        if arm < 3:
            L[arm] = self.floor[arm] + (L[arm] - self.floor[arm]) * 0.985
            for other in range(3):
                if other != arm:
                    L[other] = L[other] * 1.0005
        elif arm == 3:
            L[0] = L[0] + (self.start[0] - L[0]) * 0.02


def run_bandit(sampler, bandit, rounds=75, interval=20):
    draws = [0] * N
    sampler.update(bandit.measure())
    step = 0
    for _ in range(rounds):
        for _ in range(interval):
            arm = sampler.sample(step)
            bandit.draw(arm)
            draws[arm] += 1
            step += 1
        sampler.update(bandit.measure())
    return draws


@pytest.mark.parametrize("seed", range(5))
def test_harmful_and_useless_arms_lose_mass_useful_ones_keep_theirs(seed):
    sampler = build_sampler("mometas_credit", N, seed=seed)
    draws = run_bandit(sampler, MultiObjectiveBandit(seed))
    probs = sampler.probs.tolist()
    uniform = 1.0 / N
    assert draws[3] < 0.5 * uniform * sum(draws), draws  # the harmful arm: under half its uniform share of draws
    assert probs[3] < 0.5 * uniform, probs
    assert draws[4] < uniform * sum(draws), draws  # the no-signal arm is drawn less than its uniform share
    # (the default floor of 0.25 alone keeps every probability >= a quarter of 1/N): the policy itself ranks
    # the harmful arm below every useful one
    assert float(sampler.logits[3]) < float(sampler.logits[:3].min()), sampler.logits.tolist()


def test_the_paper_sampler_does_not_separate_the_same_bandit():
    """The motivation, on the same problem: one scalar reward for all draws of a round moves the paper's policy
    little."""
    harmful_share = []
    for seed in range(5):
        paper = build_sampler("mometas", N, seed=seed, lr=0.5)
        draws = run_bandit(paper, MultiObjectiveBandit(seed))
        harmful_share.append(draws[3] / sum(draws))
    credit = []
    for seed in range(5):
        draws = run_bandit(build_sampler("mometas_credit", N, seed=seed), MultiObjectiveBandit(seed))
        credit.append(draws[3] / sum(draws))
    assert max(credit) < min(harmful_share), (credit, harmful_share)


def test_best_arm_of_a_linear_bandit_gets_the_most_mass():
    """Reward = sum_j beta_j * share_j + noise with beta known: the policy orders the arms as beta does."""
    beta = torch.tensor([0.03, 0.015, 0.01, -0.005, -0.02], dtype=torch.float64)
    gen = torch.Generator().manual_seed(9)
    sampler = build_sampler("mometas_credit", N, seed=4)
    loss = 10.0
    sampler.update([loss] * N)
    step = 0
    for _ in range(120):
        counts = torch.zeros(N, dtype=torch.float64)
        for _ in range(20):
            counts[sampler.sample(step)] += 1
            step += 1
        # One objective's loss carries the whole reward: its relative drop is beta . share + noise.
        drop = float(beta @ (counts / 20)) + 0.002 * float(torch.randn(1, generator=gen, dtype=torch.float64))
        loss = loss * (1 - drop)
        sampler.update([loss, 1.0, 1.0, 1.0, 1.0])
    probs, logits = sampler.probs, sampler.logits
    assert torch.argmax(probs).item() == 0 and probs[0] > 0.5, probs.tolist()
    # the policy's logits order the arms as beta does, worst last
    assert logits.argsort(descending=True).tolist() == [0, 1, 2, 3, 4], logits.tolist()


def test_composition_credit_recovers_the_effects_of_exact_linear_data():
    gen = torch.Generator().manual_seed(0)
    beta = torch.tensor([0.3, 0.1, 0.0, -0.2, -0.2], dtype=torch.float64)
    counts = torch.multinomial(torch.full((N,), 0.2), 20 * 15, replacement=True, generator=gen).reshape(15, 20)
    shares = torch.stack([torch.bincount(row, minlength=N) for row in counts]).double() / 20
    rounds = torch.arange(15, dtype=torch.float64)
    rewards = shares @ beta + 0.5 - 0.01 * rounds  # a declining trend the regression absorbs
    credit = composition_credit(shares, rewards, rounds, ridge=0.0)
    assert abs(float(credit.sum())) < 1e-9  # centred over objectives
    torch.testing.assert_close(credit / credit[0], (beta - beta.mean()) / (beta[0] - beta.mean()))
    assert composition_credit(shares[:2], rewards[:2], rounds[:2], 0.1).abs().sum() == 0  # too few rounds
    assert composition_credit(shares, torch.full((15,), 0.3, dtype=torch.float64), rounds, 0.1).abs().sum() == 0


def test_learnt_mask():
    initial = torch.tensor([2.0, 1.0, 0.5, 0.0, 1.0], dtype=torch.float64)
    current = torch.tensor([1.0, 1.2, 0.5, 0.3, 0.99], dtype=torch.float64)
    assert learnt_mask(initial, current).tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_first_update_is_the_baseline_and_defaults():
    sampler = build_sampler("mometas_credit", N)
    assert sampler.fixed_meta_set is True and sampler.needs_meta_validation
    info = sampler.update([3.0] * N)
    assert info["reward"] is None and sampler.probs.tolist() == pytest.approx([0.2] * N, abs=1e-15)
    assert sampler.initial_losses.tolist() == [3.0] * N
    with pytest.raises(ValueError, match="needs one meta-validation loss"):
        sampler.update(None)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"lr": 0.0}, "lr"),
        ({"window": 2}, "window"),
        ({"ridge": -1.0}, "ridge"),
        ({"decay": 1.0}, "decay"),
        ({"prob_floor": 1.5}, "prob_floor"),
        ({"fixed_meta_set": "yes"}, "fixed_meta_set"),
    ],
)
def test_invalid_hyper_parameters_name_the_parameter(kwargs, field):
    with pytest.raises(ValueError, match=field):
        build_sampler("mometas_credit", N, **kwargs)


def _drive(sampler, bandit, start, stop, interval=20):
    draws, infos = [], []
    for step in range(start, stop):
        arm = sampler.sample(step)
        bandit.draw(arm)
        draws.append(arm)
        if (step + 1) % interval == 0:
            infos.append(sampler.update(bandit.measure()))
    return draws, infos


def test_state_round_trip_mid_interval_resumes_exactly():
    first, bandit = build_sampler("mometas_credit", N, seed=5, window=6), MultiObjectiveBandit(1)
    first.update(bandit.measure())
    _drive(first, bandit, 0, 410)  # 20 updates (the ring buffer has wrapped), 10 draws into the next round
    state = json.loads(json.dumps(first.state_dict()))
    twin = MultiObjectiveBandit(1)
    twin.losses, twin.gen = bandit.losses.clone(), torch.Generator().manual_seed(77)
    bandit.gen = torch.Generator().manual_seed(77)
    resumed = build_sampler("mometas_credit", N, seed=0, window=6)
    resumed.load_state_dict(state)
    assert resumed.probs.tolist() == first.probs.tolist() and resumed.rollout_counts() == first.rollout_counts()
    assert _drive(resumed, twin, 410, 1200) == _drive(first, bandit, 410, 1200)
    with pytest.raises(ValueError, match="window"):
        build_sampler("mometas_credit", N, window=7).load_state_dict(state)


def test_sync_state_carries_everything():
    source, target = build_sampler("mometas_credit", N, seed=6), build_sampler("mometas_credit", N, seed=6)
    bandit = MultiObjectiveBandit(2)
    source.update(bandit.measure())
    _drive(source, bandit, 0, 300)
    target.load_sync_state(source.sync_state())
    assert target.probs.tolist() == source.probs.tolist() and target.num_updates == source.num_updates
    assert torch.equal(target.history, source.history) and torch.equal(target.initial_losses, source.initial_losses)
    losses = bandit.measure()
    source.clear_rollout()
    assert target.update(losses)["probs"] == source.update(losses)["probs"]


def test_paper_mometas_is_unchanged_by_the_new_module():
    """The registry's 'mometas' is still the paper's class, with its defaults (mometas.py is not edited)."""
    built = build_sampler("mometas", N, seed=3)
    assert type(built) is MometasSampler and built.lr == 0.1 and built.gamma == 2.0 and built.prob_floor == 0.0
    assert built.fixed_meta_set is False


META_BATCH, STEPS, INTERVAL = 7, 400, 10


def _losses(update_index, counts):
    """Per-sequence losses [META_BATCH, N]; objective 0's falls with the share of its draws in the round."""
    gen = torch.Generator().manual_seed(500 + update_index)
    trend = torch.tensor([3.0 - 0.01 * update_index, 1.0 + 0.002 * update_index, 2.0, 1.5, 0.7], dtype=torch.float64)
    trend[0] -= 0.5 * counts[0] / INTERVAL
    return trend + 0.05 * torch.rand(META_BATCH, N, generator=gen, dtype=torch.float64)


def test_two_gloo_ranks_agree_with_each_other_and_with_one_process(tmp_path):
    assert_two_gloo_ranks_agree_with_one_process(tmp_path, "mometas_credit", N, _losses, STEPS, INTERVAL, META_BATCH)


def test_pure_noise_windows_move_the_policy_far_less_than_a_real_effect():
    gen = torch.Generator().manual_seed(3)
    beta = torch.tensor([0.2, 0.0, 0.0, -0.2, 0.0], dtype=torch.float64)
    noise_credit, signal_credit = [], []
    for _ in range(200):
        counts = torch.multinomial(torch.full((N,), 0.2), 20 * 20, replacement=True, generator=gen).reshape(20, 20)
        shares = torch.stack([torch.bincount(row, minlength=N) for row in counts]).double() / 20
        rounds = torch.arange(20, dtype=torch.float64)
        noise = 0.01 * torch.randn(20, generator=gen, dtype=torch.float64)
        noise_credit.append(composition_credit(shares, noise, rounds, 0.1).abs().max())
        signal_credit.append(composition_credit(shares, shares @ beta + noise, rounds, 0.1)[0])
    assert float(torch.stack(signal_credit).mean()) > 3 * float(torch.stack(noise_credit).mean())
    assert float(torch.stack(noise_credit).median()) == 0.0  # most noise windows do not pass the chance level
