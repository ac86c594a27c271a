"""Users' own tasks: one JSON object per line (a `.jsonl` or `.jsonl.gz` file, or a folder of them).

Format. Each line is a JSON object with these fields. Any other field is an error (a typo such as
"test" must not pass silently), unless named in `extra_fields=`: those are allowed, visible to
`skill_fn`, and copied into meta. Put other extra data under "meta".

    task_id        str, required, unique across the files loaded
    prompt         str, required: the text the model is given
    check          str, optional, default "unit_tests"; one of
                   "unit_tests" | "output_prediction" | "input_prediction" | "compile" | "format"
    skill          str, optional; see "Skill" below
    source         str, optional, default "jsonl"
    reference      str, optional: a known-correct completion (never shown to the model)
    timeout_s      number > 0, optional, default 5.0 (per case when case_tests is given)
    meta           object, optional: free-form plain data, copied to Task.meta

  check "unit_tests" (program = program_prefix + completion + program_suffix, then tests):
    tests          str, required: Python test source (asserts); must parse
    program_prefix str, optional (e.g. a signature + docstring the model continues)
    program_suffix str, optional
    entry_point    str, optional: the function under test
    case_tests     list[str], optional: independent test sources, each run as its own sandbox
                   job with its own time limit (stored as meta["case_tests"])
  check "output_prediction" (completion = a Python literal; passes iff f(call_input) == it):
    tests          str, required: code defining the function
    call_input     str, required: the call's argument source, e.g. "[1, 2], 3"
    entry_point    str, optional, default "f"
  check "input_prediction" (completion = an argument list; passes iff f(args) == expected):
    tests          str, required: code defining the function
    expected       str, required: the expected return value as a Python expression
    entry_point    str, optional, default "f"
  check "compile" (the completion must compile as Python): no further fields
  check "format" (the stripped completion must fully match a regex):
    answer_format  str, required: the regex (stored as meta["answer_format"])

Example line:
    {"task_id": "mine/1", "prompt": "Write add(a, b).", "tests": "assert add(1, 2) == 3",
     "entry_point": "add", "skill": "gen"}

Skill. Each task's skill comes from exactly one of: `skill_fn(record) -> str` (a function of the
raw record; list the fields it reads in `extra_fields`), the constant `skill="..."`, or, when
neither is given, the record's `skill_field` (default "skill"), which is then required.

Errors: every problem raises LoaderError naming the file, the 1-based line and the field.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Callable, Iterable

from retainrl.data.loaders import LoaderError, iter_records, optional, require, require_str_list
from retainrl.data.task import CHECK_KINDS, Task

COMMON = ("task_id", "prompt", "check", "skill", "source", "reference", "timeout_s", "meta")
BY_CHECK = {
    "unit_tests": ("tests", "program_prefix", "program_suffix", "entry_point", "case_tests"),
    "output_prediction": ("tests", "call_input", "entry_point"),
    "input_prediction": ("tests", "expected", "entry_point"),
    "compile": (),
    "format": ("answer_format",),
}


def load_jsonl(path: str | Path, *, skill: str | None = None,
               skill_fn: Callable[[dict], str] | None = None, skill_field: str = "skill",
               extra_fields: Iterable[str] = (), default_timeout_s: float = 5.0) -> list[Task]:
    """Load tasks in the format above from a file or from every *.jsonl(.gz) in a folder."""
    if skill is not None and skill_fn is not None:
        raise ValueError("give at most one of skill= and skill_fn=")
    extra = frozenset(extra_fields) | {skill_field}
    tasks: list[Task] = []
    seen: dict[str, str] = {}
    for file in _files(Path(path)):
        for where, rec in iter_records(file):
            _reject_unknown(where, rec, extra)
            task = _task(where, rec, _skill(where, rec, skill, skill_fn, skill_field), default_timeout_s)
            task = _copy_extra(where, rec, task, extra - set(COMMON))
            if task.task_id in seen:
                raise LoaderError(where, "task_id", f"duplicate {task.task_id!r} (first at {seen[task.task_id]})")
            seen[task.task_id] = where
            tasks.append(task)
    return tasks


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted([*path.glob("*.jsonl"), *path.glob("*.jsonl.gz")])
    if path.is_file():
        return [path]
    raise FileNotFoundError(f"{path}: no such file or folder")


def _skill(where: str, rec: dict, skill: str | None, skill_fn: Callable[[dict], str] | None,
           skill_field: str) -> str:
    if skill is not None:
        return skill
    if skill_fn is None:
        value = require(rec, skill_field, str, where)
    else:
        try:
            value = skill_fn(rec)
        except Exception as e:  # a user function; report where it failed
            raise LoaderError(where, "skill", f"skill_fn raised {type(e).__name__}: {e}") from e
    if not isinstance(value, str) or not value:
        raise LoaderError(where, "skill", f"skill must be a non-empty str, got {value!r}")
    return value


def _task(where: str, rec: dict, skill: str, default_timeout_s: float) -> Task:
    task_id = require(rec, "task_id", str, where)
    prompt = require(rec, "prompt", str, where)
    check = optional(rec, "check", str, where, "unit_tests")
    meta = dict(optional(rec, "meta", dict, where, {}))
    fields = _check_fields(where, rec, check, meta)
    return Task(
        task_id=task_id,
        skill=skill,
        source=optional(rec, "source", str, where, "jsonl"),
        prompt=prompt,
        check=check,
        reference=optional(rec, "reference", str, where),
        timeout_s=_timeout(where, rec, default_timeout_s),
        meta=meta,
        **fields,
    )


def _reject_unknown(where: str, rec: dict, extra: frozenset[str]) -> None:
    # A typo ("test", "timeout") would otherwise be silently ignored.
    check = optional(rec, "check", str, where, "unit_tests")
    if check not in CHECK_KINDS:
        raise LoaderError(where, "check", f"unknown check {check!r}; expected one of {CHECK_KINDS}")
    allowed = set(COMMON) | set(BY_CHECK[check]) | extra
    for field in rec:
        if field not in allowed:
            raise LoaderError(where, field, f"not a field of check {check!r} tasks (extra data goes in 'meta')")


def _copy_extra(where: str, rec: dict, task: Task, extra: set[str]) -> Task:
    """Task with the record's extra fields added to its meta (the skill field included)."""
    for field in sorted(extra & set(rec)):
        if field in task.meta:
            raise LoaderError(where, field, "also present in 'meta'")
        task.meta[field] = rec[field]
    return task


