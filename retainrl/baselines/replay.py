"""Experience replay of prompts: a fixed fraction of every step's prompts comes from the skills
of earlier phases (drawn by train.sampler.TaskSampler; rollouts are fresh, nothing is stored)."""

from __future__ import annotations

from retainrl.baselines.base import Baseline


class Replay(Baseline):
    def __init__(self, fraction: float):
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"replay fraction must be in [0, 1), got {fraction}")
        self.replay_fraction = float(fraction)
