"""Samplers: the MOMETAS update against a hand computation, baselines' distributions, determinism, ranks."""
import json
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mometas_ds.samplers import (
    available_samplers, build_sampler, meta_update_distributed, relative_loss_drop, shard_range, uniform_from,
)

N = 5

# Upper 0.1% points of the chi-square distribution (standard tables; scipy is not in the env).
# The draws are a deterministic function of the seed, so these tests cannot flake.
CHI2_CRITICAL_0_001 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515}


def chi_square(counts, probs):
    total = sum(counts)
    stat = 0.0
    for c, p in zip(counts, probs):
        if p > 0:
            stat += (c - total * p) ** 2 / (total * p)
        else:
            assert c == 0, "an objective with probability 0 was drawn"
    return stat, sum(1 for p in probs if p > 0) - 1


def draw_counts(sampler, steps):
    counts = [0] * sampler.num_objectives
    for step in steps:
        counts[sampler.sample(step)] += 1
    return counts


def build_all(**overrides):
    """One sampler of every built-in kind, with the options each needs."""
    options = {
        "fixed": {"weights": [1, 2, 3, 0, 4]},
        "temperature": {"end_weights": [0, 0, 1, 1, 1], "total_steps": 1000},
    }
    return {name: build_sampler(name, N, **{**options.get(name, {}), **overrides}) for name in available_samplers()}


# ----------------------------------------------------------------------------------------------------------------
# Reference: the MOMETAS update written out by hand (closed-form gradient), independent of the implementation.


def ref_reward(before, after):
    total = 0.0
    for a, b in zip(before, after):
        term = (a - b + 1e-6) / (a + 1e-6) * (1.0 if abs(a - b) > 1e-3 else 0.0)
        total += max(term, -1.0)
    return total


def ref_softmax(logits):
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    z = sum(exps)
    return [e / z for e in exps]


def ref_step(logits, counts, advantage, lr, gamma):
    """theta - lr * d/dtheta [ -adv * sum_k n_k log p_k - gamma * H(p) ]; returns (new logits, policy loss)."""
    p = ref_softmax(logits)
    entropy = -sum(pi * math.log(pi) for pi in p)
    m = sum(counts)
    grad = [-advantage * (n - m * pi) + gamma * pi * (math.log(pi) + entropy) for n, pi in zip(counts, p)]
    loss = -advantage * sum(n * math.log(pi) for n, pi in zip(counts, p)) - gamma * entropy
    return [x - lr * g for x, g in zip(logits, grad)], loss


def run_interval(sampler, start, interval):
    for step in range(start, start + interval):
        sampler.sample(step)
    return sampler.rollout_counts()


# ----------------------------------------------------------------------------------------------------------------
# Build and bad input


def test_registry_lists_builtins_and_rejects_unknown_names_and_options():
    assert available_samplers()[:6] == ["mometas", "uniform", "round_robin", "fixed", "temperature", "exp3"]
    with pytest.raises(ValueError, match="available: mometas, uniform, round_robin, fixed, temperature, exp3"):
        build_sampler("bandit", N)
    with pytest.raises(ValueError, match="unknown option.*lr.*accepts: none"):
        build_sampler("uniform", N, lr=0.1)
    with pytest.raises(ValueError, match="unknown option.*gama"):
        build_sampler("mometas", N, gama=2.0)


