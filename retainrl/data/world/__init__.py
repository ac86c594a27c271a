"""The built-in code world: a seeded generator of small verifiable Python tasks.

    from retainrl.data.world import make_world, WorldConfig
    world = make_world(WorldConfig(seed=0, n_train=200, n_heldout=100, difficulty=2))
    world["gen"]["train"]      # list[Task]; skills "gen", "repair", "reason"; splits train/heldout/pretrain
    make_world(WorldConfig(version=2, skills=VERSION_SKILLS[2]))   # + "refactor", stratified split
    make_world(WorldConfig(version=3, skills=VERSION_SKILLS[3]))   # v2 with gen's and repair's conventions opposed

ops.py lists the operations, programs.py samples, renders, runs and breaks functions, skills.py
turns a function into a Task per skill (and writes the pretraining corpus's imperfect answers:
`wrong_answer`, a task-specific bug or value, and `habit_answer`, each skill's generic bad
habit), world.py keeps the splits apart (`version` 1 to 6; see its docstring).
"""

from retainrl.data.world.skills import (SKILLS, VERSION_SKILLS, habit_answer, habit_triggered, shows_habit, undo_habit,
                                       wrong_answer)
from retainrl.data.world.world import (SPLITS, VERSIONS, WorldConfig, generate, make_world, shape_shares, split_of,
                                       split_of_chain, task_shape)

__all__ = ["SKILLS", "SPLITS", "VERSIONS", "VERSION_SKILLS", "WorldConfig", "generate", "habit_answer", "make_world",
           "habit_triggered", "shape_shares", "shows_habit", "split_of", "split_of_chain", "task_shape", "undo_habit",
           "wrong_answer"]
