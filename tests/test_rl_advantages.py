"""Advantage estimators: hand-computed numbers, loop == vectorised, mask invariances."""

from __future__ import annotations

import math

import pytest
import torch

from retainrl.rl import (
    ADVANTAGE_ESTIMATORS,
    gae_advantages,
    get_advantage_estimator,
    grpo_advantages,
    masked_whiten,
    place_sequence_rewards,
    rloo_advantages,
)

F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# GRPO


def test_grpo_by_hand():
    # Group 1: r = (1, 0, 0, 0): mean 1/4; unbiased std = sqrt((3/4^2 + 3 * 1/4^2) / 3)
    #   = sqrt((9/16 + 3/16) / 3) = 1/2  ->  A = (3/4, -1/4, -1/4, -1/4) / (1/2) = (1.5, -.5, -.5, -.5)
    # Group 2: r = (1, 1, 0, 0): mean 1/2; unbiased std = sqrt(4 * 1/4 / 3) = 1/sqrt(3)
    #   ->  A = +-(1/2) sqrt(3) = +-0.8660254
    r = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0], dtype=F64)
    adv, metrics = grpo_advantages(r, 4, eps=0.0)
    h = math.sqrt(3) / 2
    assert torch.allclose(adv, torch.tensor([1.5, -0.5, -0.5, -0.5, h, h, -h, -h], dtype=F64), atol=1e-15)
    assert metrics["reward/mean"].item() == pytest.approx(3 / 8)
    assert metrics["adv/frac_zero_std_groups"].item() == 0.0
    # Population std: group 1 std = sqrt(12/16 / 4) = sqrt(3)/4 -> A_0 = (3/4) / (sqrt(3)/4) = sqrt(3).
    adv_b, _ = grpo_advantages(r, 4, eps=0.0, unbiased_std=False)
    assert adv_b[0].item() == pytest.approx(math.sqrt(3)) and adv_b[4].item() == pytest.approx(1.0)
    # eps sits in the denominator: 0.75 / (0.5 + 1e-6).
    assert grpo_advantages(r, 4)[0][0].item() == pytest.approx(0.75 / (0.5 + 1e-6), rel=1e-12)


def test_dr_grpo_drops_the_std():
    r = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0])
    adv, _ = grpo_advantages(r, 4, scale_by_std=False)
    assert torch.allclose(adv, torch.tensor([0.75, -0.25, -0.25, -0.25, 0.5, 0.5, -0.5, -0.5]))
    assert torch.equal(adv, ADVANTAGE_ESTIMATORS["dr_grpo"](r, 4)[0])


def test_grpo_equal_rewards_and_singletons_give_zero():
    r = torch.tensor([1.0, 1, 1, 0, 0, 0])
    adv, metrics = grpo_advantages(r, 3)
    assert torch.equal(adv, torch.zeros(6))
    assert metrics["adv/frac_zero_std_groups"].item() == 1.0
    adv1, _ = grpo_advantages(torch.tensor([0.3, 1.0, -2.0]), 1)
    assert torch.equal(adv1, torch.zeros(3))           # no NaN from a one-sample std


def grpo_loop(rewards, n, scale_by_std=True, unbiased=True, eps=1e-6):
    """Reference: one prompt at a time, plain Python on floats."""
    out = []
    for i in range(0, len(rewards), n):
        group = [float(x) for x in rewards[i:i + n]]
        mean = sum(group) / n
        if n > 1:
            var = sum((x - mean) ** 2 for x in group) / (n - 1 if unbiased else n)
        else:
            var = 0.0
        out += [(x - mean) / (math.sqrt(var) + eps) if scale_by_std else x - mean for x in group]
    return torch.tensor(out, dtype=F64)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
