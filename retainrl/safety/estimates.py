"""Gradient estimates of protected skills' RLVR objectives, on the LoRA parameters only.

Memory mode (`SkillMemory`): a small fixed set of a skill's training prompts with stored
rollouts (completion tokens, behaviour log-probs, group-normalised advantages). Every
`refresh_every` steps the stored rollouts are regenerated with the current policy and
re-verified; in between they are stale and the surrogate is importance-corrected:

    J_s(theta) = token_mean( min(exp(logp_theta - logp_behaviour), c) * A )      (per token)

whose gradient at theta = behaviour is the usual policy gradient sum A * grad log p. One
extra forward+backward per protected skill per step, over `batch_prompts * samples` rows.
Fresh mode is memory mode with refresh_every = 1 (every step new rollouts, ratio = 1).
"""

from __future__ import annotations

import random

import torch

from retainrl.policy.rollout import Rollout, SamplingConfig, completion_logprobs, generate
from retainrl.rl.advantages import grpo_advantages
from retainrl.rl.losses import aggregate
from retainrl.verify.checks import verify_many


class SkillMemory:
    """Stored prompts + rollouts of one protected skill."""

    def __init__(self, skill: str, tasks: list, n_prompts: int, samples: int, seed: int):
        rng = random.Random(seed)
        self.skill = skill
        self.tasks = rng.sample(tasks, min(n_prompts, len(tasks)))
        self.samples = samples
        self.rollout: Rollout | None = None
        self.advantages: torch.Tensor | None = None
        self.behaviour: torch.Tensor | None = None
        self.cursor = 0
        self.refreshed_at = -1
        self.mean_reward = float("nan")

    @torch.no_grad()
    def refresh(self, policy, sandbox, sampling: SamplingConfig, seed: int, step: int) -> None:
        r = generate(policy, [t.prompt for t in self.tasks], n=self.samples, cfg=sampling, seed=seed)
        verdicts = verify_many(sandbox, [(self.tasks[i], text) for i, text in zip(r.task_index, r.texts)])
        rewards = torch.tensor([v.reward("binary") for v in verdicts], dtype=torch.float32)
        self.advantages, _ = grpo_advantages(rewards, self.samples)
        lp, _, _ = completion_logprobs(policy, r)
        self.behaviour = lp.detach()
        r.rewards = rewards
        self.rollout = r
        self.refreshed_at = step
        self.mean_reward = float(rewards.mean())

    def batch_rows(self, batch_prompts: int) -> list[int]:
        """Rows of the next `batch_prompts` prompts (rotating through the buffer)."""
        n = len(self.tasks)
        prompts = [(self.cursor + i) % n for i in range(min(batch_prompts, n))]
        self.cursor = (self.cursor + len(prompts)) % n
        return [p * self.samples + j for p in prompts for j in range(self.samples)]

    def surrogate(self, policy, rows: list[int], is_clip: float) -> torch.Tensor:
        """J_s on the given rows (with gradient).

        Rows of groups whose advantages are all zero add exactly zero to J_s and its gradient,
        so they are not run; the token-mean denominator still counts every given row, so the
        value is the same as over all rows."""
        n_tokens = int(self.rollout.completion_mask[torch.tensor(rows)].sum())
        live = [r for r in rows if bool((self.advantages[(r // self.samples) * self.samples:
                                                         (r // self.samples + 1) * self.samples] != 0).any())]
        if not live:  # no signal in these rows: J_s = 0, no gradient
            return torch.zeros((), requires_grad=torch.is_grad_enabled())
        sub = self.rollout.select(live)
        idx = torch.tensor(live)
        lp, _, _ = completion_logprobs(policy, sub)
        mask = sub.completion_mask.to(lp.device)
        ratio = torch.exp(lp - self.behaviour[idx].to(lp.device)).clamp(max=is_clip)
        adv = self.advantages[idx].to(lp.device)[:, None]
        return aggregate(ratio * adv, mask, "token_mean", num_tokens_global=torch.tensor(max(1, n_tokens)))
