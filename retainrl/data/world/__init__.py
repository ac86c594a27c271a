"""The built-in code world: a seeded generator of small verifiable Python tasks in three skills.

    from retainrl.data.world import make_world, WorldConfig
    world = make_world(WorldConfig(seed=0, n_train=200, n_heldout=100, difficulty=2))
    world["gen"]["train"]      # list[Task]; skills "gen", "repair", "reason"; splits train/heldout/pretrain

ops.py lists the operations, programs.py samples, renders, runs and breaks functions, skills.py
turns a function into a Task per skill (and writes the pretraining corpus's imperfect answers:
`wrong_answer`, a task-specific bug or value, and `habit_answer`, the one generic bad habit),
world.py keeps the splits apart.
"""

from retainrl.data.world.skills import SKILLS, habit_answer, wrong_answer
from retainrl.data.world.world import SPLITS, WorldConfig, generate, make_world, split_of

__all__ = ["SKILLS", "SPLITS", "WorldConfig", "generate", "habit_answer", "make_world", "split_of", "wrong_answer"]
