"""Reward functions in TRL's calling convention, backed by retainrl's sandboxed verifiers.

TRL calls a custom reward function as `f(prompts=..., completions=..., completion_ids=...,
**columns)` where every dataset column arrives as a list aligned with the completions; a
function may return None for a sample to abstain, and TRL logs `rewards/<f.__name__>/mean`.

`skill_rewards(sandbox, skills)` gives one function per skill, named after the skill. Each
scores only the samples whose `skill` column is its skill (one `verify_many` batch for them, so
one sandbox round trip per function per step) and returns None for the others; TRL's
per-function metrics thus become per-skill training curves (`rewards/gen/mean`, ...), and a
sample's total reward is its own skill's verdict. The check kind (unit tests, output or input
prediction, compile, format) comes from the row's `check` column, as for every retainrl Task.

Rows <-> Tasks: `tasks_to_rows` / `tasks_to_dataset` turn Tasks (the world's, or any loader's)
into rows with `prompt`, `skill` and the verifier fields (VERIFIER_FIELDS; `meta` as a JSON
string, since Arrow needs one type per column); `task_from_row` rebuilds the Task a verdict
needs. Dataset rows are untrusted input: a missing or mistyped column is a ValueError naming
the column and the row; a row whose task cannot be checked gets reward 0 (the verifier's
"error" verdict), never an exception in the middle of a batch.
"""

from __future__ import annotations

import json
from typing import Callable, Iterable

from retainrl.data.task import Task
from retainrl.verify.checks import SandboxLike, verify_many

# Task fields a verdict needs, carried as dataset columns (prompt and skill are columns too).
VERIFIER_FIELDS = ("task_id", "source", "check", "tests", "program_prefix", "program_suffix", "entry_point",
                   "call_input", "expected", "timeout_s", "meta")
_OPTIONAL_STR = ("entry_point", "call_input", "expected")


def task_to_row(task: Task, conversational: bool = False) -> dict:
    """One dataset row: prompt (text, or one user message when conversational), skill, verifier fields."""
    row = {"prompt": [{"role": "user", "content": task.prompt}] if conversational else task.prompt,
           "skill": task.skill}
    for name in VERIFIER_FIELDS:
        row[name] = getattr(task, name)
    row["meta"] = json.dumps(task.meta, sort_keys=True)
    row["timeout_s"] = float(task.timeout_s)
    return row


def tasks_to_rows(tasks: Iterable[Task] | dict[str, Iterable[Task]], conversational: bool = False) -> list[dict]:
    """Rows of a list of Tasks, or of a skill -> tasks mapping (skills in its order)."""
    if isinstance(tasks, dict):
        tasks = [t for ts in tasks.values() for t in ts]
    return [task_to_row(t, conversational) for t in tasks]


def tasks_to_dataset(tasks: Iterable[Task] | dict[str, Iterable[Task]], conversational: bool = False):
    """A `datasets.Dataset` of the tasks' rows (needs the `datasets` package: retainrl[trl])."""
    from datasets import Dataset

    rows = tasks_to_rows(tasks, conversational)
    if not rows:
        raise ValueError("tasks_to_dataset: no tasks given")
    return Dataset.from_list(rows)


def world_dataset(config=None, split: str = "train", skills: Iterable[str] | None = None,
                  conversational: bool = False):
    """The built-in code world's `split` ("train", "heldout", "pretrain") as a Dataset, skills in
    the config's order (`skills` picks some). Benchmarks: tasks_to_dataset(load_benchmark(...))."""
    from retainrl.data.world import WorldConfig, make_world

    world = make_world(config or WorldConfig())
    chosen = list(skills) if skills is not None else list(world)
    unknown = [s for s in chosen if s not in world]
    if unknown:
        raise ValueError(f"world_dataset: skill(s) {unknown} not in the world (it has {list(world)})")
    return tasks_to_dataset({s: world[s][split] for s in chosen}, conversational)