@pytest.mark.parametrize("name, kwargs, field", [
    ("mometas", {"interval": 100}, "unknown option.*interval"),  # the update interval is the trainer's
    ("uniform", {"interval": 100}, "unknown option.*interval"),
    ("mometas", {"lr": 0.0}, "lr"),
    ("mometas", {"lr": -0.1}, "lr"),
    ("mometas", {"lr": float("nan")}, "lr"),
    ("mometas", {"gamma": -1.0}, "gamma"),
    ("mometas", {"num_objectives": 0}, "num_objectives"),
    ("mometas", {"prob_floor": 1.5}, "prob_floor"),
    ("mometas", {"reward_baseline": 1.0}, "reward_baseline"),
    ("mometas", {"fixed_meta_set": True}, "--meta_fixed_set"),  # a meta-validation setting now
    ("mometas", {"seed": 1.5}, "seed"),
    ("fixed", {"weights": [0, 0, 0, 0, 0]}, "weights"),
    ("fixed", {"weights": [1, 2, 3]}, "weights"),
    ("fixed", {"weights": [1, -1, 1, 1, 1]}, r"weights\[1\]"),
    ("fixed", {"weights": [1, float("inf"), 1, 1, 1]}, r"weights\[1\]"),
    ("fixed", {}, "weights"),
    ("temperature", {"end_weights": [1] * 5}, "total_steps"),
    ("temperature", {"end_weights": [1] * 5, "total_steps": 0}, "total_steps"),
    ("temperature", {"end_weights": [0] * 5, "total_steps": 10}, "end_weights"),
    ("temperature", {"start_weights": [1, 1], "end_weights": [1] * 5, "total_steps": 10}, "start_weights"),
    ("exp3", {"gamma": 1.5}, "gamma"),
    ("exp3", {"eta": 0.0}, "eta"),
])
def test_invalid_hyper_parameters_raise_naming_the_parameter(name, kwargs, field):
    kwargs = {"num_objectives": N, **kwargs}
    with pytest.raises(ValueError, match=field):
        build_sampler(name, **kwargs)


@pytest.mark.parametrize("name", ["mometas", "uniform", "round_robin", "fixed", "temperature", "exp3"])
def test_update_with_wrong_number_of_losses_raises(name):
    sampler = build_all()[name]
    with pytest.raises(ValueError, match=r"one val_loss per objective \(5\), got shape \(4,\)"):
        sampler.update([1.0] * 4)
    with pytest.raises(ValueError, match=r"got shape \(1, 5\)"):
        sampler.update([[1.0] * 5])
    with pytest.raises(ValueError, match="5 numbers"):
        sampler.update(["a"] * 5)


