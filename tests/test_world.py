"""The built-in code world (retainrl.data.world) and the bundled tiny model built from it."""

from __future__ import annotations

import json
import os
import random
import sys

import pytest

from retainrl.data.world import SKILLS, WorldConfig, make_world, split_of, wrong_answer
from retainrl.data.world.programs import LEVELS, bug_candidates, failing_cases
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


def test_every_difficulty_builds():
    for level in LEVELS:
        w = make_world(WorldConfig(seed=0, n_train=8, n_heldout=4, difficulty=level))
        assert all(len(w[s]["train"]) == 8 for s in SKILLS)
    with pytest.raises(ValueError):
        make_world(WorldConfig(difficulty=9))


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


def test_tiny_model_solves_some_heldout_tasks_of_every_skill(tiny, sandbox):
    import importlib.util
    import torch
    spec = importlib.util.spec_from_file_location(
        "pretrain_tiny", os.path.join(os.path.dirname(__file__), "..", "scripts", "pretrain_tiny.py"))
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script   # dataclasses look their module up there
    spec.loader.exec_module(script)
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
