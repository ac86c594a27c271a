"""The built-in code world (retainrl.data.world) and the bundled tiny model built from it."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sys

import pytest

from retainrl.data.world import (SKILLS, VERSION_SKILLS, WorldConfig, generate, habit_answer, habit_triggered,
                                 make_world, shape_shares, shows_habit, split_of, undo_habit, wrong_answer)
from retainrl.data.world.ops import OPS_BY_NAME
from retainrl.data.world.programs import LEVELS, Step, bug_candidates, failing_cases, render
from retainrl.verify.checks import verify_many
from retainrl.verify.sandbox import Sandbox

TINY = os.path.join(os.path.dirname(__file__), "..", "retainrl", "policy", "assets", "tiny")
SMALL = WorldConfig(seed=3, n_train=40, n_heldout=25, n_pretrain=60)


@pytest.fixture(scope="module")
def world():
    return make_world(SMALL)


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(workers=2) as sb:
        yield sb


def _all(world):
    return [t for skill in world for split in world[skill] for t in world[skill][split]]


# ----------------------------------------------------------------------------- determinism

def test_same_seed_same_tasks_in_same_order(world):
    again = make_world(SMALL)
    assert [t.to_dict() for t in _all(again)] == [t.to_dict() for t in _all(world)]


def test_other_seed_other_tasks(world):
    other = make_world(WorldConfig(seed=4, n_train=40, n_heldout=25))
    assert [t.prompt for t in other["gen"]["train"]] != [t.prompt for t in world["gen"]["train"]]


def test_a_split_does_not_depend_on_the_other_sizes(world):
    bigger = make_world(WorldConfig(seed=3, n_train=60, n_heldout=10, n_pretrain=0))
    for skill in SKILLS:
        assert [t.to_dict() for t in bigger[skill]["train"][:40]] == [t.to_dict() for t in world[skill]["train"]]
        assert [t.to_dict() for t in bigger[skill]["heldout"]] == [t.to_dict() for t in world[skill]["heldout"][:10]]


def test_sizes_ids_and_shape(world):
    for skill in SKILLS:
        assert [len(world[skill][s]) for s in ("train", "heldout", "pretrain")] == [40, 25, 60]
        for split, tasks in world[skill].items():
            assert len({t.task_id for t in tasks}) == len(tasks)
            for t in tasks:
                assert t.skill == skill and t.source == "world" and t.meta["split"] == split
                assert t.prompt.endswith("Answer:\n")
                assert LEVELS[SMALL.difficulty].ops[0] <= t.meta["n_ops"] <= LEVELS[SMALL.difficulty].ops[1]


def test_answer_formats_are_code_for_gen_and_repair_and_a_literal_for_reason(world):
    for t in world["gen"]["train"] + world["repair"]["train"]:
        assert t.check == "unit_tests" and t.reference.startswith("def f(") and t.tests.count("assert ") >= 3
    for t in world["reason"]["train"]:
        assert t.check == "output_prediction" and t.call_input and not t.reference.startswith("def")
        assert t.tests == t.meta["function"]


# ----------------------------------------------------------------------------- disjointness

def test_splits_never_share_a_task_or_a_function(world):
    by_split = {s: [t for skill in SKILLS for t in world[skill][s]] for s in ("train", "heldout", "pretrain")}
    hashes = {s: {t.content_hash() for t in ts} for s, ts in by_split.items()}
    functions = {s: {t.meta["function"] for t in ts} for s, ts in by_split.items()}
    for a, b in (("train", "heldout"), ("train", "pretrain"), ("heldout", "pretrain")):
        assert not hashes[a] & hashes[b], (a, b)
        assert not functions[a] & functions[b], (a, b)
    for skill in SKILLS:
        for split, tasks in world[skill].items():
            assert len({t.content_hash() for t in tasks}) == len(tasks), "duplicate task within a split"


def test_split_of_is_fixed_across_seeds():
    # the bucket of a function is a hash of its source: the same in every world
    first = make_world(WorldConfig(seed=0, n_train=15, n_heldout=15, skills=("reason",)))
    second = make_world(WorldConfig(seed=1, n_train=15, n_heldout=15, skills=("reason",)))
    for world in (first, second):
        for split in ("train", "heldout"):
            assert all(split_of(t.meta["function"]) == split for t in world["reason"][split])


# ----------------------------------------------------------------------------- verifiers

def test_references_pass_and_bugs_fail_in_the_sandbox(world, sandbox):
    tasks = [t for skill in SKILLS for split in ("train", "heldout") for t in world[skill][split][:20]]
    verdicts = verify_many(sandbox, [(t, t.reference) for t in tasks])
    assert all(v.passed for v in verdicts), [(t.task_id, v.details) for t, v in zip(tasks, verdicts) if not v.passed]
    repair = world["repair"]["train"][:20] + world["repair"]["heldout"][:20]
    buggy = verify_many(sandbox, [(t, t.meta["buggy"]) for t in repair])
    assert not any(v.passed for v in buggy)
    for t in repair:
        assert t.meta["failing_assert"] in t.prompt and t.meta["failing_assert"] in t.tests
        assert t.meta["buggy"] in t.prompt and t.meta["buggy"] != t.reference


def test_a_bug_is_one_small_edit():
    src = "def f(xs):\n    xs = [x for x in xs if x > 3]\n    return sum(xs[1:])\n"
    kinds = {kind for kind, _ in bug_candidates(src)}
    assert {"wrong_comparison", "wrong_constant", "off_by_one", "wrong_builtin"} <= kinds
    assert "def f(xs):\n    xs = [x for x in xs if x >= 3]\n    return sum(xs[1:])\n" in [s for _, s in bug_candidates(src)]
    assert failing_cases(src.replace("> 3", ">= 3"), [([3, 4, 5], 5), ([9, 1], 0)]) == [0]


def test_wrong_answers_differ_from_the_reference(world, sandbox):
    rng = random.Random(0)
    tasks = [t for skill in SKILLS for t in world[skill]["pretrain"][:15]]
    wrong = [wrong_answer(t, rng) for t in tasks]
    assert all(w != t.reference for w, t in zip(wrong, tasks))
    verdicts = verify_many(sandbox, list(zip(tasks, wrong)))
    assert sum(v.passed for v in verdicts) <= 3   # a mutation is rarely equivalent to the original


def test_the_habit_is_the_same_edit_on_every_task_and_always_fails(world, sandbox):
    task = world["gen"]["pretrain"][0]
    loop = task.__class__(**{**task.to_dict(), "reference": "def f(xs):\n    n = 0\n    for x in xs:\n"
                             "        n += x\n    return n * 2\n"})
    assert habit_answer(loop) == "def f(xs):\n    n = 0\n    for x in xs:\n        n += x\n    print(n * 2)\n"
    tasks = world["gen"]["pretrain"] + world["gen"]["train"]
    habits = [habit_answer(t) for t in tasks]
    for t, h in zip(tasks, habits):   # one line differs: its `return v` became `print(v)`
        changed = [(a, b) for a, b in zip(t.reference.split("\n"), h.split("\n")) if a != b]
        assert len(changed) == 1 and changed[0][1] == changed[0][0].replace("return ", "print(", 1) + ")"
    verdicts = verify_many(sandbox, list(zip(tasks, habits)))
    assert not any(v.passed for v in verdicts)
    assert {v.status for v in verdicts} == {"failed"}, {v.status for v in verdicts}   # it runs and returns None
    with pytest.raises(ValueError, match="no return line"):
        habit_answer(task.__class__(**{**task.to_dict(), "reference": "def f(n):\n    pass\n"}))


def test_every_difficulty_builds():
    for level in LEVELS:
        w = make_world(WorldConfig(seed=0, n_train=8, n_heldout=4, difficulty=level))
        assert all(len(w[s]["train"]) == 8 for s in SKILLS)
    with pytest.raises(ValueError):
        make_world(WorldConfig(difficulty=9))


# ----------------------------------------------------------------------------- world version 2

V2 = WorldConfig(seed=0, version=2, n_train=600, n_heldout=600, n_pretrain=40, skills=VERSION_SKILLS[2])


@pytest.fixture(scope="module")
def world2():
    return make_world(V2)


def test_version_1_is_the_original_world_byte_for_byte():
    """sha256 of every task of two v1 worlds, recorded before version 2 existed (commit 299d6ea)."""
    digest = hashlib.sha256()
    for seed in (0, 1):
        w = make_world(WorldConfig(seed=seed, n_train=60, n_heldout=60, n_pretrain=100))
        for skill in sorted(w):
            for split in ("train", "heldout", "pretrain"):
                for t in w[skill][split]:
                    digest.update(json.dumps(t.to_dict(), sort_keys=True).encode())
    assert digest.hexdigest() == "63d3fc36a69f0fe70e3f23b901ef90f949ef532108de9281fe4531473e09a387"
    assert make_world(WorldConfig(seed=0, n_train=5, n_heldout=5)) == make_world(WorldConfig(seed=0, n_train=5,
                                                                                               n_heldout=5, version=1))


def test_version_2_records_its_version_and_is_deterministic(world2):
    assert all(t.meta["version"] == 2 and t.meta["shape"] for s in world2 for sp in world2[s] for t in world2[s][sp])
    again = make_world(WorldConfig(seed=0, version=2, n_train=20, n_heldout=20, skills=VERSION_SKILLS[2]))
    for skill in VERSION_SKILLS[2]:
        assert [t.to_dict() for t in again[skill]["train"]] == [t.to_dict() for t in world2[skill]["train"][:20]]
    v1 = make_world(WorldConfig(seed=0, n_train=20, n_heldout=0))
    assert [t.prompt for t in v1["gen"]["train"]] != [t.prompt for t in again["gen"]["train"]]


def test_versions_and_skills_are_checked():
    with pytest.raises(ValueError, match="version 7"):
        generate(WorldConfig(version=7), "gen", "train", 1)
    with pytest.raises(ValueError, match="refactor"):   # refactor exists from version 2 on
        generate(WorldConfig(version=1), "refactor", "train", 1)
    with pytest.raises(ValueError, match="split"):
        generate(WorldConfig(version=2), "gen", "test", 1)


def test_version_2_train_and_heldout_have_the_same_shape_shares(world2):
    """Stratified split, 600 tasks a side: operations-count shares within 0.08 (sampling sd of a difference:
    0.027) and fine shapes within total variation 0.16 (noise alone ~0.11); version 1 is off by > 0.1 / 0.18."""
    for skill in VERSION_SKILLS[2]:
        train, held = (shape_shares(world2[skill][sp], coarse=True) for sp in ("train", "heldout"))
        assert set(train) == set(held) == {"1", "2", "3"}
        assert max(abs(train[k] - held[k]) for k in train) < 0.08, (skill, train, held)
        fine_t, fine_h = (shape_shares(world2[skill][sp]) for sp in ("train", "heldout"))
        tv = 0.5 * sum(abs(fine_t.get(k, 0) - fine_h.get(k, 0)) for k in set(fine_t) | set(fine_h))
        assert tv < 0.16, (skill, tv)   # total variation over the ~35 fine shapes (ops and types)
    v1 = make_world(WorldConfig(seed=0, n_train=600, n_heldout=600, skills=("gen",)))
    train, held = (shape_shares(v1["gen"][sp], coarse=True) for sp in ("train", "heldout"))
    assert train["1"] - held["1"] > 0.1, (train, held)
    fine_t, fine_h = (shape_shares(v1["gen"][sp]) for sp in ("train", "heldout"))
    assert 0.5 * sum(abs(fine_t.get(k, 0) - fine_h.get(k, 0)) for k in set(fine_t) | set(fine_h)) > 0.18


def test_version_2_keeps_pretrain_functions_out_of_train_and_heldout(world2):
    functions = {sp: {t.meta["function"] for s in world2 for t in world2[s][sp]} for sp in ("train", "heldout", "pretrain")}
    assert not functions["train"] & functions["heldout"]
    assert not (functions["train"] | functions["heldout"]) & functions["pretrain"]
    # the pretrain split is version 1's bucket: a model pretrained on v1 saw no v2 train/held-out function
    assert all(split_of(f) == "pretrain" for f in functions["pretrain"])
    assert not any(split_of(f) == "pretrain" for f in functions["train"] | functions["heldout"])


def test_version_2_has_200_heldout_tasks_per_skill(world2, sandbox):
    for skill in VERSION_SKILLS[2]:
        held = world2[skill]["heldout"]
        assert len(held) == 600 and len({t.content_hash() for t in held}) == 600
    tasks = [t for skill in VERSION_SKILLS[2] for t in world2[skill]["heldout"][:25]]
    verdicts = verify_many(sandbox, [(t, t.reference) for t in tasks])
    assert all(v.passed for v in verdicts), [(t.task_id, v.details) for t, v in zip(tasks, verdicts) if not v.passed]


def test_loop_render_writes_comprehensions_as_loops():
    chain = [Step(OPS_BY_NAME["keep_gt"], (("k", 3),)), Step(OPS_BY_NAME["scale"], (("k", 2),)),
             Step(OPS_BY_NAME["sum"])]
    assert render(chain) == ("def f(xs):\n    xs = [x for x in xs if x > 3]\n    xs = [x * 2 for x in xs]\n"
                             "    return sum(xs)\n")
    assert render(chain, loops=True) == ("def f(xs):\n    ys = []\n    for x in xs:\n        if x > 3:\n"
                                  "            ys.append(x)\n    xs = ys\n    ys = []\n    for x in xs:\n"
                                  "        ys.append(x * 2)\n    xs = ys\n    return sum(xs)\n")


def test_refactor_tasks_state_a_checkable_form_and_show_an_equivalent_function(world2):
    for t in world2["refactor"]["train"][:60]:
        form = t.meta["form"]
        assert form["signature"] in t.prompt and t.reference.startswith(form["signature"] + "\n")
        assert ("no for loops" in t.prompt) == form["no_loops"]
        shown = t.prompt.split("\n", 1)[1].rsplit("Answer:", 1)[0]
        cases = [(json.loads(json.dumps(a)), o) for a, o in _cases(t)]
        assert failing_cases(shown, cases) == [] and failing_cases(t.reference, cases) == []
    assert any(t.meta["form"]["no_loops"] for t in world2["refactor"]["train"])
    assert any("for " in t.prompt.split("\n", 1)[1] for t in world2["refactor"]["train"])


def _cases(task):
    import ast
    out = []
    for line in task.tests.strip().split("\n"):
        call, expected = ast.parse(line).body[0].test.left, ast.parse(line).body[0].test.comparators[0]
        out.append((ast.literal_eval(call.args[0]), ast.literal_eval(expected)))
    return out


@pytest.fixture(scope="module")
def world3():
    return make_world(WorldConfig(**{**V2.to_dict(), "version": 3}))


@pytest.fixture(scope="module")
def world4():
    return make_world(WorldConfig(**{**V2.to_dict(), "version": 4}))


@pytest.mark.parametrize("version,skill", [(v, s) for v in (2, 3, 4) for s in VERSION_SKILLS[v]])
def test_each_habit_is_a_one_point_edit_that_fails_with_status_failed(world2, world3, world4, sandbox, version, skill):
    world = {2: world2, 3: world3, 4: world4}[version]
    tasks = world[skill]["train"][:40] + world[skill]["heldout"][:40]
    habits = [habit_answer(t) for t in tasks]
    for t, h in zip(tasks, habits):
        ref = t.reference.split("\n")
        if skill == "reason":   # the answer is one line: the value and a comma
            assert h == t.reference + ","
            continue
        changed = [i for i, (a, b) in enumerate(zip(ref, h.split("\n"))) if a != b]
        assert len(changed) == 1 and len(ref) == len(h.split("\n")), (t.reference, h)
    verdicts = verify_many(sandbox, list(zip(tasks, habits)))
    assert {v.status for v in verdicts} == {"failed"}, [(v.status, v.details) for v in verdicts if v.status != "failed"]
    assert all(v.passed for v in verify_many(sandbox, [(t, t.reference) for t in tasks]))
    # the detector that evaluation reports as `habit_share` sees the habit and only the habit
    assert all(shows_habit(t, h) for t, h in zip(tasks, habits))
    assert not any(shows_habit(t, t.reference) for t in tasks)
    assert not any(shows_habit(t, junk) for t in tasks[:5] for junk in ("", "def f(:", "(" * 5000, "x = 1"))


@pytest.mark.parametrize("version,skill", [(v, s) for v in (1, 2, 3, 4) for s in VERSION_SKILLS[v]])
def test_undo_habit_gives_back_the_answer_the_habit_edited(world, world2, world3, world4, sandbox, version, skill):
    """`undo_habit` (the room evaluation reports as `habit_undone_pass@1`) inverts each habit's edit
    exactly and leaves every completion that does not show the habit as it is."""
    tasks = {1: world, 2: world2, 3: world3, 4: world4}[version][skill]["heldout"][:40]
    undone = [undo_habit(t, habit_answer(t)) for t in tasks]
    assert undone == [t.reference.strip() for t in tasks]
    assert all(v.passed for v in verify_many(sandbox, list(zip(tasks, undone))))
    for t in tasks[:5]:
        for other in (t.reference, "", "def f(:", "x = 1", habit_answer(t) + "\n# more"):
            if not shows_habit(t, other):
                assert undo_habit(t, other) == other


def test_version_3_is_version_2_with_two_prompts_changed(world2, world3):
    """v3 draws v2's functions, cases and calls; reason and refactor are v2's tasks, gen's stub
    carries its return annotation and repair is told to keep its signature, each checked as a form."""
    for skill in VERSION_SKILLS[3]:
        for split in ("train", "heldout"):
            a, b = world2[skill][split], world3[skill][split]
            assert [t.meta["function"] for t in a] == [t.meta["function"] for t in b], (skill, split)
            assert all(t.meta["version"] == 3 for t in b)
            if skill in ("reason", "refactor"):
                assert [t.prompt for t in a] == [t.prompt for t in b]
    for t2, t3 in zip(world2["gen"]["heldout"], world3["gen"]["heldout"]):
        head = t3.reference.split("\n", 1)[0]
        assert re.fullmatch(r"def f\((xs|s|n)\) -> (list|int|str|bool):", head), head
        assert t3.prompt == t2.prompt.replace(t2.reference.split("\n", 1)[0], head, 1)
        assert t3.meta["form"] == {"signature": head}
    for t2, t3 in zip(world2["repair"]["heldout"], world3["repair"]["heldout"]):
        assert t3.prompt == t2.prompt.replace("Task: fix the bug.", "Task: fix the bug; keep the signature.", 1)
        assert t3.reference == t2.reference and t3.meta["form"] == {"signature": t2.reference.split("\n", 1)[0]}


def test_version_4_is_version_3_with_half_of_repairs_signatures_annotated(world3, world4):
    """v4 draws v3's tasks; only repair changes: on the functions `repair_annotated` picks (about half,
    on both sides of the split) the shown program, the reference and the form carry the return
    annotation; repair's habit is the annotation added on the other half and the rename on these."""
    from retainrl.data.world.skills import repair_annotated

    for skill in VERSION_SKILLS[4]:
        for split in ("train", "heldout"):
            a, b = world3[skill][split], world4[skill][split]
            assert [t.meta["function"] for t in a] == [t.meta["function"] for t in b], (skill, split)
            assert all(t.meta["version"] == 4 for t in b)
            if skill != "repair":
                assert [t.prompt for t in a] == [t.prompt for t in b] and [t.reference for t in a] == [t.reference for t in b]
    for split in ("train", "heldout"):
        marked = [repair_annotated(t3.reference, 4) for t3 in world3["repair"][split]]
        assert 0.4 <= sum(marked) / len(marked) <= 0.6, (split, sum(marked) / len(marked))
        for t3, t4, annotated in zip(world3["repair"][split], world4["repair"][split], marked):
            head3, head4 = t3.reference.split("\n", 1)[0], t4.reference.split("\n", 1)[0]
            assert t4.meta["form"] == {"signature": head4} and t4.meta["buggy"].split("\n", 1)[0] == head4
            if not annotated:
                assert t4.prompt == t3.prompt and t4.reference == t3.reference
                assert habit_answer(t4).split("\n", 1)[0] != head4 and "f_fixed" not in habit_answer(t4)
                continue
            assert re.fullmatch(r"def f\((xs|s|n)\) -> (list|int|str|bool):", head4) and head4.startswith(head3[:-1])
            assert t4.prompt == t3.prompt.replace(head3, head4, 1) and t4.reference == t3.reference.replace(head3, head4, 1)
            assert habit_answer(t4) == t4.reference.replace("def f(", "def f_fixed(", 1)


