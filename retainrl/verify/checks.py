"""Turn (Task, completion) into a Verdict, through a Sandbox for anything that runs code.

    with Sandbox(workers=2) as sb:
        verdict = verify_completion(sb, task, completion)
        verdicts = verify_many(sb, [(task, completion), ...])     # batched, order kept

What each check does with the (untrusted) completion:

* unit_tests: code = extract_code(completion); program = program_prefix + code + program_suffix;
  the sandbox runs `tests` against it, with the definitions of program_prefix other than the
  entry point (trusted_prelude: a prompt's helpers such as HumanEval/32's `poly`) bound on the
  trusted side, and the entry point exported (so MBPP's `sum` is the program's `sum`). If the task's meta has "standalone_prefix" and the code
  itself defines `def <entry_point>(` at column 0 (a whole function rather than the body the
  prefix's open `def` line expects), the program is standalone_prefix + code + suffix instead.
  If meta has "case_tests" (a list of independent test sources, e.g. QuixBugs), each case is
  its own sandbox job with `timeout_s` as its limit, and the verdicts are merged by
  `aggregate_cases` (score = fraction of cases passed; per-case results in extra["cases"]).
  The program is first compiled here (compile() runs nothing), so a syntax error costs no
  sandbox job: status "syntax_error".
* output_prediction: the answer (see extract_answer) must be ONE Python literal; it is parsed
  here with ast.literal_eval (anything else: "syntax_error" if it does not parse, "failed" if it
  is not a literal or is over MAX_ANSWER_CHARS), re-written from the parsed value, and the
  sandbox checks `assert <entry_point>(<call_input>) == <value>` after the task's code.
  Nothing the model wrote reaches the sandbox as source.
* input_prediction: the answer is an argument list (`[1, 2], 3`), a call `f([1, 2], 3)`, or
  `assert f([1, 2], 3) == ...`; every argument must be a literal (keyword arguments allowed,
  `*`/`**` not), parsed and re-written the same way; the sandbox checks
  `assert <entry_point>(<arguments>) == <expected>`.
  With meta["form"] (the world's refactor tasks), the code must also meet that form
  (retainrl.verify.form: signature, no loops, ...; pure AST checks) or the verdict is "failed".
* compile: the assembled program (as for unit_tests) must compile; decided here, no sandbox.
* format: the stripped completion must fully match the regex meta["answer_format"] (at most
  MAX_FORMAT_CHARS); decided here. The regex is trusted (the task author's); the size limit
  bounds the cost of a slow pattern on a hostile completion.

Rewards: `Verdict.reward("binary" | "fraction")`.
"""

from __future__ import annotations

import ast
import math
import re
import warnings
from typing import Any, Iterable, Protocol, Sequence

from retainrl.data.task import Task
from retainrl.verify.form import form_problem
from retainrl.verify.verdict import Job, Verdict

MAX_ANSWER_CHARS = 10_000    # a prediction longer than this is rejected unparsed
MAX_PROGRAM_CHARS = 200_000  # compile here only below this; longer programs are rejected
MAX_FORMAT_CHARS = 10_000
MAX_DECIMAL_BITS = 4_000      # ints wider than this are written in hex (no digit limit)



class SandboxLike(Protocol):
    def run_tests_many(self, jobs: Sequence[Job], timeout_s: float | Sequence[float] = ...) -> list[Verdict]: ...


# ----------------------------------------------------------------------------- extraction