@pytest.mark.parametrize("scale_by_std,unbiased", [(True, True), (True, False), (False, True)])
def test_grpo_loop_equals_vectorised(n, scale_by_std, unbiased):
    g = torch.Generator().manual_seed(n)
    r = torch.randint(0, 3, (7 * n,), generator=g).to(F64) / 2   # ties and equal groups happen
    adv, _ = grpo_advantages(r, n, scale_by_std=scale_by_std, unbiased_std=unbiased)
    assert torch.allclose(adv, grpo_loop(r, n, scale_by_std, unbiased), rtol=1e-12, atol=1e-12)


def test_grpo_invariances():
    g = torch.Generator().manual_seed(0)
    r = torch.rand(24, generator=g, dtype=F64)
    adv, _ = grpo_advantages(r, 6, eps=0.0)
    # Affine reward change a r + b (a > 0) leaves the normalised advantages unchanged.
    assert torch.allclose(grpo_advantages(3.0 * r - 7.0, 6, eps=0.0)[0], adv, atol=1e-12)
    # A per-group shift too (each prompt's difficulty offset cancels).
    shift = torch.arange(4, dtype=F64).repeat_interleave(6)
    assert torch.allclose(grpo_advantages(r + shift, 6, eps=0.0)[0], adv, atol=1e-12)
    # Permuting samples inside a group permutes their advantages.
    perm = torch.tensor([5, 3, 1, 0, 2, 4])
    assert torch.allclose(grpo_advantages(torch.cat([r[:6][perm], r[6:]]), 6)[0][:6],
                          grpo_advantages(r, 6)[0][:6][perm])
    # Each group's advantages sum to zero.
    assert torch.allclose(adv.view(4, 6).sum(1), torch.zeros(4, dtype=F64), atol=1e-12)


def test_group_validation_and_int_rewards():
    with pytest.raises(ValueError):
        grpo_advantages(torch.zeros(7), 4)
    with pytest.raises(ValueError):
        rloo_advantages(torch.zeros(2, 4), 4)
    adv, _ = grpo_advantages(torch.tensor([1, 0]), 2)
    assert adv.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# RLOO


def test_rloo_by_hand():
    # r = (1, 0, 0, 0): A_0 = 1 - (0 + 0 + 0)/3 = 1; A_j = 0 - (1 + 0 + 0)/3 = -1/3.
    # r = (2, 4): A = (2 - 4, 4 - 2) = (-2, 2).
    adv, _ = rloo_advantages(torch.tensor([1.0, 0, 0, 0]), 4)
    assert torch.allclose(adv, torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3]))
    adv2, _ = rloo_advantages(torch.tensor([2.0, 4.0]), 2)
    assert torch.equal(adv2, torch.tensor([-2.0, 2.0]))
    assert torch.equal(rloo_advantages(torch.tensor([5.0, -1.0]), 1)[0], torch.zeros(2))