def _prompt_text(prompt, where: str) -> str:
    """A row's prompt as text: the string, or the content of the last user message."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if users and isinstance(users[-1], str):
            return users[-1]
    raise ValueError(f"{where}: 'prompt' must be a string or chat messages with a user message, "
                     f"got {type(prompt).__name__}")


def task_from_row(row: dict, where: str = "row") -> Task:
    """The Task of a dataset row (the inverse of task_to_row); ValueError naming what is wrong."""
    for name in ("prompt", "skill") + VERIFIER_FIELDS:
        if name not in row:
            raise ValueError(f"{where}: missing column {name!r} (rows come from retainrl.integrations.rewards."
                             f"tasks_to_dataset; needed: prompt, skill, {', '.join(VERIFIER_FIELDS)})")
    for name in ("skill", "task_id", "source", "check", "tests", "program_prefix", "program_suffix"):
        if not isinstance(row[name], str):
            raise ValueError(f"{where}: column {name!r} must be a string, got {type(row[name]).__name__}")
    for name in _OPTIONAL_STR:
        if row[name] is not None and not isinstance(row[name], str):
            raise ValueError(f"{where}: column {name!r} must be a string or null, got {type(row[name]).__name__}")
    timeout = row["timeout_s"]
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
        raise ValueError(f"{where}: column 'timeout_s' must be a positive finite number, got {timeout!r}")
    try:
        meta = json.loads(row["meta"]) if isinstance(row["meta"], str) else None
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: column 'meta' is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: column 'meta' must be a JSON object string")
    try:
        return Task(task_id=row["task_id"], skill=row["skill"], source=row["source"],
                    prompt=_prompt_text(row["prompt"], where), check=row["check"], tests=row["tests"],
                    program_prefix=row["program_prefix"], program_suffix=row["program_suffix"],
                    entry_point=row["entry_point"], call_input=row["call_input"], expected=row["expected"],
                    timeout_s=float(timeout), meta=meta)
    except ValueError as e:  # e.g. an unknown check kind
        raise ValueError(f"{where}: {e}") from None


def dataset_tasks(dataset) -> dict[str, list[Task]]:
    """skill -> Tasks of a dataset (or any iterable of row dicts) made by tasks_to_dataset."""
    out: dict[str, list[Task]] = {}
    for i, row in enumerate(dataset):
        task = task_from_row(row, f"dataset row {i}")
        out.setdefault(task.skill, []).append(task)
    return out


def completion_text(completion) -> str:
    """The text of a TRL completion: a string, or (conversational) the assistant messages' contents."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion
                       if isinstance(m, dict) and isinstance(m.get("content", ""), str))
    raise ValueError(f"completion must be a string or a list of chat messages, got {type(completion).__name__}")


def skill_reward(sandbox: SandboxLike, skill: str, kind: str = "binary") -> Callable[..., list[float | None]]:
    """A TRL reward function for one skill: the verdict's reward (`kind`: 'binary' or 'fraction')
    for rows with skill == `skill`, None for the others. Its __name__ is the skill."""
    if kind not in ("binary", "fraction"):
        raise ValueError(f"unknown reward kind {kind!r}; expected 'binary' or 'fraction'")

    def reward(prompts=None, completions=None, **columns) -> list[float | None]:
        if completions is None:
            raise ValueError(f"reward {skill!r}: called without completions")
        if "skill" not in columns:
            raise ValueError(f"reward {skill!r}: the dataset has no 'skill' column to route samples by "
                             f"(build it with retainrl.integrations.rewards.tasks_to_dataset)")
        mine = [i for i, s in enumerate(columns["skill"]) if s == skill]
        pairs = []
        for i in mine:
            row = {k: v[i] for k, v in columns.items() if isinstance(v, list) and len(v) == len(completions)}
            row.setdefault("prompt", prompts[i] if prompts is not None else "")
            pairs.append((task_from_row(row, f"reward {skill!r}, sample {i}"), completion_text(completions[i])))
        verdicts = verify_many(sandbox, pairs) if pairs else []
        out: list[float | None] = [None] * len(completions)
        for i, v in zip(mine, verdicts):
            out[i] = v.reward(kind)
        return out

    reward.__name__ = reward.__qualname__ = skill
    return reward


def skill_rewards(sandbox: SandboxLike, skills: Iterable[str], kind: str = "binary") -> list[Callable]:
    """One reward function per skill (pass them all as GRPOTrainer's reward_funcs)."""
    skills = list(skills)
    if len(set(skills)) != len(skills) or not skills:
        raise ValueError(f"skill_rewards: skills must be distinct and non-empty, got {skills}")
    return [skill_reward(sandbox, s, kind) for s in skills]
