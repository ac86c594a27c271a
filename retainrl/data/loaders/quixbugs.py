"""QuixBugs (jkoppel/QuixBugs): 40 small programs, each with a bug on one line.

Input: the QuixBugs folder, holding
    python_programs/NAME.py            the buggy program (NAME.py defines function NAME)
    correct_python_programs/NAME.py    the fixed program
    json_testcases/NAME.json           one test case per line: `[[arg, ...], expected]`
    python_testcases/test_NAME.py      pytest tests; `node.py` defines the graph `Node` class
(`node.py` and the upstream `*_test.py` drivers in the program folders are not programs.)

Task mapping (skill "repair", check "unit_tests", task id "quixbugs/NAME"):
    prompt      = the buggy program; the completion is the whole fixed program (no prefix)
    reference   = the correct program
    entry_point = NAME
    meta        = buggy_program, kind ("json" or "graph"), case_tests, n_cases
    timeout_s   = the limit for ONE case (default 3 s)

Per-case checking. Each case is one independent test source in `meta["case_tests"]`, run as its
own sandbox job with its own time limit (retainrl/verify/checks.py does this for any task that
has `case_tests`), so one slow case times out alone instead of failing the whole program; the
verdict's score is the fraction of cases passed and `extra["cases"]` holds per-case results.
`tests` is all cases in one source, for callers that want a single job.

The 31 JSON programs: a case is `assert NAME(args...) == expected`, except where the upstream
pytest file compares differently (mirrored below; tests/test_loaders.py checks the table
against those files): generators are listed first (flatten, kheapsort), hanoi's expected steps
are tuples, and sqrt is compared approximately, to within its epsilon argument.

The 9 graph programs (no JSON cases; their tests build `Node` graphs) ARE included: each
`def testN()` of python_testcases/test_NAME.py becomes one case, the source of `node.py` plus
the file's module-level setup plus that function plus the call `testN()`, with pytest's imports
and the `if pytest.use_correct:` import block dropped. Each case starts from fresh nodes
(upstream pytest shares module-level nodes between tests; every test sets the links it needs).
Pass `include_graph=False` to leave them out (31 tasks instead of 40).

Upstream marks two cases as too slow to run by default (one knapsack, one levenshtein case,
minutes each even for the correct program); they are kept, and time out under the per-case limit.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

from retainrl.data.loaders import LoaderError
from retainrl.data.task import Task

# Compare rules of the upstream python_testcases/test_NAME.py files for JSON cases.
RESULT_AS_LIST = frozenset({"flatten", "kheapsort"})   # `list(NAME(*args)) == expected`
EXPECTED_TUPLES = frozenset({"hanoi"})                  # expected = [tuple(x) for x in expected]
APPROX_LAST_ARG = frozenset({"sqrt"})                   # pytest.approx(expected, abs=args[-1])

NOT_PROGRAMS = frozenset({"node"})

PROMPT = """\
The Python program below has a bug on one line. Fix it and write the whole corrected program.

```python
{program}
```
"""

GRAPH_NOTE = """
The graph nodes it receives are instances of this class, which is already defined:

