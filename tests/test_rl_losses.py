"""Losses: hand-computed numbers, clipping at both sides, mask invariance, and gradient
accumulation (batch 8 x 1 == batch 1 x 8 == batch 2 x 4) in every aggregation mode."""

from __future__ import annotations

import math

import pytest
import torch

from retainrl.rl import (
    AGGREGATIONS,
    POLICY_LOSSES,
    aggregate,
    aggregation_counts,
    clipped_policy_loss,
    entropy_bonus,
    get_policy_loss,
    kl_penalty,
    policy_objective,
    reinforce_loss,
    sequence_logprobs,
    token_entropy,
    value_loss,
)

F64 = torch.float64
E = math.exp


# ---------------------------------------------------------------------------------------------
# Aggregation


def test_aggregate_by_hand():
    # x = [[1, 2, 3], [4, pad, pad], [pad, pad, pad]]
    #   token_mean              = (1 + 2 + 3 + 4) / 4                 = 2.5
    #   seq_mean_token_mean     = (mean(1, 2, 3) + mean(4)) / 2 = (2 + 4) / 2 = 3
    #   seq_mean_token_sum_norm = (6 + 4) / (2 sequences * max_len 3) = 10 / 6
    # The empty third row is padding: it counts in no denominator.
    x = torch.tensor([[1.0, 2, 3], [4, 50, 60], [7, 8, 9]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    assert aggregate(x, mask, "token_mean").item() == pytest.approx(2.5)
    assert aggregate(x, mask, "seq_mean_token_mean").item() == pytest.approx(3.0)
    assert aggregate(x, mask, "seq_mean_token_sum_norm").item() == pytest.approx(10 / 6)
    assert aggregate(x, mask, "seq_mean_token_sum_norm", max_len=5).item() == pytest.approx(1.0)
    # Global denominators replace the local ones.
    assert aggregate(x, mask, "token_mean", num_tokens_global=10).item() == pytest.approx(1.0)
    assert aggregate(x, mask, "seq_mean_token_mean", num_seqs_global=4).item() == pytest.approx(1.5)
    counts = aggregation_counts(mask)
    assert counts["num_tokens"].item() == 4 and counts["num_seqs"].item() == 2
    with pytest.raises(ValueError):
        aggregate(x, mask, "sum")
    # An all-padding batch aggregates to 0, not NaN.
    assert aggregate(x, torch.zeros(3, 3), "token_mean").item() == 0.0


# ---------------------------------------------------------------------------------------------
# Clipped policy loss


def _clip_example():
    # Two rows over the same log-ratios d = (0.1, -0.1, 0.3, ln 0.7):
    #   ratios r = (e^0.1, e^-0.1, e^0.3, 0.7) = (1.10517, 0.90484, 1.34986, 0.7); clip to [0.8, 1.2]
    # Row 0, A = +1: loss = -min(r, clip r) = (-e^0.1, -e^-0.1, -1.2 [clipped], -0.7 [not clipped:
    #   the pessimistic bound keeps the unclipped 0.7])
    # Row 1, A = -1: loss = max(r, clip r) = (e^0.1, e^-0.1, e^0.3 [not clipped], 0.8 [clipped])
    old = torch.full((2, 4), -1.0, dtype=F64)
    d = torch.tensor([0.1, -0.1, 0.3, math.log(0.7)], dtype=F64)
    logp = (old + d).clone().requires_grad_(True)
    adv = torch.tensor([1.0, -1.0], dtype=F64)
    return logp, old, adv, torch.ones(2, 4, dtype=torch.bool)


def test_clipped_policy_loss_by_hand():
    logp, old, adv, mask = _clip_example()
    loss, m = clipped_policy_loss(logp, old, adv, mask, clip_eps_low=0.2)
    row0 = [-E(0.1), -E(-0.1), -1.2, -0.7]
    row1 = [E(0.1), E(-0.1), E(0.3), 0.8]
    assert loss.item() == pytest.approx(sum(row0 + row1) / 8, rel=1e-12)     # = 0.0312323...
    assert m["policy/clip_frac"].item() == pytest.approx(2 / 8)
    assert m["policy/clip_frac_high"].item() == pytest.approx(1 / 8)           # row 0, token 2
    assert m["policy/clip_frac_low"].item() == pytest.approx(1 / 8)            # row 1, token 3
    # approx KL = mean of (r - 1) - log r = ((e^.1 - 1.1) + (e^-.1 - .9) + (e^.3 - 1.3) + (0.7 - 1 - ln .7)) / 4
    kl = ((E(0.1) - 1.1) + (E(-0.1) - 0.9) + (E(0.3) - 1.3) + (-0.3 - math.log(0.7))) / 4
    assert m["policy/approx_kl"].item() == pytest.approx(kl, rel=1e-12)       # = 0.0291355...
    assert m["policy/ratio_max"].item() == pytest.approx(E(0.3))
    assert m["policy/ratio_min"].item() == pytest.approx(0.7)
    # Gradient: d(-A r)/d logp = -A r on unclipped tokens, 0 where the clipped branch is active.
    loss.backward()
    grad = torch.tensor([[-E(0.1), -E(-0.1), 0.0, -0.7], [E(0.1), E(-0.1), E(0.3), 0.0]], dtype=F64) / 8
    assert torch.allclose(logp.grad, grad, rtol=1e-12, atol=1e-15)
    assert all(not v.requires_grad for v in m.values())


def test_clip_higher_is_asymmetric():
    # r = e^0.22 = 1.246 with A > 0: clipped by eps_high = 0.2 (to 1.2) but not by 0.28.
    # r = e^-0.25 = 0.779 with A < 0: clipped below by eps_low = 0.2 (to 0.8) in both settings.
    old = torch.zeros(1, 2, dtype=F64)
    logp = torch.tensor([[0.22, -0.25]], dtype=F64)
    mask = torch.ones(1, 2)
    pos, neg = torch.tensor([1.0], dtype=F64), torch.tensor([-1.0], dtype=F64)
    l_sym, _ = clipped_policy_loss(logp[:, :1], old[:, :1], pos, mask[:, :1], clip_eps_low=0.2)
    l_dapo, m = clipped_policy_loss(logp[:, :1], old[:, :1], pos, mask[:, :1], clip_eps_low=0.2, clip_eps_high=0.28)
    assert l_sym.item() == pytest.approx(-1.2) and l_dapo.item() == pytest.approx(-E(0.22))
    assert m["policy/clip_frac"].item() == 0.0
    l_low, m = clipped_policy_loss(logp[:, 1:], old[:, 1:], neg, mask[:, 1:], clip_eps_low=0.2, clip_eps_high=0.28)
    assert l_low.item() == pytest.approx(0.8) and m["policy/clip_frac_low"].item() == 1.0
    # Above 1 + eps_high with A > 0 the loss is flat at -(1 + eps_high).
    l_hi, _ = clipped_policy_loss(torch.tensor([[0.5]]), torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1),
                                  clip_eps_low=0.2, clip_eps_high=0.28)
    assert l_hi.item() == pytest.approx(-1.28)


def test_clipped_loss_aggregation_modes_by_hand():
    # Same example, row 1 keeps only its first two tokens:
    #   per-token losses row 0: (-e^.1, -e^-.1, -1.2, -0.7), row 1: (e^.1, e^-.1)
    #   token_mean = (row0 sum + row1 sum) / 6; seq_mean_token_mean = (row0 sum / 4 + row1 sum / 2) / 2
    #   seq_mean_token_sum_norm (max_len 8) = (row0 sum + row1 sum) / (2 * 8)
    logp, old, adv, _ = _clip_example()
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    s0 = -E(0.1) - E(-0.1) - 1.2 - 0.7
    s1 = E(0.1) + E(-0.1)
    cases = {"token_mean": (s0 + s1) / 6, "seq_mean_token_mean": (s0 / 4 + s1 / 2) / 2,
             "seq_mean_token_sum_norm": (s0 + s1) / 16}
    for agg, expected in cases.items():
        loss, _ = clipped_policy_loss(logp, old, adv, mask, agg=agg, max_len=8)
        assert loss.item() == pytest.approx(expected, rel=1e-12), agg


def test_on_policy_clipped_gradient_equals_reinforce():
    # With old = logp.detach(), r = 1 and d r / d logp = 1: the clipped loss has the same
    # gradient as -A logp (and the same value up to the constant -A).
    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(3, 5, generator=g, dtype=F64)).requires_grad_(True)
    adv, mask = torch.randn(3, generator=g, dtype=F64), torch.rand(3, 5, generator=g) > 0.3
    for agg in AGGREGATIONS:
        g1 = torch.autograd.grad(clipped_policy_loss(logp, logp.detach(), adv, mask, agg=agg)[0], logp)[0]
        g2 = torch.autograd.grad(reinforce_loss(logp, adv, mask, agg=agg)[0], logp)[0]
        assert torch.allclose(g1, g2, rtol=1e-12, atol=1e-15), agg


