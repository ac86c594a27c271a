"""RL building blocks as pure tensor functions, swappable by name.

ADVANTAGE_ESTIMATORS maps a name to an estimator. The group estimators share one signature,
    (rewards (B,), group_size, **options) -> (advantages (B,), metrics):
        "grpo"     group mean and std (GRPO)
        "dr_grpo"  group mean only (Dr. GRPO: scale_by_std=False)
        "rloo"     leave-one-out mean (RLOO)
and "gae" is (rewards, values (B, T), mask (B, T), **options) -> ((advantages, returns), metrics).
POLICY_LOSSES maps a name to a policy loss:
        "ppo_clip" / "grpo"  clipped_policy_loss(logprobs, old_logprobs, advantages, mask, ...)
        "reinforce" / "rloo" reinforce_loss(logprobs, advantages, mask, ...)
Every loss returns (value, metrics); see retainrl.rl.losses for the aggregation modes.
"""

from __future__ import annotations

import functools

from retainrl.rl.advantages import (
    gae_advantages,
    grpo_advantages,
    masked_whiten,
    place_sequence_rewards,
    rloo_advantages,
)
from retainrl.rl.losses import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    aggregate,
    aggregation_counts,
    clipped_policy_loss,
    entropy_bonus,
    kl_penalty,
    masked_mean,
    masked_var,
    policy_objective,
    reinforce_loss,
    sequence_logprobs,
    token_entropy,
    value_loss,
)

ADVANTAGE_ESTIMATORS = {
    "grpo": grpo_advantages,
    "dr_grpo": functools.partial(grpo_advantages, scale_by_std=False),
    "rloo": rloo_advantages,
    "gae": gae_advantages,
}
GROUP_ADVANTAGE_ESTIMATORS = ("grpo", "dr_grpo", "rloo")

POLICY_LOSSES = {
    "ppo_clip": clipped_policy_loss,
    "grpo": clipped_policy_loss,
    "reinforce": reinforce_loss,
    "rloo": reinforce_loss,
}


def _lookup(table: dict, kind: str, name: str):
    try:
        return table[name]
    except KeyError:
        raise KeyError(f"unknown {kind} {name!r}; expected one of {sorted(table)}") from None


def get_advantage_estimator(name: str):
    """The estimator registered under `name` in ADVANTAGE_ESTIMATORS (KeyError lists the names)."""
    return _lookup(ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def get_policy_loss(name: str):
    """The loss registered under `name` in POLICY_LOSSES (KeyError lists the names)."""
    return _lookup(POLICY_LOSSES, "policy loss", name)


__all__ = [
    "ADVANTAGE_ESTIMATORS", "AGGREGATIONS", "GROUP_ADVANTAGE_ESTIMATORS", "KL_ESTIMATORS",
    "POLICY_LOSSES", "aggregate", "aggregation_counts", "clipped_policy_loss", "entropy_bonus",
    "gae_advantages", "get_advantage_estimator", "get_policy_loss", "grpo_advantages",
    "kl_penalty", "masked_mean", "masked_var", "masked_whiten", "place_sequence_rewards",
    "policy_objective", "reinforce_loss", "rloo_advantages", "sequence_logprobs",
    "token_entropy", "value_loss",
]