@pytest.mark.parametrize("n", [2, 3, 8])
def test_rloo_loop_and_relation_to_grpo(n):
    g = torch.Generator().manual_seed(n)
    r = torch.randn(5 * n, generator=g, dtype=F64)
    adv, _ = rloo_advantages(r, n)
    loop = torch.tensor([r[i] - (r[(i // n) * n:(i // n + 1) * n].sum() - r[i]) / (n - 1)
                         for i in range(len(r))], dtype=F64)
    assert torch.allclose(adv, loop, rtol=1e-12, atol=1e-12)
    # A_i = n / (n - 1) (r_i - mean): RLOO is Dr. GRPO scaled by n / (n - 1).
    drgrpo, _ = grpo_advantages(r, n, scale_by_std=False)
    assert torch.allclose(adv, n / (n - 1) * drgrpo, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# GAE


def test_gae_by_hand():
    # One response of 3 tokens, reward 1 at the end, V = (0.5, 0.6, 0.7), a padded 4th slot.
    # gamma = 0.9, lam = 0.5 (gamma * lam = 0.45):
    #   delta_2 = 1 + 0.9 * 0 - 0.7 = 0.3          A_2 = 0.3
    #   delta_1 = 0 + 0.9 * 0.7 - 0.6 = 0.03       A_1 = 0.03 + 0.45 * 0.3 = 0.165
    #   delta_0 = 0 + 0.9 * 0.6 - 0.5 = 0.04       A_0 = 0.04 + 0.45 * 0.165 = 0.11425
    #   returns = A + V = (0.61425, 0.765, 1.0)
    values = torch.tensor([[0.5, 0.6, 0.7, 123.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 0]])
    (adv, ret), _ = gae_advantages(torch.tensor([1.0], dtype=F64), values, mask, gamma=0.9, lam=0.5)
    assert torch.allclose(adv, torch.tensor([[0.11425, 0.165, 0.3, 0.0]], dtype=F64), atol=1e-15)
    assert torch.allclose(ret, torch.tensor([[0.61425, 0.765, 1.0, 0.0]], dtype=F64), atol=1e-15)
    # gamma = lam = 1: Monte Carlo, A_t = R - V_t = (0.5, 0.4, 0.3), returns all 1.
    (adv, ret), _ = gae_advantages(torch.tensor([1.0], dtype=F64), values, mask)
    assert torch.allclose(adv, torch.tensor([[0.5, 0.4, 0.3, 0.0]], dtype=F64), atol=1e-15)
    assert torch.allclose(ret, torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=F64), atol=1e-15)
    # lam = 0: one-step TD, A_t = delta_t = (0.1, 0.1, 0.3) with gamma = 1.
    (adv, _), _ = gae_advantages(torch.tensor([1.0], dtype=F64), values, mask, lam=0.0)
    assert torch.allclose(adv, torch.tensor([[0.1, 0.1, 0.3, 0.0]], dtype=F64), atol=1e-15)


def gae_loop(rewards, values, mask, gamma, lam):
    """Reference: per row, compress the valid tokens, run textbook GAE, scatter back."""
    adv = torch.zeros_like(values)
    for b in range(values.shape[0]):
        idx = mask[b].nonzero().flatten().tolist()
        if not idx:
            continue
        v = [values[b, t].item() for t in idx]
        r = [0.0] * len(idx)
        r[-1] = rewards[b].item()
        a, out = 0.0, [0.0] * len(idx)
        for k in reversed(range(len(idx))):
            nv = v[k + 1] if k + 1 < len(idx) else 0.0
            a = r[k] + gamma * nv - v[k] + gamma * lam * a
            out[k] = a
        for k, t in enumerate(idx):
            adv[b, t] = out[k]
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.9, 0.0)])
def test_gae_loop_equals_vectorised_with_any_mask(gamma, lam):
    g = torch.Generator().manual_seed(0)
    B, T = 6, 9
    values = torch.randn(B, T, generator=g, dtype=F64)
    rewards = torch.randn(B, generator=g, dtype=F64)
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[0, :9] = True                                  # full
    mask[1, :4] = True                                  # right padding
    mask[2, 5:] = True                                  # left padding
    mask[3, [1, 2, 5, 6, 8]] = True                     # holes (e.g. masked tool output)
    mask[4, 3] = True                                   # a single token
    # row 5 empty
    (adv, ret), _ = gae_advantages(rewards, values, mask, gamma=gamma, lam=lam)
    assert torch.allclose(adv, gae_loop(rewards, values, mask, gamma, lam), atol=1e-12)
    assert torch.allclose(ret, torch.where(mask, adv + values, 0.0), atol=1e-12)
    assert torch.equal(adv[5], torch.zeros(T, dtype=F64))


def test_gae_padded_values_and_rewards_do_not_matter():
    g = torch.Generator().manual_seed(1)
    values = torch.randn(3, 7, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0, 0], [0, 0, 1, 1, 1, 1, 1]]).bool()
    token_r = torch.randn(3, 7, generator=g)
    (a1, r1), _ = gae_advantages(token_r, values, mask, gamma=0.95, lam=0.9)
    junk_v = torch.where(mask, values, torch.full_like(values, float("nan")))
    junk_r = torch.where(mask, token_r, torch.full_like(values, 1e30))
    (a2, r2), _ = gae_advantages(junk_r, junk_v, mask, gamma=0.95, lam=0.9)
    assert torch.equal(a1, a2) and torch.equal(r1, r2)