# ---------------------------------------------------------------------------------------------
# REINFORCE, KL, entropy, value


def test_reinforce_by_hand():
    # -A logp with A = (1, -2): row 0 (-1, -2) -> (1, 2); row 1 (-0.5, pad) -> (-1).
    #   token_mean = (1 + 2 - 1) / 3 = 2/3; seq_mean_token_mean = (1.5 + (-1)) / 2 = 0.25;
    #   seq_mean_token_sum_norm = (3 - 1) / (2 * T=2) = 0.5. Gradient (token_mean) = -A / 3.
    logp = torch.tensor([[-1.0, -2.0], [-0.5, 9.0]], dtype=F64, requires_grad=True)
    adv, mask = torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([[1, 1], [1, 0]])
    loss, m = reinforce_loss(logp, adv, mask)
    assert loss.item() == pytest.approx(2 / 3)
    assert reinforce_loss(logp, adv, mask, agg="seq_mean_token_mean")[0].item() == pytest.approx(0.25)
    assert reinforce_loss(logp, adv, mask, agg="seq_mean_token_sum_norm")[0].item() == pytest.approx(0.5)
    assert m["policy/logprob_mean"].item() == pytest.approx(-3.5 / 3)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-1 / 3, -1 / 3], [2 / 3, 0.0]], dtype=F64))


