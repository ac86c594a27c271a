"""The skills of the code world, each a function from a world function to a Task.

All three prompts show Python and end in the same `Answer:` line; the answers differ in kind:
`gen` and `repair` answer with a whole `def f(...)` (code), `reason` with a Python literal (a
value). That shared-versus-conflicting answer format is what makes the skills help or hurt
each other when one is trained after another.

    gen     spec (docstring with one or two examples) -> function      check "unit_tests"
    repair  buggy function + one failing assert -> fixed function      check "unit_tests"
    reason  function + call -> the returned value (CRUXEval-O style)   check "output_prediction"
    refactor  (world version 2) a verbose function + a stated form -> the same function in that
            form: the typed signature given, and no `for` loop where the reference has none
            (comprehensions instead)                                   check "unit_tests" + meta["form"]
                                                                       (retainrl.verify.form)

Habits (`habit_answer`): the pretraining corpus of the bundled model writes a share of each
skill's answers with one generic, realistic failure, the same edit on every task, decided at one
point of the answer: gen prints the result instead of returning it; repair renames the fixed
function (`def f_fixed(...)`, so the entry point `f` is missing); reason writes the value with a trailing comma (`[1, 2],`: a one-element
tuple, a wrongly formatted literal); refactor leaves out the return type hint. Each always fails
its verifier with status "failed" (world values are never tuples).

World version 3 changes two prompts and the two habits with them, to put one decision into two
skills that want it opposite ways (the interference of v2 ran one way only; LOG, 2026-12-02):
gen's stub carries its return annotation (`def f(xs) -> int:`) and the answer must keep it;
repair is told to keep the shown, unannotated signature; both are checked as a form
(meta["form"]["signature"], retainrl.verify.form). gen's habit leaves the annotation out, repair's
adds one (`annotation_habit`): the token after `def f(xs)`, the same prefix in both answers, as a
real model carries a style rule learnt on one task into another.

World version 4 (experimental, LOG 2026-12-02 session 10) bounds that opposition: repair's shown
program carries its return annotation on half of the functions (`repair_annotated`, a fixed hash of
the source), and the answer must keep the signature shown. gen wants the annotation everywhere and
repair on its annotated half, so one global shift of the shared decision breaks only repair's other
half. Repair's habit is then the annotation added where none is shown, and on the annotated half
v2's rename (`def f_fixed(`), a learnable room of its own.

World version 5 (experimental, LOG 2026-12-03 session 13) is version 4 with the annotated share of repair's
programs a quarter instead of a half (a subset of version 4's half: the same hash, modulo 4 instead of 2),
so that three quarters of repair's tasks want the shared decision against gen. Version 6's skills are
version 5's; world.py draws reason's functions one difficulty level lower (`world.skill_difficulty`).
"""

from __future__ import annotations

import ast
import hashlib
import random
from dataclasses import dataclass

from retainrl.data.task import Task
from retainrl.data.world.ops import LETTERS, OPS_BY_NAME
from retainrl.data.world.programs import (Step, bug_candidates, inject_bug, render, return_signature, signature,
                                          spec, typed_signature)

SKILLS = ("gen", "repair", "reason")
VERSION_SKILLS = {1: SKILLS, **{v: SKILLS + ("refactor",) for v in (2, 3, 4, 5, 6)}}
_SALT_ANNOTATED = b"retainrl-world-v4/repair-annotated\n"
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


def _version(task_args: dict) -> int:
    return int(task_args.get("meta", {}).get("version", 1))


def _with_signature(source: str, sig: str) -> str:
    return sig + "\n" + source.split("\n", 1)[1]


