"""Policy-gradient losses for RL with verifiable rewards: pure functions on tensors.

Every loss returns `(value, metrics)`: `value` is a scalar tensor that carries the gradient,
`metrics` a dict of detached 0-dim tensors under namespaced keys ("policy/clip_frac", ...).
Nothing here calls .item(), so nothing forces a GPU sync; call float() when logging. Metrics
are plain token means over the micro-batch at hand, whatever the loss aggregation.

Shapes: B sequences, T token positions, V vocabulary. `mask` (B, T), bool or 0/1, marks the
tokens that count (the generated response) and is False on prompt and padding. Per-token
inputs (log-probs, advantages, values, returns, entropies) at masked positions never reach the
loss or its gradient, even when they are inf or NaN: they are zeroed with torch.where before
any arithmetic, so their gradient is exactly 0. (Logits are assumed finite, -inf aside.)

Aggregation (the `agg` argument; `aggregate`): how per-token terms x (B, T) become a number.
  "token_mean"               sum_{b,t} m x / sum_{b,t} m: every token weighs the same, long
                             answers weigh more (DAPO, Yu et al. 2025, "token-level policy
                             gradient loss"; verl "token-mean").
  "seq_mean_token_mean"      mean over sequences of each sequence's token mean: every answer
                             weighs the same, so a token of a short answer weighs more (the
                             original GRPO, Shao et al. 2024, eq. 3; the length bias that
                             Dr. GRPO removes).
  "seq_mean_token_sum_norm"  sum_{b,t} m x / (num_seqs * max_len): per-sequence token sums over
                             a constant (Dr. GRPO, Liu et al. 2025, "Understanding R1-Zero-Like
                             Training"). max_len should be the generation budget; it defaults
                             to T, the padded width, which varies between batches.
A sequence counts (num_seqs) when it has at least one valid token; empty rows are padding.

Gradient accumulation and data parallelism. To make the sum of micro-batch losses equal the
full-batch loss, give every micro-batch the full batch's denominators, from
`aggregation_counts(full_mask)` (summed over ranks for data parallelism):
    token_mean               num_tokens_global
    seq_mean_token_mean      num_seqs_global
    seq_mean_token_sum_norm  num_seqs_global and max_len
and *sum* the micro-batch losses (do not divide by the number of accumulation steps). Then
batch 8 x accumulation 1 and batch 1 x accumulation 8 give the same gradient in all three
modes (tests/test_rl_losses.py). Without them each micro-batch normalises locally, which
re-weights tokens and sequences between micro-batches.

What each loss is, exactly:
  clipped_policy_loss  PPO's clipped surrogate (Schulman et al. 2017) with a per-token ratio
                       exp(logp - old_logp) and asymmetric clip range [1 - eps_low,
                       1 + eps_high] ("clip-higher", DAPO). No dual clip, no KL in the
                       reward; GRPO is this loss with group-normalised advantages
                       broadcast over tokens and `kl_penalty` added to the loss.
  reinforce_loss       -A * logp, no ratio and no clipping (REINFORCE / RLOO, Ahmadian et
                       al. 2024). On-policy (old_logp = logp.detach()) its gradient equals the
                       clipped loss's.
  kl_penalty           per-token KL(pi || pi_ref) estimate with samples from pi, Schulman's
                       k3 = exp(ref - logp) - (ref - logp) - 1 >= 0 by default (GRPO eq. 4),
                       used directly as a loss term; k1 = logp - ref and k2 = (logp - ref)^2 / 2
                       are available. Note that the gradient of k3-as-a-loss is not an unbiased
                       gradient of the KL; it is the GRPO practice.
  entropy_bonus        token entropy of the policy, from logits or precomputed entropies.
  value_loss           PPO's clipped value loss max((V - R)^2, (V_clip - R)^2) / 2.
  policy_objective     policy + kl_coef * kl - entropy_coef * entropy + value_coef * value.
"""

from __future__ import annotations

import torch

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
KL_ESTIMATORS = ("k1", "k2", "k3")

Metrics = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Masked reductions


def _bool(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def _zero_pad(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x with masked-out entries replaced by 0 (also cutting their gradient)."""
    return torch.where(_bool(mask), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over mask (same shape as x); 0 where the mask is empty."""
    m = _bool(mask)
    total = _zero_pad(x, m).sum() if dim is None else _zero_pad(x, m).sum(dim)
    count = m.sum() if dim is None else m.sum(dim)
    return total / count.clamp(min=1).to(x.dtype)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries of x (scalar); Bessel-corrected when `unbiased`."""
    m = _bool(mask)
    mean = masked_mean(x, m)
    sq = masked_mean((x - mean) ** 2, m)
    if unbiased:
        n = m.sum().to(x.dtype)
        sq = sq * n / (n - 1).clamp(min=1)
    return sq


def _masked_extreme(x: torch.Tensor, mask: torch.Tensor, largest: bool) -> torch.Tensor:
    """Max (largest) or min of the masked entries of x; -inf / +inf when there are none."""
    fill = float("-inf") if largest else float("inf")
    flat = torch.where(_bool(mask), x, torch.full_like(x, fill)).flatten()
    flat = torch.cat([flat, flat.new_full((1,), fill)])
    return flat.max() if largest else flat.min()


def aggregation_counts(mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Denominators of a (micro-)batch: valid tokens and non-empty sequences, 0-dim int64.

    Sum them over micro-batches (and ranks) and pass them as num_tokens_global /
    num_seqs_global to every loss for exact gradient accumulation.
    """
    m = _bool(mask)
    return {"num_tokens": m.sum(), "num_seqs": m.any(dim=-1).sum()}


def aggregate(x: torch.Tensor, mask: torch.Tensor, agg: str = "token_mean", *,
              num_tokens_global=None, num_seqs_global=None, max_len: int | None = None) -> torch.Tensor:
    """Reduce per-token terms x (B, T) over mask (B, T) to a scalar (see the module docstring).

    num_tokens_global: denominator of "token_mean" (default: valid tokens in this batch).
    num_seqs_global:   sequence count of the two seq_mean modes (default: non-empty rows here).
    max_len:           the constant of "seq_mean_token_sum_norm" (default: T).
    """
    if x.shape != mask.shape or x.dim() != 2:
        raise ValueError(f"x and mask must both be (B, T), got {tuple(x.shape)} and {tuple(mask.shape)}")
    m = _bool(mask)
    xm = _zero_pad(x, m)
    if agg == "token_mean":
        denom = m.sum() if num_tokens_global is None else num_tokens_global
        return xm.sum() / _as_denominator(denom, x)
    n_seq = m.any(dim=-1).sum() if num_seqs_global is None else num_seqs_global
    if agg == "seq_mean_token_mean":
        per_seq = xm.sum(-1) / m.sum(-1).clamp(min=1).to(x.dtype)                 # (B,)
        return per_seq.sum() / _as_denominator(n_seq, x)
    if agg == "seq_mean_token_sum_norm":
        length = x.shape[-1] if max_len is None else max_len
        return xm.sum() / (_as_denominator(n_seq, x) * length)
    raise ValueError(f"unknown aggregation {agg!r}; expected one of {AGGREGATIONS}")


def _as_denominator(n, like: torch.Tensor) -> torch.Tensor:
    n = torch.as_tensor(n, device=like.device).to(like.dtype)
    return n.clamp(min=1)


def _agg_kwargs(agg, num_tokens_global, num_seqs_global, max_len) -> dict:
    return {"agg": agg, "num_tokens_global": num_tokens_global,
            "num_seqs_global": num_seqs_global, "max_len": max_len}


def _broadcast_adv(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Advantages (B,) or (B, T) as (B, T)."""
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    return advantages.to(like.dtype).expand_as(like)


# ---------------------------------------------------------------------------------------------
# Log-probabilities and entropy from logits


def _low_precision(dtype: torch.dtype) -> bool:
    return dtype in (torch.float16, torch.bfloat16)


def sequence_logprobs(logits: torch.Tensor, tokens: torch.Tensor, *, chunk_size: int | None = None) -> torch.Tensor:
    """log softmax(logits)[token] per position: (B, T, V), (B, T) int -> (B, T).

    Computed as logits.gather(token) - logsumexp(logits), so no (B, T, V) log-softmax is
    kept for the backward pass (only the logits themselves, which the model holds anyway).
    `chunk_size` positions of T at a time bounds the transient memory of logsumexp. fp16 and
    bf16 logits are upcast chunk by chunk and the result is float32; otherwise the logits'
    dtype. Slices such as logits[:, :-1] are fine (no copy). Every entry of `tokens` must be a
    valid id, padding included (mask those positions downstream).
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits (B, T, V) and tokens (B, T) disagree: {tuple(logits.shape)} vs {tuple(tokens.shape)}")
    out_dtype = torch.float32 if _low_precision(logits.dtype) else logits.dtype
    T = tokens.shape[-1]
    step = max(T, 1) if chunk_size is None else max(1, chunk_size)
    pieces = []
    for t in range(0, max(T, 1), step):
        z = logits[:, t:t + step].to(out_dtype)                                 # (B, t, V)
        picked = z.gather(-1, tokens[:, t:t + step, None].long()).squeeze(-1)  # (B, t)
        pieces.append(picked - torch.logsumexp(z, dim=-1))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)


def token_entropy(logits: torch.Tensor, *, chunk_size: int | None = None) -> torch.Tensor:
    """Entropy of softmax(logits) per position: (..., T, V) -> (..., T).

    H = logsumexp(z) - sum_v softmax(z)_v z_v, with the max shift inside logsumexp and
    softmax (stable for any finite scale). -inf logits (a masked vocabulary) contribute 0:
    they are replaced by the dtype's finite minimum, so neither the value nor the gradient
    sees 0 * inf. fp16/bf16 are computed in float32; chunk_size as in `sequence_logprobs`.
    """
    out_dtype = torch.float32 if _low_precision(logits.dtype) else logits.dtype
    T = logits.shape[-2]
    step = max(T, 1) if chunk_size is None else max(1, chunk_size)
    pieces = []
    for t in range(0, max(T, 1), step):
        z = logits[..., t:t + step, :].to(out_dtype)
        z = z.clamp(min=torch.finfo(out_dtype).min)
        lse = torch.logsumexp(z, dim=-1)                                       # (..., t)
        p = torch.softmax(z, dim=-1)
        pieces.append(lse - (p * z).sum(-1))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)


# ---------------------------------------------------------------------------------------------
# Losses


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, *, clip_eps_low: float = 0.2, clip_eps_high: float | None = None,
                        agg: str = "token_mean", num_tokens_global=None, num_seqs_global=None,
                        max_len: int | None = None) -> tuple[torch.Tensor, Metrics]:
    """PPO/GRPO clipped surrogate, per token: max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)).

    logprobs (B, T): current policy, with gradient. old_logprobs (B, T): the sampling policy
    (detached here). advantages (B,) per sequence or (B, T) per token (detached). mask (B, T).
    clip_eps_high defaults to clip_eps_low (symmetric PPO); DAPO uses 0.2 / 0.28.
    Metrics (token means over valid tokens): policy/clip_frac (clipped branch active: zero
    gradient), policy/clip_frac_low (r < 1 - eps_low with A < 0), policy/clip_frac_high
    (r > 1 + eps_high with A > 0), policy/approx_kl (k3 estimate of KL(old || new):
    (r - 1) - log r), policy/ratio_mean, policy/ratio_min, policy/ratio_max.
    """
    high = clip_eps_low if clip_eps_high is None else clip_eps_high
    m = _bool(mask)
    logp = _zero_pad(logprobs, m)
    old = _zero_pad(old_logprobs.detach().to(logprobs.dtype), m)
    adv = _zero_pad(_broadcast_adv(advantages.detach(), logprobs), m)
    log_ratio = logp - old
    ratio = torch.exp(log_ratio)                                             # (B, T)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_eps_low, 1.0 + high)
    per_token = torch.maximum(unclipped, clipped)
    loss = aggregate(per_token, m, agg, num_tokens_global=num_tokens_global,
                     num_seqs_global=num_seqs_global, max_len=max_len)
    with torch.no_grad():
        r = ratio.detach()
        metrics = {
            "policy/clip_frac": masked_mean((clipped > unclipped).to(r.dtype), m),
            "policy/clip_frac_low": masked_mean(((r < 1.0 - clip_eps_low) & (adv < 0)).to(r.dtype), m),
            "policy/clip_frac_high": masked_mean(((r > 1.0 + high) & (adv > 0)).to(r.dtype), m),
            "policy/approx_kl": masked_mean((r - 1.0) - log_ratio.detach(), m),
            "policy/ratio_mean": masked_mean(r, m),
            "policy/ratio_min": _masked_extreme(r, m, largest=False),
            "policy/ratio_max": _masked_extreme(r, m, largest=True),
        }
    return loss, metrics


