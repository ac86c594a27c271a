"""One optimisation update from a scored rollout, and the continual-learning methods.

update(): advantages (rl.advantages) -> per micro-batch the loss (rl.losses: clipped surrogate
for GRPO/PPO, -A log p for RLOO, k3 KL to the adapter-disabled reference, entropy bonus, PPO
clipped value loss) with the *full batch's* denominators, so that gradient accumulation equals
one big batch -> the method's penalty (EWC / L2-SP) -> NaN/inf check (skip the step) -> global
norm clipping -> optimizer step. `epochs` passes over the same batch reuse the old log-probs
(ratio != 1 after the first pass).

Methods (MethodConfig.name):
  plain   nothing beyond the RL loss (KL/entropy via rl.kl_coef / rl.entropy_coef)
  replay  a fraction of each step's prompts from earlier phases' skills (train.sampler)
  l2sp    lambda * ||theta - theta_phase_start||^2 over the trainable (LoRA) parameters
  ewc     online EWC: lambda/2 * sum_i F_i (theta_i - theta*_i)^2; at each phase end the
          diagonal Fisher of the skills trained so far is estimated from the squared
          per-sample gradients of log p(completion) on fresh rollouts of their training
          prompts (empirical Fisher of sampled completions), accumulated over phases;
          theta* = parameters at that phase end
"""

from __future__ import annotations

import math

import torch

from retainrl.policy.rollout import Rollout, SamplingConfig, completion_logprobs, generate
from retainrl.rl.advantages import gae_advantages, grpo_advantages, rloo_advantages
from retainrl.rl.losses import (aggregation_counts, clipped_policy_loss, entropy_bonus, kl_penalty,
                                policy_objective, reinforce_loss, value_loss)
from retainrl.safety.layer import allreduce_mean
from retainrl.train import distributed


# ----------------------------------------------------------------------------------------
# methods
# ----------------------------------------------------------------------------------------
class Method:
    replay_fraction = 0.0

    def __init__(self, cfg, policy):
        self.cfg, self.policy = cfg, policy

    def penalty(self):
        return None

    def on_phase_start(self, trainer) -> None:
        pass

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass


class Replay(Method):
    def __init__(self, cfg, policy):
        super().__init__(cfg, policy)
        self.replay_fraction = cfg.method.replay_fraction


class L2SP(Method):
    def __init__(self, cfg, policy):
        super().__init__(cfg, policy)
        self.anchor = {n: p.detach().clone() for n, p in policy.named_trainable().items()}

    def on_phase_start(self, trainer) -> None:
        self.anchor = {n: p.detach().clone() for n, p in self.policy.named_trainable().items()}

    def penalty(self):
        lam = self.cfg.method.l2sp_lambda
        total = sum(((p - self.anchor[n].to(p.device)) ** 2).sum() for n, p in self.policy.named_trainable().items())
        return lam * total, {"method/l2sp": total.detach()}

    def state(self) -> dict:
        return {"anchor": self.anchor}

    def load_state(self, state: dict) -> None:
        self.anchor = state["anchor"]


class EWC(Method):
    def __init__(self, cfg, policy):
        super().__init__(cfg, policy)
        self.fisher: dict[str, torch.Tensor] | None = None
        self.anchor: dict[str, torch.Tensor] | None = None

    def on_phase_start(self, trainer) -> None:
        """Called after each phase ends: add the Fisher of the skills trained so far."""
        done = [s for p in trainer.phases[:trainer.phase] for s in p]
        if not done:
            return
        fisher = estimate_fisher(self.policy, trainer.sampler, sorted(set(done)), self.cfg.method.ewc_prompts,
                                 trainer.cfg.sampling, seed=trainer.cfg.seed * 7919 + trainer.phase)
        fisher = {n: allreduce_mean(f) for n, f in fisher.items()}  # identical on every rank
        if self.fisher is None:
            self.fisher = fisher
        else:
            self.fisher = {n: self.fisher[n] + fisher[n] for n in fisher}
        self.anchor = {n: p.detach().clone() for n, p in self.policy.named_trainable().items()}

    def penalty(self):
        if self.fisher is None:
            return None
        total = sum((self.fisher[n].to(p.device) * (p - self.anchor[n].to(p.device)) ** 2).sum()
                    for n, p in self.policy.named_trainable().items())
        return 0.5 * self.cfg.method.ewc_lambda * total, {"method/ewc": total.detach()}

    def state(self) -> dict:
        return {"fisher": self.fisher, "anchor": self.anchor}

    def load_state(self, state: dict) -> None:
        self.fisher, self.anchor = state["fisher"], state["anchor"]