def test_k3_kl_by_hand():
    # logp = (-1, -2), ref = (-1.1, -1.8): x = ref - logp = (-0.1, 0.2)
    #   k3 = e^x - x - 1 = (e^-0.1 + 0.1 - 1, e^0.2 - 0.2 - 1) = (0.0048374, 0.0214028); mean 0.0131201
    #   d k3 / d logp = 1 - e^x = (1 - e^-0.1, 1 - e^0.2) = (0.0951626, -0.2214028), / 2 tokens
    #   k1 = logp - ref = (0.1, -0.2) -> mean -0.05; k2 = (0.01, 0.04) / 2 -> mean 0.0125
    logp = torch.tensor([[-1.0, -2.0]], dtype=F64, requires_grad=True)
    ref = torch.tensor([[-1.1, -1.8]], dtype=F64)
    mask = torch.ones(1, 2)
    loss, m = kl_penalty(logp, ref, mask)
    k3 = [E(-0.1) + 0.1 - 1, E(0.2) - 0.2 - 1]
    assert loss.item() == pytest.approx(sum(k3) / 2, rel=1e-12)
    assert m["policy/ref_kl_max"].item() == pytest.approx(k3[1], rel=1e-12)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[1 - E(-0.1), 1 - E(0.2)]], dtype=F64) / 2, rtol=1e-12)
    assert kl_penalty(logp, ref, mask, estimator="k1")[0].item() == pytest.approx(-0.05)
    assert kl_penalty(logp, ref, mask, estimator="k2")[0].item() == pytest.approx(0.0125)
    # k3 >= 0 and exactly 0 at ref == logp.
    assert kl_penalty(logp, logp.detach(), mask)[0].item() == 0.0
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, mask, estimator="k4")


def test_token_entropy_by_hand_and_stability():
    # Uniform over 4: ln 4. Logits (0, ln 3): p = (1/4, 3/4), H = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.5623351.
    # (0, -inf, -inf): a point mass, H = 0 exactly, with a finite gradient.
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3), -math.inf, -math.inf],
                            [0.0, -math.inf, -math.inf, -math.inf]]], dtype=F64, requires_grad=True)
    h = token_entropy(logits)
    expected = [math.log(4), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), 0.0]
    assert torch.allclose(h, torch.tensor([expected], dtype=F64), atol=1e-15)
    h.sum().backward()
    assert torch.isfinite(logits.grad).all()
    # Random logits: agrees with torch.distributions.Categorical; huge scales stay finite.
    z = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0), dtype=F64) * 4
    ref = torch.distributions.Categorical(logits=z).entropy()
    assert torch.allclose(token_entropy(z), ref, atol=1e-12)
    assert torch.allclose(token_entropy(z, chunk_size=2), ref, atol=1e-12)
    big = token_entropy((z * 1e4).float())
    assert torch.isfinite(big).all() and (big >= -1e-6).all()
    low = token_entropy(z.to(torch.bfloat16))
    assert low.dtype == torch.float32
    assert torch.allclose(low.double(), torch.distributions.Categorical(logits=z.to(torch.bfloat16).double()).entropy(), atol=1e-5)


