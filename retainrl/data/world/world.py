"""make_world: seeded, deterministic splits of the code world, in six versions.

`WorldConfig.version` picks the world; a version never changes once released, so an old run's
config rebuilds its tasks byte for byte.

Version 1 (skills gen, repair, reason):

Splits are kept apart by the function itself, not by the draw: every function source falls in
one fixed bucket (sha256 of the source, the same for every seed and every size), 10% held-out,
20% train, 70% pretrain. So no held-out or train function can reach any pretraining corpus,
whatever seed or sizes made either, and growing `n_train` only appends tasks. Within a split
tasks are unique by `Task.content_hash()`; one function may serve several skills or calls.

Each (seed, skill, split) draws from its own `random.Random`, seeded from a sha256 of its name,
so a split's tasks do not depend on the sizes of the others.

Version 2 (adds the skill `refactor`) fixes version 1's skewed split. Version 1 draws functions
from the generator and keeps those whose hash lands in the split, so a split's share of a
function *shape* (operations and types, `programs.shape_of`) is the generator's share of the
shape's functions that happen to hash there. Shapes with few distinct functions (one-operation
chains: 64 `1:list->list` functions in all, 3 of them in the held-out bucket) carry a large
share of the generator's mass, so the shares differ between splits (one-operation functions:
38% of train, 24% held out). Version 2 is stratified:
- a task first draws a shape from the generator's distribution, then functions of that shape
  in its split (rejection sampling) until one makes a task (a function whose cases are
  degenerate, or that admits no failing bug for repair, is replaced by another of the same
  shape), so every split has the generator's shape shares;
- the pretrain split is version 1's (the same functions: a model pretrained on version 1's
  pretrain split has seen no version 2 train or held-out function); the other 30% of functions
  are held-out (1/3) or train (2/3) by version 1's hash for chains of two or more operations,
  and, for the few one-operation functions, by their hash rank within their shape, so each such
  shape has functions on both sides where it has any (a shape with none in a split is redrawn).
`shape_shares` reports the shares of a list of tasks.

Version 3 is version 2's functions, cases, calls and splits (the same random streams), with two
prompts changed (skills.py): gen's stub carries its return annotation and repair is told to keep
its signature, each checked as a form; reason and refactor tasks are version 2's.

Version 4 (experimental) is version 3 with repair's shown program carrying its return annotation on
half of the functions (skills.repair_annotated); the same streams, so every other task is version 3's.

Version 5 (experimental) is version 4 with a quarter of repair's programs shown annotated (inside v4's half).

Version 6 (experimental) is version 5 with reason's functions drawn one difficulty level below the world's
(`skill_difficulty`; level 1 stays 1): a reason task of a difficulty-2 world is the version-5 reason task of
difficulty 1, the same stream. Predicting a value is the skill a small model does worst (the tiny model's
greedy value is right on about a quarter of difficulty-2 reason tasks, so its habit leaves RL about +0.10
to gain), and CRUXEval's functions are short. Level 1 means one or two operations and shorter inputs (lists
of 2-4, values 0-9; `programs.LEVELS`). Every other skill's task is version 5's.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field

from collections import Counter
from functools import lru_cache
from itertools import permutations, product

from retainrl.data.task import Task
from retainrl.data.world.ops import LETTERS, OPS, OPS_BY_NAME
from retainrl.data.world.programs import LEVELS, Step, compile_function, make_cases, render, sample_chain, shape_of
from retainrl.data.world.skills import BUILDERS, SKILLS, VERSION_SKILLS, build_function

SPLITS = ("heldout", "train", "pretrain")
BUCKETS = {"heldout": range(0, 10), "train": range(10, 30), "pretrain": range(30, 100)}
VERSIONS = (1, 2, 3, 4, 5, 6)
_SALT = b"retainrl-world-v1\n"
_SALT_V2 = b"retainrl-world-v2/rank\n"
_TRIES_PER_SHAPE = 3000      # v2: chains drawn for a function of one shape in a split before the shape is redrawn
_TASK_TRIES_PER_SHAPE = 50   # v2: functions of one shape tried (degenerate cases, no bug, duplicate) before that


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
    version: int = 1
    """World version (see the module docstring): 1 the original, 2 the stratified split with `refactor`,
    3 version 2 with gen's and repair's signature conventions opposed, 4 (experimental) version 3 with
    repair's shown program annotated on half of the functions, 5 (experimental) version 4 with a quarter,
    6 (experimental) version 5 with reason's functions one difficulty level lower."""

    def to_dict(self) -> dict:
        return asdict(self)


def split_of(source: str) -> str:
    """The split a function belongs to, by a fixed hash of its source."""
    bucket = int(hashlib.sha256(_SALT + source.encode()).hexdigest()[:8], 16) % 100
    return next(name for name, r in BUCKETS.items() if bucket in r)


@lru_cache(maxsize=None)
def _one_op_pool_split() -> dict[str, str]:
    """v2: {source: "heldout" | "train"} for every one-operation function outside the pretrain
    bucket, by hash rank within its shape (ranks 0, 3, 6, ... held out)."""
    by_shape: dict[str, list[str]] = {}
    for op in OPS:
        letter_sets = permutations(LETTERS, op.letters) if op.letters else [()]
        for k, letters in product(op.ks or [None], list(letter_sets)):
            params = ([("k", k)] if k is not None else []) + list(zip(("c", "d"), letters))
            chain = [Step(op, tuple(params))]
            source = render(chain)
            if split_of(source) != "pretrain":
                by_shape.setdefault(shape_of(chain), []).append(source)
    out = {}
    for sources in by_shape.values():
        ranked = sorted(set(sources), key=lambda src: hashlib.sha256(_SALT_V2 + src.encode()).hexdigest())
        out.update({src: "heldout" if i % 3 == 0 else "train" for i, src in enumerate(ranked)})
    return out