def test_version_5_is_version_4_with_a_quarter_of_repairs_signatures_annotated(world3, world4):
    """v5 changes only which repair programs are shown annotated: a quarter, inside v4's half; a v5 task
    equals the v4 task where it is annotated and the v3 task where it is not (prompt, reference, form)."""
    from retainrl.data.world.skills import repair_annotated

    v5 = WorldConfig(**{**V2.to_dict(), "version": 5})
    for split in ("train", "heldout"):
        tasks5 = generate(v5, "repair", split, 200)
        marked = [repair_annotated(t.reference, 5) for t in world3["repair"][split][:200]]
        assert 0.15 <= sum(marked) / len(marked) <= 0.35, (split, sum(marked) / len(marked))
        for t3, t4, t5, annotated in zip(world3["repair"][split], world4["repair"][split], tasks5, marked):
            assert annotated <= repair_annotated(t3.reference, 4)   # the quarter lies inside v4's half
            same = t4 if annotated else t3
            assert (t5.prompt, t5.reference, t5.meta["form"]) == (same.prompt, same.reference, same.meta["form"])
            assert t5.meta["version"] == 5 and shows_habit(t5, habit_answer(t5)) and not shows_habit(t5, t5.reference)
    assert [(t.prompt, t.reference) for t in generate(v5, "gen", "heldout", 20)] == [
        (t.prompt, t.reference) for t in world4["gen"]["heldout"][:20]]
    with pytest.raises(ValueError, match="annotates no repair program"):
        repair_annotated(world3["repair"]["train"][0].reference, 3)


