"""Rewrite trusted test source so untrusted values cannot fake a verdict.

Runs in the trusted worker before any untrusted code exists (pure `ast`, no execution).
The rewritten tests call four guard functions that the child harness defines
(see `retainrl.verify.harness.make_guards`):

    __rr_call(f, *a, **k)      a call whose value is *used* by the tests: the result must be
                               plain data (deep check), or the unit fails;
    __rr_call_arg(f, *a, **k)  a call whose value is only handed on as an argument of another
                               call (e.g. `max_chain([Pair(1, 2)], 4)`): returned as is;
    __rr_iter(x)               the iterable of a `for` loop or comprehension: materialised and
                               checked before the loop body sees any element;
    __rr_assert(value, line)   an `assert`: records one unit (pass iff the checked value is true)
                               and does not stop the test, so a score is a fraction of asserts;
    __rr_trust(fn)             registers a function or lambda that the tests define, so calls
                               to it count as trusted.

Both call guards also refuse to let a *trusted* callee (a builtin, the standard library, a
test-defined function) see an untrusted object as an argument: `abs(x)`, `len(x)`,
`math.isclose(x, y)`, `sorted(x)` would otherwise run the object's lying dunder methods.

Evaluation order is kept: `f(a, b)` becomes `__rr_call(f, a, b)`, which evaluates `f`, then
`a`, then `b`, exactly as before.
"""

from __future__ import annotations

import ast

GUARD_NAMES = ("__rr_call", "__rr_call_arg", "__rr_iter", "__rr_assert", "__rr_trust")


def _name(id_: str) -> ast.Name:
    return ast.Name(id=id_, ctx=ast.Load())


class _TestRewriter(ast.NodeTransformer):
    """AST pass; see the module docstring for what each node becomes."""

    def __init__(self):
        self.arg_position: set[int] = set()  # ids of Call nodes that are arguments of a call

    # --- calls -------------------------------------------------------------------------
    def _mark_args(self, node: ast.AST) -> None:
        """Mark calls that are arguments, directly or inside literal containers / starred."""
        if isinstance(node, ast.Call):
            self.arg_position.add(id(node))
        elif isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            for elt in node.elts:
                self._mark_args(elt)
        elif isinstance(node, ast.Dict):
            for v in node.values:
                self._mark_args(v)
            for k in node.keys:
                if k is not None:
                    self._mark_args(k)
        elif isinstance(node, ast.Starred):
            self._mark_args(node.value)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        for a in node.args:
            self._mark_args(a)
        for kw in node.keywords:
            self._mark_args(kw.value)
        is_arg = id(node) in self.arg_position
        node = self.generic_visit(node)
        guard = "__rr_call_arg" if is_arg else "__rr_call"
        new = ast.Call(func=_name(guard), args=[node.func, *node.args], keywords=node.keywords)
        return ast.copy_location(new, node)

    # --- iteration ---------------------------------------------------------------------
    def visit_For(self, node: ast.For) -> ast.AST:
        node = self.generic_visit(node)
        node.iter = ast.copy_location(ast.Call(func=_name("__rr_iter"), args=[node.iter], keywords=[]), node.iter)
        return node

    def visit_comprehension(self, node: ast.comprehension) -> ast.AST:
        node = self.generic_visit(node)
        node.iter = ast.copy_location(ast.Call(func=_name("__rr_iter"), args=[node.iter], keywords=[]), node.iter)
        return node

    # --- asserts -----------------------------------------------------------------------
    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        test = self.visit(node.test)
        # The message is dropped: evaluating it could run untrusted code after a failure.
        call = ast.Call(func=_name("__rr_assert"), args=[test, ast.Constant(node.lineno)], keywords=[])
        return ast.copy_location(ast.Expr(value=call), node)

    # --- trust registration for test-defined callables ---------------------------------
    def _register_after(self, node: ast.AST, name: str) -> list[ast.AST]:
        reg = ast.Expr(value=ast.Call(func=_name("__rr_trust"), args=[_name(name)], keywords=[]))
        return [node, ast.copy_location(reg, node)]

    def visit_FunctionDef(self, node: ast.FunctionDef):
        node = self.generic_visit(node)
        return self._register_after(node, node.name)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef):
        node = self.generic_visit(node)
        return self._register_after(node, node.name)

    def visit_ClassDef(self, node: ast.ClassDef):
        node = self.generic_visit(node)
        return self._register_after(node, node.name)

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        node = self.generic_visit(node)
        return ast.copy_location(ast.Call(func=_name("__rr_trust"), args=[node], keywords=[]), node)


class TestSourceError(ValueError):
    """The trusted test source itself is not valid Python (a task bug, not a model failure)."""


def referenced_modules(tree: ast.AST) -> frozenset[str]:
    """Names the tests import or use as attribute bases (candidates for cheap restoring)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            names.add(node.value.id)
    return frozenset(names)


def rewrite_tests(tests: str) -> tuple[list[tuple[object, int]], int, frozenset[str]]:
    """Parse and rewrite test source.

    Returns ([(code object, line) for each top-level statement], number of statements,
    names of modules the tests reference).
    Each top-level statement is compiled separately so that one failing statement counts as
    one failed unit and the next statement still runs.
    """
    try:
        tree = ast.parse(tests, filename="<tests>", mode="exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise TestSourceError(f"test source does not parse: {type(e).__name__}: {e}") from None
    for name in GUARD_NAMES:
        if name in tests:
            raise TestSourceError(f"test source uses the reserved name {name}")
    modules = referenced_modules(tree)
    tree = _TestRewriter().visit(tree)
    ast.fix_missing_locations(tree)
    statements = []
    for stmt in tree.body:
        module = ast.Module(body=[stmt], type_ignores=[])
        statements.append((compile(module, "<tests>", "exec"), getattr(stmt, "lineno", 0)))
    return statements, len(statements), modules
