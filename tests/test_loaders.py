"""Loaders: the real benchmark files parse to the right tasks; malformed input names file, line, field.

Real data is read from ../shared/data (see its README); those tests skip when it is absent.
Nothing here runs a program.
"""

from __future__ import annotations

import ast
import gzip
import json
import re
from pathlib import Path

import pytest

from retainrl.data.loaders import BENCHMARKS, LoaderError, load_benchmark
from retainrl.data.loaders.cruxeval import load_cruxeval
from retainrl.data.loaders.jsonl import load_jsonl
from retainrl.data.loaders.mbpp import load_mbpp, load_mbpp_sanitized
from retainrl.data.loaders.quixbugs import (APPROX_LAST_ARG, EXPECTED_TUPLES, RESULT_AS_LIST,
                                            load_quixbugs)
from retainrl.data.task import Task

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

REAL = [  # (benchmark name, path under DATA, records)
    ("humaneval", "humaneval", 164),
    ("mbpp", "mbpp", 974),
    ("mbpp-sanitized", "mbpp", 427),
    ("cruxeval", "cruxeval", 800),
    ("humanevalfix", "humanevalpack", 164),
    ("quixbugs", "quixbugs", 40),
]


@pytest.fixture(scope="module")
def data() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"benchmark data not found at {DATA}")
    return DATA


def by_id(tasks: list[Task]) -> dict[str, Task]:
    return {t.task_id: t for t in tasks}


# ----------------------------------------------------------------------------- real files

@pytest.mark.parametrize("name, sub, count", REAL)
def test_real_counts_and_basic_shape(data, name, sub, count):
    tasks = load_benchmark(name, data / sub)
    assert len(tasks) == count
    assert len({t.task_id for t in tasks}) == count
    for t in tasks:
        assert t.prompt and t.tests and t.reference
        assert json.loads(json.dumps(t.meta)) == t.meta  # meta stays plain data
        assert Task.from_dict(t.to_dict()) == t


def test_humaneval(data):
    tasks = load_benchmark("humaneval", data / "humaneval" / "HumanEval.jsonl.gz")
    t = by_id(tasks)["HumanEval/0"]
    assert (t.skill, t.check, t.source, t.entry_point) == ("gen", "unit_tests", "humaneval", "has_close_elements")
    assert t.program_prefix == t.prompt
    assert t.tests.endswith("\ncheck(has_close_elements)\n")
    assert t.reference.startswith("    ")  # a body, continued from the prompt


def test_humaneval_plain_jsonl(data, tmp_path):
    with gzip.open(data / "humaneval" / "HumanEval.jsonl.gz", "rt") as fh:
        (tmp_path / "HumanEval.jsonl").write_text(fh.read())
    assert len(load_benchmark("humaneval", tmp_path)) == 164


def test_mbpp(data):
    tasks = by_id(load_mbpp(data / "mbpp"))
    t = tasks["mbpp/1"]
    assert (t.skill, t.check, t.entry_point) == ("gen", "unit_tests", "min_cost")
    first = "assert min_cost([[1, 2, 3], [4, 8, 2], [1, 5, 3]], 2, 2) == 8"
    assert first in t.prompt and "minimum cost path" in t.prompt
    assert t.tests.count("assert ") == 3 and t.program_prefix == ""
    # test_setup_code goes before the asserts
    with_setup = [t for t in tasks.values() if not t.tests.startswith("assert")]
    assert with_setup and all("assert" in t.tests for t in with_setup)


def test_mbpp_challenge_tests_are_optional(data):
    plain = load_mbpp(data / "mbpp")
    challenge = load_mbpp(data / "mbpp", include_challenge=True)
    more = [c for p, c in zip(plain, challenge) if c.tests.count("assert") > p.tests.count("assert")]
    assert more and all(c.tests.startswith(p.tests.rstrip("\n")) for p, c in zip(plain, challenge))