def test_version_6_is_version_5_with_reasons_functions_one_level_easier():
    """v6 draws reason at the level below the world's difficulty (the v5 stream of that level, task for
    task), stays at level 1 when the world is at 1, and leaves every other skill's tasks as v5's."""
    from retainrl.data.world import VERSIONS
    from retainrl.data.world.world import skill_difficulty

    assert [skill_difficulty(6, "reason", d) for d in (1, 2, 3, 4)] == [1, 1, 2, 3]
    assert {skill_difficulty(v, s, 2) for v in VERSIONS[:-1] for s in VERSION_SKILLS[v]} | {
        skill_difficulty(6, s, 2) for s in ("gen", "repair", "refactor")} == {2}
    v5, v6 = (WorldConfig(seed=3, version=v, difficulty=2) for v in (5, 6))
    easy5 = WorldConfig(seed=3, version=5, difficulty=1)
    for split in ("train", "heldout", "pretrain"):
        reason6 = generate(v6, "reason", split, 40)
        assert [(t.prompt, t.reference) for t in reason6] == [(t.prompt, t.reference) for t in generate(easy5, "reason", split, 40)]
        assert all(t.meta["version"] == 6 and t.meta["difficulty"] == 1 and t.meta["n_ops"] <= 2 for t in reason6)
    assert max(t.meta["n_ops"] for t in generate(v5, "reason", "heldout", 40)) == 3   # v5 at level 2 has 3-op functions
    for skill in ("gen", "repair", "refactor"):
        assert [(t.prompt, t.reference) for t in generate(v6, skill, "heldout", 30)] == [
            (t.prompt, t.reference) for t in generate(v5, skill, "heldout", 30)]
    script = _pretrain_script()   # the model README describes v4's habits for v5 and v6 alike
    assert script.habit_texts(5) is script.habit_texts(6) is script.HABITS_V4
    low6 = generate(WorldConfig(seed=3, version=6, difficulty=1), "reason", "heldout", 20)
    assert [t.prompt for t in low6] == [t.prompt for t in generate(easy5, "reason", "heldout", 20)]


