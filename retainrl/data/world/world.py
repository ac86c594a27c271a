"""make_world: seeded, deterministic splits of the code world.

Splits are kept apart by the function itself, not by the draw: every function source falls in
one fixed bucket (sha256 of the source, the same for every seed and every size), 10% held-out,
20% train, 70% pretrain. So no held-out or train function can reach any pretraining corpus,
whatever seed or sizes made either, and growing `n_train` only appends tasks. Within a split
tasks are unique by `Task.content_hash()`; one function may serve several skills or calls.

Each (seed, skill, split) draws from its own `random.Random`, seeded from a sha256 of its name,
so a split's tasks do not depend on the sizes of the others.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field

from retainrl.data.task import Task
from retainrl.data.world.programs import LEVELS, compile_function, make_cases, render, sample_chain
from retainrl.data.world.skills import BUILDERS, SKILLS, build_function

SPLITS = ("heldout", "train", "pretrain")
BUCKETS = {"heldout": range(0, 10), "train": range(10, 30), "pretrain": range(30, 100)}
_SALT = b"retainrl-world-v1\n"


@dataclass(frozen=True)
class WorldConfig:
    """Which world to build."""

    seed: int = 0
    """Seed of every draw; same seed and sizes -> identical tasks in identical order."""
    n_train: int = 200
    """Tasks per skill in the train split (what RL trains on)."""
    n_heldout: int = 100
    """Tasks per skill in the held-out split (what evaluation reports)."""
    n_pretrain: int = 0
    """Tasks per skill in the pretrain split (the tiny model's corpus); 0 skips it."""
    difficulty: int = 2
    """1..4: operations per function, list lengths and value ranges (see programs.LEVELS)."""
    n_tests: int = 5
    """Hidden asserts per gen/repair task (a degenerate function may get one fewer)."""
    skills: tuple[str, ...] = field(default=SKILLS)
    """Which skills to build."""
    timeout_s: float = 2.0
    """Task.timeout_s: a reference runs in milliseconds; this bounds a looping completion."""

    def to_dict(self) -> dict:
        return asdict(self)


def split_of(source: str) -> str:
    """The split a function belongs to, by a fixed hash of its source."""
    bucket = int(hashlib.sha256(_SALT + source.encode()).hexdigest()[:8], 16) % 100
    return next(name for name, r in BUCKETS.items() if bucket in r)


def _stream(seed: int, skill: str, split: str, difficulty: int) -> random.Random:
    digest = hashlib.sha256(f"world/{seed}/{skill}/{split}/{difficulty}".encode()).hexdigest()
    return random.Random(int(digest[:16], 16))


def generate(config: WorldConfig, skill: str, split: str, n: int) -> list[Task]:
    """The first n tasks of one (skill, split) stream."""
    if n <= 0:
        return []
    if skill not in BUILDERS:
        raise ValueError(f"unknown skill {skill!r}; expected one of {SKILLS}")
    if config.difficulty not in LEVELS:
        raise ValueError(f"difficulty {config.difficulty} outside {sorted(LEVELS)}")
    level = LEVELS[config.difficulty]
    rng = _stream(config.seed, skill, split, config.difficulty)
    tasks: list[Task] = []
    seen: set[str] = set()
    for _ in range(400 * n + 2000):
        chain = sample_chain(rng, level)
        source = render(chain)
        if split_of(source) != split:
            continue
        fn = compile_function(source)
        cases = make_cases(fn, chain[0].op.src, rng, level, config.n_tests) if fn else None
        if cases is None:
            continue
        meta = {"split": split, "seed": config.seed, "difficulty": config.difficulty, "n_ops": len(chain),
                "ops": [step.op.name for step in chain], "function": source}
        task = BUILDERS[skill](build_function(chain, cases), rng, task_id=f"world/{skill}/{split}/{len(tasks)}",
                               skill=skill, source="world", timeout_s=config.timeout_s,
                               meta=meta)
        if task is None or task.content_hash() in seen:
            continue
        seen.add(task.content_hash())
        tasks.append(task)
        if len(tasks) == n:
            return tasks
    raise RuntimeError(f"world exhausted: only {len(tasks)} of {n} {skill}/{split} tasks at difficulty "
                       f"{config.difficulty}; ask for fewer or raise the difficulty")


def make_world(config: WorldConfig = WorldConfig()) -> dict[str, dict[str, list[Task]]]:
    """{skill: {"train": [Task], "heldout": [Task], "pretrain": [Task]}} for one config."""
    sizes = {"train": config.n_train, "heldout": config.n_heldout, "pretrain": config.n_pretrain}
    return {skill: {split: generate(config, skill, split, sizes[split]) for split in ("train", "heldout", "pretrain")}
            for skill in config.skills}
