"""Continual-learning baselines the skill-safe layer is compared against, as components with
explicit inputs (MethodConfig.name picks one through BASELINES):

    plain   nothing beyond the RL loss (KL to the reference / entropy: rl.kl_coef / rl.entropy_coef,
            a per-token term of the RL loss itself, rl.losses.kl_penalty)
    replay  a fraction of each step's prompts from earlier phases' skills      (replay.py)
    l2sp    lam * ||theta - theta_phase_start||^2                               (l2sp.py)
    ewc     online EWC with a diagonal empirical Fisher, summed over phases     (ewc.py)

Each is a `Baseline`: `penalty()` (added to the loss gradient by train.objective), a
`replay_fraction` (read by the trainer's sampler) and `on_phase_start(earlier_skills, phase)`.
"""

from __future__ import annotations

from retainrl.baselines.base import Baseline, Penalty
from retainrl.baselines.ewc import EWC, estimate_fisher, ewc_penalty
from retainrl.baselines.l2sp import L2SP, l2sp_penalty
from retainrl.baselines.replay import Replay

BASELINES = {
    "plain": lambda m, policy, tasks, sampling, seed: Baseline(),
    "replay": lambda m, policy, tasks, sampling, seed: Replay(m.replay_fraction),
    "l2sp": lambda m, policy, tasks, sampling, seed: L2SP(policy, m.l2sp_lambda),
    "ewc": lambda m, policy, tasks, sampling, seed: EWC(policy, m.ewc_lambda, m.ewc_prompts, tasks, sampling, seed),
}


def make_baseline(method, policy, train_tasks: dict[str, list], sampling, seed: int) -> Baseline:
    """The baseline `method.name` (a MethodConfig) for this policy, training tasks and run seed."""
    try:
        build = BASELINES[method.name]
    except KeyError:
        raise KeyError(f"unknown method {method.name!r}; expected one of {sorted(BASELINES)}") from None
    return build(method, policy, train_tasks, sampling, seed)


__all__ = ["BASELINES", "EWC", "L2SP", "Baseline", "Penalty", "Replay", "estimate_fisher", "ewc_penalty",
           "l2sp_penalty", "make_baseline"]
