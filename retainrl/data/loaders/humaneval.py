"""HumanEval (openai/human-eval): code generation from a signature and docstring.

Input: `HumanEval.jsonl.gz` or `HumanEval.jsonl` (or the folder holding one), one JSON object per
line with string fields `task_id, prompt, entry_point, canonical_solution, test`; `test` defines
`check(candidate)`.

Task mapping (skill "gen", check "unit_tests"):
    prompt         = record prompt (signature + docstring; the model continues it)
    program_prefix = record prompt, so program = prompt + completion
    tests          = test + "\\ncheck(<entry_point>)\\n"
    reference      = canonical_solution (a function body)
"""

from __future__ import annotations

from pathlib import Path

from retainrl.data.loaders import iter_records, require, resolve_file
from retainrl.data.task import Task

FILES = ("HumanEval.jsonl.gz", "HumanEval.jsonl")


def load_humaneval(path: str | Path, *, skill: str = "gen", timeout_s: float = 5.0) -> list[Task]:
    """Load HumanEval tasks from `path` (file or folder)."""
    return [_task(where, rec, skill, timeout_s)
            for where, rec in iter_records(resolve_file(path, FILES))]


def _task(where: str, rec: dict, skill: str, timeout_s: float) -> Task:
    fields = {f: require(rec, f, str, where)
              for f in ("task_id", "prompt", "entry_point", "canonical_solution", "test")}
    return Task(
        task_id=fields["task_id"],
        skill=skill,
        source="humaneval",
        prompt=fields["prompt"],
        tests=f"{fields['test']}\ncheck({fields['entry_point']})\n",
        program_prefix=fields["prompt"],
        entry_point=fields["entry_point"],
        reference=fields["canonical_solution"],
        timeout_s=timeout_s,
    )
