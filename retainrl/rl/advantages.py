"""Advantage estimators: pure functions on tensors, no gradient flows through them.

Each returns `(value, metrics)` with detached 0-dim metric tensors under "adv/", "reward/",
"returns/" and "values/".

Group layout (GRPO, RLOO): rewards (B,) hold n = group_size samples per prompt, contiguous:
sample j of prompt i sits at index i * n + j, so rewards.view(num_prompts, n) are the groups.

  grpo_advantages  (r - mean_group) / (std_group + eps) (Shao et al. 2024, "outcome
                   supervision"). std is Bessel-corrected by default (torch.std, as TRL and
                   verl do; the paper does not say); `unbiased_std=False` gives the population
                   std. `scale_by_std=False` drops the division (Dr. GRPO, Liu et al. 2025:
                   the std scaling up-weights near-solved and near-failed prompts). A group
                   of one has zero advantage; so does a group whose rewards are all equal
                   (no learning signal; reported as adv/frac_zero_std_groups).
  rloo_advantages  leave-one-out baseline A_i = r_i - mean_{j != i} r_j = n / (n - 1) (r_i -
                   mean) (Kool et al. 2019; Ahmadian et al. 2024). n = 1 has no baseline: the
                   advantage is defined as 0 (the sample is dropped), like GRPO's.
  gae_advantages   GAE (Schulman et al. 2016) on token-level values for PPO. The sequence
                   reward sits on the last valid token (or pass token rewards (B, T)); the
                   episode ends after the last valid token (bootstrap value 0, truncated or
                   not). Masked positions are transparent: the recursion skips them, carrying
                   the next valid token's value and advantage across, so right padding, left
                   padding and masked-out spans inside a response all work. Returns are
                   advantages + values, computed before optional whitening (as in PPO
                   implementations); whitening uses the masked mean and Bessel-corrected
                   variance over valid tokens of the batch.
"""

from __future__ import annotations

import torch

from retainrl.rl.losses import Metrics, _bool, masked_mean, masked_var


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) -> (num_prompts, n) float view, validated."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be (B,), got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.shape[0] % group_size:
        raise ValueError(f"B = {rewards.shape[0]} is not a multiple of group_size = {group_size}")
    r = rewards.detach()
    r = r if r.is_floating_point() else r.float()
    return r.view(-1, group_size)


def _reward_metrics(r: torch.Tensor, adv: torch.Tensor) -> Metrics:
    flat = r.reshape(-1)
    return {
        "reward/mean": flat.mean(),
        "reward/std": flat.std(unbiased=False),
        "adv/mean": adv.mean(),
        "adv/std": adv.std(unbiased=False),
        "adv/abs_max": adv.abs().max(),
        "adv/frac_zero_std_groups": (r.amax(1) == r.amin(1)).to(r.dtype).mean(),
    }


@torch.no_grad()
def grpo_advantages(rewards: torch.Tensor, group_size: int, *, scale_by_std: bool = True,
                    unbiased_std: bool = True, eps: float = 1e-6) -> tuple[torch.Tensor, Metrics]:
    """Group-normalised advantages: rewards (B,) -> advantages (B,), same float dtype.

    A_i = (r_i - mean_g) / (std_g + eps) per group g of `group_size` contiguous samples, or
    r_i - mean_g with scale_by_std=False (Dr. GRPO). n = 1 gives zeros.
    """
    r = _groups(rewards, group_size)                                        # (P, n)
    centred = r - r.mean(dim=1, keepdim=True)
    if scale_by_std:
        if group_size > 1:
            std = r.std(dim=1, keepdim=True, unbiased=unbiased_std)
        else:
            std = torch.zeros_like(r)
        centred = centred / (std + eps)
    return centred.reshape(-1), _reward_metrics(r, centred)


@torch.no_grad()
def rloo_advantages(rewards: torch.Tensor, group_size: int) -> tuple[torch.Tensor, Metrics]:
    """Leave-one-out advantages: rewards (B,) -> (B,), A_i = r_i - (sum_g - r_i) / (n - 1).

    Groups of `group_size` contiguous samples; n = 1 gives zeros (no baseline exists).
    """
    r = _groups(rewards, group_size)                                        # (P, n)
    if group_size == 1:
        adv = torch.zeros_like(r)
    else:
        adv = r - (r.sum(dim=1, keepdim=True) - r) / (group_size - 1)
    return adv.reshape(-1), _reward_metrics(r, adv)


def place_sequence_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sequence rewards (B,) -> token rewards (B, T), each on its row's last valid token.

    Rows with no valid token get no reward. Output dtype: rewards' float dtype.
    """
    m = _bool(mask)
    r = rewards.detach()
    r = r if r.is_floating_point() else r.float()
    T = m.shape[-1]
    last = (torch.arange(T, device=m.device) * m).argmax(dim=-1)            # (B,) last valid index
    out = torch.zeros(m.shape, dtype=r.dtype, device=r.device)
    out.scatter_(1, last[:, None], r[:, None])
    return torch.where(m, out, torch.zeros_like(out))


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over the valid entries of x (B, T); 0 elsewhere."""
    m = _bool(mask)
    mean, var = masked_mean(x, m), masked_var(x, m, unbiased=True)
    out = (x - mean) * torch.rsqrt(var + eps)
    return torch.where(m, out, torch.zeros_like(out))


@torch.no_grad()
def gae_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *,
                   gamma: float = 1.0, lam: float = 1.0, whiten: bool = False,
                   eps: float = 1e-8) -> tuple[tuple[torch.Tensor, torch.Tensor], Metrics]:
    """Generalised advantage estimation over valid tokens.

    rewards: (B,) sequence rewards (put on each row's last valid token) or (B, T) token rewards.
    values:  (B, T) value estimates V(s_t) (detached here). mask: (B, T).
    Recursion over valid tokens t < t' (t' the next valid token, none after the last):
        delta_t = r_t + gamma * V_{t'} - V_t,   A_t = delta_t + gamma * lam * A_{t'}.
    Returns ((advantages (B, T), returns (B, T)), metrics); both are 0 at masked positions;
    returns = advantages + values (before whitening); `whiten` whitens the advantages.
    """
    m = _bool(mask)
    if values.shape != m.shape or values.dim() != 2:
        raise ValueError(f"values and mask must be (B, T), got {tuple(values.shape)} and {tuple(m.shape)}")
    v = torch.where(m, values.detach(), torch.zeros_like(values))
    r = place_sequence_rewards(rewards, m) if rewards.dim() == 1 else rewards.detach()
    r = torch.where(m, r.to(v.dtype), torch.zeros_like(v))
    next_value = torch.zeros_like(v[:, 0])                                  # (B,)
    next_adv = torch.zeros_like(v[:, 0])
    adv = torch.zeros_like(v)
    for t in reversed(range(v.shape[1])):
        a = r[:, t] + gamma * next_value - v[:, t] + gamma * lam * next_adv
        valid = m[:, t]
        adv[:, t] = torch.where(valid, a, torch.zeros_like(a))
        next_value = torch.where(valid, v[:, t], next_value)
        next_adv = torch.where(valid, a, next_adv)
    returns = torch.where(m, adv + v, torch.zeros_like(v))
    if whiten:
        adv = masked_whiten(adv, m, eps)
    metrics = {
        "adv/mean": masked_mean(adv, m),
        "adv/std": masked_var(adv, m, unbiased=False).sqrt(),
        "returns/mean": masked_mean(returns, m),
        "values/mean": masked_mean(v, m),
    }
    return (adv, returns), metrics