def _timeout(where: str, rec: dict, default: float) -> float:
    value = optional(rec, "timeout_s", (int, float), where, default)
    if not value > 0:
        raise LoaderError(where, "timeout_s", f"must be > 0, got {value!r}")
    return float(value)


def _check_fields(where: str, rec: dict, check: str, meta: dict) -> dict:
    """Task keyword fields for `check`, validated (parsed, never run); may add to `meta`."""
    if check == "unit_tests":
        fields = {"tests": _python(where, rec, "tests", "exec"),
                  "program_prefix": optional(rec, "program_prefix", str, where, ""),
                  "program_suffix": optional(rec, "program_suffix", str, where, ""),
                  "entry_point": optional(rec, "entry_point", str, where)}
        if "case_tests" in rec:
            meta["case_tests"] = _case_tests(where, rec)
        return fields
    if check in ("output_prediction", "input_prediction"):
        fields = {"tests": _python(where, rec, "tests", "exec"),
                  "entry_point": optional(rec, "entry_point", str, where, "f")}
        if check == "output_prediction":
            fields["call_input"] = _call_args(where, rec)
        else:
            fields["expected"] = _python(where, rec, "expected", "eval")
        return fields
    if check == "format":
        meta["answer_format"] = _regex(where, rec)
    return {}


def _python(where: str, rec: dict, field: str, mode: str) -> str:
    src = require(rec, field, str, where)
    try:
        ast.parse(src, mode=mode)
    except SyntaxError as e:
        raise LoaderError(where, field, f"not valid Python: {e.msg} (line {e.lineno})") from None
    return src


def _call_args(where: str, rec: dict) -> str:
    src = require(rec, "call_input", str, where)
    try:
        ok = isinstance(ast.parse(f"f({src})", mode="eval").body, ast.Call)
    except SyntaxError:
        ok = False
    if not ok:
        raise LoaderError(where, "call_input", "not a valid Python argument list")
    return src


def _case_tests(where: str, rec: dict) -> list[str]:
    cases = require_str_list(rec, "case_tests", where)
    for i, src in enumerate(cases):
        try:
            ast.parse(src)
        except SyntaxError as e:
            raise LoaderError(where, f"case_tests[{i}]", f"not valid Python: {e.msg}") from None
    if not cases:
        raise LoaderError(where, "case_tests", "empty; omit it or give at least one case")
    return cases


def _regex(where: str, rec: dict) -> str:
    pattern = require(rec, "answer_format", str, where)
    try:
        re.compile(pattern)
    except re.error as e:
        raise LoaderError(where, "answer_format", f"not a valid regex: {e}") from None
    return pattern
