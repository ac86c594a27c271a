"""retainrl.verify.checks without a sandbox: parsing, decided verdicts, job building, batching.

A FakeSandbox stands in for the real one; tests/test_benchmarks_real.py runs the real one.
"""

from __future__ import annotations

import math

import pytest

from retainrl.data.task import Task
from retainrl.verify import Verdict
from retainrl.verify.checks import (MAX_ANSWER_CHARS, MAX_FORMAT_CHARS, MAX_PROGRAM_CHARS, Rejected,
                                    aggregate_cases, assemble_program, build_case_jobs, build_job,
                                    compile_error, extract_answer, extract_code, literal_source,
                                    parse_input_prediction, parse_output_prediction,
                                    verify_completion, verify_many)

F_CODE = "def f(a, b=0):\n    return a + b\n"


def output_task(**kw) -> Task:
    return Task(task_id="o", skill="reason", source="t", prompt="p", check="output_prediction",
                tests=F_CODE, entry_point="f", call_input="1, 2", **kw)


def input_task(**kw) -> Task:
    return Task(task_id="i", skill="reason", source="t", prompt="p", check="input_prediction",
                tests=F_CODE, entry_point="f", expected="3", **kw)


def unit_task(**kw) -> Task:
    kw.setdefault("tests", "assert add(1, 2) == 3\n")
    return Task(task_id="u", skill="gen", source="t", prompt="p", entry_point="add", **kw)


# ----------------------------------------------------------------------------- extract_code

def test_extract_code_plain_text_is_unchanged():
    body = "    return a + b\n"  # a HumanEval-style body keeps its indentation
    assert extract_code(body) == body


def test_extract_code_prefers_python_fence():
    text = "Plan:\n```text\nnot code\n```\nCode:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
    assert extract_code(text) == "def add(a, b):\n    return a + b\n"


def test_extract_code_untagged_and_unclosed_fences():
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    assert extract_code("```py\nx = 1\ny = 2\n") == "x = 1\ny = 2\n"
    assert extract_code("```Python3\nx = 1\n```\n```python\ny = 2\n```") == "x = 1\n"


def test_extract_answer_tags_and_fences():
    assert extract_answer("think...\n[ANSWER]assert f(1) == 2[/ANSWER] trailing") == "assert f(1) == 2"
    assert extract_answer("```python\n[1, 2]\n```") == "[1, 2]"
    assert extract_answer("  'abc'\n") == "'abc'"


# ----------------------------------------------------------------------------- literals

@pytest.mark.parametrize("answer, source", [
    ("[1, 2]", "[1, 2]"),
    ("  (1,)  ", "(1,)"),
    ("{'a': [1.5, None, True]}", "{'a': [1.5, None, True]}"),
    ("set()", "set()"),
    ("-3", "-3"),
    ("1+2j", "(1+2j)"),
    ("b'x\\x00'", "b'x\\x00'"),
    ("1e999", "float('inf')"),
    ("assert f(1, 2) == 'x'", "'x'"),
    ("f(1, 2) == [3]", "[3]"),
])
def test_output_prediction_literals(answer, source):
    assert parse_output_prediction(answer) == source


@pytest.mark.parametrize("answer, status", [
    ("__import__('os').system('echo hi')", "failed"),     # a call, not a literal
    ("open('/etc/passwd').read()", "failed"),
    ("(lambda: 1)()", "failed"),
    ("[x for x in range(10**9)]", "failed"),
    ("f'{1}'", "failed"),                                  # f-strings run code
    ("10**10**10", "failed"),                              # arithmetic is not a literal
    ("'a' * 10**9", "failed"),
    ("x = 1", "failed"),
    ("import os", "failed"),
    ("[" * 300 + "]" * 300, "syntax_error"),               # parser nesting limit
    ("9" * 5000, "syntax_error"),                          # int digit limit
    ("1 +", "syntax_error"),
    ("'" + "a" * MAX_ANSWER_CHARS + "'", "failed"),        # over the size limit, never parsed
])
def test_output_prediction_rejects_hostile_or_bad_text(answer, status):
    with pytest.raises(Rejected) as info:
        parse_output_prediction(answer)
    assert info.value.status == status