```python
{node}
```
"""


def load_quixbugs(path: str | Path, *, include_graph: bool = True, skill: str = "repair",
                  case_timeout_s: float = 3.0) -> list[Task]:
    """Load QuixBugs from its folder; `case_timeout_s` is the time limit per test case."""
    root = Path(path)
    if not (root / "python_programs").is_dir():
        raise FileNotFoundError(f"{root}: not a QuixBugs folder (no python_programs/)")
    tasks = []
    for name in program_names(root):
        task = _task(root, name, skill, case_timeout_s)
        if task.meta["kind"] == "json" or include_graph:
            tasks.append(task)
    return tasks


def program_names(root: Path) -> list[str]:
    """Names of the programs in python_programs/, sorted (drivers and node.py excluded)."""
    return sorted(p.stem for p in (root / "python_programs").glob("*.py")
                  if not p.stem.endswith("_test") and p.stem not in NOT_PROGRAMS)


def _task(root: Path, name: str, skill: str, case_timeout_s: float) -> Task:
    buggy = _read(root / "python_programs" / f"{name}.py")
    correct = _read(root / "correct_python_programs" / f"{name}.py")
    json_file = root / "json_testcases" / f"{name}.json"
    if json_file.is_file():
        kind, cases, prompt = "json", json_cases(json_file, name), PROMPT.format(program=buggy.strip())
    else:
        kind, cases = "graph", graph_cases(root, name)
        node = _read(root / "python_testcases" / "node.py")
        prompt = PROMPT.format(program=buggy.strip()) + GRAPH_NOTE.format(node=node.strip())
    return Task(
        task_id=f"quixbugs/{name}",
        skill=skill,
        source="quixbugs",
        prompt=prompt,
        tests=_joined(cases, kind),
        entry_point=name,
        reference=correct,
        timeout_s=case_timeout_s,
        meta={"buggy_program": buggy, "kind": kind, "case_tests": cases, "n_cases": len(cases)},
    )


def _read(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    return path.read_text(encoding="utf-8")


def _joined(cases: list[str], kind: str) -> str:
    # Graph cases each repeat the Node class and setup; one copy of each test suffices, but
    # repeating them keeps every case self-contained and the joined source still valid.
    return "\n".join(cases) if kind == "json" else "\n\n".join(cases)


# ----------------------------------------------------------------------------- JSON cases

def json_cases(path: Path, name: str) -> list[str]:
    """One assert statement per line of a json_testcases file (blank lines skipped)."""
    cases = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            args, expected = _parse_case(f"{path}: line {lineno}", line)
            cases.append(case_source(name, args, expected))
    if not cases:
        raise LoaderError(str(path), None, "no test cases")
    return cases


def _parse_case(where: str, line: str) -> tuple[list, object]:
    try:
        case = json.loads(line)
    except json.JSONDecodeError as e:
        raise LoaderError(where, None, f"bad JSON: {e.msg} (column {e.colno})") from None
    if not (isinstance(case, list) and len(case) == 2):
        raise LoaderError(where, "case", "expected `[[args...], expected]`")
    if not isinstance(case[0], list):
        raise LoaderError(where, "args", f"expected a list of arguments, got {type(case[0]).__name__}")
    for field, value in (("args", case[0]), ("expected", case[1])):
        if not _round_trips(value):
            raise LoaderError(where, field, "value has no Python literal form (inf or nan?)")
    return case[0], case[1]


def _round_trips(value: object) -> bool:
    # JSON data written with repr() must read back equal, or the generated assert is wrong.
    try:
        return ast.literal_eval(repr(value)) == value
    except (ValueError, SyntaxError):
        return False


def case_source(name: str, args: list, expected: object) -> str:
    """The assert for one JSON case, following the upstream compare rule for `name`."""
    call = f"{name}({', '.join(repr(a) for a in args)})"
    if name in RESULT_AS_LIST:
        call = f"list({call})"
    if name in EXPECTED_TUPLES:
        expected = [tuple(x) for x in expected]
    if name in APPROX_LAST_ARG:
        return f"assert abs({call} - {expected!r}) <= {args[-1]!r}"
    return f"assert {call} == {expected!r}"


# ----------------------------------------------------------------------------- graph cases

def graph_cases(root: Path, name: str) -> list[str]:
    """One self-contained test source per `def test*()` in python_testcases/test_NAME.py."""
    path = root / "python_testcases" / f"test_{name}.py"
    src = _read(path)
    node_src = _read(root / "python_testcases" / "node.py")
    support, tests = _split_pytest_module(path, src)
    setup = "\n\n".join([node_src.strip(), "\n".join(support)])
    cases = [f"{setup}\n\n\n{ast.get_source_segment(src, fn)}\n\n\n{fn.name}()\n" for fn in tests]
    if not cases:
        raise LoaderError(str(path), None, "no test functions")
    return cases


def _split_pytest_module(path: Path, src: str) -> tuple[list[str], list[ast.FunctionDef]]:
    """(module-level setup sources, test functions), with the pytest harness lines dropped."""
    support, tests = [], []
    for stmt in ast.parse(src, filename=str(path)).body:
        where = f"{path}: line {stmt.lineno}"
        if _is_harness(stmt):
            continue
        if isinstance(stmt, ast.FunctionDef) and stmt.name.startswith("test"):
            if stmt.decorator_list or stmt.args.args:
                raise LoaderError(where, stmt.name, "parametrized or decorated graph tests are not supported")
            tests.append(stmt)
        else:
            support.append(ast.get_source_segment(src, stmt))
    for fn in tests:
        if "pytest" in ast.get_source_segment(src, fn):
            raise LoaderError(f"{path}: line {fn.lineno}", fn.name, "uses pytest; cannot run as a plain test")
    return support, tests


def _is_harness(stmt: ast.stmt) -> bool:
    """pytest's import lines and the `if pytest.use_correct:` program-import block."""
    if isinstance(stmt, ast.Import):
        return all(a.name == "pytest" for a in stmt.names)
    if isinstance(stmt, ast.ImportFrom):
        return stmt.module in ("node", "load_testdata", "pytest")
    return isinstance(stmt, ast.If) and "pytest" in ast.dump(stmt.test)