def test_meta_samplers_need_losses_rule_based_do_not():
    samplers = build_all()
    for name in ("mometas", "exp3"):
        assert samplers[name].needs_meta_validation
        with pytest.raises(ValueError, match="needs one meta-validation loss"):
            samplers[name].update(None)
    for name in ("uniform", "round_robin", "fixed", "temperature"):
        sampler = samplers[name]
        assert not sampler.needs_meta_validation
        run_interval(sampler, 0, 20)
        before = sampler.probs.clone()  # (temperature: the schedule at the last sampled step)
        info = sampler.update()
        assert sum(info["rollout_counts"]) == 20 and info["reward"] is None and not info["skipped"]
        assert sampler.rollout_counts() == [0] * N
        torch.testing.assert_close(sampler.probs, before, rtol=0, atol=0)
        sampler.update([3.0, 2.0, 1.0, 0.5, 0.1])  # losses are accepted and ignored
        torch.testing.assert_close(sampler.probs, before, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_losses_skip_the_update_keep_state_and_are_counted(bad):
    sampler = build_sampler("mometas", N, seed=3, lr=0.5)
    twin = build_sampler("mometas", N, seed=3, lr=0.5)  # never sees the bad losses
    for s in (sampler, twin):
        s.update([5.0, 4.0, 3.0, 2.0, 1.0])
        run_interval(s, 0, 10)
    state = sampler.state_dict()

    info = sampler.update([4.0, bad, 3.0, 2.0, 1.0])
    assert info["skipped"] and info["skipped_updates"] == 1 and info["reward"] is None
    assert info["policy_loss"] is None and info["rollout_counts"] == sampler.rollout_counts()
    assert sum(info["rollout_counts"]) == 10
    assert sampler.state_dict() == {**state, "skipped_updates": 1}  # logits, stored losses, rollout all kept
    info = sampler.update([bad] * N)
    assert info["skipped_updates"] == 2 == sampler.skipped_updates

    good = [4.0, 4.0, 2.5, 2.0, 1.0]
    info, twin_info = sampler.update(good), twin.update(good)
    assert not info["skipped"] and info["skipped_updates"] == 2
    assert info["reward"] == twin_info["reward"] and info["probs"] == twin_info["probs"]


# ----------------------------------------------------------------------------------------------------------------
# MOMETAS


def test_first_update_only_stores_the_baseline():
    sampler = build_sampler("mometas", N, seed=0)
    run_interval(sampler, 0, 7)
    info = sampler.update([1.0, 2.0, 3.0, 4.0, 5.0])
    assert info["reward"] is None and info["policy_loss"] is None and not info["skipped"]
    assert info["rollout_counts"] != [0] * N and sampler.rollout_counts() == [0] * N  # pre-baseline draws dropped
    torch.testing.assert_close(sampler.logits, torch.ones(N, dtype=torch.float64), rtol=0, atol=0)
    assert info["probs"] == pytest.approx([0.2] * N, abs=1e-15)


def test_several_updates_equal_the_formula_with_clipping_and_dead_zone():
    lr, gamma, interval = 0.3, 2.0, 25
    sampler = build_sampler("mometas", N, seed=42, lr=lr, gamma=gamma)
    losses = [
        [2.0, 3.0, 4.0, 1.0, 0.5],
        [1.5, 3.0004, 4.5, 1.0, 0.5],    # obj 1 inside the 1e-3 dead zone; obj 2 worse
        [1.2, 9.0, 4.4, 0.7, 0.5009],    # obj 1 triples: clipped at -1; obj 4 inside the dead zone
        [1.1, 8.0, 13.2, 0.69, 0.3],     # obj 2 triples: clipped at -1
        [1.0, 7.0, 10.0, 0.6, 0.2],
        [1.0, 7.0, 10.0, 0.6, 0.2],      # no change at all: reward exactly 0
    ]
    ref_logits = [1.0] * N
    sampler.update(losses[0])
    for t in range(1, len(losses)):
        counts = run_interval(sampler, t * interval, interval)
        reward = ref_reward(losses[t - 1], losses[t])
        ref_logits, ref_loss = ref_step(ref_logits, counts, reward, lr, gamma)
        info = sampler.update(losses[t])
        assert info["rollout_counts"] == counts and sum(counts) == interval
        assert info["reward"] == pytest.approx(reward, rel=1e-12, abs=1e-15)
        assert info["policy_loss"] == pytest.approx(ref_loss, rel=1e-12)
        assert sampler.logits.tolist() == pytest.approx(ref_logits, rel=1e-12)
        assert info["probs"] == pytest.approx(ref_softmax(ref_logits), rel=1e-12)
    # the sequence above does hit the clip and the dead zone
    assert relative_loss_drop(torch.tensor([3.0004]), torch.tensor([9.0])).item() == -1.0
    assert relative_loss_drop(torch.tensor([3.0]), torch.tensor([3.0004])).item() == 0.0
    assert ref_reward(losses[4], losses[5]) == 0.0
    assert max(sampler.probs.tolist()) - min(sampler.probs.tolist()) > 0.05  # the policy did move


def test_zero_reward_moves_the_policy_only_by_the_entropy_term():
    lr, gamma = 0.5, 2.0
    sampler = build_sampler("mometas", N, seed=9, lr=lr, gamma=gamma)
    sampler.update([3.0, 3.0, 3.0, 3.0, 3.0])
    run_interval(sampler, 0, 20)
    sampler.update([1.0, 3.0, 3.0, 3.0, 3.0])  # rewarded: the policy leaves uniform
    logits = sampler.logits.tolist()
    entropy_before = -(sampler.probs * sampler.probs.log()).sum().item()

    counts = run_interval(sampler, 20, 20)
    info = sampler.update([1.0002, 3.0, 2.9995, 3.0, 3.0])  # every change inside the dead zone
    assert info["reward"] == 0.0
    p = ref_softmax(logits)
    entropy = -sum(pi * math.log(pi) for pi in p)
    expected = [x - lr * gamma * pi * (math.log(pi) + entropy) for x, pi in zip(logits, p)]
    assert sampler.logits.tolist() == pytest.approx(expected, rel=1e-12)
    assert info["policy_loss"] == pytest.approx(-gamma * entropy, rel=1e-12)  # rollout counts play no part
    assert sum(counts) == 20
    assert -(sampler.probs * sampler.probs.log()).sum().item() > entropy_before

    # at the uniform start the entropy gradient vanishes: zero reward leaves the logits where they are
    fresh = build_sampler("mometas", N, seed=9, lr=lr, gamma=gamma)
    fresh.update([2.0] * N)
    run_interval(fresh, 0, 30)
    fresh.update([2.0] * N)
    torch.testing.assert_close(fresh.logits, torch.ones(N, dtype=torch.float64), rtol=0, atol=1e-15)


def test_reward_baseline_subtracts_a_moving_average_of_rewards():
    lr, gamma, m = 0.2, 2.0, 0.9
    sampler = build_sampler("mometas", N, seed=5, lr=lr, gamma=gamma, reward_baseline=m)
    plain = build_sampler("mometas", N, seed=5, lr=lr, gamma=gamma)
    losses = [[4.0, 4.0, 4.0, 4.0, 4.0]]
    for t in range(1, 8):
        losses.append([x * 0.9 if i == t % N else x for i, x in enumerate(losses[-1])])
    ref_logits, average = [1.0] * N, 0.0
    sampler.update(losses[0])
    plain.update(losses[0])
    for t in range(1, len(losses)):
        counts = run_interval(sampler, t * 10, 10)
        reward = ref_reward(losses[t - 1], losses[t])
        ref_logits, _ = ref_step(ref_logits, counts, reward - average, lr, gamma)
        info = sampler.update(losses[t])
        assert info["reward"] == pytest.approx(reward, rel=1e-12)
        assert info["advantage"] == pytest.approx(reward - average, rel=1e-12, abs=1e-15)
        average = m * average + (1 - m) * reward
        assert sampler.logits.tolist() == pytest.approx(ref_logits, rel=1e-12)
        run_interval(plain, t * 10, 10)
        plain_info = plain.update(losses[t])
        assert plain_info["advantage"] == plain_info["reward"]
    assert info["advantage"] < info["reward"]  # every reward here is 0.1: the baseline has caught up part-way
    assert sampler.logits.tolist() != pytest.approx(plain.logits.tolist(), rel=1e-6)


def test_prob_floor_mixes_in_uniform_and_stops_collapse():
    eps = 0.2
    floored = build_sampler("mometas", N, seed=1, lr=2.0, gamma=0.0, prob_floor=eps)
    plain = build_sampler("mometas", N, seed=1, lr=2.0, gamma=0.0)
    for s in (floored, plain):
        loss = [10.0] * N
        s.update(loss)
        for t in range(1, 30):  # a big reward every round: without the floor the policy collapses
            run_interval(s, t * 20, 20)
            loss = [x * 0.5 for x in loss]
            s.update(loss)
    assert min(plain.probs.tolist()) < 1e-6
    policy = floored.policy_probs
    torch.testing.assert_close(floored.probs, (1 - eps) * policy + eps / N, rtol=0, atol=1e-15)
    assert min(floored.probs.tolist()) >= eps / N - 1e-15 and min(policy.tolist()) < 1e-3
    stat, df = chi_square(draw_counts(floored, range(10**6, 10**6 + 20000)), floored.probs.tolist())
    assert stat < CHI2_CRITICAL_0_001[df]


def test_a_fixed_meta_set_is_the_meta_validations_setting_and_auto_follows_what_the_sampler_asks():
    from mometas_ds.train.meta_validation import fixed_meta_set

    paper, credit = build_sampler("mometas", N), build_sampler("mometas_credit", N)
    assert paper.fixed_meta_set is False and credit.fixed_meta_set is True  # what each asks for
    assert "fixed_meta_set" not in paper.config and "fixed_meta_set" not in credit.config
    assert [fixed_meta_set("auto", s) for s in (paper, credit, build_sampler("uniform", N))] == [False, True, False]
    assert fixed_meta_set("on", paper) is True and fixed_meta_set("off", credit) is False


# ----------------------------------------------------------------------------------------------------------------
# Determinism and state


def test_draws_depend_only_on_seed_step_and_probabilities():
    a = build_sampler("mometas", N, seed=77)
    b = build_sampler("mometas", N, seed=77)
    steps = list(range(500))
    forward = [a.sample(s) for s in steps]
    _ = b.probs, b.state_dict(), uniform_from(1, 2)  # unrelated calls change nothing
    backward = [b.sample(s) for s in reversed(steps)][::-1]
    assert forward == backward
    other_seed = build_sampler("mometas", N, seed=78)
    assert [other_seed.sample(s) for s in steps] != forward
    # a repeated step returns the recorded draw and is counted once
    assert a.sample(3) == forward[3] and sum(a.rollout_counts()) == 500
    with pytest.raises(ValueError, match="step"):
        a.sample(-1)


def test_state_round_trip_mid_interval_resumes_identical_draws():
    kwargs = dict(seed=2024, lr=0.4, reward_baseline=0.5, prob_floor=0.05)
    first = build_sampler("mometas", N, **kwargs)

    def losses_at(t):
        return [2.0 + math.sin(0.7 * t + i) * 0.3 + 0.05 * i for i in range(N)]

    def run(sampler, start, stop):
        draws, infos = [], []
        for step in range(start, stop):
            draws.append(sampler.sample(step))
            if (step + 1) % 50 == 0:
                infos.append(sampler.update(losses_at(step // 50)))
        return draws, infos

    run(first, 0, 175)  # three updates, then stop mid-interval with 25 draws in the rollout
    state = json.loads(json.dumps(first.state_dict()))  # plain values only
    assert len(state["rollout"]) == 25
    resumed = build_sampler("mometas", N, **{**kwargs, "seed": 1})  # the seed comes back from the state
    resumed.load_state_dict(state)
    assert resumed.seed == 2024 and resumed.rollout_counts() == first.rollout_counts()
    assert [resumed.sample(s) for s in range(150, 175)] == [first.sample(s) for s in range(150, 175)]
    assert run(resumed, 175, 600) == run(first, 175, 600)

    with pytest.raises(ValueError, match="belongs to sampler 'mometas'"):
        build_sampler("exp3", N).load_state_dict(state)
    with pytest.raises(ValueError, match="num_objectives"):
        build_sampler("mometas", 4).load_state_dict(state)


@pytest.mark.parametrize("name", ["mometas", "exp3", "temperature", "fixed"])
def test_sync_state_carries_everything_sample_depends_on(name):
    source, target = build_all(seed=6)[name], build_all(seed=6)[name]
    source.update([2.0, 2.0, 2.0, 2.0, 2.0])
    for t in range(1, 4):
        run_interval(source, t * 30, 30)
        source.update([2.0 - 0.3 * t, 2.0, 2.0 - 0.1 * t, 2.0 + 0.2 * t, 2.0])
    source.sample(500)
    target.load_sync_state(source.sync_state())
    source.clear_rollout()
    assert target.probs.tolist() == source.probs.tolist()
    assert [target.sample(s) for s in range(1000, 1500)] == [source.sample(s) for s in range(1000, 1500)]
    assert target.num_updates == source.num_updates == 4


# ----------------------------------------------------------------------------------------------------------------
# Baselines' distributions


def test_uniform_and_fixed_distributions_chi_square():
    samplers = build_all(seed=31)
    for name in ("uniform", "fixed"):
        counts = draw_counts(samplers[name], range(20000))
        stat, df = chi_square(counts, samplers[name].probs.tolist())
        assert stat < CHI2_CRITICAL_0_001[df], (name, counts)
    assert samplers["fixed"].probs.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.0, 0.4])
    # the test has power: uniform draws are far from the fixed weights
    stat, df = chi_square([c for c in draw_counts(build_sampler("uniform", 4, seed=2), range(20000))],
                          [0.1, 0.2, 0.3, 0.4])
    assert stat > CHI2_CRITICAL_0_001[df]


def test_mometas_draws_follow_a_non_uniform_policy():
    sampler = build_sampler("mometas", N, seed=12)
    state = sampler.state_dict()
    sampler.load_state_dict({**state, "policy": [0.0, 1.0, 2.0, -1.0, 0.5, 0.0]})
    probs = sampler.probs.tolist()
    stat, df = chi_square(draw_counts(sampler, range(20000)), probs)
    assert stat < CHI2_CRITICAL_0_001[df]


def test_round_robin_cycles_through_objectives():
    sampler = build_sampler("round_robin", N, seed=99)
    assert [sampler.sample(s) for s in range(12)] == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert draw_counts(sampler, range(100, 1100)) == [200] * N


def test_temperature_anneals_from_start_to_end():
    start, end = [4, 3, 2, 1, 0], [0, 1, 2, 3, 4]
    sampler = build_sampler("temperature", N, seed=8, start_weights=start, end_weights=end, total_steps=1000)
    assert sampler.probs_at(0).tolist() == pytest.approx([0.4, 0.3, 0.2, 0.1, 0.0])
    assert sampler.probs_at(500).tolist() == pytest.approx([0.2] * N)
    assert sampler.probs_at(1000).tolist() == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert sampler.probs_at(10**6).tolist() == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    counts = draw_counts(sampler, range(1000, 21000))
    stat, df = chi_square(counts, sampler.probs_at(1000).tolist())
    assert stat < CHI2_CRITICAL_0_001[df] and counts[0] == 0
    assert sampler.probs.tolist() == sampler.probs_at(20999).tolist()
    slow = build_sampler("temperature", N, seed=8, start_weights=start, end_weights=end, total_steps=10**12)
    stat, df = chi_square(draw_counts(slow, range(20000)), [0.4, 0.3, 0.2, 0.1, 0.0])
    assert stat < CHI2_CRITICAL_0_001[df]


# ----------------------------------------------------------------------------------------------------------------
# EXP3


def test_exp3_policy_equals_the_odm_formula():
    sampler = build_sampler("exp3", N, seed=4)
    losses = [[3.0] * N, [2.7, 3.0, 3.3, 2.9, 3.0], [2.5, 2.9, 3.4, 2.8, 2.0]]
    sampler.update(losses[0])
    estimated = [0.0] * N
    for t in range(1, 3):
        probs_in_round = sampler.probs.tolist()
        counts = run_interval(sampler, t * 40, 40)
        sampler.update(losses[t])
        for i in range(N):
            a, b = losses[t - 1][i], losses[t][i]
            r = max((a - b + 1e-6) / (a + 1e-6) * (abs(a - b) > 1e-3), -1.0)
            if counts[i]:
                estimated[i] += r * counts[i] / 40 / probs_in_round[i]
        eps = min(1 / N, math.sqrt(math.log(N) / (N * t)))
        eps_prev = 1 / N if t == 1 else min(1 / N, math.sqrt(math.log(N) / (N * (t - 1))))
        expected = [(1 - N * eps) * q + eps for q in ref_softmax([eps_prev * r for r in estimated])]
        assert sampler.estimated_rewards.tolist() == pytest.approx(estimated, rel=1e-12)
        assert sampler.probs.tolist() == pytest.approx(expected, rel=1e-12)


def test_exp3_moves_mass_to_the_arm_with_the_highest_reward():
    sampler = build_sampler("exp3", N, seed=21)
    best = 2
    loss = [1e13] * N  # large, so 120 rounds of -20% stay outside the 1e-3 dead zone
    sampler.update(loss)
    for t in range(1, 121):
        run_interval(sampler, t * 20, 20)
        loss = [x * 0.8 if i == best else x for i, x in enumerate(loss)]  # only arm 2 improves: reward 0.2
        info = sampler.update(loss)
    probs = info["probs"]
    assert max(range(N), key=probs.__getitem__) == best
    assert probs[best] > 1.5 / N and all(p < 1 / N for i, p in enumerate(probs) if i != best)


# ----------------------------------------------------------------------------------------------------------------
# Across ranks


def test_shard_range_splits_evenly_and_covers_everything():
    for total in (0, 1, 7, 64):
        for world in (1, 2, 3, 8):
            ranges = [shard_range(total, r, world) for r in range(world)]
            assert ranges[0][0] == 0 and ranges[-1][1] == total
            assert all(ranges[r][1] == ranges[r + 1][0] for r in range(world - 1))
            sizes = [end - start for start, end in ranges]
            assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="rank"):
        shard_range(10, 2, 2)
    with pytest.raises(ValueError, match="world"):
        shard_range(10, 0, 0)


def test_meta_update_without_process_group_is_a_plain_update():
    assert not dist.is_initialized()
    sampler = build_sampler("mometas", N, seed=3)
    twin = build_sampler("mometas", N, seed=3)
    sums, counts = torch.tensor([6.0, 9.0, 3.0, 12.0, 15.0]), torch.tensor([3, 3, 3, 3, 3])
    info = meta_update_distributed(sampler, sums, counts)
    assert info == twin.update([2.0, 3.0, 1.0, 4.0, 5.0])
    run_interval(sampler, 0, 10)
    info = meta_update_distributed(sampler, sums, torch.tensor([3, 0, 3, 3, 3]))  # nobody measured objective 1
    assert info["skipped"] and sampler.rollout_counts() == info["rollout_counts"]
    with pytest.raises(ValueError, match="local_counts"):
        meta_update_distributed(sampler, sums, torch.tensor([3, 3]))
    with pytest.raises(ValueError, match="local_counts must be finite and >= 0"):
        meta_update_distributed(sampler, sums, torch.tensor([3, -1, 3, 3, 3]))


META_BATCH = 7  # odd, so the two shards differ in size
STEPS, INTERVAL = 1000, 10


def _per_sequence_losses(update_index):
    """The meta-validation batch's per-sequence losses [META_BATCH, N] at one update (same on every rank)."""
    gen = torch.Generator().manual_seed(1000 + update_index)
    trend = torch.tensor([1.0 - 0.004 * update_index * (i + 1) % 0.6 for i in range(N)], dtype=torch.float64)
    losses = 2.0 * trend + 0.5 * torch.rand(META_BATCH, N, generator=gen, dtype=torch.float64)
    if update_index == 40:
        losses[0, 3] = float("nan")  # lands on rank 0's shard only: every rank must skip
    return losses


def _gloo_worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    samplers = {"mometas": build_sampler("mometas", N, seed=11, lr=0.5),
                "exp3": build_sampler("exp3", N, seed=11)}
    start, end = shard_range(META_BATCH, rank, world)
    record = {name: {"draws": [], "infos": [], "local": []} for name in samplers}
    for step in range(STEPS):
        for name, sampler in samplers.items():
            record[name]["draws"].append(sampler.sample(step))
        if (step + 1) % INTERVAL == 0:
            shard = _per_sequence_losses(step // INTERVAL)[start:end]
            for name, sampler in samplers.items():
                record[name]["local"].append(shard.sum(0).tolist())
                counts = torch.full((N,), float(end - start))
                record[name]["infos"].append(meta_update_distributed(sampler, shard.sum(0), counts))
    torch.save(record, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_gloo_ranks_hold_identical_probs_and_draw_identical_objectives(tmp_path):
    world = 2
    mp.spawn(_gloo_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
    for name in ("mometas", "exp3"):
        r0, r1 = ranks[0][name], ranks[1][name]
        assert r0["local"][0] != r1["local"][0]  # the ranks measured different shards
        assert r0["draws"] == r1["draws"] and len(r0["draws"]) == STEPS
        assert json.dumps(r0["infos"]) == json.dumps(r1["infos"])  # probs, reward, counts, skips (NaN-safe)
        skipped = [i for i, info in enumerate(r0["infos"]) if info["skipped"]]
        assert skipped == [40] and r0["infos"][-1]["skipped_updates"] == 1
        assert max(max(i["probs"]) - min(i["probs"]) for i in r0["infos"]) > 0.01  # the policy moved

        # a single process fed the whole batch's mean loss makes the same draws
        single = build_sampler(name, N, seed=11, **({"lr": 0.5} if name == "mometas" else {}))
        draws = []
        for step in range(STEPS):
            draws.append(single.sample(step))
            if (step + 1) % INTERVAL == 0:
                losses = _per_sequence_losses(step // INTERVAL)
                a, b = shard_range(META_BATCH, 0, world), shard_range(META_BATCH, 1, world)
                total = losses[a[0]:a[1]].sum(0) + losses[b[0]:b[1]].sum(0)
                info = single.update(total / META_BATCH)
        assert draws == r0["draws"]
        assert info["probs"] == pytest.approx(r0["infos"][-1]["probs"], rel=1e-12)