def test_gae_right_padding_equals_trimmed_rows():
    g = torch.Generator().manual_seed(2)
    lengths = [5, 2, 7]
    values = torch.randn(3, 7, generator=g, dtype=F64)
    rewards = torch.tensor([1.0, 0.0, 0.5], dtype=F64)
    mask = torch.arange(7)[None, :] < torch.tensor(lengths)[:, None]
    (adv, _), _ = gae_advantages(rewards, values, mask, gamma=0.97, lam=0.9)
    for b, L in enumerate(lengths):
        (row, _), _ = gae_advantages(rewards[b:b + 1], values[b:b + 1, :L], torch.ones(1, L), gamma=0.97, lam=0.9)
        assert torch.allclose(adv[b, :L], row[0], atol=1e-14)


def test_sequence_rewards_land_on_last_valid_token():
    mask = torch.tensor([[1, 1, 0], [0, 1, 1], [0, 0, 0], [1, 0, 1]])
    out = place_sequence_rewards(torch.tensor([1.0, 2.0, 3.0, 4.0]), mask)
    assert torch.equal(out, torch.tensor([[0, 1.0, 0], [0, 0, 2.0], [0, 0, 0], [0, 0, 4.0]]))


def test_gae_whitening():
    g = torch.Generator().manual_seed(3)
    values = torch.randn(4, 6, generator=g, dtype=F64)
    rewards = torch.randn(4, generator=g, dtype=F64)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 3, 5, 1])[:, None]
    (raw, ret), _ = gae_advantages(rewards, values, mask)
    (white, ret_w), _ = gae_advantages(rewards, values, mask, whiten=True)
    valid = white[mask]
    assert valid.mean().abs().item() < 1e-12
    assert valid.var(unbiased=True).item() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(white[~mask], torch.zeros_like(white[~mask]))
    assert torch.allclose(masked_whiten(raw, mask), white)
    assert torch.equal(ret_w, ret)                       # returns are not whitened


def test_registry():
    assert set(ADVANTAGE_ESTIMATORS) == {"grpo", "dr_grpo", "rloo", "gae"}
    assert get_advantage_estimator("rloo") is rloo_advantages
    with pytest.raises(KeyError, match="expected one of"):
        get_advantage_estimator("ppo2")
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    for name in ("grpo", "dr_grpo", "rloo"):
        adv, metrics = get_advantage_estimator(name)(r, 2)
        assert adv.shape == (4,) and all(not v.requires_grad for v in metrics.values())


def test_estimate_advantages_gives_every_registered_estimator_one_signature():
    from retainrl.rl import estimate_advantages

    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    for name in ("grpo", "dr_grpo", "rloo"):
        adv, returns, _ = estimate_advantages(name, r, 3)
        assert returns is None and torch.equal(adv, get_advantage_estimator(name)(r, 3)[0])
    values, mask = torch.zeros(2, 3), torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    adv, returns, _ = estimate_advantages("gae", torch.tensor([1.0, 0.0]), 1, values=values, mask=mask, gamma=1.0,
                                          lam=1.0, whiten=False)
    # zero values, gamma = lam = 1: advantage = return = the final reward at every earlier token
    assert torch.equal(returns[mask], torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0]))
    assert torch.equal(adv[mask], returns[mask])


def test_algorithms_name_registered_parts():
    from retainrl.rl import ALGORITHMS, POLICY_LOSSES, get_algorithm

    for algo in ALGORITHMS.values():
        assert algo.advantages in ADVANTAGE_ESTIMATORS and algo.policy_loss in POLICY_LOSSES
    assert get_algorithm("ppo").critic and not get_algorithm("grpo").critic
    with pytest.raises(KeyError, match="unknown algorithm"):
        get_algorithm("dpo")