def test_entropy_bonus_from_logits_or_entropies():
    z = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    ent = token_entropy(z)
    v1, m1 = entropy_bonus(mask, logits=z)
    v2, _ = entropy_bonus(mask, entropies=ent)
    assert v1.item() == pytest.approx((ent[0, 0] + ent[0, 1] + ent[1, 0]).item() / 3, rel=1e-6)
    assert v1.item() == pytest.approx(v2.item()) and m1["policy/entropy"].item() == pytest.approx(v1.item())
    with pytest.raises(ValueError):
        entropy_bonus(mask)


def test_value_loss_by_hand():
    # V = (1, 2, 2), V_old = (1.1, 1.5, 1.5), R = (1.5, 1, 3), clip 0.2:
    #   t0: (V - R)^2 = 0.25; V_clip = 1.1 + clamp(-0.1) = 1.0 -> 0.25; max/2 = 0.125
    #   t1: (2 - 1)^2 = 1;    V_clip = 1.5 + 0.2 = 1.7 -> 0.49;     max/2 = 0.5
    #   t2: (2 - 3)^2 = 1;    V_clip = 1.7 -> 1.69 (clipped branch active); max/2 = 0.845
    #   token_mean = (0.125 + 0.5 + 0.845) / 3 = 0.49; clip_frac = 1/3
    #   grad: t0: (V - R) / 3 = -1/6, t1: 1/3, t2: 0 (clamp saturated)
    #   explained var: Var(R - V) = Var((0.5, -1, 1)) = 13/18 = Var(R) -> 0
    v = torch.tensor([[1.0, 2.0, 2.0]], dtype=F64, requires_grad=True)
    old = torch.tensor([[1.1, 1.5, 1.5]], dtype=F64)
    ret = torch.tensor([[1.5, 1.0, 3.0]], dtype=F64)
    mask = torch.ones(1, 3)
    loss, m = value_loss(v, old, ret, mask, clip_range=0.2)
    assert loss.item() == pytest.approx(0.49, rel=1e-12)
    assert m["value/clip_frac"].item() == pytest.approx(1 / 3)
    assert m["value/explained_var"].item() == pytest.approx(0.0, abs=1e-12)
    loss.backward()
    assert torch.allclose(v.grad, torch.tensor([[-1 / 6, 1 / 3, 0.0]], dtype=F64), rtol=1e-12)
    # No clipping: 0.5 * (0.25 + 1 + 1) / 3 = 0.375.
    assert value_loss(v, old, ret, mask, clip_range=None)[0].item() == pytest.approx(0.375)


def test_policy_objective_combines_and_namespaces():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 6, generator=g, requires_grad=True)
    tokens = torch.randint(0, 6, (2, 4), generator=g)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    logp = sequence_logprobs(logits, tokens)
    pol = clipped_policy_loss(logp, logp.detach() + 0.05, torch.tensor([1.0, -0.5]), mask)
    kl = kl_penalty(logp, logp.detach() - 0.1, mask)
    ent = entropy_bonus(mask, logits=logits)
    total, m = policy_objective(pol, kl=kl, kl_coef=0.1, entropy=ent, entropy_coef=0.01)
    assert total.item() == pytest.approx(pol[0].item() + 0.1 * kl[0].item() - 0.01 * ent[0].item(), rel=1e-6)
    for key in ("loss/policy", "loss/kl", "loss/entropy", "loss/total", "policy/clip_frac",
                "policy/approx_kl", "policy/entropy", "policy/ref_kl"):
        assert key in m and not m[key].requires_grad, key
    assert "loss/value" not in m
    total.backward()
    assert torch.isfinite(logits.grad).all()
    only, m2 = policy_objective(pol)
    assert only is pol[0] and set(m2) == set(pol[1]) | {"loss/policy", "loss/total"}


def test_registry():
    assert get_policy_loss("grpo") is clipped_policy_loss and POLICY_LOSSES["rloo"] is reinforce_loss
    with pytest.raises(KeyError, match="expected one of"):
        get_policy_loss("dpo")


# ---------------------------------------------------------------------------------------------
# sequence_logprobs


