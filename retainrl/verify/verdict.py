"""Plain records of the verifier: Job (what to run) and Verdict (the result). No torch, no models."""

from __future__ import annotations

from dataclasses import dataclass, field

STATUSES = ("passed", "failed", "error", "timeout", "oom", "syntax_error", "killed")


class Job(tuple):
    """A sandbox job: the pair (program, tests), plus options for the trusted side.

    trusted: source whose top-level definitions the tests use, run on the trusted side (the
             task's own helpers, e.g. a HumanEval prompt's `poly`); those names are never
             taken from the program.
    exports: names the tests may take from the program even though they are builtins
             (MBPP's `sum`); other builtin names always mean the builtin.
    Unpacks and compares as the 2-tuple (program, tests).
    """

    def __new__(cls, program: str, tests: str, trusted: str = "", exports=()):
        self = super().__new__(cls, (program, tests))
        self.trusted, self.exports = trusted, tuple(exports)
        return self

    def __getnewargs__(self):
        return (self[0], self[1], self.trusted, self.exports)


@dataclass(frozen=True)
class Verdict:
    """Outcome of one program against its tests.

    passed:  every test statement ran to the end and no check failed.
    status:  one of STATUSES.
    score:   fraction of test units that passed, in [0, 1] (a unit is one executed assert,
             or one top-level test statement that raised).
    details: short human-readable reason (first failing assert, exception type, ...).
    stdout:  the program's captured output, truncated.
    cpu_s:   CPU seconds of the job (user + system): the program process (read when the job
             ends, so not its teardown or forked children) plus the trusted side's test run,
             for verifier cost accounting.
    wall_s:  wall-clock seconds from the job's arrival at the worker to its verdict.
    """

    passed: bool
    status: str
    score: float
    details: str = ""
    stdout: str = ""
    cpu_s: float = 0.0
    wall_s: float = 0.0
    units_passed: int = 0
    units_total: int = 0
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"unknown verdict status {self.status!r}; expected one of {STATUSES}")
        if self.passed and self.status != "passed":
            raise ValueError("a passed verdict must have status 'passed'")
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"score {self.score} outside [0, 1]")

    def reward(self, kind: str = "binary") -> float:
        """Scalar reward: 'binary' (1.0 iff passed) or 'fraction' (the score)."""
        if kind == "binary":
            return 1.0 if self.passed else 0.0
        if kind == "fraction":
            return float(self.score)
        raise ValueError(f"unknown reward kind {kind!r}; expected 'binary' or 'fraction'")