@pytest.mark.parametrize("answer, source", [
    ("[1, 2], 3", "[1, 2], 3"),
    ("([1, 2], 3)", "([1, 2], 3)"),           # one tuple argument, not two arguments
    ("[1], b=2", "[1], b=2"),
    ("f('a', 'b')", "'a', 'b'"),
    ("assert f({1: 2}) == 3", "{1: 2}"),
    ("", ""),
])
def test_input_prediction_arguments(answer, source):
    assert parse_input_prediction(answer) == source


@pytest.mark.parametrize("answer", [
    "1), print('pwned'",          # closes the call early: parses as a tuple, refused
    "1) == 3 or f(2",
    "1)(2",
    "*[1, 2]",
    "f(**{'a': 1})",
    "1, b=__import__('os')",
    "dict(a=1)",
    "g(1)",
])
def test_input_prediction_rejects_non_literal_arguments(answer):
    with pytest.raises(Rejected):
        parse_input_prediction(answer)


@pytest.mark.parametrize("value", [
    [1, (2,), {3: "x"}, {4.5}, None, True, b"y", 1j, frozenset({1})], (), set(), -0.0,
])
def test_literal_source_round_trips(value):
    assert eval(literal_source(value)) == value  # noqa: S307 - our own generated source


def test_literal_source_non_finite_floats():
    assert literal_source([math.inf, -math.inf]) == "[float('inf'), float('-inf')]"
    assert math.isnan(eval(literal_source(math.nan)))  # noqa: S307
    with pytest.raises(TypeError):
        literal_source(object())


# ----------------------------------------------------------------------------- build_job

def test_output_prediction_job_rewrites_the_answer():
    assert build_job(output_task(), "```python\n3\n```") == (F_CODE, "assert f(1, 2) == 3\n")
    assert build_job(output_task(), "[ANSWER]assert f(1, 2) == 0x3[/ANSWER]") == (F_CODE, "assert f(1, 2) == 3\n")


def test_input_prediction_job():
    assert build_job(input_task(), "1, b=2") == (F_CODE, "assert f(1, b=2) == 3\n")


@pytest.mark.parametrize("completion, status", [
    ("__import__('os')", "failed"),
    ("(((", "syntax_error"),
])
def test_prediction_decided_without_running(completion, status):
    for task in (output_task(), input_task()):
        v = build_job(task, completion)
        assert isinstance(v, Verdict) and v.status == status and not v.passed and v.score == 0.0


def test_unit_tests_job_and_syntax_error():
    task = unit_task(program_prefix="import math\n", program_suffix="X = 1\n")
    program, tests = build_job(task, "def add(a, b):\n    return a + b")
    assert program == "import math\ndef add(a, b):\n    return a + b\nX = 1\n"
    assert tests == task.tests
    v = build_job(task, "def add(a, b) return a + b")
    assert isinstance(v, Verdict) and v.status == "syntax_error" and "line 2" in v.details


def test_standalone_prefix_for_whole_function_completions():
    decl = "import math\n\n\ndef add(a, b):\n"
    task = unit_task(program_prefix=decl, meta={"standalone_prefix": "import math\n\n\n"})
    body = "    return a + b\n"
    whole = "def add(a, b):\n    return a + b\n"
    assert assemble_program(task, body) == decl + body
    assert assemble_program(task, whole) == "import math\n\n\n" + whole
    assert compile_error(assemble_program(task, whole)) is None


def test_compile_check():
    task = Task(task_id="c", skill="s", source="t", prompt="p", check="compile")
    assert build_job(task, "```python\nx = [1, 2]\n```").passed
    v = build_job(task, "x = [1, 2")
    assert v.status == "syntax_error" and not v.passed
    assert build_job(task, "x = 1\0").status == "syntax_error"          # null byte: ValueError
    assert build_job(task, "x = " + "(" * 1000 + ")" * 1000).status == "syntax_error"
    assert "longer than" in build_job(task, "#" * (MAX_PROGRAM_CHARS + 1)).details


