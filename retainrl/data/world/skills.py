"""The three skills of the code world, each a function from a world function to a Task.

All three prompts show Python and end in the same `Answer:` line; the answers differ in kind:
`gen` and `repair` answer with a whole `def f(...)` (code), `reason` with a Python literal (a
value). That shared-versus-conflicting answer format is what makes the skills help or hurt
each other when one is trained after another.

    gen     spec (docstring with one or two examples) -> function      check "unit_tests"
    repair  buggy function + one failing assert -> fixed function      check "unit_tests"
    reason  function + call -> the returned value (CRUXEval-O style)   check "output_prediction"
"""

from __future__ import annotations

import ast
import random
from dataclasses import dataclass

from retainrl.data.task import Task
from retainrl.data.world.ops import LETTERS
from retainrl.data.world.programs import Step, bug_candidates, inject_bug, render, signature, spec

SKILLS = ("gen", "repair", "reason")
ANSWER = "Answer:\n"


@dataclass(frozen=True)
class WorldFunction:
    """A rendered chain with its test cases: the unit that the splits keep apart."""

    chain: tuple[Step, ...]
    source: str
    cases: tuple[tuple[object, object], ...]

    @property
    def ops(self) -> list[str]:
        return [step.op.name for step in self.chain]


def _assert(arg, out) -> str:
    return f"assert f({arg!r}) == {out!r}"


def _tests(fn: WorldFunction) -> str:
    return "\n".join(_assert(a, o) for a, o in fn.cases) + "\n"


def make_gen(fn: WorldFunction, rng: random.Random, **task_args) -> Task:
    examples = fn.cases[: rng.randint(1, 2)]
    doc = "\n    ".join([spec(list(fn.chain), rng)] + [f"f({a!r}) == {o!r}" for a, o in examples])
    prompt = f'Task: write the function.\n{signature(list(fn.chain))}\n    """{doc}\n    """\n{ANSWER}'
    return Task(prompt=prompt, check="unit_tests", tests=_tests(fn), program_suffix="\n", entry_point="f",
                reference=fn.source, **task_args)


def make_repair(fn: WorldFunction, rng: random.Random, **task_args) -> Task | None:
    bug = inject_bug(fn.source, fn.cases, rng)
    if bug is None:
        return None
    bug_type, buggy, bad = bug
    shown = _assert(*fn.cases[bad[0]])
    prompt = f"Task: fix the bug.\n{buggy}{shown}\n{ANSWER}"
    task_args["meta"] = {**task_args["meta"], "bug_type": bug_type, "buggy": buggy, "failing_assert": shown}
    return Task(prompt=prompt, check="unit_tests", tests=_tests(fn), program_suffix="\n", entry_point="f",
                reference=fn.source, **task_args)


def make_reason(fn: WorldFunction, rng: random.Random, **task_args) -> Task:
    arg, out = rng.choice(fn.cases)
    prompt = f"Task: predict the output.\n{fn.source}assert f({arg!r}) == ??\n{ANSWER}"
    task_args["meta"] = {**task_args["meta"], "output_type": type(out).__name__}
    return Task(prompt=prompt, check="output_prediction", tests=fn.source, entry_point="f",
                call_input=repr(arg), reference=repr(out), **task_args)


BUILDERS = {"gen": make_gen, "repair": make_repair, "reason": make_reason}


# ----------------------------------------------------------------------------- wrong answers

def perturb_literal(value, rng: random.Random):
    """A nearby value of the same type that differs from `value`."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + rng.choice((-2, -1, 1, 2))
    if isinstance(value, str):
        if not value:
            return rng.choice(LETTERS)
        i = rng.randrange(len(value))
        if rng.random() < 0.5 and len(value) > 1:
            return value[:i] + value[i + 1:]
        new = rng.choice([c for c in LETTERS if c != value[i]])
        return value[:i] + new + value[i + 1:]
    if isinstance(value, list):
        if not value:
            return [rng.randint(0, 9)]
        out = list(value)
        move = rng.randrange(3)
        if move == 0:
            i = rng.randrange(len(out))
            out[i] += rng.choice((-1, 1))
        elif move == 1:
            out.pop(rng.randrange(len(out)))
        else:
            out.append(rng.randint(0, 9))
        return out
    raise TypeError(f"no perturbation for {type(value).__name__}")


def wrong_answer(task: Task, rng: random.Random) -> str:
    """A plausible wrong completion for a world task, for an imperfect pretraining corpus.

    reason: a perturbed literal. gen: the reference with one injected bug. repair: half the time
    the buggy program copied unchanged, otherwise the reference with another bug.
    """
    if task.skill == "reason":
        return repr(perturb_literal(ast.literal_eval(task.reference), rng))
    if task.skill == "repair" and rng.random() < 0.5:
        return task.meta["buggy"]
    options = [s for _, s in bug_candidates(task.reference)]
    return rng.choice(options) if options else task.reference.replace("return ", "return -", 1)


def habit_answer(task: Task) -> str:
    """The reference with the world's one systematic bad habit: the final `return value` written
    as `print(value)`, so the function prints its result and returns None.

    Unlike `wrong_answer` (a bug of the task at hand), the habit is the same edit on every task:
    a model pretrained with it as a mode has one generic behaviour that a verifiable reward can
    remove on all tasks at once, seen or not (the bundled model's gen corpus carries it, see
    scripts/pretrain_tiny.py --habit_gen).
    """
    lines = task.reference.split("\n")
    last = max((i for i, line in enumerate(lines) if line.lstrip().startswith("return ")), default=None)
    if last is None:
        raise ValueError(f"task {task.task_id}: reference has no return line to turn into print")
    indent, value = lines[last].split("return ", 1)
    lines[last] = f"{indent}print({value})"
    return "\n".join(lines)


def build_function(chain: list[Step], cases) -> WorldFunction:
    return WorldFunction(tuple(chain), render(chain), tuple(cases))