def test_mbpp_sanitized_test_imports(data):
    tasks = by_id(load_mbpp_sanitized(data / "mbpp" / "sanitized-mbpp.json"))
    t = tasks["mbpp-sanitized/82"]
    assert t.tests.startswith("import math\n") and "math.isclose(volume_sphere(10)" in t.tests
    assert t.entry_point == "volume_sphere"


@pytest.mark.parametrize("mode, count, checks", [
    ("output", 800, {"output_prediction"}),
    ("input", 800, {"input_prediction"}),
    ("both", 1600, {"output_prediction", "input_prediction"}),
])
def test_cruxeval_modes(data, mode, count, checks):
    tasks = load_cruxeval(data / "cruxeval", mode=mode)
    assert len(tasks) == count and {t.check for t in tasks} == checks
    assert {t.skill for t in tasks} == {"reason"}


def test_cruxeval_fields(data):
    tasks = by_id(load_cruxeval(data / "cruxeval", mode="both"))
    o, i = tasks["cruxeval-o/sample_0"], tasks["cruxeval-i/sample_0"]
    assert o.tests == i.tests and o.tests.startswith("def f(nums):")
    assert (o.call_input, o.reference) == ("[1, 1, 3, 1, 3, 1]", "[(4, 1), (4, 1), (4, 1), (4, 1), (2, 3), (2, 3)]")
    assert (i.expected, i.reference) == (o.reference, o.call_input)
    assert "f([1, 1, 3, 1, 3, 1])" in o.prompt and o.reference not in o.prompt
    assert "f(??) == [(4, 1)" in i.prompt
    with pytest.raises(ValueError):
        load_cruxeval(data / "cruxeval", mode="sideways")


def test_humanevalfix(data):
    tasks = load_benchmark("humanevalfix", data / "humanevalpack")
    t = by_id(tasks)["HumanEvalFix/0"]
    assert (t.skill, t.check, t.source) == ("repair", "unit_tests", "humanevalfix")
    assert t.program_prefix.endswith("def has_close_elements(numbers: List[float], threshold: float) -> bool:\n")
    assert t.meta["buggy_solution"] in t.prompt and "distance = elem - elem2" in t.prompt
    assert t.meta["bug_type"] == "missing logic" and t.meta["upstream_id"] == "Python/0"
    assert t.meta["standalone_prefix"] == "from typing import List\n\n\n"
    for t in tasks:  # check(...) is called exactly once at top level
        assert len(re.findall(rf"^check\({t.entry_point}\)", t.tests, re.M)) == 1, t.task_id
        assert t.reference not in t.prompt


def test_quixbugs(data):
    tasks = by_id(load_quixbugs(data / "quixbugs"))
    kinds = [t.meta["kind"] for t in tasks.values()]
    assert (kinds.count("json"), kinds.count("graph")) == (31, 9)
    assert sum(t.meta["n_cases"] for t in tasks.values() if t.meta["kind"] == "json") == 242
    gcd = tasks["quixbugs/gcd"]
    assert (gcd.skill, gcd.entry_point, gcd.timeout_s) == ("repair", "gcd", 3.0)
    assert gcd.meta["buggy_program"] in gcd.prompt and gcd.reference != gcd.meta["buggy_program"]
    assert gcd.meta["case_tests"][0].startswith("assert gcd(")
    assert tasks["quixbugs/sqrt"].meta["case_tests"][0] == "assert abs(sqrt(2, 0.01) - 1.4166666666666665) <= 0.01"
    assert tasks["quixbugs/hanoi"].meta["case_tests"][1] == "assert hanoi(1, 1, 3) == [(1, 3)]"
    assert tasks["quixbugs/flatten"].meta["case_tests"][0].startswith("assert list(flatten(")
    assert len(load_quixbugs(data / "quixbugs", include_graph=False)) == 31


