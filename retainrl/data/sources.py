"""Where a run's tasks come from, and which skill each task belongs to.

A run trains and evaluates on tasks grouped by skill: {skill: [Task]} for a train split and a
held-out split. They come from the built-in world (`retainrl.data.world`), from data sources
(benchmark loaders or users' JSONL, `retainrl.data.loaders`), or both; several sources may feed
one skill.

Skill assignment, per source, first match wins:
  1. `skill_fn: "package.module:function"`: a user function called with each Task (its
     `source`, `check`, `meta` and text are all visible), returning the skill name, or None to
     drop the task. This is how tasks are grouped by cluster, data source or tool type.
  2. `skill: NAME`: every task of the source gets this skill.
  3. the loader's own assignment: the benchmark's natural skill (HumanEval/MBPP -> gen,
     HumanEvalFix/QuixBugs -> repair, CRUXEval -> reason) or, for JSONL, the record field named
     by `skill_field` (default "skill").

Splits: a source's `split` is "train", "heldout" or "auto". "auto" puts each task in the
held-out split when a fixed sha256 bucket of its content hash falls under `heldout_fraction`
(the same task always lands on the same side, whatever else is loaded), else in train. Tasks
with the same content hash are kept once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
from dataclasses import dataclass
from typing import Callable, Literal

from retainrl.config import option
from retainrl.data.loaders import BENCHMARKS, load_benchmark
from retainrl.data.task import Task


@dataclass
class SourceConfig:
    name: str = option("jsonl", "Loader name: one of humaneval, mbpp, mbpp-sanitized, cruxeval, humanevalfix, "
                                "quixbugs, jsonl.", check=lambda v: v in BENCHMARKS, must=f"be one of {sorted(BENCHMARKS)}")
    path: str = option("", "File or folder the loader reads.", check=lambda v: bool(v), must="be a non-empty path")
    skill: str = option("", "Give every task of this source this skill ('' : the loader's own assignment).")
    skill_fn: str = option("", "'module:function' called with each Task, returning its skill (None drops the "
                               "task); overrides `skill`.")
    skill_field: str = option("skill", "jsonl: the record field holding the skill.")
    split: Literal["auto", "train", "heldout"] = option("auto", "Which split the tasks go to (auto: by a fixed hash, "
                                                                "see data.heldout_fraction).")
    limit: int = option(0, "Keep at most this many tasks of the source, in file order (0: all).",
                        check=lambda v: v >= 0, must="be >= 0")


@dataclass
class DataConfig:
    sources: list[SourceConfig] = option([], "Data sources (benchmark loaders or JSONL). Empty: the built-in "
                                             "world only.")
    world: bool = option(True, "Also use the built-in world's tasks when sources are given (for its skills only "
                               "when `world_skills` is set).")
    world_skills: list = option([], "Skills the built-in world contributes (empty: all of gen, repair, reason).")
    heldout_fraction: float = option(0.3, "Fraction of a split=auto source's tasks held out for evaluation.",
                                     check=lambda v: 0 <= v <= 1, must="be in [0, 1]")
    max_heldout_per_skill: int = option(0, "Cap on held-out tasks per skill from sources, first ones kept "
                                           "(0: no cap).", check=lambda v: v >= 0, must="be >= 0")


def resolve_skill_fn(spec: str) -> Callable[[Task], str | None]:
    """Import 'package.module:function'; ValueError naming the spec when it does not resolve."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"skill_fn {spec!r}: expected 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"skill_fn {spec!r}: {e}") from None
    if not callable(fn):
        raise ValueError(f"skill_fn {spec!r}: not callable")
    return fn


def heldout_bucket(task: Task) -> float:
    """A fixed number in [0, 1) from the task's content: the split of a split=auto task."""
    return int(hashlib.sha256(b"retainrl-split\n" + task.content_hash().encode()).hexdigest()[:8], 16) / 2**32


def load_source(src: SourceConfig, index: int) -> list[Task]:
    """The tasks of one source with their skills assigned (see the module docstring)."""
    where = f"data.sources[{index}] ({src.name} {src.path})"
    kw = {}
    if src.name == "jsonl":  # a constant skill or a skill_fn makes the record field optional
        kw = {"skill_field": src.skill_field}
        if src.skill or src.skill_fn:
            kw["skill"] = src.skill or "unassigned"
    try:
        tasks = load_benchmark(src.name, src.path, **kw)
    except (OSError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None
    if src.limit:
        tasks = tasks[:src.limit]
    fn = resolve_skill_fn(src.skill_fn) if src.skill_fn else None
    out = []
    for task in tasks:
        skill = src.skill or task.skill
        if fn is not None:
            try:
                skill = fn(task)
            except Exception as e:  # a user function's bug: name the task it failed on
                raise ValueError(f"{where}: skill_fn failed on task {task.task_id!r}: {type(e).__name__}: {e}") from None
            if skill is None:
                continue
            if not isinstance(skill, str) or not skill:
                raise ValueError(f"{where}: skill_fn returned {skill!r} for task {task.task_id!r}; expected a "
                                 f"non-empty str or None")
        out.append(task if skill == task.skill else dataclasses.replace(task, skill=skill))
    return out


def load_sources(cfg: DataConfig) -> tuple[dict[str, list[Task]], dict[str, list[Task]]]:
    """(train, heldout): {skill: [Task]} from every source, in source then file order."""
    train: dict[str, list[Task]] = {}
    heldout: dict[str, list[Task]] = {}
    seen: set[str] = set()
    for i, src in enumerate(cfg.sources):
        for task in load_source(src, i):
            h = task.content_hash()
            if h in seen:
                continue
            seen.add(h)
            side = src.split if src.split != "auto" else (
                "heldout" if heldout_bucket(task) < cfg.heldout_fraction else "train")
            (heldout if side == "heldout" else train).setdefault(task.skill, []).append(task)
    if cfg.max_heldout_per_skill:
        heldout = {s: ts[:cfg.max_heldout_per_skill] for s, ts in heldout.items()}
    return train, heldout
