"""mometas_transfer: credit from what an objective's draws do for the other objectives, on synthetic bandits whose
harmful, useless and useful arms are known; exact save/resume; ranks."""

import json

import pytest
import torch

from mometas_ds.samplers import MometasSampler, build_sampler
from mometas_ds.samplers.transfer import transfer_credit
from tests.sampler_ranks import assert_two_gloo_ranks_agree_with_one_process

N = 5


class TransferBandit:
    """Losses that the arms' draws move, with every effect known.

    Arms 0-2 are useful: a draw takes 1.5% of the way from the arm's loss to its floor and 0.3% of the way for
    the other useful arms (a shared encoder). Arm 3 is harmful: a draw pulls arm 0's loss 2% of the way back
    to its start; its own loss cannot fall. Arm 4 is a loss easy to lower: a draw takes 20% of the way to its
    floor near zero, and does nothing for the others. Measurements carry multiplicative noise.
    """

    start = torch.tensor([7.0, 0.9, 1.0, 7.3, 0.7], dtype=torch.float64)
    floor = torch.tensor([3.0, 0.3, 0.15, 7.3, 0.01], dtype=torch.float64)

    def __init__(self, seed: int, noise: float = 0.002, useful=(0, 1, 2), harmful=(3,), easy=(4,)):
        self.losses = self.start.clone()
        self.noise = noise
        self.gen = torch.Generator().manual_seed(seed)
        self.useful, self.harmful, self.easy = useful, harmful, easy

    def measure(self):
        return self.losses * (1 + self.noise * torch.randn(N, generator=self.gen, dtype=torch.float64))

    def draw(self, arm: int):
        L, F = self.losses, self.floor
        if arm in self.useful:
            for other in self.useful:
                L[other] = F[other] + (L[other] - F[other]) * (0.985 if other == arm else 0.997)
        elif arm in self.harmful:
            L[0] = L[0] + (self.start[0] - L[0]) * 0.02
        elif arm in self.easy:
            L[arm] = F[arm] + (L[arm] - F[arm]) * 0.8


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


@pytest.mark.parametrize("seed", range(4))
def test_harmful_arm_ends_least_drawn_and_the_easy_loss_earns_nothing_extra(seed):
    sampler = build_sampler("mometas_transfer", N, seed=seed)
    draws = run_bandit(sampler, TransferBandit(seed))
    probs = sampler.probs.tolist()
    assert draws[3] == min(draws), draws  # the harmful arm: least drawn
    assert probs[3] < 0.5 / N, probs  # and under half its uniform share at the end
    assert draws[4] < sum(draws) / N, draws  # the easy loss: under its uniform share (its own drops earn nothing)
    assert sum(draws[:3]) > 0.7 * sum(draws), draws  # the useful arms: well above their uniform 60%


@pytest.mark.parametrize("seed", range(3))
def test_all_useful_bandit_stays_near_uniform(seed):
    bandit = TransferBandit(seed, useful=(0, 1, 2, 3, 4), harmful=(), easy=())
    bandit.floor = torch.tensor([3.0, 0.3, 0.15, 4.0, 0.4], dtype=torch.float64)
    sampler = build_sampler("mometas_transfer", N, seed=seed)
    draws = run_bandit(sampler, bandit)
    shares = [d / sum(draws) for d in draws]
    assert max(abs(s - 1 / N) for s in shares) < 0.08, shares
    assert min(sampler.probs.tolist()) > 0.25 / N, sampler.probs.tolist()


def test_pure_noise_moves_the_policy_little():
    """Losses that no draw moves (only measurement noise): the policy stays close to uniform."""
    sampler = build_sampler("mometas_transfer", N, seed=1)
    gen = torch.Generator().manual_seed(4)
    sampler.update([2.0] * N)
    step = 0
    for i in range(75):
        for _ in range(20):
            sampler.sample(step)
            step += 1
        falling = torch.tensor([2.0 * (1 - 0.01 * i)] * N, dtype=torch.float64)  # learnt, but not by any draw
        sampler.update(falling * (1 + 0.01 * torch.randn(N, generator=gen, dtype=torch.float64)))
    assert max(abs(p - 1 / N) for p in sampler.probs.tolist()) < 0.1, sampler.probs.tolist()


def test_transfer_credit_of_exact_linear_data_ignores_own_effects():
    """Drops d_i = sum_j E_ij x_j with a huge own effect of arm 4 on itself: no credit for it; arm 3 hurts arm 0."""
    gen = torch.Generator().manual_seed(0)
    effects = torch.zeros(N, N, dtype=torch.float64)
    effects[0, 1] = effects[1, 0] = effects[2, 0] = effects[0, 2] = 0.02  # useful arms help each other
    effects[0, 3] = -0.05  # harmful arm
    effects[4, 4] = 1.0  # the easy loss lowers itself, a lot
    counts = torch.multinomial(torch.full((N,), 0.2), 20 * 20, replacement=True, generator=gen).reshape(20, 20)
    shares = torch.stack([torch.bincount(row, minlength=N) for row in counts]).double() / 20
    rounds = torch.arange(20, dtype=torch.float64)
    drops = shares @ effects.T + 1e-4 * torch.randn(20, N, generator=gen, dtype=torch.float64)
    credit = transfer_credit(shares, drops, rounds, torch.ones(N, dtype=torch.float64), ridge=0.0)
    assert abs(float(credit.sum())) < 1e-9
    assert credit.argmin().item() == 3 and credit[4] < credit[:3].min(), credit.tolist()
    # too few rounds, two objectives, or no target: no credit
    assert transfer_credit(shares[:3], drops[:3], rounds[:3], torch.ones(N), 0.1).abs().sum() == 0
    assert transfer_credit(shares[:, :2], drops[:, :2], rounds, torch.ones(2), 0.1).abs().sum() == 0
    assert transfer_credit(shares, drops, rounds, torch.zeros(N), 0.1).abs().sum() == 0


