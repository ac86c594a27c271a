"""HumanEvalFix (bigcode HumanEvalPack, Python): repair a function with one injected bug.

Input: `humanevalpack_python.jsonl` (or its folder), one JSON object per line with string fields
`task_id` ("Python/N"), `prompt` (signature + docstring), `declaration` (imports, helpers and the
`def` line), `canonical_solution` and `buggy_solution` (function bodies), `bug_type`,
`failure_symptoms`, `entry_point`, `test` (defines `check` and, in this file, calls it).

Task mapping (skill "repair", check "unit_tests", task id "HumanEvalFix/N"):
    prompt         = the buggy function with its docstring, then "Fix bugs in <entry_point>."
    program_prefix = declaration, so program = declaration + completion (a function body, as
                     with HumanEval); reference = canonical_solution
    tests          = test + "check(<entry_point>)" (the call is appended only when `test`
                     does not already make it, so the tests never run twice)
    meta           = buggy_solution, bug_type, failure_symptoms, upstream_id, and
                     standalone_prefix: the declaration without its final `def` line. A
                     completion that is a whole `def <entry_point>` is placed after this
                     instead of after the open `def` line (see retainrl/verify/checks.py).
"""

from __future__ import annotations

import re
from pathlib import Path

from retainrl.data.loaders import LoaderError, iter_records, require, resolve_file
from retainrl.data.task import Task

PROMPT = """\
The function `{entry_point}` below has a bug: it does not do what its docstring says.

```python
{buggy}```

Fix bugs in {entry_point}. Write the corrected function."""

FIELDS = ("task_id", "prompt", "declaration", "canonical_solution", "buggy_solution", "bug_type",
          "failure_symptoms", "entry_point", "test")


def load_humanevalfix(path: str | Path, *, skill: str = "repair",
                      timeout_s: float = 5.0) -> list[Task]:
    """Load HumanEvalFix-Python from `path` (file or folder)."""
    file = resolve_file(path, ("humanevalpack_python.jsonl", "humanevalpack.jsonl"))
    return [_task(where, rec, skill, timeout_s) for where, rec in iter_records(file)]


def _task(where: str, rec: dict, skill: str, timeout_s: float) -> Task:
    r = {f: require(rec, f, str, where) for f in FIELDS}
    entry = r["entry_point"]
    return Task(
        task_id=r["task_id"].replace("Python/", "HumanEvalFix/", 1),
        skill=skill,
        source="humanevalfix",
        prompt=PROMPT.format(entry_point=entry, buggy=(r["prompt"] + r["buggy_solution"]).lstrip("\n")),
        tests=_tests(r["test"], entry),
        program_prefix=r["declaration"],
        entry_point=entry,
        reference=r["canonical_solution"],
        timeout_s=timeout_s,
        meta={
            "upstream_id": r["task_id"],
            "buggy_solution": r["buggy_solution"],
            "bug_type": r["bug_type"],
            "failure_symptoms": r["failure_symptoms"],
            "standalone_prefix": _standalone_prefix(where, r["declaration"], entry),
        },
    )


def _tests(test: str, entry_point: str) -> str:
    already_called = re.search(rf"^check\(\s*{re.escape(entry_point)}\s*\)\s*$", test, re.M)
    return test if already_called else f"{test}\ncheck({entry_point})\n"


def _standalone_prefix(where: str, declaration: str, entry_point: str) -> str:
    """The declaration up to (not including) its last top-level `def <entry_point>(` line."""
    headers = list(re.finditer(rf"^(async\s+)?def\s+{re.escape(entry_point)}\s*\(", declaration, re.M))
    if not headers:
        raise LoaderError(where, "declaration", f"no top-level `def {entry_point}(` line")
    return declaration[:headers[-1].start()]