def test_quixbugs_graph_cases_are_plain_python(data):
    for t in load_quixbugs(data / "quixbugs"):
        if t.meta["kind"] != "graph":
            continue
        for case in t.meta["case_tests"]:
            tree = ast.parse(case)
            assert "pytest" not in case and "import" not in case
            assert isinstance(tree.body[0], ast.ClassDef) and tree.body[0].name == "Node"
            last = tree.body[-1]
            assert isinstance(last, ast.Expr) and last.value.func.id.startswith("test")
        assert "class Node" in t.prompt


def test_quixbugs_compare_rules_match_upstream_pytest_files(data):
    """The loader's per-program compare table must say what python_testcases/ says."""
    listed, approx, tuples = set(), set(), set()
    for path in (data / "quixbugs" / "python_testcases").glob("test_*.py"):
        src, name = path.read_text(), path.stem[len("test_"):]
        if re.search(rf"assert list\({name}\(", src):
            listed.add(name)
        if "pytest.approx" in src:
            approx.add(name)
        if "tuple(x)" in src:
            tuples.add(name)
    assert (listed, approx, tuples) == (set(RESULT_AS_LIST), set(APPROX_LAST_ARG), set(EXPECTED_TUPLES))


def test_registry_names():
    assert set(BENCHMARKS) == {"humaneval", "mbpp", "mbpp-sanitized", "cruxeval", "humanevalfix",
                               "quixbugs", "jsonl"}
    with pytest.raises(KeyError):
        load_benchmark("nope", ".")
    with pytest.raises(FileNotFoundError):
        load_benchmark("humaneval", "/nonexistent/HumanEval.jsonl")


# ----------------------------------------------------------------------------- malformed input

HE = {"task_id": "HumanEval/0", "prompt": "def f():\n", "entry_point": "f",
      "canonical_solution": "    return 1\n", "test": "def check(c):\n    assert c() == 1\n"}
MBPP = {"task_id": 1, "text": "t", "code": "def f(): return 1", "test_list": ["assert f() == 1"],
        "test_setup_code": "", "challenge_test_list": []}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def expect_error(fn, path: Path, where: str, field: str | None):
    with pytest.raises(LoaderError) as info:
        fn(path)
    msg = str(info.value)
    assert str(path) in msg and where in msg, msg
    assert field is None or repr(field) in msg, msg
    assert isinstance(info.value, ValueError)
    return msg


def test_bad_json_line_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "h.jsonl", [json.dumps(HE), "", "{not json"])
    expect_error(lambda p: load_benchmark("humaneval", p), path, "line 3", None)


def test_missing_field_names_field(tmp_path):
    rec = {k: v for k, v in HE.items() if k != "entry_point"}
    path = write_lines(tmp_path / "h.jsonl", [json.dumps(HE), json.dumps(rec)])
    expect_error(lambda p: load_benchmark("humaneval", p), path, "line 2", "entry_point")