_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:^[ \t]*```|\Z)", re.S | re.M)
_PY_TAGS = ("python", "py", "python3")


def extract_code(completion: str) -> str:
    """The code in a completion.

    With Markdown fences (```), the body of the first block tagged python/py/python3, else of the
    first untagged block, else of the first block; an unclosed fence runs to the end. Without
    fences, the completion unchanged (a HumanEval-style body continuation keeps its indentation).
    """
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(completion)]
    if not blocks:
        return completion
    for wanted in (lambda tag: tag in _PY_TAGS, lambda tag: tag == "", lambda tag: True):
        for tag, body in blocks:
            if wanted(tag):
                return body
    return completion  # unreachable: the last rule accepts any block


def extract_answer(completion: str) -> str:
    """The answer part of a prediction: inside [ANSWER]...[/ANSWER] (CRUXEval's tags) if present,
    else inside the first code fence if any, else the whole completion; stripped."""
    start = completion.find("[ANSWER]")
    if start >= 0:
        body = completion[start + len("[ANSWER]"):]
        end = body.find("[/ANSWER]")
        return (body if end < 0 else body[:end]).strip()
    return extract_code(completion).strip()


# ----------------------------------------------------------------------------- literals

class Rejected(ValueError):
    """An answer decided without running anything; `status` is the Verdict status to give."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {getattr(e, 'msg', None) or e}"[:200]


def _try_parse(text: str) -> ast.expr | None:
    """An answer as an expression, or the test of `assert <expr>`; None if it is neither."""
    if len(text) > MAX_ANSWER_CHARS:
        raise Rejected("failed", f"answer longer than {MAX_ANSWER_CHARS} characters")
    text = text.strip()  # leading spaces would be an IndentationError
    for mode in ("eval", "exec"):
        try:
            tree = ast.parse(text, mode=mode)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        if mode == "eval":
            return tree.body
        if len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert):
            return tree.body[0].test
    return None


def _parse_expr_or_assert(text: str) -> ast.expr:
    """Like _try_parse, but an answer that is not one expression is Rejected."""
    node = _try_parse(text)
    if node is not None:
        return node
    try:
        ast.parse(text.strip(), mode="exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise Rejected("syntax_error", f"answer does not parse: {_short(e)}") from None
    raise Rejected("failed", "answer is not one expression")


def literal_value(node: ast.expr) -> Any:
    """ast.literal_eval of a parsed node, with every failure turned into Rejected('failed')."""
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError) as e:
        raise Rejected("failed", f"not a Python literal: {_short(e)}") from None


