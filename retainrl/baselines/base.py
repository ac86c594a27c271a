"""The interface every continual-learning baseline implements (plain RL is the null one)."""

from __future__ import annotations

import torch

Penalty = tuple[torch.Tensor, dict[str, torch.Tensor]]


class Baseline:
    """No penalty, no replay.

    replay_fraction: share of each step's prompts the sampler draws from earlier phases' skills.
    penalty(): None, or (scalar loss with gradient w.r.t. the trainable parameters, detached
        metrics); the update adds its gradient after the data-parallel gradient sum, so it must
        be the same on every rank.
    on_phase_start(earlier_skills, phase): called when phase `phase` (0-based) starts, after
        every earlier phase ended; earlier_skills: the skills trained in phases < phase.
    """

    replay_fraction = 0.0

    def penalty(self) -> Penalty | None:
        return None

    def on_phase_start(self, earlier_skills: list[str], phase: int) -> None:
        pass

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass
