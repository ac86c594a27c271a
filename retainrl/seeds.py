"""Every random stream of a run is seeded from one hashed key.

`derive_seed(seed, *parts)` = the first 48 bits of sha256("seed/part1/part2/..."), so two
streams that differ in any part (the step, the skill, what the stream is for) get unrelated
seeds, and no arithmetic on small integers can make two of them collide (the old
`seed * 7 + step * 13 + len(skill)` gave `repair` and `reason` the same seed).
"""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, *parts) -> int:
    """A 48-bit seed for the stream named by `parts` (ints or strings) under the run seed."""
    key = "/".join(str(p) for p in (seed, *parts))
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16)


def step_seed(seed: int, step: int, salt: str = "rollout") -> int:
    """The seed of stream `salt` at training step `step` (rollouts, evaluation, ...)."""
    return derive_seed(seed, step, salt)
