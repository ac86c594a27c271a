"""Which training tasks a step sees: per-phase skills, mixed-protocol weights, replay, and the
softmin skill weighting that steers a multi-skill phase towards its worst skill.

Deterministic for a seed; its RNG state (and the weighting's estimates) are part of every
checkpoint.

Softmin weighting (`protocol.skill_weighting=softmin`) is KL-regularised group DRO in closed
form: the prompt distribution over a phase's skills is

    p = argmax_p  sum_s p_s * (1 - r_s) - tau * KL(p || w)   =>   p_s ∝ w_s * exp(-r_s / tau)

where r_s is an exponential moving average of skill s's mean training reward (the rollouts'
own rewards, no extra evaluation), w the fixed `mixed_weights` (normalised) and tau the
temperature; the prompts are then drawn from q = lam * w + (1 - lam) * p, lam =
`softmin_fixed_share`, so that every skill keeps a share of them and its estimate keeps being
updated (q is then no longer the argmax). tau -> inf or lam = 1 is the fixed weighting. Unlike
Sagawa et al.'s online group DRO (q_s <- q_s exp(eta * loss_s), which accumulates), q follows
the current estimates, so a skill that catches up stops being favoured. The weights are drawn
as sampling probabilities, not as loss weights: more prompts of the worst skill, not larger
gradients from its few (the variance of a few GRPO groups is the problem being solved).
Estimates are kept per skill across phases: a skill trained again in a later multi-skill phase
starts from its last estimate.
"""

from __future__ import annotations

import math
import random

from retainrl.data.task import Task


def softmin_weights(estimates: dict[str, float], base: dict[str, float], temperature: float,
                    fixed_share: float) -> dict[str, float]:
    """Sampling probabilities q_s = lam * w_s + (1 - lam) * p_s over the skills of `base`, w = base
    normalised, p_s ∝ w_s * exp(-(r_s - min r) / temperature), lam = fixed_share. Skills of weight
    0 get 0; `estimates` must hold every other skill. Returns {skill: q_s}, summing to 1."""
    live = [s for s, w in base.items() if w > 0]
    if not live:
        raise ValueError("softmin_weights: no skill has a weight > 0")
    if temperature <= 0 or not 0 <= fixed_share <= 1:
        raise ValueError(f"softmin_weights: temperature {temperature} must be > 0 and fixed_share {fixed_share} "
                         f"in [0, 1]")
    total = sum(base[s] for s in live)
    lo = min(estimates[s] for s in live)  # shift for stability: the worst skill's exponent is 0
    raw = {s: base[s] * math.exp(-(estimates[s] - lo) / temperature) for s in live}
    z = sum(raw.values())
    out = {s: 0.0 for s in base}
    for s in live:
        out[s] = fixed_share * base[s] / total + (1 - fixed_share) * raw[s] / z
    return out


class SkillFocus:
    """The softmin weighting's state: one reward estimate per skill (None until first seen).

    observe(): after a step, with the step's mean training reward of each skill that had prompts
    in it (global over ranks, so every rank holds the same estimates). weights(): the sampling
    probabilities for the next step; the fixed weights (normalised) until every skill has been
    seen once. With replay, these are shares of the phase's prompts, not of the replayed ones.
    """

    def __init__(self, temperature: float, ema: float, fixed_share: float):
        self.temperature, self.ema, self.fixed_share = temperature, ema, fixed_share
        self.estimates: dict[str, float] = {}

    def observe(self, rewards: dict[str, float]) -> None:
        for s, r in rewards.items():
            old = self.estimates.get(s)
            self.estimates[s] = float(r) if old is None else (1 - self.ema) * old + self.ema * float(r)

    def weights(self, skills: list[str], base: dict[str, float]) -> dict[str, float]:
        w = {s: float(base.get(s, 1.0)) for s in skills}
        if len(skills) < 2 or any(s not in self.estimates for s in skills if w[s] > 0):
            total = sum(w.values())
            return {s: v / total for s, v in w.items()}
        return softmin_weights(self.estimates, w, self.temperature, self.fixed_share)

    def state(self) -> dict[str, float]:
        return dict(self.estimates)

    def load_state(self, state) -> None:
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, (int, float)) and
                                                  math.isfinite(v) for k, v in state.items()):
            raise ValueError(f"the skill-weighting estimates are not a mapping of skill -> finite number: "
                             f"{str(state)[:120]}")
        self.estimates = {k: float(v) for k, v in state.items()}


class TaskSampler:
    """Draws prompts for a step: each prompt picks a skill (by weight), then a task of that skill.

    replay: with `replay_fraction` > 0 and earlier skills given, that fraction of the prompts
    (rounded) comes from the earlier skills instead (experience replay of prompts).
    """

    def __init__(self, train_tasks: dict[str, list[Task]], seed: int):
        self.tasks = train_tasks
        self.rng = random.Random(seed)

    def sample(self, skills: list[str], n: int, weights: dict[str, float] | None = None,
               replay_skills: list[str] | None = None, replay_fraction: float = 0.0) -> list[Task]:
        for s in skills + list(replay_skills or []):
            if not self.tasks.get(s):
                raise ValueError(f"no training tasks for skill {s!r}")
        n_replay = round(n * replay_fraction) if replay_skills else 0
        out = [self._one(skills, weights) for _ in range(n - n_replay)]
        out += [self._one(list(replay_skills), None) for _ in range(n_replay)]
        return out

    def _one(self, skills: list[str], weights: dict[str, float] | None) -> Task:
        w = [float((weights or {}).get(s, 1.0)) for s in skills]
        skill = self.rng.choices(skills, weights=w)[0] if len(skills) > 1 else skills[0]
        return self.rng.choice(self.tasks[skill])

    def state(self):
        return self.rng.getstate()

    def set_state(self, state) -> None:
        self.rng.setstate(state)