def test_sequence_logprobs_by_hand_and_against_log_softmax():
    # Logits (0, ln 3), token 1: log(3 / 4) = -0.2876821.
    lp = sequence_logprobs(torch.tensor([[[0.0, math.log(3)]]], dtype=F64), torch.tensor([[1]]))
    assert lp.item() == pytest.approx(math.log(0.75), rel=1e-14)
    g = torch.Generator().manual_seed(3)
    full = torch.randn(3, 9, 13, generator=g, dtype=F64)
    logits = full[:, :-1].requires_grad_(False)                  # a non-contiguous slice
    tokens = torch.randint(0, 13, (3, 8), generator=g)
    ref = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    assert torch.allclose(sequence_logprobs(logits, tokens), ref, atol=1e-14)
    assert torch.allclose(sequence_logprobs(logits, tokens, chunk_size=3), ref, atol=1e-14)
    # Gradients match log_softmax's.
    a = full.clone().requires_grad_(True)
    b = full.clone().requires_grad_(True)
    sequence_logprobs(a[:, :-1], tokens, chunk_size=5).sum().backward()
    torch.log_softmax(b[:, :-1], -1).gather(-1, tokens[..., None]).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-14)
    # Stable at huge scales; bf16 upcast to float32.
    big = sequence_logprobs((logits * 1e4).float(), tokens)
    assert torch.isfinite(big).all() and (big <= 0).all()
    low = sequence_logprobs(logits.to(torch.bfloat16), tokens)
    assert low.dtype == torch.float32
    low_ref = torch.log_softmax(logits.to(torch.bfloat16).double(), -1).gather(-1, tokens[..., None]).squeeze(-1)
    assert torch.allclose(low.double(), low_ref, atol=1e-5)
    with pytest.raises(ValueError):
        sequence_logprobs(logits, tokens[:, :-1])


# ---------------------------------------------------------------------------------------------
# Masks: padded values never matter


def test_padded_positions_do_not_change_losses_or_gradients():
    g = torch.Generator().manual_seed(4)
    B, T = 3, 5
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [0, 1, 1, 1, 1]]).bool()
    base = {name: torch.randn(B, T, generator=g, dtype=F64) * 0.3 - 1.0
            for name in ("logp", "old", "ref", "values", "old_values", "returns", "adv")}
    junk_values = (float("nan"), float("inf"), -1e30, 1e4)

    def run(t, agg):
        logp = t["logp"].clone().requires_grad_(True)
        vals = t["values"].clone().requires_grad_(True)
        out = [clipped_policy_loss(logp, t["old"], t["adv"], mask, agg=agg)[0],
               reinforce_loss(logp, t["adv"], mask, agg=agg)[0],
               kl_penalty(logp, t["ref"], mask, agg=agg)[0],
               entropy_bonus(mask, entropies=logp, agg=agg)[0],
               value_loss(vals, t["old_values"], t["returns"], mask, agg=agg)[0]]
        grads = torch.autograd.grad(sum(out), (logp, vals))
        return torch.stack(out).detach(), grads

    for agg in AGGREGATIONS:
        clean, clean_grads = run(base, agg)
        for k, junk in enumerate(junk_values):
            dirty = {name: torch.where(mask, x, torch.full_like(x, junk_values[(k + i) % 4]))
                     for i, (name, x) in enumerate(base.items())}
            losses, grads = run(dirty, agg)
            assert torch.equal(losses, clean), (agg, junk)
            for gr, cg in zip(grads, clean_grads):
                assert torch.equal(gr, cg) and torch.equal(gr[~mask], torch.zeros_like(gr[~mask]))


# ---------------------------------------------------------------------------------------------
# Gradient accumulation: batch 8 x accumulation 1 == batch 1 x 8 == batch 2 x 4


def _tiny_problem(seed=5):
    """Shared parameters (W: features -> logits, w_v: features -> value) and a fixed batch."""
    g = torch.Generator().manual_seed(seed)
    B, T, F, V = 8, 7, 4, 6
    lengths = torch.tensor([7, 3, 5, 1, 6, 0, 4, 7])          # one empty row (padding)
    data = {
        "x": torch.randn(B, T, F, generator=g, dtype=F64),
        "tokens": torch.randint(0, V, (B, T), generator=g),
        "mask": torch.arange(T)[None, :] < lengths[:, None],
        "adv": torch.randn(B, generator=g, dtype=F64),
        "old_noise": 0.2 * torch.randn(B, T, generator=g, dtype=F64),
        "ref_noise": 0.2 * torch.randn(B, T, generator=g, dtype=F64),
        "returns": torch.randn(B, T, generator=g, dtype=F64),
        "old_values": torch.randn(B, T, generator=g, dtype=F64),
    }
    params = (torch.randn(F, V, generator=g, dtype=F64), torch.randn(F, generator=g, dtype=F64))
    return data, params, lengths