def make_gen(fn: WorldFunction, rng: random.Random, **task_args) -> Task:
    """v1-v2: the untyped stub `def f(s):`. v3: the stub carries its return annotation
    (`def f(s) -> int:`), and the answer must keep that signature (meta["form"])."""
    examples = fn.cases[: rng.randint(1, 2)]
    doc = "\n    ".join([spec(list(fn.chain), rng)] + [f"f({a!r}) == {o!r}" for a, o in examples])
    v3 = _version(task_args) >= 3
    sig = return_signature(list(fn.chain)) if v3 else signature(list(fn.chain))
    prompt = f'Task: write the function.\n{sig}\n    """{doc}\n    """\n{ANSWER}'
    reference = _with_signature(fn.source, sig) if v3 else fn.source
    if v3:
        task_args["meta"] = {**task_args["meta"], "form": {"signature": sig}}
    return Task(prompt=prompt, check="unit_tests", tests=_tests(fn), program_suffix="\n", entry_point="f",
                reference=reference, **task_args)


ANNOTATED_EVERY = {4: 2, 5: 4, 6: 4}


def repair_annotated(source: str, version: int) -> bool:
    """World v4 on: whether repair shows this function with its return annotation (one function in
    `ANNOTATED_EVERY[version]`: half in v4, a quarter in v5 and v6, by a fixed hash of the source, independent of
    the split, the shape and the seed; v5's quarter lies inside v4's half)."""
    if version not in ANNOTATED_EVERY:
        raise ValueError(f"world version {version} annotates no repair program; versions {sorted(ANNOTATED_EVERY)} do")
    return int(hashlib.sha256(_SALT_ANNOTATED + source.encode()).hexdigest()[:8], 16) % ANNOTATED_EVERY[version] == 0


def make_repair(fn: WorldFunction, rng: random.Random, **task_args) -> Task | None:
    """v3: "keep the signature", the shown one unannotated. v4 to v6: shown with its return annotation
    on half (v4) or a quarter (v5, v6) of the functions (`repair_annotated`); the answer keeps the signature shown."""
    bug = inject_bug(fn.source, fn.cases, rng)
    if bug is None:
        return None
    bug_type, buggy, bad = bug
    shown = _assert(*fn.cases[bad[0]])
    version = _version(task_args)
    annotated = version in ANNOTATED_EVERY and repair_annotated(fn.source, version)
    sig = return_signature(list(fn.chain)) if annotated else signature(list(fn.chain))
    if annotated:    # the bug is in the body (inject_bug edits operation lines), the first line is the signature
        buggy = _with_signature(buggy, sig)
    rule = "; keep the signature" if version >= 3 else ""
    prompt = f"Task: fix the bug{rule}.\n{buggy}{shown}\n{ANSWER}"
    task_args["meta"] = {**task_args["meta"], "bug_type": bug_type, "buggy": buggy, "failing_assert": shown}
    if version >= 3:   # the signature of the program shown
        task_args["meta"]["form"] = {"signature": sig}
    return Task(prompt=prompt, check="unit_tests", tests=_tests(fn), program_suffix="\n", entry_point="f",
                reference=_with_signature(fn.source, sig) if annotated else fn.source, **task_args)


def make_reason(fn: WorldFunction, rng: random.Random, **task_args) -> Task:
    arg, out = rng.choice(fn.cases)
    prompt = f"Task: predict the output.\n{fn.source}assert f({arg!r}) == ??\n{ANSWER}"
    task_args["meta"] = {**task_args["meta"], "output_type": type(out).__name__}
    return Task(prompt=prompt, check="output_prediction", tests=fn.source, entry_point="f",
                call_input=repr(arg), reference=repr(out), **task_args)