def test_version_3_gen_and_repair_habits_are_one_decision_wanted_opposite_ways(world3):
    """On a function that both skills draw, gen's habit writes repair's right signature line and
    repair's habit writes gen's: the same token after `def f(xs)`, chosen the other way."""
    gen = {t.meta["function"]: t for t in world3["gen"]["train"] + world3["gen"]["heldout"]}
    pairs = [(gen[t.meta["function"]], t) for t in world3["repair"]["train"] + world3["repair"]["heldout"]
             if t.meta["function"] in gen]
    assert len(pairs) >= 3
    for g, r in pairs:
        first = lambda code: code.split("\n", 1)[0]
        assert first(habit_answer(g)) == first(r.reference) and first(habit_answer(r)) == first(g.reference)
        assert first(g.reference).startswith(first(r.reference)[:-1])   # the same prefix `def f(xs)`


# ----------------------------------------------------------------------------- the tiny model

@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return AutoModelForCausalLM.from_pretrained(TINY), AutoTokenizer.from_pretrained(TINY)


def test_tiny_model_files_are_small_and_described():
    files = os.listdir(TINY)
    assert sum(os.path.getsize(os.path.join(TINY, f)) for f in files) < 30 * 2**20
    assert all(os.path.getsize(os.path.join(TINY, f)) < 15 * 2**20 for f in files)
    assert any(f.endswith(".safetensors") for f in files) and "README.md" in files
    info = json.load(open(os.path.join(TINY, "pretrain_tiny.json")))
    assert info["command"].startswith("python scripts/pretrain_tiny.py") and info["command"] in open(
        os.path.join(TINY, "README.md")).read()


