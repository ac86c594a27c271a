"""Online EWC (Kirkpatrick et al. 2017; the online variant of Schwarz et al. 2018 without decay)
on the trainable (LoRA) parameters.

penalty = lam/2 * sum_i F_i (theta_i - theta*_i)^2. At each phase start after the first, the
diagonal empirical Fisher of the skills trained so far is estimated at the current parameters
and *added* to the running F (no decay factor); theta* = the parameters at that moment.
Fisher estimate: `prompts` training prompts per skill drawn with a seeded RNG, 2 sampled
completions each at the run's sampling settings, F_i = mean over completions of
(d log p(completion | prompt) / d theta_i)^2 (squared per-sample gradients, one backward
each). Under data parallelism the estimate is averaged over ranks, so F is the same on all.
"""

from __future__ import annotations

import random

import torch

from retainrl.baselines.base import Baseline, Penalty
from retainrl.parallel import allreduce_mean
from retainrl.policy.rollout import SamplingConfig, completion_logprobs, generate
from retainrl.seeds import derive_seed


def ewc_penalty(named: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor],
                lam: float) -> Penalty:
    """(lam/2 * sum_i F_i (theta_i - anchor_i)^2, {"method/ewc": the unweighted sum}); all dicts by name."""
    total = sum((fisher[n].to(p.device) * (p - anchor[n].to(p.device)) ** 2).sum() for n, p in named.items())
    total = torch.as_tensor(total)
    return 0.5 * lam * total, {"method/ewc": total.detach()}


def estimate_fisher(policy, tasks: list, sampling: SamplingConfig, seed: int,
                    samples_per_prompt: int = 2) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of `tasks`' prompts: mean over sampled completions of (d log p(y|x) / d theta)^2."""
    rollout = generate(policy, [t.prompt for t in tasks], n=samples_per_prompt, cfg=sampling, seed=seed)
    params = policy.named_trainable()
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    rows = rollout.completion_ids.shape[0]
    for i in range(rows):
        sub = rollout.select([i])
        lp, _, _ = completion_logprobs(policy, sub)
        total = (lp * sub.completion_mask.to(lp.device)).sum()
        grads = torch.autograd.grad(total, list(params.values()), allow_unused=True)
        for n, g in zip(params, grads):
            if g is not None:
                fisher[n] += g.detach() ** 2
    return {n: f / max(1, rows) for n, f in fisher.items()}


class EWC(Baseline):
    def __init__(self, policy, lam: float, prompts: int, train_tasks: dict[str, list], sampling: SamplingConfig,
                 seed: int):
        self.policy, self.lam, self.prompts = policy, float(lam), int(prompts)
        self.train_tasks, self.sampling, self.seed = train_tasks, sampling, seed
        self.fisher: dict[str, torch.Tensor] | None = None
        self.anchor: dict[str, torch.Tensor] | None = None

    def on_phase_start(self, earlier_skills: list[str], phase: int) -> None:
        skills = sorted(set(earlier_skills))
        if not skills:
            return
        seed = derive_seed(self.seed, phase, "ewc/fisher")
        rng = random.Random(seed)
        tasks = [rng.choice(self.train_tasks[s]) for s in skills for _ in range(self.prompts)]
        fisher = estimate_fisher(self.policy, tasks, self.sampling, seed)
        fisher = {n: allreduce_mean(f) for n, f in fisher.items()}  # identical on every rank
        self.fisher = fisher if self.fisher is None else {n: self.fisher[n] + fisher[n] for n in fisher}
        self.anchor = {n: p.detach().clone() for n, p in self.policy.named_trainable().items()}

    def penalty(self) -> Penalty | None:
        if self.fisher is None:
            return None
        return ewc_penalty(self.policy.named_trainable(), self.fisher, self.anchor, self.lam)

    def state(self) -> dict:
        return {"fisher": self.fisher, "anchor": self.anchor}

    def load_state(self, state: dict) -> None:
        self.fisher, self.anchor = state["fisher"], state["anchor"]