def test_wrong_type_names_field(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", [json.dumps({**MBPP, "test_list": "assert f() == 1"})])
    msg = expect_error(load_mbpp, path, "line 1", "test_list")
    assert "expected list" in msg
    path = write_lines(tmp_path / "m2.jsonl", [json.dumps({**MBPP, "test_list": ["ok", 3]})])
    expect_error(load_mbpp, path, "line 1", "test_list[1]")
    path = write_lines(tmp_path / "m3.jsonl", [json.dumps({**MBPP, "task_id": True})])
    expect_error(load_mbpp, path, "line 1", "task_id")


def test_non_object_line(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", ["[1, 2]"])
    expect_error(lambda p: load_cruxeval(p), path, "line 1", None)


def test_json_array_names_record_index(tmp_path):
    good = {"task_id": 2, "prompt": "p", "code": "c", "test_imports": [], "test_list": ["assert 1"]}
    path = tmp_path / "sanitized-mbpp.json"
    path.write_text(json.dumps([good, {**good, "test_imports": None}]))
    expect_error(load_mbpp_sanitized, path, "record index 1", "test_imports")
    path.write_text("[" + json.dumps(good) + ",")
    expect_error(load_mbpp_sanitized, path, "line 1", None)


def test_gzip_jsonl_errors_name_the_gz_file(tmp_path):
    path = tmp_path / "HumanEval.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(json.dumps(HE) + "\n" + json.dumps({**HE, "test": 5}) + "\n")
    expect_error(lambda p: load_benchmark("humaneval", p), path, "line 2", "test")


def test_cruxeval_and_humanevalfix_missing_fields(tmp_path):
    crux = write_lines(tmp_path / "x.jsonl", [json.dumps({"id": "s", "code": "def f(): pass", "input": ""})])
    expect_error(load_cruxeval, crux, "line 1", "output")
    fix = write_lines(tmp_path / "y.jsonl", [json.dumps({"task_id": "Python/0"})])
    expect_error(lambda p: load_benchmark("humanevalfix", p), fix, "line 1", "prompt")


def test_quixbugs_bad_case_line(data, tmp_path):
    root = tmp_path / "qb"
    for sub in ("python_programs", "correct_python_programs", "json_testcases"):
        (root / sub).mkdir(parents=True)
    (root / "python_programs" / "gcd.py").write_text("def gcd(a, b): return a\n")
    (root / "correct_python_programs" / "gcd.py").write_text("def gcd(a, b): return b\n")
    cases = root / "json_testcases" / "gcd.json"
    write_lines(cases, ["[[1, 2], 1]", "[[1, 2]]"])
    expect_error(load_quixbugs, root, f"{cases}: line 2", "case")
    write_lines(cases, ["[[1, 2], 1]", "[3, 1]"])
    expect_error(load_quixbugs, root, f"{cases}: line 2", "args")
    write_lines(cases, ["[[1, 2], 1]", "", "[[1, 2], 1"])
    expect_error(load_quixbugs, root, f"{cases}: line 3", None)
    write_lines(cases, ["[[1, 2], 1]"])
    assert load_quixbugs(root)[0].meta["case_tests"] == ["assert gcd(1, 2) == 1"]


# ----------------------------------------------------------------------------- generic JSONL

UNIT = {"task_id": "mine/1", "prompt": "Write add.", "tests": "assert add(1, 2) == 3",
        "entry_point": "add", "skill": "gen"}


def test_jsonl_all_check_kinds(tmp_path):
    recs = [
        UNIT,
        {**UNIT, "task_id": "mine/2", "program_prefix": "import math\n", "timeout_s": 2,
         "case_tests": ["assert add(1, 1) == 2", "assert add(0, 0) == 0"], "meta": {"level": 3},
         "reference": "def add(a, b): return a + b", "source": "mine"},
        {"task_id": "o/1", "prompt": "p", "check": "output_prediction", "tests": "def g(x): return x",
         "call_input": "[1], 2", "entry_point": "g", "skill": "reason"},
        {"task_id": "i/1", "prompt": "p", "check": "input_prediction", "tests": "def f(x): return x",
         "expected": "{1: 2}", "skill": "reason"},
        {"task_id": "c/1", "prompt": "p", "check": "compile", "skill": "syntax"},
        {"task_id": "f/1", "prompt": "p", "check": "format", "answer_format": r"\d+", "skill": "fmt"},
    ]
    tasks = by_id(load_jsonl(write_lines(tmp_path / "t.jsonl", [json.dumps(r) for r in recs])))
    assert tasks["mine/1"] == Task(task_id="mine/1", skill="gen", source="jsonl", prompt="Write add.",
                                   tests="assert add(1, 2) == 3", entry_point="add")
    t2 = tasks["mine/2"]
    assert (t2.timeout_s, t2.source, t2.program_prefix) == (2.0, "mine", "import math\n")
    assert t2.meta == {"level": 3, "case_tests": ["assert add(1, 1) == 2", "assert add(0, 0) == 0"]}
    assert (tasks["o/1"].check, tasks["o/1"].call_input, tasks["o/1"].entry_point) == ("output_prediction", "[1], 2", "g")
    assert (tasks["i/1"].expected, tasks["i/1"].entry_point) == ("{1: 2}", "f")
    assert tasks["c/1"].check == "compile"
    assert tasks["f/1"].meta == {"answer_format": r"\d+"}


def test_jsonl_skill_sources(tmp_path):
    rec = {k: v for k, v in UNIT.items() if k != "skill"}
    path = write_lines(tmp_path / "t.jsonl", [json.dumps(rec), json.dumps({**rec, "task_id": "mine/2"})])
    assert {t.skill for t in load_jsonl(path, skill="repair")} == {"repair"}
    fn_tasks = load_jsonl(path, skill_fn=lambda r: "long" if r["task_id"].endswith("2") else "short")
    assert [t.skill for t in fn_tasks] == ["short", "long"]
    expect_error(load_jsonl, path, "line 1", "skill")                    # no skill anywhere
    with pytest.raises(ValueError):
        load_jsonl(path, skill="a", skill_fn=lambda r: "b")


def test_jsonl_custom_skill_field_extra_fields_and_bad_skill_fn(tmp_path):
    rec = {**{k: v for k, v in UNIT.items() if k != "skill"}, "category": "gen", "difficulty": 3}
    path = write_lines(tmp_path / "t.jsonl", [json.dumps(rec)])
    expect_error(lambda p: load_jsonl(p, skill_field="category"), path, "line 1", "difficulty")
    task = load_jsonl(path, skill_field="category", extra_fields=["difficulty"])[0]
    assert (task.skill, task.meta) == ("gen", {"category": "gen", "difficulty": 3})
    hard = load_jsonl(path, skill_fn=lambda r: "hard" if r["difficulty"] > 2 else "easy",
                      extra_fields=["difficulty", "category"])[0]
    assert hard.skill == "hard"
    with pytest.raises(LoaderError, match=r"line 1: field 'skill': skill_fn raised KeyError"):
        load_jsonl(path, skill_fn=lambda r: r["nope"], extra_fields=["difficulty", "category"])
    with pytest.raises(LoaderError, match=r"line 1: field 'skill'"):
        load_jsonl(path, skill_fn=lambda r: 7, extra_fields=["difficulty", "category"])


@pytest.mark.parametrize("change, field", [
    ({"task_id": 5}, "task_id"),
    ({"prompt": None}, "prompt"),
    ({"tests": "assert (("}, "tests"),
    ({"check": "vibes"}, "check"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"timeout_s": "5"}, "timeout_s"),
    ({"meta": []}, "meta"),
    ({"case_tests": ["ok = 1", "def ("]}, "case_tests[1]"),
    ({"test": "assert 1"}, "test"),                                  # typo of "tests"
    ({"check": "format", "tests": None, "entry_point": None, "answer_format": "(["}, "answer_format"),
    ({"check": "format", "tests": None, "entry_point": None}, "answer_format"),
    ({"check": "compile"}, "tests"),                                 # compile tasks have no tests
    ({"check": "output_prediction", "call_input": "1), (2"}, "call_input"),
    ({"check": "input_prediction"}, "expected"),
])
def test_jsonl_malformed_records(tmp_path, change, field):
    rec = {k: v for k, v in {**UNIT, **change}.items() if v is not None}
    path = write_lines(tmp_path / "t.jsonl", [json.dumps(UNIT | {"task_id": "ok"}), json.dumps(rec)])
    expect_error(load_jsonl, path, "line 2", field)


def test_jsonl_duplicate_ids_and_folders(tmp_path):
    write_lines(tmp_path / "a.jsonl", [json.dumps(UNIT)])
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as fh:
        fh.write(json.dumps({**UNIT, "task_id": "mine/2"}) + "\n")
    assert [t.task_id for t in load_benchmark("jsonl", tmp_path)] == ["mine/1", "mine/2"]
    write_lines(tmp_path / "c.jsonl", [json.dumps(UNIT)])
    with pytest.raises(LoaderError, match=r"c.jsonl: line 1: field 'task_id': duplicate"):
        load_jsonl(tmp_path)