def literal_source(value: Any) -> str:
    """Python source that evaluates to `value` (data from ast.literal_eval).

    repr() except that inf and nan, which repr writes as bare names, become float('inf') etc.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({repr(value)!r})"
    if isinstance(value, complex) and not (math.isfinite(value.real) and math.isfinite(value.imag)):
        return f"complex({literal_source(value.real)}, {literal_source(value.imag)})"
    if isinstance(value, list):
        return "[" + ", ".join(map(literal_source, value)) + "]"
    if isinstance(value, tuple):
        inner = ", ".join(map(literal_source, value))
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, (set, frozenset)):
        inner = "{" + ", ".join(map(literal_source, value)) + "}" if value else "set()"
        return inner if isinstance(value, set) else f"frozenset({inner})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{literal_source(k)}: {literal_source(v)}" for k, v in value.items()) + "}"
    if type(value) is int and value.bit_length() > MAX_DECIMAL_BITS:
        return hex(value)  # repr would hit the int-to-str digit limit (ValueError)
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return repr(value)
    raise TypeError(f"not literal data: {type(value).__name__}")


def _is_call_to(node: ast.expr, fn: str) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == fn


def _eq_sides(node: ast.expr, fn: str) -> tuple[ast.expr, ast.expr] | None:
    """(call, value) if node is `fn(...) == value`, else None."""
    if (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq)
            and _is_call_to(node.left, fn)):
        return node.left, node.comparators[0]
    return None


def parse_output_prediction(answer: str, fn: str = "f") -> str:
    """Source of the predicted value: `answer` is a literal, or `[assert] fn(...) == literal`."""
    node = _parse_expr_or_assert(answer)
    sides = _eq_sides(node, fn)
    return literal_source(literal_value(sides[1] if sides else node))


def parse_input_prediction(answer: str, fn: str = "f") -> str:
    """Source of the predicted arguments: `answer` is `args`, `fn(args)` or `[assert] fn(args) == ...`."""
    node = _try_parse(answer)
    sides = _eq_sides(node, fn) if node is not None else None
    if sides:
        node = sides[0]
    elif node is None or not _is_call_to(node, fn):
        # A bare argument list: parse it as the arguments of a call. Text that closes the
        # parenthesis early ("1), g(2") gives a non-call and is refused below.
        node = _parse_expr_or_assert(f"{fn}({answer})")
    if not _is_call_to(node, fn):
        raise Rejected("failed", "answer is not an argument list")
    return _call_args_source(node)


def _call_args_source(call: ast.Call) -> str:
    parts = []
    for arg in call.args:
        if isinstance(arg, ast.Starred):
            raise Rejected("failed", "starred arguments are not allowed")
        parts.append(literal_source(literal_value(arg)))
    for kw in call.keywords:
        if kw.arg is None:
            raise Rejected("failed", "**kwargs are not allowed")
        parts.append(f"{kw.arg}={literal_source(literal_value(kw.value))}")
    return ", ".join(parts)


# ----------------------------------------------------------------------------- programs

def _defines(code: str, name: str) -> bool:
    return re.search(rf"^(async\s+)?def\s+{re.escape(name)}\s*\(", code, re.M) is not None


def assemble_program(task: Task, code: str) -> str:
    """program_prefix + code + program_suffix (see the module docstring for standalone_prefix)."""
    prefix = task.program_prefix
    standalone = task.meta.get("standalone_prefix")
    if standalone is not None and task.entry_point and _defines(code, task.entry_point):
        prefix = standalone
    suffix = task.program_suffix
    if suffix and not code.endswith("\n"):
        suffix = "\n" + suffix
    return prefix + code + suffix


def compile_error(program: str) -> str | None:
    """None if `program` compiles, else a short reason. Compiling runs none of the program."""
    if len(program) > MAX_PROGRAM_CHARS:
        return f"program longer than {MAX_PROGRAM_CHARS} characters"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarnings would go to our stderr
            compile(program, "<program>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as e:
        line = getattr(e, "lineno", None)
        return f"{type(e).__name__}: {getattr(e, 'msg', e)}" + (f" (line {line})" if line else "")
    return None


def trusted_prelude(prefix: str, entry_point: str | None) -> str:
    """The task's own definitions in `prefix` (imports, helpers, constants; not the entry point),
    as source for the trusted side: tests that use a prompt helper (HumanEval/32's `poly`,
    /38's `encode_cyclic`) get the task's, never the program's. "" when none or unparsable.

    The prefix may end inside the entry point's open `def` (a HumanEval prompt ends with its
    docstring, which parses; a bare signature line does not): then only the part before the
    last top-level `def`/`class` line is used.
    """
    if not prefix.strip():
        return ""
    tree = _parse_quietly(prefix)
    if tree is None:
        heads = list(re.finditer(r"^(async\s+def|def|class)\s", prefix, re.M))
        tree = _parse_quietly(prefix[:heads[-1].start()]) if heads else None
    if tree is None:
        return ""
    keep = [node for node in tree.body
            if isinstance(node, (ast.Import, ast.ImportFrom, ast.Assign, ast.AnnAssign))
            or (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name != entry_point)]
    return ast.unparse(ast.Module(body=keep, type_ignores=[])) + "\n" if keep else ""


def _parse_quietly(src: str) -> ast.Module | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(src)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _decided(status: str, details: str, units_total: int = 1) -> Verdict:
    passed = status == "passed"
    return Verdict(passed=passed, status=status, score=1.0 if passed else 0.0, details=details,
                   units_passed=int(passed), units_total=units_total)


# ----------------------------------------------------------------------------- jobs

def build_job(task: Task, completion: str) -> Job | Verdict:
    """The sandbox job (program, tests) for a completion, or a Verdict when decided here.

    For a task with meta["case_tests"], this is the all-cases-in-one job; verify_* run the cases
    separately (build_case_jobs).
    """
    if task.check == "unit_tests":
        program = assemble_program(task, extract_code(completion))
        error = compile_error(program)
        if error:
            return _decided("syntax_error", error, 0)
        problem = form_problem(extract_code(completion), task.meta["form"]) if task.meta.get("form") else None
        if problem:
            return _decided("failed", f"form: {problem}", 0)
        exports = (task.entry_point,) if task.entry_point else ()
        return Job(program, task.tests, trusted_prelude(task.program_prefix, task.entry_point), exports)
    if task.check in ("output_prediction", "input_prediction"):
        return _prediction_job(task, completion)
    if task.check == "compile":
        error = compile_error(assemble_program(task, extract_code(completion)))
        return _decided("syntax_error", error) if error else _decided("passed", "compiles")
    if task.check == "format":
        return _format_verdict(task, completion)
    raise ValueError(f"task {task.task_id!r}: unknown check {task.check!r}")


def _prediction_job(task: Task, completion: str) -> Job | Verdict:
    fn = task.entry_point or "f"
    answer = extract_answer(completion)
    try:
        if task.check == "output_prediction":
            assertion = f"assert {fn}({task.call_input}) == {parse_output_prediction(answer, fn)}\n"
        else:
            assertion = f"assert {fn}({parse_input_prediction(answer, fn)}) == {task.expected}\n"
    except Rejected as e:
        return _decided(e.status, str(e))
    return Job(task.tests, assertion, "", (fn,))


def _format_verdict(task: Task, completion: str) -> Verdict:
    pattern = task.meta.get("answer_format")
    if not isinstance(pattern, str):
        raise ValueError(f"task {task.task_id!r}: format check needs meta['answer_format']")
    text = completion.strip()
    if len(text) > MAX_FORMAT_CHARS:
        return _decided("failed", f"answer longer than {MAX_FORMAT_CHARS} characters")
    if re.fullmatch(pattern, text):
        return _decided("passed", "format matches")
    return _decided("failed", f"answer does not match {pattern!r}")


def build_case_jobs(task: Task, completion: str) -> list[Job] | Verdict:
    """One job per meta["case_tests"] entry (same program), or a Verdict decided here."""
    job = build_job(task, completion)
    if isinstance(job, Verdict):
        return job
    return [Job(job[0], case, job.trusted, job.exports) for case in task.meta["case_tests"]]


def _has_cases(task: Task) -> bool:
    return task.check == "unit_tests" and bool(task.meta.get("case_tests"))


def aggregate_cases(verdicts: Sequence[Verdict]) -> Verdict:
    """One Verdict from per-case verdicts: passed iff all passed; status of the first non-passed
    case; score = fraction of cases passed; cpu_s and wall_s summed (total verifier cost);
    extra["cases"] = [{"status", "score", "details"}, ...] in case order."""
    n = len(verdicts)
    k = sum(v.passed for v in verdicts)
    first_bad = next((i for i, v in enumerate(verdicts) if not v.passed), None)
    bad = verdicts[first_bad] if first_bad is not None else None
    return Verdict(
        passed=bad is None,
        status="passed" if bad is None else bad.status,
        score=k / n if n else 0.0,
        details="" if bad is None else f"{n - k}/{n} cases not passed; case {first_bad + 1}: {bad.status}: {bad.details}",
        stdout="" if bad is None else bad.stdout,
        cpu_s=sum(v.cpu_s for v in verdicts),
        wall_s=sum(v.wall_s for v in verdicts),
        units_passed=k,
        units_total=n,
        extra={"cases": [{"status": v.status, "score": v.score, "details": v.details} for v in verdicts]},
    )


# ----------------------------------------------------------------------------- verifying

def verify_completion(sandbox: SandboxLike, task: Task, completion: str) -> Verdict:
    """The Verdict for one completion (one sandbox batch; see verify_many)."""
    return verify_many(sandbox, [(task, completion)])[0]


def verify_many(sandbox: SandboxLike, pairs: Iterable[tuple[Task, str]]) -> list[Verdict]:
    """Verdicts for (task, completion) pairs, in order, from ONE run_tests_many call.

    Every job gets its task's timeout_s (per case for tasks with case_tests).
    """
    plans: list[Verdict | tuple[bool, list[Job], float]] = []
    for task, completion in pairs:
        per_case = _has_cases(task)
        try:
            jobs = build_case_jobs(task, completion) if per_case else build_job(task, completion)
        except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as e:
            # what reaches here is a task or answer the checks cannot handle; it still gets a
            # Verdict, never an exception in the middle of a batch
            plans.append(_decided("error", f"could not build the job: {type(e).__name__}: {e}"[:300], 0))
            continue
        if isinstance(jobs, Verdict):
            plans.append(jobs)
        else:
            plans.append((per_case, jobs if per_case else [jobs], task.timeout_s))
    flat = [job for p in plans if not isinstance(p, Verdict) for job in p[1]]
    limits = [p[2] for p in plans if not isinstance(p, Verdict) for _ in p[1]]
    results = iter(sandbox.run_tests_many(flat, timeout_s=limits) if flat else [])
    return [_collect(p, results) for p in plans]


def _collect(plan: Verdict | tuple[bool, list[Job], float], results) -> Verdict:
    if isinstance(plan, Verdict):
        return plan
    per_case, jobs, _ = plan
    verdicts = [next(results) for _ in jobs]
    return aggregate_cases(verdicts) if per_case else verdicts[0]