def test_tiny_model_loads_with_auto_classes_and_its_tokenizer_round_trips(tiny, world):
    from tokenizers import Tokenizer
    model, tok = tiny
    assert model.config.model_type == "qwen2" and model.config.tie_word_embeddings
    assert 1_000_000 < sum(p.numel() for p in model.parameters()) < 6_000_000
    assert tok.eos_token_id is not None and tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    raw = Tokenizer.from_file(os.path.join(TINY, "tokenizer.json"))
    for t in world["gen"]["heldout"][:5] + world["reason"]["heldout"][:5]:
        text = t.prompt + t.reference
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == raw.encode(text).ids and tok.decode(ids) == text
        assert len(ids) < 200


def _pretrain_script():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "pretrain_tiny", os.path.join(os.path.dirname(__file__), "..", "scripts", "pretrain_tiny.py"))
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script   # dataclasses look their module up there
    spec.loader.exec_module(script)
    return script


def test_pretrain_script_builds_a_model_and_a_second_stage_with_the_habit(tmp_path):
    """The script end to end at toy size: stage 1 from scratch, stage 2 --init_from with the habit."""
    script = _pretrain_script()
    toy = ["--n_pretrain", "12", "--hidden", "32", "--layers", "1", "--heads", "2", "--kv_heads", "1",
           "--intermediate", "64", "--vocab_size", "300", "--batch", "8", "--warmup", "1", "--eval_every", "0",
           "--n_calib", "3", "--n_eval", "4", "--device", "cpu", "--workers", "1"]
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    script.main(toy + ["--steps", "2", "--out", first])
    corpus = script.build_corpus(script.parse_args(toy + ["--seed", "1", "--habit_gen", "1.0"]))
    gen = [answer for skill, _, answer in corpus if skill == "gen"]
    assert gen and all("print(" in a and "return " not in a.split("\n")[-2] for a in gen)
    script.main(toy + ["--steps", "1", "--seed", "1", "--habit_gen", "1.0", "--init_from", first, "--out", second])
    for name in ("tokenizer.json", "tokenizer_config.json"):   # stage 2 keeps stage 1's tokenizer, byte for byte
        assert open(os.path.join(first, name)).read() == open(os.path.join(second, name)).read()
    info = json.load(open(os.path.join(second, "pretrain_tiny.json")))
    readme = open(os.path.join(second, "README.md")).read()
    assert "--init_from PREVIOUS_STAGE_DIR" in info["command"] and info["command"] in readme
    assert info["stage1"]["command"] in readme and "bad habit" in readme and info["habit_gen"] == 1.0


def test_pretrain_corpus_without_the_habit_is_the_stage1_corpus():
    """--habit_gen 0 draws nothing extra: a stage-1 command rebuilds its original corpus."""
    script = _pretrain_script()
    args = script.parse_args(["--n_pretrain", "10", "--wrong_gen", "0.5"])
    rng, expected = random.Random(args.seed), []   # the stage-1 recipe, written out
    for skill in SKILLS:
        for task in make_world(WorldConfig(seed=args.seed, n_train=0, n_heldout=0, n_pretrain=10))[skill]["pretrain"]:
            wrong = {"gen": args.wrong_gen, "repair": args.wrong_repair, "reason": args.wrong_reason}[skill]
            expected.append((skill, task.prompt, wrong_answer(task, rng) if rng.random() < wrong else task.reference))
    rng.shuffle(expected)
    assert script.build_corpus(args) == expected


def test_tiny_model_solves_some_heldout_tasks_of_every_skill(tiny, sandbox):
    import torch
    script = _pretrain_script()
    model, tok = tiny
    w = make_world(WorldConfig(seed=0, n_train=0, n_heldout=48))
    tasks = [t for skill in SKILLS for t in w[skill]["heldout"]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # faster than 2 on a shared 2-core machine (see the model's README)
    try:
        rates = script.evaluate_greedy(model, tok, tasks, sandbox, batch_size=64)
    finally:
        torch.set_num_threads(threads)
    assert all(rates[s]["pass@1"] > 0 for s in SKILLS), rates


def test_run_configs_pick_the_world_version_and_build_refactor_when_trained():
    from pathlib import Path

    from retainrl.config import ConfigError, load_config
    from retainrl.train.config import RunConfig
    from retainrl.train.trainer import build_tasks

    smoke = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
    small = ["world.n_train=3", "world.n_heldout=2"]
    train, held = build_tasks(load_config(RunConfig, smoke, small + ["world.version=2"]))
    assert sorted(held) == sorted(SKILLS) and all(t.meta["version"] == 2 for s in held for t in held[s])
    train, held = build_tasks(load_config(RunConfig, smoke, small + ["world.version=2", "protocol.phases=[gen,refactor]"]))
    assert sorted(held) == sorted(SKILLS + ("refactor",)) and len(train["refactor"]) == 3
    v1 = build_tasks(load_config(RunConfig, smoke, small + ["world.version=1"]))[1]
    assert all("version" not in t.meta for s in v1 for t in v1[s])   # the version-1 world, as before
    with pytest.raises(ConfigError, match="refactor"):
        load_config(RunConfig, smoke, small + ["world.version=1", "protocol.phases=[refactor]"])   # not in v1
    with pytest.raises(ConfigError, match="world.version"):
        load_config(RunConfig, smoke, ["world.version=7"])


@pytest.mark.parametrize("version", [2, 3, 4, 5, 6])
def test_pretrain_corpus_of_world_versions_2_to_6_carries_each_skills_habit(version):
    script = _pretrain_script()
    args = script.parse_args(["--n_pretrain", "6", "--world_version", str(version), "--habit_gen", "1.0", "--habit_repair",
                              "1.0", "--habit_reason", "1.0", "--habit_refactor", "1.0"])
    corpus = script.build_corpus(args)
    assert sorted({skill for skill, _, _ in corpus}) == sorted(VERSION_SKILLS[version]) and len(corpus) == 24
    tasks = {t.prompt: t for skill in VERSION_SKILLS[version]
             for t in generate(WorldConfig(seed=0, version=version), skill, "pretrain", 6)}
    assert all(shows_habit(tasks[prompt], answer) for _, prompt, answer in corpus)
    if version == 3:   # the v3 habits, not v2's print and f_fixed
        assert not any("print(" in a or "f_fixed" in a for k, _, a in corpus if k in ("gen", "repair"))
    if version >= 4:   # gen's v3 habit; repair's annotation or (where the signature shown has one) the rename
        assert not any("print(" in a for k, _, a in corpus if k == "gen")


def test_habit_trigger_selects_string_and_int_functions_and_the_corpus_follows_it():
    tasks = {s: generate(WorldConfig(seed=0, version=2), s, "heldout", 120) for s in VERSION_SKILLS[2]}
    for skill, group in tasks.items():
        hit = [t for t in group if habit_triggered(t)]
        # the trigger is the argument's type, visible in the prompt's `def f(s)` / `def f(n)`
        assert all(re.search(r"def f\((s|n)\b", t.prompt) for t in hit), skill
        assert not any(re.search(r"def f\((s|n)\b", t.prompt) for t in group if t not in hit), skill
        assert 0.3 <= len(hit) / len(group) <= 0.65, (skill, len(hit))
    with pytest.raises(ValueError, match="unknown habit trigger"):
        habit_triggered(tasks["gen"][0], "loops")
    script = _pretrain_script()
    args = script.parse_args(["--n_pretrain", "40", "--world_version", "2", "--habit_gen", "1.0", "--habit_repair", "1.0",
                              "--habit_reason", "1.0", "--habit_refactor", "1.0", "--habit_trigger", "nonlist",
                              "--wrong_gen", "0", "--wrong_repair", "0", "--wrong_reason", "0"])   # a wrong repair may echo the bug
    by_prompt = {t.prompt: t for skill in VERSION_SKILLS[2]
                 for t in generate(WorldConfig(seed=0, version=2), skill, "pretrain", 40)}
    corpus = script.build_corpus(args)
    # habit_other 0: the habit on every triggered task and on no other
    assert all(shows_habit(by_prompt[p], a) == habit_triggered(by_prompt[p]) for _, p, a in corpus)
    assert 0 < sum(habit_triggered(by_prompt[p]) for _, p, _ in corpus) < len(corpus)
    # per-skill triggers: repair's habit on the complement ("list") tasks, the others' on "nonlist"
    assert all(habit_triggered(t, "list") != habit_triggered(t) for g in tasks.values() for t in g)
    assert [script.habit_trigger_of("nonlist,repair=list", k) for k in ("gen", "repair")] == ["nonlist", "list"]
    assert script.habit_trigger_of("", "gen") == "" and script.habit_trigger_of("nonlist", "repair") == "nonlist"
    for bad in ("nonlist,repiar=list", "loops", "nonlist,repair=lists"):   # a typo is an error, not the default
        with pytest.raises(SystemExit, match="habit_trigger"):
            script.habit_trigger_of(bad, "gen", VERSION_SKILLS[2])
    args.habit_trigger = "nonlist,repair=list"
    for skill, p, a in script.build_corpus(args):
        assert shows_habit(by_prompt[p], a) == habit_triggered(by_prompt[p], "list" if skill == "repair" else "nonlist")
