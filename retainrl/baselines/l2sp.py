"""L2-SP (Li et al. 2018, "Explicit inductive bias for transfer learning"), on the trainable (LoRA)
parameters only: penalty lam * ||theta - theta_phase_start||^2, the anchor reset at every phase
start (not the pretrained weights: the LoRA parameters of the previous phase's end)."""

from __future__ import annotations

import torch

from retainrl.baselines.base import Baseline, Penalty


def l2sp_penalty(named: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor], lam: float) -> Penalty:
    """(lam * sum_i (theta_i - anchor_i)^2, {"method/l2sp": the unweighted sum}); named and anchor by name."""
    total = sum(((p - anchor[n].to(p.device)) ** 2).sum() for n, p in named.items())
    total = torch.as_tensor(total)
    return lam * total, {"method/l2sp": total.detach()}


class L2SP(Baseline):
    def __init__(self, policy, lam: float):
        self.policy, self.lam = policy, float(lam)
        self.anchor = self._snapshot()

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.policy.named_trainable().items()}

    def on_phase_start(self, earlier_skills: list[str], phase: int) -> None:
        self.anchor = self._snapshot()

    def penalty(self) -> Penalty:
        return l2sp_penalty(self.policy.named_trainable(), self.anchor, self.lam)

    def state(self) -> dict:
        return {"anchor": self.anchor}

    def load_state(self, state: dict) -> None:
        self.anchor = state["anchor"]
