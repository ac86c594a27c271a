"""One optimisation update from a scored rollout, as an explicit sequence of calls.

    batch = prepare_batch(...)      advantages (rl.estimate_advantages, by the algorithm's registry
                                    name), uninformative-group filter, old / reference log-probs,
                                    the *global* loss denominators (summed over ranks)
    per epoch:
      accumulate(...)               micro_batch_loss() per micro-batch (rl.policy_loss by name, k3 KL
                                    to the adapter-disabled reference, entropy bonus, PPO clipped value
                                    loss), each with the full batch's denominators, .backward() each,
                                    so the summed gradient equals one big batch's
      apply_update(...)             data-parallel gradient sum -> NaN/inf check (skip the step
                                    everywhere) -> the baseline's penalty (baselines/) -> global norm
                                    clipping -> `apply(params, opt)`: plain opt.step(), or the
                                    skill-safe layer's step (safety.layer.SafetyLayer.step)
    reduce_metrics(...)             the logged numbers of the whole update

`epochs` passes over the same batch reuse the old log-probs (ratio != 1 after the first pass).

Logged metrics do not depend on how the batch is cut into micro-batches (tests/test_objective.py):
loss/* terms carry global denominators, so a pass's value is the *sum* over its micro-batches;
token means (policy/clip_frac, policy/ratio_mean, policy/ref_kl, value/mean, ...) are weighted
by the micro-batch's valid tokens; *_min / *_max are the min / max over micro-batches;
value/explained_var is computed from moment sums over every row. With several epochs each is
the mean (min / max) over the passes; grad/norm and method/* are the mean over the passes.
Metrics are this rank's (under data parallelism the trainer logs rank 0's, and its batch
totals are summed over ranks).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from retainrl import parallel
from retainrl.policy.rollout import Rollout, completion_logprobs
from retainrl.rl import estimate_advantages, get_algorithm, policy_loss
from retainrl.rl.losses import aggregation_counts, entropy_bonus, kl_penalty, policy_objective, value_loss

ApplyFn = Callable[[list, torch.optim.Optimizer], dict]
PenaltyFn = Callable[[], "tuple[torch.Tensor, dict] | None"]


def plain_step(params, opt) -> dict:
    """The update applied without a safety layer."""
    opt.step()
    return {}


# ----------------------------------------------------------------------------------------
# the batch
# ----------------------------------------------------------------------------------------
@dataclass
class Batch:
    """A scored rollout with everything the micro-batch losses need (rows on the policy's device)."""
    rollout: Rollout
    mask: torch.Tensor                 # (B, T) completion tokens
    adv: torch.Tensor                  # (B,) or (B, T)
    returns: torch.Tensor | None       # (B, T), critic algorithms
    old_lp: torch.Tensor | None        # (B, T); None: on-policy (the update's own detached log-probs)
    old_values: torch.Tensor | None    # (B, T), critic algorithms
    ref_lp: torch.Tensor | None        # (B, T) with the adapter disabled, when kl_coef > 0
    agg: dict                          # aggregation mode and the global denominators
    metrics: dict                      # advantage / filter metrics

    @property
    def rows(self) -> int:
        return self.rollout.completion_ids.shape[0]


def _rows(t: torch.Tensor | None, idx: list[int]):
    return None if t is None else t[torch.tensor(idx, device=t.device)]


@torch.no_grad()
def _forward_no_grad(policy, rollout: Rollout, with_values: bool, rows_per_pass: int):
    lps, vals = [], []
    for s in range(0, rollout.completion_ids.shape[0], rows_per_pass):
        sub = rollout.select(list(range(s, min(s + rows_per_pass, rollout.completion_ids.shape[0]))))
        lp, v, _ = completion_logprobs(policy, sub, with_values=with_values)
        lps.append(lp)
        vals.append(v)
    return torch.cat(lps), (torch.cat(vals) if with_values else None)


def _estimator_options(rl, name: str) -> dict:
    """The RLConfig fields each registered estimator takes."""
    return {"grpo": {"scale_by_std": rl.scale_by_std},
            "gae": {"gamma": rl.gamma, "lam": rl.lam, "whiten": True}}.get(name, {})


def _informative_rows(rewards: torch.Tensor, group: int) -> list[int]:
    """Rows of groups whose rewards are not all equal (the others have zero advantage)."""
    r = rewards.view(-1, group)
    informative = (r != r[:, :1]).any(dim=1)
    return [i for i in range(rewards.numel()) if bool(informative[i // group])]


def prepare_batch(rl, policy, rollout: Rollout, max_len: int, has_penalty: bool) -> Batch | None:
    """Advantages, filter, old/reference log-probs and global denominators; None: no signal anywhere."""
    algo = get_algorithm(rl.algo)
    group, rows_per_micro = rollout.group_size, rl.micro_batch_prompts * rollout.group_size
    mask = rollout.completion_mask.to(policy.device)
    # One epoch without a critic is on-policy: the sampling log-probs equal the detached log-probs
    # of the update's own forward pass (the parameters do not move before the step), so the
    # extra no-grad pass is skipped. A critic needs its values up front; several epochs a fixed
    # reference.
    on_policy = rl.epochs == 1 and not algo.critic
    old_lp, old_values = (None, None) if on_policy else _forward_no_grad(policy, rollout, algo.critic, rows_per_micro)
    rewards = rollout.rewards if old_values is None else rollout.rewards.to(old_values.device)
    adv, returns, metrics = estimate_advantages(algo.advantages, rewards, group, values=old_values, mask=mask,
                                                **_estimator_options(rl, algo.advantages))
    adv = adv.to(policy.device)
    if rl.drop_uninformative and not algo.critic and rl.kl_coef == 0 and rl.entropy_coef == 0:
        # groups whose rewards are all equal have zero advantages, hence exactly zero policy
        # gradient; dropping them changes only the aggregation denominator (now: informative
        # tokens only) and saves their compute
        B = rollout.completion_ids.shape[0]
        keep = _informative_rows(rollout.rewards, group)
        metrics["update/informative_frac"] = torch.tensor(len(keep) / max(1, B))
        if parallel.all_sum([float(len(keep))])[0] == 0 and not has_penalty:  # the same answer on every rank
            return Batch(rollout, mask, adv, None, None, None, None, {}, {**metrics, "update/no_signal": 1.0})
        if len(keep) < B:
            keep_t = torch.tensor(keep, dtype=torch.long)
            rollout, adv = rollout.select(keep), adv[keep_t.to(adv.device)]
            old_lp = None if old_lp is None else old_lp[keep_t.to(old_lp.device)]
            mask = rollout.completion_mask.to(policy.device)
    ref_lp = None
    if rl.kl_coef > 0:
        with policy.reference():
            ref_lp, _ = _forward_no_grad(policy, rollout, False, rows_per_micro)
    counts = aggregation_counts(mask)
    # Denominators of the *global* batch: under data parallelism the sum of the ranks' gradients
    # (parallel.sum_gradients) is then the global-batch gradient.
    n_tokens, n_seqs = (torch.tensor(v) for v in parallel.all_sum([float(counts["num_tokens"]),
                                                                  float(counts["num_seqs"])]))
    agg = dict(agg=rl.aggregation, num_tokens_global=n_tokens, num_seqs_global=n_seqs, max_len=max_len)
    return Batch(rollout, mask, adv, returns, old_lp, old_values, ref_lp, agg, metrics)


# ----------------------------------------------------------------------------------------
# micro-batch loss and accumulation
# ----------------------------------------------------------------------------------------
def micro_batch_loss(rl, policy, batch: Batch, idx: list[int]) -> tuple[torch.Tensor, dict, dict]:
    """(loss with gradient, detached metrics, counts) of rows `idx`, with the batch's global denominators.

    counts: "tokens" (valid tokens here, the weight of its token-mean metrics) and, with a
    critic, the moment sums of returns R and residuals R - V behind value/explained_var."""
    algo = get_algorithm(rl.algo)
    sub, m, agg = batch.rollout.select(idx), _rows(batch.mask, idx), batch.agg
    lp, values, logits = completion_logprobs(policy, sub, with_values=algo.critic, with_logits=rl.entropy_coef > 0)
    old = lp.detach() if batch.old_lp is None else _rows(batch.old_lp, idx)
    pol = policy_loss(algo.policy_loss, lp, old, _rows(batch.adv, idx), m, clip_eps_low=rl.clip_low,
                      clip_eps_high=rl.clip_high, **agg)
    kl = kl_penalty(lp, _rows(batch.ref_lp, idx), m, **agg) if batch.ref_lp is not None else None
    ent = entropy_bonus(m, logits=logits, **agg) if rl.entropy_coef > 0 else None
    val = None
    counts = {"tokens": float(m.sum())}
    if algo.critic:
        ret = _rows(batch.returns, idx)
        val = value_loss(values, _rows(batch.old_values, idx), ret, m, clip_range=rl.value_clip, **agg)
        counts.update(_moments(ret.detach(), values.detach(), m))
    loss, metrics = policy_objective(pol, kl=kl, kl_coef=rl.kl_coef, entropy=ent, entropy_coef=rl.entropy_coef,
                                     value=val, value_coef=rl.vf_coef)
    return loss, {k: float(v) for k, v in metrics.items()}, counts


def _moments(ret: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> dict:
    m = mask.bool()
    r = torch.where(m, ret, torch.zeros_like(ret)).double()
    e = torch.where(m, ret - values, torch.zeros_like(ret)).double()
    return {"r": float(r.sum()), "r2": float((r * r).sum()), "e": float(e.sum()), "e2": float((e * e).sum())}


def accumulate(rl, policy, batch: Batch) -> tuple[list[tuple[dict, dict]], bool]:
    """Backward of every micro-batch's loss (gradients add up in .grad); ([(metrics, counts)], non-finite seen)."""
    rows_per_micro = rl.micro_batch_prompts * batch.rollout.group_size
    parts, bad = [], False
    for s in range(0, batch.rows, rows_per_micro):
        loss, metrics, counts = micro_batch_loss(rl, policy, batch, list(range(s, min(s + rows_per_micro, batch.rows))))
        if not torch.isfinite(loss):
            bad = True  # no break: under data parallelism every rank must reach the all-reduce
            continue
        loss.backward()
        parts.append((metrics, counts))
    return parts, bad


def _all_finite(params) -> bool:
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)


def apply_update(params, opt, *, locally_bad: bool, penalty: PenaltyFn | None, max_grad_norm: float,
                 apply: ApplyFn) -> tuple[dict | None, dict]:
    """Sum gradients over ranks, check, add the penalty, clip, apply. (None if skipped else metrics, penalty metrics)."""
    parallel.sum_gradients(params)
    if parallel.all_sum([float(locally_bad)])[0] > 0:  # one rank's NaN loss skips the step everywhere
        return None, {}
    pen = penalty() if penalty is not None else None  # the same on every rank: added after the sum
    pen_metrics = {}
    if pen is not None:
        pen[0].backward()
        pen_metrics = {k: float(v) for k, v in pen[1].items()}
    if not _all_finite(params):
        return None, pen_metrics
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else math.inf)
    out = {"grad/norm": float(grad_norm)}
    out.update(apply(params, opt))
    return out, pen_metrics


# ----------------------------------------------------------------------------------------
# metrics of the update
# ----------------------------------------------------------------------------------------
def _reduction(key: str) -> str:
    if key.startswith("loss/"):
        return "sum"       # global denominators: the pass's loss is the sum of its micro-batches'
    if key.endswith("_min"):
        return "min"
    if key.endswith("_max"):
        return "max"
    if key == "value/explained_var":
        return "moments"
    return "token_mean"


def reduce_metrics(parts: list[tuple[dict, dict]], passes: int) -> dict:
    """The update's metrics from its micro-batches' (metrics, counts) over `passes` epochs."""
    out: dict[str, float] = {}
    keys = sorted({k for m, _ in parts for k in m})
    for k in keys:
        have = [(m[k], c) for m, c in parts if k in m]
        how = _reduction(k)
        if how == "sum":
            out[k] = sum(v for v, _ in have) / max(1, passes)
        elif how == "min":
            out[k] = min(v for v, _ in have)
        elif how == "max":
            out[k] = max(v for v, _ in have)
        elif how == "moments":
            n = sum(c["tokens"] for _, c in have)
            if n == 0:
                continue
            var = {x: sum(c[x + "2"] for _, c in have) / n - (sum(c[x] for _, c in have) / n) ** 2 for x in "re"}
            out[k] = 1.0 - max(var["e"], 0.0) / max(var["r"], 1e-12)
        else:
            w = [(v, c["tokens"]) for v, c in have if c["tokens"] > 0]
            total = sum(n for _, n in w)
            if total > 0:
                out[k] = sum(v * n for v, n in w) / total
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


# ----------------------------------------------------------------------------------------
# the update
# ----------------------------------------------------------------------------------------
def update(rl, policy, opt, rollout: Rollout, *, max_len: int, penalty: PenaltyFn | None = None,
           apply: ApplyFn = plain_step, step: int = 0) -> dict:
    """One (possibly multi-epoch, accumulated) update of `policy`'s trainable parameters with `opt`.

    rl: RLConfig; max_len: the generation budget (Dr. GRPO's constant); penalty: the baseline's
    penalty() (or None); apply(params, opt) -> metrics applies the clipped gradient (plain
    opt.step() by default, or the skill-safe layer); step: the global step, for messages.
    Returns float metrics (see the module docstring) and "skipped"."""
    batch = prepare_batch(rl, policy, rollout, max_len, has_penalty=penalty is not None and penalty() is not None)
    if "update/no_signal" in batch.metrics:
        out = {k: float(v) for k, v in batch.metrics.items()}
        out["skipped"] = False
        return out  # no gradient at all: Adam must not take a step on zeros
    params = policy.trainable_parameters()
    parts, applied, pen_metrics = [], [], []
    skipped = False
    policy.model.train()
    for _epoch in range(rl.epochs):
        opt.zero_grad(set_to_none=True)
        epoch_parts, bad = accumulate(rl, policy, batch)
        parts += epoch_parts
        res, pen = apply_update(params, opt, locally_bad=bad, penalty=penalty, max_grad_norm=rl.max_grad_norm,
                                apply=apply)
        pen_metrics.append(pen)
        if res is None:
            skipped = True
            break
        applied.append(res)
    opt.zero_grad(set_to_none=True)
    policy.model.eval()
    if skipped:
        warnings.warn(f"step {step + 1}: non-finite loss or gradient, update skipped")
    out = reduce_metrics(parts, passes=len(applied) + int(skipped))
    for k in sorted({k for p in pen_metrics for k in p}):
        out[k] = _mean([p[k] for p in pen_metrics if k in p])
    if applied:
        out["grad/norm"] = _mean([a["grad/norm"] for a in applied])
        for a in applied:  # the safety layer's diagnostics: the last pass's
            out.update({k: v for k, v in a.items() if k != "grad/norm"})
    out.update({k: float(v) for k, v in batch.metrics.items()})
    out["skipped"] = bool(skipped)
    return out
