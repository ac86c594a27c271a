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

ALGORITHMS maps an algorithm name (RLConfig.algo) to the estimator and loss it uses by name:
        "grpo"  grpo advantages + clipped loss     "rloo"  rloo advantages + REINFORCE loss
        "ppo"   gae advantages (value head) + clipped loss
A trainer calls `estimate_advantages(name, ...)` and `policy_loss(name, ...)`: one call
signature for every registered estimator / loss (the registered functions keep their own).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

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

# losses with a ratio to the sampling policy (and its clip range)
RATIO_POLICY_LOSSES = ("ppo_clip", "grpo")


@dataclass(frozen=True)
class Algorithm:
    """What an RL algorithm is made of, by registry name."""
    advantages: str          # key of ADVANTAGE_ESTIMATORS
    policy_loss: str         # key of POLICY_LOSSES
    critic: bool = False     # needs a value head: values feed the estimator, a value loss is added


ALGORITHMS = {
    "grpo": Algorithm(advantages="grpo", policy_loss="grpo"),
    "rloo": Algorithm(advantages="rloo", policy_loss="rloo"),
    "ppo": Algorithm(advantages="gae", policy_loss="ppo_clip", critic=True),
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


def get_algorithm(name: str) -> Algorithm:
    """The Algorithm registered under `name` in ALGORITHMS (KeyError lists the names)."""
    return _lookup(ALGORITHMS, "algorithm", name)


def estimate_advantages(name: str, rewards, group_size: int, *, values=None, mask=None, **options):
    """Any registered estimator, one signature: (advantages (B,) or (B, T), returns (B, T) or None, metrics).

    rewards (B,) in groups of `group_size` consecutive rows; values (B, T) and mask (B, T) are
    what the token-level estimator ("gae") needs; options go to the estimator unchanged."""
    fn = get_advantage_estimator(name)
    if name in GROUP_ADVANTAGE_ESTIMATORS:
        adv, metrics = fn(rewards, group_size, **options)
        return adv, None, metrics
    (adv, returns), metrics = fn(rewards, values, mask, **options)
    return adv, returns, metrics


def policy_loss(name: str, logprobs, old_logprobs, advantages, mask, *, clip_eps_low: float,
                clip_eps_high: float | None, **agg):
    """Any registered policy loss, one signature; a loss without a ratio ignores old_logprobs and the clip."""
    fn = get_policy_loss(name)
    if name in RATIO_POLICY_LOSSES:
        return fn(logprobs, old_logprobs, advantages, mask, clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high,
                  **agg)
    return fn(logprobs, advantages, mask, **agg)


__all__ = [
    "ADVANTAGE_ESTIMATORS", "AGGREGATIONS", "ALGORITHMS", "Algorithm", "RATIO_POLICY_LOSSES",
    "estimate_advantages", "get_algorithm", "policy_loss", "GROUP_ADVANTAGE_ESTIMATORS", "KL_ESTIMATORS",
    "POLICY_LOSSES", "aggregate", "aggregation_counts", "clipped_policy_loss", "entropy_bonus",
    "gae_advantages", "get_advantage_estimator", "get_policy_loss", "grpo_advantages",
    "kl_penalty", "masked_mean", "masked_var", "masked_whiten", "place_sequence_rewards",
    "policy_objective", "reinforce_loss", "rloo_advantages", "sequence_logprobs",
    "token_entropy", "value_loss",
]