def test_compile_check_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    task = Task(task_id="c", skill="s", source="t", prompt="p", check="compile")
    assert build_job(task, f"open({str(marker)!r}, 'w').write('x')").passed
    assert not marker.exists()


def test_format_check():
    task = Task(task_id="fmt", skill="s", source="t", prompt="p", check="format",
                meta={"answer_format": r"ANSWER: \d+"})
    assert build_job(task, "  ANSWER: 42\n").passed          # outer whitespace is stripped
    assert build_job(task, "ANSWER: 42 and more").status == "failed"  # full match only
    assert build_job(task, "ANSWER: " + "1" * MAX_FORMAT_CHARS).status == "failed"
    with pytest.raises(ValueError):
        build_job(Task(task_id="x", skill="s", source="t", prompt="p", check="format"), "a")


# ----------------------------------------------------------------------------- batching

class FakeSandbox:
    """Records the jobs; a job passes iff its tests source contains 'ok'."""

    def __init__(self):
        self.calls: list[tuple[list, object]] = []

    def run_tests_many(self, jobs, timeout_s=5.0):
        self.calls.append((list(jobs), timeout_s))
        return [Verdict(True, "passed", 1.0, units_passed=1, units_total=1, cpu_s=0.5, wall_s=1.0)
                if "ok" in tests else
                Verdict(False, "timeout", 0.0, details="slow", cpu_s=0.5, wall_s=2.0)
                for _, tests in jobs]


def test_verify_many_keeps_order_and_batches_once():
    sb = FakeSandbox()
    cases = unit_task(tests="all", meta={"case_tests": ["ok 1", "slow 2", "ok 3"]}, timeout_s=2.0)
    pairs = [
        (unit_task(tests="ok", timeout_s=7.0), "def add(a, b): return a + b"),
        (unit_task(tests="ok"), "def add(a, b) return"),                # syntax error: no job
        (cases, "def add(a, b): return a + b"),
        (output_task(), "'not' + 'literal'"),                          # rejected: no job
    ]
    verdicts = verify_many(sb, pairs)
    assert [v.status for v in verdicts] == ["passed", "syntax_error", "timeout", "failed"]
    assert len(sb.calls) == 1
    jobs, limits = sb.calls[0]
    assert [t for _, t in jobs] == ["ok", "ok 1", "slow 2", "ok 3"]
    assert limits == [7.0, 2.0, 2.0, 2.0]  # per task; per case for case tasks


def test_aggregate_cases_numbers():
    sb = FakeSandbox()
    task = unit_task(tests="all", meta={"case_tests": ["ok", "slow", "ok", "ok"]})
    v = verify_completion(sb, task, "def add(a, b): return a + b")
    assert (v.passed, v.status, v.score, v.units_passed, v.units_total) == (False, "timeout", 0.75, 3, 4)
    assert (v.cpu_s, v.wall_s) == (2.0, 5.0)                  # 4 x 0.5 cpu; 1 + 2 + 1 + 1 wall
    assert v.details.startswith("1/4 cases not passed; case 2: timeout")
    assert [c["status"] for c in v.extra["cases"]] == ["passed", "timeout", "passed", "passed"]
    assert aggregate_cases([Verdict(True, "passed", 1.0)] * 2).passed


def test_build_case_jobs_shares_one_program():
    task = unit_task(tests="all", meta={"case_tests": ["a", "b"]})
    jobs = build_case_jobs(task, "def add(a, b): return a + b")
    assert [t for _, t in jobs] == ["a", "b"] and jobs[0][0] == jobs[1][0]
    assert isinstance(build_case_jobs(task, "def add("), Verdict)


def test_no_sandbox_call_when_everything_is_decided():
    sb = FakeSandbox()
    assert verify_many(sb, [(output_task(), "os.system('x')")])[0].status == "failed"
    assert sb.calls == []