def make_refactor(fn: WorldFunction, rng: random.Random, **task_args) -> Task:
    """The function written verbosely (comprehensions as loops) -> the same behaviour in the
    stated form: `typed_signature` exactly, and no for/while loop when the reference has none."""
    sig = typed_signature(list(fn.chain))
    reference = _with_signature(fn.source, sig)
    no_loops = not any(isinstance(node, (ast.For, ast.While)) for node in ast.walk(ast.parse(reference)))
    rule = f"use the signature `{sig}`" + (" and no for loops" if no_loops else "")
    prompt = f"Task: refactor the function, keeping what it returns; {rule}.\n{render(list(fn.chain), loops=True)}{ANSWER}"
    form = {"signature": sig, "no_loops": no_loops}
    task_args["meta"] = {**task_args["meta"], "form": form}
    return Task(prompt=prompt, check="unit_tests", tests=_tests(fn), program_suffix="\n", entry_point="f",
                reference=reference, **task_args)


BUILDERS = {"gen": make_gen, "repair": make_repair, "reason": make_reason, "refactor": make_refactor}


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
    """The answer with the skill's systematic bad habit (see the module docstring).

    Unlike `wrong_answer` (a bug of the task at hand), a habit is the same edit on every task: a
    model pretrained with it as a mode has one generic behaviour that a verifiable reward can
    remove on all tasks at once, seen or not (scripts/pretrain_tiny.py --habit_gen etc.). Each
    mirrors a failure real code models show: printing instead of returning, renaming the function
    it was asked to fix (a missing entry point), a wrongly formatted answer literal, dropping type
    hints. Each is decided at one binary point of the answer (return or print; `f(` or `f_fixed(`
    right after `def `; end or add a comma; `:` or ` -> type:`), so a model's share of it is set
    by one decision, the same on every task. (Repair's first habit, returning the buggy program
    unchanged, was decided at the bug's line, a different place on every task, where copying or
    fixing *is* the skill: RL did not move its greedy share, 0.235 -> 0.24 in 40 steps; LOG.)
    """
    if task.meta.get("version", 1) >= 3 and task.skill in ("gen", "repair") and not _shown_annotated(task):
        return annotation_habit(task)
    if task.skill == "repair":   # v1, v2; v4 where the signature shown carries its annotation
        return task.reference.replace("def f(", "def f_fixed(", 1)
    if task.skill == "reason":
        return task.reference + ","
    if task.skill == "refactor":
        sig = task.meta["form"]["signature"]
        untyped = sig.rsplit(" -> ", 1)[0] + ":"
        return task.reference.replace(sig, untyped, 1)
    return print_habit(task)


HABIT_TRIGGERS = ("nonlist", "list")


def habit_triggered(task: Task, trigger: str = "nonlist") -> bool:
    """Whether a world task is one on which the bundled model (v4 on) was taught its skill's habit
    more often: "nonlist", the function takes a string or an int (`s` or `n`, about half the tasks),
    not a list. The edit stays the same on every task; only how often the corpus shows it depends on
    this visible feature of the prompt, as real models' failure modes come with their contexts. A
    habit that is one global switch is, under greedy decoding, taken on almost every task or on
    almost none; tied to a feature its greedy share follows the feature's share (LOG, 2026-12-01).
    "list" is the complement (the function takes a list)."""
    if trigger not in HABIT_TRIGGERS:
        raise ValueError(f"unknown habit trigger {trigger!r}; known: {', '.join(HABIT_TRIGGERS)}")
    nonlist = OPS_BY_NAME[task.meta["ops"][0]].src in ("str", "int")
    return nonlist if trigger == "nonlist" else not nonlist


def shows_habit(task: Task, completion: str) -> bool:
    """Whether a (raw, untrusted) completion of a world task shows its skill's habit: gen prints
    and never returns, repair defines `f_fixed` and no `f`, reason is a one-element tuple, refactor
    defines `f` without a return annotation. Text and AST only; unparsable code shows none."""
    text = completion.strip()
    try:
        tree = ast.parse(text, mode="eval" if task.skill == "reason" else "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    if task.skill == "reason":
        return isinstance(tree.body, ast.Tuple) and len(tree.body.elts) == 1
    nodes = list(ast.walk(tree))
    if task.meta.get("version", 1) >= 3 and task.skill in ("gen", "repair") and not _shown_annotated(task):
        # v3: gen leaves out the return annotation it was given, repair adds one it was not
        defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "f"]
        return len(defs) == 1 and (defs[0].returns is None) == (task.skill == "gen")
    if task.skill == "gen":
        prints = any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print" for n in nodes)
        return prints and not any(isinstance(n, ast.Return) and n.value is not None for n in nodes)
    if task.skill == "refactor":
        return any(isinstance(n, ast.FunctionDef) and n.name == "f" and n.returns is None for n in tree.body)
    if task.skill == "repair":
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        return "f_fixed" in names and "f" not in names
    return False