def split_of_chain(chain: list[Step], source: str, version: int = 1) -> str:
    """The split of a rendered chain in a world version (v1: `split_of(source)`)."""
    split = split_of(source)
    if version == 1 or split == "pretrain" or len(chain) > 1:
        return split
    return _one_op_pool_split()[source]


def task_shape(task: Task) -> str:
    """The shape of a world task's function (`programs.shape_of`), from its meta (any version)."""
    ops = [OPS_BY_NAME[name] for name in task.meta["ops"]]
    return f"{len(ops)}:{ops[0].src}->{ops[-1].dst}"


def shape_shares(tasks: list[Task], coarse: bool = False) -> dict[str, float]:
    """Share of each function shape (e.g. `2:list->int`; coarse: operations only, `2`) among
    world tasks, largest first."""
    counts = Counter(task_shape(t).split(":")[0] if coarse else task_shape(t) for t in tasks)
    return {shape: round(c / max(1, len(tasks)), 4) for shape, c in counts.most_common()}


def skill_difficulty(version: int, skill: str, difficulty: int) -> int:
    """The level a skill's functions are drawn at: the world's difficulty, one lower for reason from
    version 6 on (never below 1)."""
    return max(1, difficulty - 1) if version >= 6 and skill == "reason" else difficulty


def _stream(seed: int, skill: str, split: str, difficulty: int, version: int = 1) -> random.Random:
    # v3 draws v2's functions, cases and calls (only gen's and repair's prompts differ)
    tag = "world" if version == 1 else f"world-v{min(version, 2)}"
    digest = hashlib.sha256(f"{tag}/{seed}/{skill}/{split}/{difficulty}".encode()).hexdigest()
    return random.Random(int(digest[:16], 16))


def _draw_in_shape(rng: random.Random, level, split: str, target: list[Step]) -> list[Step] | None:
    """v2: a chain of the same shape as `target` whose function is in `split`; None if none is found."""
    shape = shape_of(target)
    for _ in range(_TRIES_PER_SHAPE):
        chain = sample_chain(rng, level, (len(target), target[0].op.src))
        if shape_of(chain) == shape and split_of_chain(chain, render(chain), 2) == split:
            return chain
    return None


def generate(config: WorldConfig, skill: str, split: str, n: int) -> list[Task]:
    """The first n tasks of one (skill, split) stream."""
    if n <= 0:
        return []
    if config.version not in VERSIONS:
        raise ValueError(f"world version {config.version} unknown; expected one of {VERSIONS}")
    if skill not in VERSION_SKILLS[config.version]:
        raise ValueError(f"unknown skill {skill!r} in world version {config.version}; expected one of "
                         f"{VERSION_SKILLS[config.version]}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if config.difficulty not in LEVELS:
        raise ValueError(f"difficulty {config.difficulty} outside {sorted(LEVELS)}")
    difficulty = skill_difficulty(config.version, skill, config.difficulty)
    level = LEVELS[difficulty]
    stratified = config.version >= 2   # v2's stratified draw, which v3 shares
    rng = _stream(config.seed, skill, split, difficulty, config.version)
    tasks: list[Task] = []
    seen: set[str] = set()
    target, tries = None, 0   # v2: the drawn shape, kept until a task of that shape is made
    for _ in range(400 * n + 2000):
        if stratified:
            if target is None or tries >= _TASK_TRIES_PER_SHAPE:
                target, tries = sample_chain(rng, level), 0
            tries += 1
            chain = _draw_in_shape(rng, level, split, target)
            if chain is None:
                target = None
                continue
        else:
            chain = sample_chain(rng, level)
        source = render(chain)
        if not stratified and split_of(source) != split:
            continue
        fn = compile_function(source)
        cases = make_cases(fn, chain[0].op.src, rng, level, config.n_tests) if fn else None
        if cases is None:
            continue
        meta = {"split": split, "seed": config.seed, "difficulty": difficulty, "n_ops": len(chain),
                "ops": [step.op.name for step in chain], "function": source}
        if stratified:
            meta.update(version=config.version, shape=shape_of(chain))
        task = BUILDERS[skill](build_function(chain, cases), rng, task_id=f"world/{skill}/{split}/{len(tasks)}",
                               skill=skill, source="world", timeout_s=config.timeout_s,
                               meta=meta)
        if task is None or task.content_hash() in seen:
            continue
        seen.add(task.content_hash())
        tasks.append(task)
        target = None
        if len(tasks) == n:
            return tasks
    raise RuntimeError(f"world exhausted: only {len(tasks)} of {n} {skill}/{split} tasks at level {difficulty} "
                       f"(world difficulty {config.difficulty}); ask for fewer or raise the difficulty")


def make_world(config: WorldConfig = WorldConfig()) -> dict[str, dict[str, list[Task]]]:
    """{skill: {"train": [Task], "heldout": [Task], "pretrain": [Task]}} for one config
    (`config.skills`; `VERSION_SKILLS[version]` lists a version's skills)."""
    sizes = {"train": config.n_train, "heldout": config.n_heldout, "pretrain": config.n_pretrain}
    return {skill: {split: generate(config, skill, split, sizes[split]) for split in ("train", "heldout", "pretrain")}
            for skill in config.skills}
