"""MBPP (google-research): short Python programming problems checked by three asserts.

Two files, two loaders:

* `mbpp.jsonl` (974 records; `load_mbpp`): `task_id` int, `text` str, `code` str, `test_list`
  list[str], `test_setup_code` str, `challenge_test_list` list[str].
* `sanitized-mbpp.json` (427 records, a JSON array; `load_mbpp_sanitized`): `task_id` int,
  `prompt` str, `code` str, `test_imports` list[str], `test_list` list[str], `source_file` str.
  A JSONL version of the same file also loads.

Task mapping (skill "gen", check "unit_tests"): the program is the completion alone (no prefix).
    prompt      = the task text, then the first test assert (the usual MBPP prompt, so the model
                  learns the function name and signature)
    tests       = test_setup_code (or test_imports) + test_list (+ challenge_test_list when
                  include_challenge=True), one statement per line
    entry_point = the first function called in the first test that `code` defines (else None)
    reference   = code
Task ids are "mbpp/<id>" and "mbpp-sanitized/<id>".
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

from retainrl.data.loaders import LoaderError, iter_records, require, require_str_list, resolve_file
from retainrl.data.task import Task

PROMPT = "{text}\nYour code should pass this test:\n\n{first_test}\n"


def load_mbpp(path: str | Path, *, include_challenge: bool = False, skill: str = "gen",
              timeout_s: float = 5.0) -> list[Task]:
    """Load the full MBPP set from `mbpp.jsonl` (or its folder)."""
    tasks = []
    for where, rec in iter_records(resolve_file(path, ("mbpp.jsonl",))):
        tests = require_str_list(rec, "test_list", where)
        if include_challenge:
            tests = tests + require_str_list(rec, "challenge_test_list", where, default=[])
        setup = require(rec, "test_setup_code", str, where)
        tasks.append(_task(where, rec, "mbpp", require(rec, "text", str, where),
                           [setup] if setup.strip() else [], tests, skill, timeout_s))
    return tasks


def load_mbpp_sanitized(path: str | Path, *, skill: str = "gen",
                        timeout_s: float = 5.0) -> list[Task]:
    """Load sanitized MBPP from `sanitized-mbpp.json` (or its folder, or a JSONL version)."""
    file = resolve_file(path, ("sanitized-mbpp.json", "sanitized-mbpp.jsonl"))
    tasks = []
    for where, rec in iter_records(file):
        # test_imports are what the asserts need (e.g. `import math` for math.isclose).
        imports = require_str_list(rec, "test_imports", where)
        tests = require_str_list(rec, "test_list", where)
        tasks.append(_task(where, rec, "mbpp-sanitized", require(rec, "prompt", str, where),
                           imports, tests, skill, timeout_s))
    return tasks


def _task(where: str, rec: dict, source: str, text: str, setup: list[str], tests: list[str],
          skill: str, timeout_s: float) -> Task:
    task_id = require(rec, "task_id", int, where)
    code = require(rec, "code", str, where)
    if not tests:
        raise LoaderError(where, "test_list", "empty; a task needs at least one test")
    return Task(
        task_id=f"{source}/{task_id}",
        skill=skill,
        source=source,
        prompt=PROMPT.format(text=text.strip(), first_test=tests[0]),
        tests="\n".join(setup + tests) + "\n",
        entry_point=_entry_point(code, tests[0]),
        reference=code,
        timeout_s=timeout_s,
        meta={"upstream_id": task_id},
    )


def _entry_point(code: str, first_test: str) -> str | None:
    """The first name called in `first_test` that `code` defines with a top-level def."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # old reference code has invalid escapes like '\d'
            defined = {n.name for n in ast.parse(code).body if isinstance(n, ast.FunctionDef)}
            calls = [n.func.id for n in ast.walk(ast.parse(first_test))
                     if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    except SyntaxError:
        return None
    return next((name for name in calls if name in defined), None)