def reinforce_loss(logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                   agg: str = "token_mean", num_tokens_global=None, num_seqs_global=None,
                   max_len: int | None = None) -> tuple[torch.Tensor, Metrics]:
    """REINFORCE / RLOO loss, per token -A * logp (no ratio, no clipping).

    logprobs (B, T) with gradient; advantages (B,) or (B, T), detached; mask (B, T).
    Metrics: policy/logprob_mean (mean valid-token log-prob, a cheap proxy for -entropy).
    """
    m = _bool(mask)
    logp = _zero_pad(logprobs, m)
    adv = _zero_pad(_broadcast_adv(advantages.detach(), logprobs), m)
    loss = aggregate(-adv * logp, m, **_agg_kwargs(agg, num_tokens_global, num_seqs_global, max_len))
    return loss, {"policy/logprob_mean": masked_mean(logp.detach(), m)}


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, *,
               estimator: str = "k3", agg: str = "token_mean", num_tokens_global=None,
               num_seqs_global=None, max_len: int | None = None) -> tuple[torch.Tensor, Metrics]:
    """Per-token KL(pi || pi_ref) estimate on tokens sampled from pi, aggregated.

    logprobs (B, T) with gradient; ref_logprobs (B, T) detached; mask (B, T).
    k3 (default) = exp(ref - logp) - (ref - logp) - 1 (>= 0, unbiased for KL under pi,
    Schulman 2020, "Approximating KL divergence"); k1 = logp - ref; k2 = (logp - ref)^2 / 2.
    Metrics: policy/ref_kl (token mean of the chosen estimator), policy/ref_kl_max.
    """
    m = _bool(mask)
    logp = _zero_pad(logprobs, m)
    ref = _zero_pad(ref_logprobs.detach().to(logprobs.dtype), m)
    x = ref - logp                                                           # log(pi_ref / pi)
    if estimator == "k3":
        per_token = torch.exp(x) - x - 1.0
    elif estimator == "k1":
        per_token = -x
    elif estimator == "k2":
        per_token = 0.5 * x ** 2
    else:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}")
    loss = aggregate(per_token, m, **_agg_kwargs(agg, num_tokens_global, num_seqs_global, max_len))
    d = per_token.detach()
    metrics = {"policy/ref_kl": masked_mean(d, m),
               "policy/ref_kl_max": _masked_extreme(d, m, largest=True)}
    return loss, metrics


