"""Per-skill evaluation on fixed held-out sets: greedy pass@1 and unbiased pass@k.

pass@1 is the fraction of tasks whose greedy completion passes its verifier. With n_samples > 0,
`n_samples` completions per task are also drawn at the sampling temperature, giving
`pass@1_sampled` (the mean success of a sample: the unbiased pass@1 estimate of Chen et al.
(2021), the number Codex-style papers call pass@1) and pass@k for each requested k > 1,
1 - C(n - c, k) / C(n, k), averaged over tasks (retainrl.metrics.passk).

For the built-in world's tasks, `habit_share` is the fraction of greedy completions that show
the skill's deliberate habit (`retainrl.data.world.shows_habit`), the testbed's planted failure
that RL should remove, and `habit_undone_pass@1` the greedy pass@1 with each such completion's habit
edit undone (`retainrl.data.world.undo_habit`): how much of the skill's room is its habit.
"""

from __future__ import annotations

import time

from retainrl.data.task import Task
from retainrl.data.world import shows_habit, undo_habit
from retainrl.metrics.passk import mean_pass_at_k
from retainrl.policy.model import Policy
from retainrl.policy.rollout import SamplingConfig, generate
from retainrl.verify.checks import verify_many


def evaluate_skill(policy: Policy, tasks: list[Task], sandbox, sampling: SamplingConfig, ks: tuple[int, ...] = (),
                   n_samples: int = 0, seed: int = 0, batch_size: int = 128) -> dict:
    """{"pass@1", "pass@k"..., "n", "tokens", "gen_s", "verify_s", "verify_cpu_s", "errors"} for one skill."""
    t0 = time.monotonic()
    rollout = generate(policy, [t.prompt for t in tasks], n=1, cfg=sampling, greedy=True, batch_size=batch_size)
    t1 = time.monotonic()
    verdicts = verify_many(sandbox, list(zip(tasks, rollout.texts)))
    out = {"pass@1": sum(v.passed for v in verdicts) / max(1, len(tasks)), "n": len(tasks),
           "tokens": int(rollout.lengths.sum()), "gen_s": t1 - t0, "verify_s": time.monotonic() - t1,
           "verify_cpu_s": sum(v.cpu_s for v in verdicts),
           "errors": sum(v.status in ("error", "killed") for v in verdicts)}
    if tasks and all(t.source == "world" for t in tasks):
        habit = [i for i, (t, text) in enumerate(zip(tasks, rollout.texts)) if shows_habit(t, text)]
        out["habit_share"] = len(habit) / len(tasks)
        undone = verify_many(sandbox, [(tasks[i], undo_habit(tasks[i], rollout.texts[i])) for i in habit])
        out["habit_undone_pass@1"] = out["pass@1"] + sum(v.passed for v in undone) / len(tasks)
    ks = tuple(k for k in ks if 1 < k <= n_samples)
    if n_samples > 0:
        sampled = generate(policy, [t.prompt for t in tasks], n=n_samples, cfg=sampling, seed=seed,
                           batch_size=batch_size)
        sv = verify_many(sandbox, [(tasks[i], text) for i, text in zip(sampled.task_index, sampled.texts)])
        correct = [sum(v.passed for v in sv[i * n_samples:(i + 1) * n_samples]) for i in range(len(tasks))]
        out["pass@1_sampled"] = sum(correct) / max(1, n_samples * len(tasks))
        for k in ks:
            out[f"pass@{k}"] = mean_pass_at_k([n_samples] * len(tasks), correct, k)
        out["tokens"] += int(sampled.lengths.sum())
    return out


def evaluate(policy: Policy, tasks_by_skill: dict[str, list[Task]], sandbox, sampling: SamplingConfig,
             ks: tuple[int, ...] = (), n_samples: int = 0, seed: int = 0) -> dict[str, dict]:
    return {skill: evaluate_skill(policy, tasks, sandbox, sampling, ks, n_samples, seed)
            for skill, tasks in tasks_by_skill.items()}
