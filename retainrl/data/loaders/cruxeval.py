"""CRUXEval (facebookresearch/cruxeval): predict a short function's output, or an input for it.

Input: `cruxeval.jsonl` (or its folder), one JSON object per line with string fields `id`,
`code` (defines `f`), `input` (the argument source, e.g. "[1, 2], 3") and `output` (a literal).

Two task kinds, both skill "reason", chosen with `mode`:
* "output" (CRUXEval-O), check "output_prediction", task id "cruxeval-o/<id>":
      tests = code, call_input = input, reference = output.
  The completion is a Python literal; it passes iff `f(<input>) == <literal>`.
* "input" (CRUXEval-I), check "input_prediction", task id "cruxeval-i/<id>":
      tests = code, expected = output, reference = input.
  The completion is an argument list; it passes iff `f(<arguments>) == <output>`.
* "both": all output tasks, then all input tasks.
How a completion is parsed (untrusted, literal-only) is in retainrl/verify/checks.py.
"""

from __future__ import annotations

from pathlib import Path

from retainrl.data.loaders import iter_records, require, resolve_file
from retainrl.data.task import Task

MODES = ("output", "input", "both")

OUTPUT_PROMPT = """\
Given the Python function `f` below and an input, predict the value `f` returns.
Answer with one Python literal and nothing else.

```python
{code}
```

Input: f({input})
Output:"""

INPUT_PROMPT = """\
Given the Python function `f` below and its output, find arguments for which `f` returns
that output. Answer with the argument list only (Python literals separated by commas, as in
`[1, 2], 'a'`) and nothing else.

```python
{code}
```

f(??) == {output}
Input:"""


def load_cruxeval(path: str | Path, *, mode: str = "output", skill: str = "reason",
                  timeout_s: float = 5.0) -> list[Task]:
    """Load CRUXEval as output-prediction, input-prediction, or both (`mode`)."""
    if mode not in MODES:
        raise ValueError(f"unknown CRUXEval mode {mode!r}; expected one of {MODES}")
    records = [(where, _fields(where, rec))
               for where, rec in iter_records(resolve_file(path, ("cruxeval.jsonl",)))]
    tasks = []
    if mode in ("output", "both"):
        tasks += [_output_task(r, skill, timeout_s) for _, r in records]
    if mode in ("input", "both"):
        tasks += [_input_task(r, skill, timeout_s) for _, r in records]
    return tasks


def _fields(where: str, rec: dict) -> dict[str, str]:
    return {f: require(rec, f, str, where) for f in ("id", "code", "input", "output")}


def _output_task(r: dict[str, str], skill: str, timeout_s: float) -> Task:
    return Task(
        task_id=f"cruxeval-o/{r['id']}",
        skill=skill,
        source="cruxeval",
        prompt=OUTPUT_PROMPT.format(code=r["code"], input=r["input"]),
        check="output_prediction",
        tests=r["code"],
        entry_point="f",
        call_input=r["input"],
        reference=r["output"],
        timeout_s=timeout_s,
        meta={"upstream_id": r["id"], "mode": "output"},
    )


def _input_task(r: dict[str, str], skill: str, timeout_s: float) -> Task:
    return Task(
        task_id=f"cruxeval-i/{r['id']}",
        skill=skill,
        source="cruxeval",
        prompt=INPUT_PROMPT.format(code=r["code"], output=r["output"]),
        check="input_prediction",
        tests=r["code"],
        entry_point="f",
        expected=r["output"],
        reference=r["input"],
        timeout_s=timeout_s,
        meta={"upstream_id": r["id"], "mode": "input"},
    )