METHODS = {"plain": Method, "replay": Replay, "l2sp": L2SP, "ewc": EWC}


def make_method(cfg, policy) -> Method:
    return METHODS[cfg.method.name](cfg, policy)


def estimate_fisher(policy, sampler, skills: list[str], prompts_per_skill: int, sampling: SamplingConfig,
                    seed: int, samples_per_prompt: int = 2) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: mean over sampled completions of (d log p(y|x) / d theta)^2."""
    import random

    rng = random.Random(seed)
    tasks = [rng.choice(sampler.tasks[s]) for s in skills for _ in range(prompts_per_skill)]
    rollout = generate(policy, [t.prompt for t in tasks], n=samples_per_prompt, cfg=sampling, seed=seed)
    params = policy.named_trainable()
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    rows = list(range(rollout.completion_ids.shape[0]))
    for i in rows:
        sub = rollout.select([i])
        lp, _, _ = completion_logprobs(policy, sub)
        total = (lp * sub.completion_mask.to(lp.device)).sum()
        grads = torch.autograd.grad(total, list(params.values()), allow_unused=True)
        for (n, _), g in zip(params.items(), grads):
            if g is not None:
                fisher[n] += g.detach() ** 2
    return {n: f / max(1, len(rows)) for n, f in fisher.items()}


# ----------------------------------------------------------------------------------------
# the update
# ----------------------------------------------------------------------------------------
def _rows(t: torch.Tensor | None, idx: list[int]):
    return None if t is None else t[torch.tensor(idx, device=t.device)]


def _all_finite(params) -> bool:
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)


@torch.no_grad()
def _forward_no_grad(policy, rollout: Rollout, with_values: bool, rows_per_pass: int):
    lps, vals = [], []
    for s in range(0, rollout.completion_ids.shape[0], rows_per_pass):
        sub = rollout.select(list(range(s, min(s + rows_per_pass, rollout.completion_ids.shape[0]))))
        lp, v, _ = completion_logprobs(policy, sub, with_values=with_values)
        lps.append(lp)
        vals.append(v)
    return torch.cat(lps), (torch.cat(vals) if with_values else None)


def compute_advantages(rl, rewards: torch.Tensor, group: int, mask: torch.Tensor, old_values):
    """(advantages (B,) or (B, T), returns (B, T) or None, metrics)."""
    if rl.algo == "grpo":
        adv, m = grpo_advantages(rewards, group, scale_by_std=rl.scale_by_std)
        return adv, None, m
    if rl.algo == "rloo":
        adv, m = rloo_advantages(rewards, group)
        return adv, None, m
    (adv, returns), m = gae_advantages(rewards.to(old_values.device), old_values, mask, gamma=rl.gamma,
                                       lam=rl.lam, whiten=True)
    return adv, returns, m


def update(trainer, rollout: Rollout) -> dict:
    """One (possibly multi-epoch, accumulated) optimizer update. Returns float metrics."""
    cfg, rl, policy, opt = trainer.cfg, trainer.cfg.rl, trainer.policy, trainer.opt
    ppo = rl.algo == "ppo"
    group = rollout.group_size
    B = rollout.completion_ids.shape[0]
    rows_per_micro = rl.micro_batch_prompts * group
    mask = rollout.completion_mask.to(policy.device)
    # One epoch of GRPO/RLOO is on-policy: the sampling log-probs equal the detached log-probs of
    # the update's own forward pass (the parameters do not move before opt.step), so the extra
    # no-grad pass is skipped. PPO needs its values up front for GAE; several epochs need a
    # fixed reference.
    on_policy = rl.epochs == 1 and not ppo
    old_lp, old_values = (None, None) if on_policy else _forward_no_grad(policy, rollout, ppo, rows_per_micro)
    adv, returns, adv_metrics = compute_advantages(rl, rollout.rewards, group, mask, old_values)
    adv = adv.to(policy.device)
    if rl.drop_uninformative and not ppo and rl.kl_coef == 0 and rl.entropy_coef == 0:
        # groups whose rewards are all equal have zero advantages, hence exactly zero policy
        # gradient; dropping them changes only the aggregation denominator (now: informative
        # tokens only) and saves their compute
        r = rollout.rewards.view(-1, group)
        informative = (r != r[:, :1]).any(dim=1)  # some reward differs from the first in the group
        keep = [i for i in range(B) if bool(informative[i // group])]
        adv_metrics["update/informative_frac"] = torch.tensor(len(keep) / max(1, B))
        informative_anywhere = distributed.all_sum([float(len(keep))])[0] > 0  # the same answer on every rank
        if not informative_anywhere and trainer.method.penalty() is None:
            out = {k: float(v) for k, v in adv_metrics.items()}
            out.update({"skipped": False, "update/no_signal": 1.0})
            return out  # no gradient at all: Adam must not take a step on zeros
        if len(keep) < B:
            keep_t = torch.tensor(keep, dtype=torch.long)
            rollout, adv = rollout.select(keep), adv[keep_t.to(adv.device)]
            old_lp = None if old_lp is None else old_lp[keep_t.to(old_lp.device)]
            mask = rollout.completion_mask.to(policy.device)
            B = len(keep)
    ref_lp = None
    if rl.kl_coef > 0:
        with policy.reference():
            ref_lp, _ = _forward_no_grad(policy, rollout, False, rows_per_micro)
    counts = aggregation_counts(mask)
    # Denominators of the *global* batch: under data parallelism the sum of the ranks' gradients
    # (sum_gradients) is then the global-batch gradient.
    n_tokens, n_seqs = (torch.tensor(v) for v in distributed.all_sum([float(counts["num_tokens"]),
                                                                     float(counts["num_seqs"])]))
    agg = dict(agg=rl.aggregation, num_tokens_global=n_tokens, num_seqs_global=n_seqs,
               max_len=cfg.sampling.max_new_tokens)
    params = policy.trainable_parameters()
    sums: dict[str, float] = {}
    n_terms = 0
    grad_norms: list[float] = []
    safety_metrics: dict[str, float] = {}
    skipped = False
    policy.model.train()
    for _epoch in range(rl.epochs):
        opt.zero_grad(set_to_none=True)
        for s in range(0, B, rows_per_micro):
            idx = list(range(s, min(s + rows_per_micro, B)))
            sub = rollout.select(idx)
            m = _rows(mask, idx)
            lp, values, logits = completion_logprobs(policy, sub, with_values=ppo, with_logits=rl.entropy_coef > 0)
            if rl.algo == "rloo":
                pol = reinforce_loss(lp, _rows(adv, idx), m, **agg)
            else:
                old = lp.detach() if on_policy else _rows(old_lp, idx)
                pol = clipped_policy_loss(lp, old, _rows(adv, idx), m, clip_eps_low=rl.clip_low,
                                          clip_eps_high=rl.clip_high, **agg)
            kl = kl_penalty(lp, _rows(ref_lp, idx), m, **agg) if ref_lp is not None else None
            ent = entropy_bonus(m, logits=logits, **agg) if rl.entropy_coef > 0 else None
            val = value_loss(values, _rows(old_values, idx), _rows(returns, idx), m, clip_range=rl.value_clip,
                             **agg) if ppo else None
            loss, metrics = policy_objective(pol, kl=kl, kl_coef=rl.kl_coef, entropy=ent,
                                             entropy_coef=rl.entropy_coef, value=val, value_coef=rl.vf_coef)
            if not torch.isfinite(loss):
                skipped = True  # no break: under data parallelism every rank must reach the all-reduce
                continue
            loss.backward()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n_terms += 1
        distributed.sum_gradients(params)
        if distributed.all_sum([float(skipped)])[0] > 0:  # one rank's NaN loss skips the step everywhere
            skipped = True
            break
        pen = trainer.method.penalty()  # the same on every rank: added after the average
        if pen is not None:
            pen[0].backward()
            for k, v in pen[1].items():
                sums[k] = sums.get(k, 0.0) + float(v)
        if not _all_finite(params):
            skipped = True
            break
        grad_norm = torch.nn.utils.clip_grad_norm_(params, rl.max_grad_norm if rl.max_grad_norm > 0 else math.inf)
        grad_norms.append(float(grad_norm))
        if trainer.safety is not None:
            safety_metrics.update(trainer.safety.step())
        else:
            opt.step()
    opt.zero_grad(set_to_none=True)
    policy.model.eval()
    if skipped:
        import warnings

        warnings.warn(f"step {trainer.global_step + 1}: non-finite loss or gradient, update skipped")
    out = {k: v / max(1, n_terms) for k, v in sums.items()}
    if grad_norms:
        out["grad/norm"] = sum(grad_norms) / len(grad_norms)
    out.update({k: float(v) for k, v in adv_metrics.items()})
    out.update(safety_metrics)
    out["skipped"] = bool(skipped)
    return out