def test_defaults_and_first_update():
    sampler = build_sampler("mometas_transfer", N)
    assert sampler.fixed_meta_set is True and sampler.needs_meta_validation
    assert (sampler.lr, sampler.window, sampler.decay, sampler.prob_floor) == (8.0, 20, 0.01, 0.1)
    assert sampler.progress_scale == 0.003 and sampler.ablate is True
    info = sampler.update([3.0] * N)
    assert info["reward"] is None and sampler.probs.tolist() == pytest.approx([0.2] * N, abs=1e-15)
    with pytest.raises(ValueError, match="needs one meta-validation loss"):
        sampler.update(None)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"lr": 0.0}, "lr"),
        ({"window": 3}, "window"),
        ({"ridge": -1.0}, "ridge"),
        ({"decay": 1.0}, "decay"),
        ({"prob_floor": 1.5}, "prob_floor"),
        ({"progress_scale": -0.1}, "progress_scale"),
        ({"ablate": 1}, "ablate"),
        ({"fixed_meta_set": True}, "--meta_fixed_set"),
    ],
)
def test_invalid_hyper_parameters_name_the_parameter(kwargs, field):
    with pytest.raises(ValueError, match=field):
        build_sampler("mometas_transfer", N, **kwargs)


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
    first, bandit = build_sampler("mometas_transfer", N, seed=5, window=12), TransferBandit(1)
    first.update(bandit.measure())
    _drive(first, bandit, 0, 410)  # 20 updates (the ring buffer has wrapped), 10 draws into the next round
    assert first.probs.max() - first.probs.min() > 0.01  # the policy has moved: the resume has something to keep
    state = json.loads(json.dumps(first.state_dict()))
    twin = TransferBandit(1)
    twin.losses, twin.gen = bandit.losses.clone(), torch.Generator().manual_seed(77)
    bandit.gen = torch.Generator().manual_seed(77)
    resumed = build_sampler("mometas_transfer", N, seed=0, window=12)
    resumed.load_state_dict(state)
    assert resumed.probs.tolist() == first.probs.tolist() and resumed.rollout_counts() == first.rollout_counts()
    assert torch.equal(resumed.credit, first.credit) and torch.equal(resumed.targets, first.targets)
    assert _drive(resumed, twin, 410, 1200) == _drive(first, bandit, 410, 1200)
    with pytest.raises(ValueError, match="window"):
        build_sampler("mometas_transfer", N, window=13).load_state_dict(state)


def test_sync_state_carries_everything():
    source, target = build_sampler("mometas_transfer", N, seed=6), build_sampler("mometas_transfer", N, seed=6)
    bandit = TransferBandit(2)
    source.update(bandit.measure())
    _drive(source, bandit, 0, 300)
    target.load_sync_state(source.sync_state())
    assert target.probs.tolist() == source.probs.tolist() and target.num_updates == source.num_updates
    assert torch.equal(target.history, source.history) and torch.equal(target.initial_losses, source.initial_losses)
    losses = bandit.measure()
    source.clear_rollout()
    assert target.update(losses)["probs"] == source.update(losses)["probs"]


def test_paper_mometas_is_unchanged_by_the_new_module():
    built = build_sampler("mometas", N, seed=3)
    assert type(built) is MometasSampler and built.lr == 0.1 and built.gamma == 2.0 and built.prob_floor == 0.0


META_BATCH, STEPS, INTERVAL = 7, 400, 10


def _losses(update_index, counts):
    """Per-sequence losses [META_BATCH, N]; objective 0's falls with objective 1's share, objective 1's with 0's."""
    gen = torch.Generator().manual_seed(500 + update_index)
    trend = torch.tensor([3.0 - 0.01 * update_index, 1.0 - 0.002 * update_index, 2.0, 1.5, 0.7], dtype=torch.float64)
    trend[0] -= 0.5 * counts[1] / INTERVAL
    trend[1] -= 0.2 * counts[0] / INTERVAL
    return trend + 0.05 * torch.rand(META_BATCH, N, generator=gen, dtype=torch.float64)


def test_two_gloo_ranks_agree_with_each_other_and_with_one_process(tmp_path):
    assert_two_gloo_ranks_agree_with_one_process(tmp_path, "mometas_transfer", N, _losses, STEPS, INTERVAL, META_BATCH)


def test_ablated_rounds_leave_one_objective_out_in_turn():
    sampler = build_sampler("mometas_transfer", N, seed=2)
    sampler.update([3.0] * N)
    left_out, step = [], 0
    for _ in range(2 * N):
        drawn = {sampler.sample(step + k) for k in range(20)}
        left_out.append(sampler.ablated())
        assert sampler.ablated() not in drawn and float(sampler.probs_at(step)[sampler.ablated()]) == 0.0
        step += 20
        sampler.update([3.0] * N)
    assert sorted(left_out[:N]) == list(range(N)) and left_out[N:] == left_out[:N]  # each in turn
    assert sampler.probs.tolist() == pytest.approx([0.2] * N)  # probs (what the trainer logs) is the policy
    plain = build_sampler("mometas_transfer", N, seed=2, ablate=False)
    assert plain.ablated() == -1 and plain.probs_at(0).tolist() == plain.probs.tolist()
