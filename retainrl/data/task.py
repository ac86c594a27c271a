"""The one task record every loader and the built-in world produce.

A Task is plain data: what the model sees (`prompt`), how its answer is checked (`check` and
the verifier inputs), and which skill it belongs to. Turning a model completion plus a Task
into a Verdict is `retainrl.verify.checks.verify_completion`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

# How a completion is checked. Each kind is implemented in retainrl/verify/checks.py.
CHECK_KINDS = (
    "unit_tests",         # program = program_prefix + completion (+ program_suffix); run `tests` after it
    "output_prediction",  # completion is a Python literal; check f(<call input>) == literal (CRUXEval-O)
    "input_prediction",   # completion is an argument list; check f(<completion>) == expected (CRUXEval-I)
    "compile",            # the completion must compile as Python
    "format",             # the completion must match `answer_format` (a regex), nothing executed
)


@dataclass(frozen=True)
class Task:
    """One verifiable task.

    task_id:        unique within its source, e.g. "HumanEval/0", "world/gen/train/17".
    skill:          skill name, e.g. "gen", "repair", "reason" (assigned by the loader or a user rule).
    source:         where it came from: "humaneval", "mbpp", "cruxeval", "humanevalfix", "quixbugs",
                    "jsonl", "world".
    prompt:         the text the model is given.
    check:          one of CHECK_KINDS.
    tests:          Python test source run after the program (unit_tests), or the code of `f`
                    (output/input prediction).
    program_prefix: trusted code placed before the completion (e.g. HumanEval's signature+docstring
                    prompt, or imports). May be empty.
    program_suffix: trusted code placed after the completion. May be empty.
    entry_point:    the function under test, when there is one.
    call_input:     for output_prediction: the argument source, e.g. "[1, 2], 3".
    expected:       for input_prediction: the expected output literal source.
    reference:      a known-correct completion (canonical solution / answer), used by tests and
                    sanity checks; never shown to the model.
    timeout_s:      wall-clock limit for verifying one completion.
    meta:           free-form plain data (difficulty, bug type, split, ...).
    """

    task_id: str
    skill: str
    source: str
    prompt: str
    check: str = "unit_tests"
    tests: str = ""
    program_prefix: str = ""
    program_suffix: str = ""
    entry_point: str | None = None
    call_input: str | None = None
    expected: str | None = None
    reference: str | None = None
    timeout_s: float = 5.0
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.check not in CHECK_KINDS:
            raise ValueError(f"task {self.task_id!r}: unknown check {self.check!r}; expected one of {CHECK_KINDS}")

    def content_hash(self) -> str:
        """Hash of what defines the task (prompt and verifier inputs), for split-overlap checks."""
        payload = json.dumps([self.prompt, self.check, self.tests, self.program_prefix,
                              self.program_suffix, self.call_input, self.expected], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "Task":
        return Task(**d)
