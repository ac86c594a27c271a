"""Which training tasks a step sees: per-phase skills, mixed-protocol weights, replay.

Deterministic for a seed; its RNG state is part of every checkpoint.
"""

from __future__ import annotations

import random

from retainrl.data.task import Task


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