def entropy_bonus(mask: torch.Tensor, *, logits: torch.Tensor | None = None,
                  entropies: torch.Tensor | None = None, agg: str = "token_mean",
                  num_tokens_global=None, num_seqs_global=None, max_len: int | None = None,
                  chunk_size: int | None = None) -> tuple[torch.Tensor, Metrics]:
    """Aggregated policy entropy (to be *subtracted* from the loss, times a coefficient).

    Give exactly one of logits (B, T, V) or per-token entropies (B, T); mask (B, T).
    Returns (entropy, {"policy/entropy": token mean}); the value is >= 0 and keeps the gradient.
    """
    if (logits is None) == (entropies is None):
        raise ValueError("give exactly one of logits or entropies")
    ent = token_entropy(logits, chunk_size=chunk_size) if entropies is None else entropies
    m = _bool(mask)
    value = aggregate(ent, m, **_agg_kwargs(agg, num_tokens_global, num_seqs_global, max_len))
    return value, {"policy/entropy": masked_mean(ent.detach(), m)}


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, *,
               clip_range: float | None = 0.2, agg: str = "token_mean", num_tokens_global=None,
               num_seqs_global=None, max_len: int | None = None) -> tuple[torch.Tensor, Metrics]:
    """PPO clipped value loss, per token max((V - R)^2, (V_clip - R)^2) / 2.

    values (B, T) with gradient; old_values (B, T) and returns (B, T) detached; mask (B, T).
    V_clip = old_V + clamp(V - old_V, -clip_range, clip_range); clip_range=None: plain MSE / 2.
    Metrics: value/clip_frac (clipped term strictly larger, i.e. active), value/mean,
    value/explained_var = 1 - Var(R - V) / Var(R) over valid tokens (1: perfect, 0: no better
    than a constant).
    """
    m = _bool(mask)
    v = _zero_pad(values, m)
    v_old = _zero_pad(old_values.detach().to(values.dtype), m)
    ret = _zero_pad(returns.detach().to(values.dtype), m)
    err = (v - ret) ** 2
    if clip_range is None:
        per_token, clipped_err = 0.5 * err, err
    else:
        v_clip = v_old + torch.clamp(v - v_old, -clip_range, clip_range)
        clipped_err = (v_clip - ret) ** 2
        per_token = 0.5 * torch.maximum(err, clipped_err)
    loss = aggregate(per_token, m, **_agg_kwargs(agg, num_tokens_global, num_seqs_global, max_len))
    with torch.no_grad():
        vd = v.detach()
        var_r = masked_var(ret, m, unbiased=False)
        metrics = {
            "value/clip_frac": masked_mean((clipped_err.detach() > err.detach()).to(vd.dtype), m),
            "value/mean": masked_mean(vd, m),
            "value/explained_var": 1.0 - masked_var(ret - vd, m, unbiased=False) / var_r.clamp(min=1e-12),
        }
    return loss, metrics


def policy_objective(policy: tuple[torch.Tensor, Metrics], *, kl: tuple[torch.Tensor, Metrics] | None = None,
                     kl_coef: float = 0.0, entropy: tuple[torch.Tensor, Metrics] | None = None,
                     entropy_coef: float = 0.0, value: tuple[torch.Tensor, Metrics] | None = None,
                     value_coef: float = 0.0) -> tuple[torch.Tensor, Metrics]:
    """Total loss = policy + kl_coef * kl - entropy_coef * entropy + value_coef * value.

    Each term is the (value, metrics) pair a loss above returns; terms left as None are
    skipped. Metrics: the terms' own metrics merged, plus loss/policy, loss/kl, loss/entropy,
    loss/value (the unweighted terms, for those given) and loss/total, all detached.
    """
    total = policy[0]
    metrics: Metrics = dict(policy[1])
    metrics["loss/policy"] = policy[0].detach()
    for name, term, coef in (("kl", kl, kl_coef), ("entropy", entropy, -entropy_coef),
                             ("value", value, value_coef)):
        if term is None:
            continue
        total = total + coef * term[0]
        metrics.update(term[1])
        metrics[f"loss/{name}"] = term[0].detach()
    metrics["loss/total"] = total.detach()
    return total, metrics
