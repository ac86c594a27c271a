"""Form checks (retainrl.verify.form) and their place in the verifier: hand-written cases."""

from __future__ import annotations

import pytest

from retainrl.data.task import Task
from retainrl.verify.checks import build_job, verify_many
from retainrl.verify.form import form_problem

SIG = {"signature": "def f(xs: list) -> int:"}


def test_signature_is_compared_as_an_ast():
    assert form_problem("def f(xs: list) -> int:\n    return len(xs)\n", SIG) is None
    assert form_problem("def f( xs:list )->int :\n    return len(xs)\n", SIG) is None   # spacing is free
    assert "signature" in form_problem("def f(xs: list):\n    return len(xs)\n", SIG)   # no return hint
    assert "signature" in form_problem("def f(xs) -> int:\n    return len(xs)\n", SIG)
    assert "signature" in form_problem("def f(xs: list, k=1) -> int:\n    return len(xs)\n", SIG)
    assert "signature" in form_problem("def f(ys: list) -> int:\n    return len(ys)\n", SIG)
    assert "signature" in form_problem("async def f(xs: list) -> int:\n    return len(xs)\n", SIG)
    assert "found 0" in form_problem("def g(xs: list) -> int:\n    return 1\n", SIG)
    assert "found 2" in form_problem("def f(xs: list) -> int:\n    return 1\ndef f(xs: list) -> int:\n    return 2\n", SIG)
    assert "found 0" in form_problem("class A:\n    def f(xs: list) -> int:\n        return 1\n", SIG)   # top level only


def test_no_loops_allows_comprehensions_and_refuses_statements():
    rule = {"no_loops": True}
    assert form_problem("def f(xs):\n    return [x * 2 for x in xs if x]\n", rule) is None
    assert form_problem("def f(xs):\n    return sum(x for x in xs)\n", rule) is None
    assert "loop" in form_problem("def f(xs):\n    ys = []\n    for x in xs:\n        ys.append(x)\n    return ys\n", rule)
    assert "loop" in form_problem("def f(n):\n    while n > 3:\n        n -= 1\n    return n\n", rule)
    assert form_problem("def f(n):\n    while n:\n        n -= 1\n    return n\n", {"no_loops": False}) is None


def test_print_and_line_length_rules():
    assert "print" in form_problem("def f(n):\n    print(n)\n", {"no_print": True})
    assert form_problem("def f(n):\n    return n\n", {"no_print": True, "max_line_length": 12}) is None
    assert "14 characters" in form_problem("def f(n):\n    return n+1\n", {"max_line_length": 12})


def test_bad_input_is_a_reason_not_a_crash():
    assert form_problem("def f(:\n", SIG) == "code does not parse"
    assert form_problem("(" * 10_000, SIG) == "code does not parse"
    with pytest.raises(ValueError, match="unknown form rules"):
        form_problem("x = 1\n", {"no_goto": True})
    with pytest.raises(ValueError, match="not a `def"):
        form_problem("def f(xs: list) -> int:\n    return 1\n", {"signature": "f(xs)"})


class _NoSandbox:
    def run_tests_many(self, jobs, timeout_s=None):
        assert not jobs, "a form violation must be decided without running anything"
        return []


def _task(form):
    return Task(task_id="r", skill="refactor", source="t", prompt="p", check="unit_tests", program_suffix="\n",
                tests="assert f([1, 2]) == 2\n", entry_point="f", meta={"form": form})


def test_a_form_violation_is_a_failed_verdict_decided_before_the_sandbox():
    task = _task({"signature": "def f(xs: list) -> int:", "no_loops": True})
    looped = "def f(xs: list) -> int:\n    n = 0\n    for x in xs:\n        n += 1\n    return n\n"
    [v] = verify_many(_NoSandbox(), [(task, looped)])
    assert v.status == "failed" and not v.passed and "loop" in v.details and v.units_total == 0
    [v] = verify_many(_NoSandbox(), [(task, "def f(xs: list):\n    return len(xs)\n")])
    assert v.status == "failed" and "signature" in v.details
    [v] = verify_many(_NoSandbox(), [(task, "def f(xs: list) -> int:\n    return len(xs\n")])
    assert v.status == "syntax_error"   # compile comes first
    job = build_job(task, "```python\ndef f(xs: list) -> int:\n    return len(xs)\n```")
    assert isinstance(job, tuple) and job[1] == task.tests   # a form-true answer goes to the sandbox
    assert isinstance(build_job(_task({}), "def f(xs):\n    for x in xs:\n        pass\n"), tuple)   # no form: no rule