def _objective(params, d, norm):
    """Full PPO-style objective on micro-batch d: clipped policy + k3 KL + entropy + value."""
    W, w_v = params
    logits = d["x"] @ W                                         # (b, t, V)
    values = d["x"] @ w_v                                       # (b, t)
    logp = sequence_logprobs(logits, d["tokens"])
    with torch.no_grad():
        old = logp + d["old_noise"]                             # ratios away from 1: some clip
        ref = logp + d["ref_noise"]
    m = d["mask"]
    total, _ = policy_objective(
        clipped_policy_loss(logp, old, d["adv"], m, clip_eps_low=0.1, clip_eps_high=0.15, **norm),
        kl=kl_penalty(logp, ref, m, **norm), kl_coef=0.3,
        entropy=entropy_bonus(m, logits=logits, **norm), entropy_coef=0.05,
        value=value_loss(values, d["old_values"], d["returns"], m, clip_range=0.2, **norm), value_coef=0.5)
    return total


def _accumulated_grad(params, data, lengths, rows_per_micro, norm_fn, trim=True):
    W = params[0].clone().requires_grad_(True)
    w_v = params[1].clone().requires_grad_(True)
    total = 0.0
    for start in range(0, data["x"].shape[0], rows_per_micro):
        rows = slice(start, start + rows_per_micro)
        width = int(lengths[rows].max()) if trim else data["x"].shape[1]   # pad to the micro-batch
        micro = {k: v[rows, :width] if v.dim() >= 2 else v[rows] for k, v in data.items()}
        loss = _objective((W, w_v), micro, norm_fn(micro))
        loss.backward()                                         # gradients accumulate in .grad
        total = total + loss.detach()
    return total, W.grad, w_v.grad


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_gradient_accumulation_matches_full_batch(agg):
    data, params, lengths = _tiny_problem()
    counts = aggregation_counts(data["mask"])
    T = data["x"].shape[1]                                      # generation budget (max_len)

    def global_norm(_micro):
        return {"agg": agg, "num_tokens_global": counts["num_tokens"],
                "num_seqs_global": counts["num_seqs"], "max_len": T}

    full_loss, gW, gv = _accumulated_grad(params, data, lengths, 8, global_norm, trim=False)
    # The global denominators equal the local ones on the full batch (except max_len == T).
    W = params[0].clone().requires_grad_(True)
    local = _objective((W, params[1]), data, {"agg": agg})
    assert local.item() == pytest.approx(full_loss.item(), rel=1e-12)
    for rows in (1, 2):
        loss, gW2, gv2 = _accumulated_grad(params, data, lengths, rows, global_norm)
        assert loss.item() == pytest.approx(full_loss.item(), rel=1e-12)
        assert torch.allclose(gW2, gW, rtol=1e-10, atol=1e-13), (agg, rows)
        assert torch.allclose(gv2, gv, rtol=1e-10, atol=1e-13), (agg, rows)


def test_local_normalisation_breaks_token_mean_accumulation():
    # Why num_tokens_global exists: averaging per-micro-batch token means weighs a token of
    # a 1-token answer 7x more than a token of a 7-token answer.
    data, params, lengths = _tiny_problem()
    _, gW, _ = _accumulated_grad(params, data, lengths, 8, lambda m: {"agg": "token_mean"})
    n_micro = 7                                                 # non-empty micro-batches

    def naive(micro):
        return {"agg": "token_mean"}

    _, gW_naive, _ = _accumulated_grad(params, data, lengths, 1, naive)
    assert not torch.allclose(gW_naive / n_micro, gW, rtol=1e-3)


def test_policy_loss_gives_every_registered_loss_one_signature():
    from retainrl.rl import policy_loss

    lp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]])
    old = lp - 0.5  # ratio e^0.5 > 1 + clip: the clip matters for the ratio losses
    adv, mask = torch.tensor([1.0, -1.0]), torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    a, _ = policy_loss("grpo", lp, old, adv, mask, clip_eps_low=0.2, clip_eps_high=0.2)
    b, _ = clipped_policy_loss(lp, old, adv, mask, clip_eps_low=0.2, clip_eps_high=0.2)
    assert torch.equal(a, b)
    c, _ = policy_loss("rloo", lp, old, adv, mask, clip_eps_low=0.2, clip_eps_high=0.2)  # no ratio: old ignored
    assert torch.equal(c, reinforce_loss(lp, adv, mask)[0])
    assert float(c) == pytest.approx(-(-1.0 - 2.0 + 0.5) / 3)