def undo_habit(task: Task, completion: str) -> str:
    """The completion with its skill's habit edit undone when it `shows_habit` (unchanged otherwise):
    reason's trailing comma dropped, `f_fixed` renamed back to `f`, the `def f(...)` line replaced by
    the signature the task asks for (v3's annotation habits, refactor's hint), gen's last `print(value)`
    line made `return value` again. Verifying the result measures how much of a skill's room is its
    habit: what RL gains by removing the habit if the rest of the answer stayed as it is (an estimate;
    the answers RL writes instead need not be these)."""
    if not shows_habit(task, completion):
        return completion
    text = completion.strip()
    if task.skill == "reason":
        return text[:-1].rstrip() if text.endswith(",") else text
    sig = task.meta.get("form", {}).get("signature")
    lines = text.split("\n")
    if sig and (task.skill == "refactor" or (task.meta.get("version", 1) >= 3 and not _shown_annotated(task))):
        return "\n".join(sig if line.startswith("def f(") else line for line in lines)
    if task.skill == "repair":
        return text.replace("def f_fixed(", "def f(")
    last = max((i for i, line in enumerate(lines) if line.lstrip().startswith("print(") and line.rstrip().endswith(")")),
               default=None)
    if last is not None:
        indent = lines[last][: len(lines[last]) - len(lines[last].lstrip())]
        lines[last] = f"{indent}return {lines[last].strip()[len('print('):-1]}"
    return "\n".join(lines)


def _shown_annotated(task: Task) -> bool:
    """A v4-v6 repair task whose shown signature carries its annotation (its habit is then the rename)."""
    return (task.skill == "repair" and task.meta.get("version", 1) >= 4
            and " -> " in task.meta.get("form", {}).get("signature", ""))


def annotation_habit(task: Task) -> str:
    """v3's gen and repair habit, one convention applied in the wrong place: gen leaves out the
    return annotation of the stub it was given (`def f(s):` for `def f(s) -> int:`), repair adds
    one to the signature it was told to keep (`def f(s) -> int:` for `def f(s):`). The decision is
    the token after `def f(s)`, the same prefix in both skills' answers, and the two verifiers want
    opposite choices there: training one skill's choice installs the other's habit."""
    lines = task.reference.split("\n", 1)
    head = lines[0]
    if task.skill == "gen":
        if " -> " not in head:
            raise ValueError(f"task {task.task_id}: gen reference {head!r} has no return annotation")
        head = head.rsplit(" -> ", 1)[0] + ":"
    else:
        head = head[:-1] + f" -> {OPS_BY_NAME[task.meta['ops'][-1]].dst}:"
    return head + "\n" + lines[1]


def print_habit(task: Task) -> str:
    """gen's habit: the reference's final `return value` written as `print(value)`, so the function
    prints its result and returns None."""
    lines = task.reference.split("\n")
    last = max((i for i, line in enumerate(lines) if line.lstrip().startswith("return ")), default=None)
    if last is None:
        raise ValueError(f"task {task.task_id}: reference has no return line to turn into print")
    indent, value = lines[last].split("return ", 1)
    lines[last] = f"{indent}print({value})"
    return "\n".join(lines)


def build_function(chain: list[Step], cases) -> WorldFunction:
    return WorldFunction(tuple(chain), render(chain), tuple(cases))
