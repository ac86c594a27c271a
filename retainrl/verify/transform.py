"""Rewrite trusted test source so untrusted values cannot fake a verdict.

Runs in the trusted worker before any untrusted code exists (pure `ast`, no execution).

The rule is *validate at use*. A value made by program code may flow freely through the
tests (assigned to names, passed back into program functions: `root = Node(1)`,
`max_height(root)`), but wherever trusted code would make a decision with it, it must first
be plain data (see harness.make_guards: `_rr_v`): the operands of comparisons, arithmetic,
unary and boolean operators, truth tests (assert, if, while, conditional expressions,
comprehension filters), the object and index of a subscript, values formatted into f-strings, and every argument of a trusted callee (a builtin or standard-library function,
which would otherwise run the object's lying dunder methods: abs, len, sorted, math.isclose).
Iterables of `for` loops and comprehensions are materialised and checked element by element.

The guards (names start with `_rr_`; a single underscore so class bodies do not mangle them):
    _rr_call(f, *a, **k)   every call: trusted callee -> arguments checked; program callee -> run
                           as is, then monkeypatching undone
    _rr_v(x)               check x is plain data (the use sites above), return it
    _rr_iter(x)            a loop's iterable, materialised and checked
    _rr_assert(x, line)    an assert: one unit, pass iff the checked value is true; never raises
    _rr_trust(fn)          registers a function, lambda or class the tests define

Attribute reads and method calls on program objects are allowed (`root.left`, `s.push(3)`):
that is the program answering through its own interface (duck typing), and what comes back
is checked where it is used, like any program value.

Evaluation order is kept: `f(a, b)` becomes `_rr_call(f, a, b)`, which evaluates f, then a,
then b, as before.
"""

from __future__ import annotations

import ast

GUARD_NAMES = ("_rr_call", "_rr_v", "_rr_iter", "_rr_assert", "_rr_trust")


def _name(id_: str) -> ast.Name:
    return ast.Name(id=id_, ctx=ast.Load())


def _wrap(guard: str, node: ast.expr, *extra: ast.expr) -> ast.expr:
    return ast.copy_location(ast.Call(func=_name(guard), args=[node, *extra], keywords=[]), node)


class _TestRewriter(ast.NodeTransformer):
    """AST pass; see the module docstring for what each node becomes."""

    # --- calls -------------------------------------------------------------------------
    def visit_Call(self, node: ast.Call) -> ast.AST:
        # A method call does not "use" its object: obj.m() runs obj's own (maybe program) code,
        # which _rr_call treats as untrusted when the bound method is not a trusted one.
        if isinstance(node.func, ast.Attribute):
            node.func.value = self.visit(node.func.value)
        else:
            node.func = self.visit(node.func)
        node.args = [self.visit(a) for a in node.args]
        for kw in node.keywords:
            kw.value = self.visit(kw.value)
        new = ast.Call(func=_name("_rr_call"), args=[node.func, *node.args], keywords=node.keywords)
        return ast.copy_location(new, node)

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        node = self.generic_visit(node)
        if isinstance(node.ctx, ast.Load):
            node.value = _wrap("_rr_v", node.value)
            node.slice = _wrap("_rr_v", node.slice) if not isinstance(node.slice, ast.Slice) else node.slice
        return node

    # --- operators -----------------------------------------------------------------------
    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        node = self.generic_visit(node)
        node.left = _wrap("_rr_v", node.left)
        node.comparators = [_wrap("_rr_v", c) for c in node.comparators]
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        node = self.generic_visit(node)
        node.left, node.right = _wrap("_rr_v", node.left), _wrap("_rr_v", node.right)
        return node

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        node = self.generic_visit(node)
        node.operand = _wrap("_rr_v", node.operand)
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        node = self.generic_visit(node)
        node.values = [_wrap("_rr_v", v) for v in node.values]
        return node

    def visit_IfExp(self, node: ast.IfExp) -> ast.AST:
        node = self.generic_visit(node)
        node.test = _wrap("_rr_v", node.test)
        return node

    def visit_FormattedValue(self, node: ast.FormattedValue) -> ast.AST:
        node = self.generic_visit(node)
        node.value = _wrap("_rr_v", node.value)
        return node

    def visit_If(self, node: ast.If) -> ast.AST:
        node = self.generic_visit(node)
        node.test = _wrap("_rr_v", node.test)
        return node

    def visit_While(self, node: ast.While) -> ast.AST:
        node = self.generic_visit(node)
        node.test = _wrap("_rr_v", node.test)
        return node

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        node = self.generic_visit(node)
        node.value = _wrap("_rr_v", node.value)
        return node

    # --- iteration ---------------------------------------------------------------------
    def visit_For(self, node: ast.For) -> ast.AST:
        node = self.generic_visit(node)
        node.iter = _wrap("_rr_iter", node.iter)
        return node

    def visit_comprehension(self, node: ast.comprehension) -> ast.AST:
        node = self.generic_visit(node)
        node.iter = _wrap("_rr_iter", node.iter)
        node.ifs = [_wrap("_rr_v", c) for c in node.ifs]
        return node

    # --- asserts -----------------------------------------------------------------------
    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        test = self.visit(node.test)
        # The message is dropped: evaluating it could run untrusted code after a failure.
        call = ast.Call(func=_name("_rr_assert"), args=[test, ast.Constant(node.lineno)], keywords=[])
        return ast.copy_location(ast.Expr(value=call), node)

    # --- trust registration for test-defined callables ---------------------------------
    def _register_after(self, node: ast.AST, name: str) -> list[ast.AST]:
        reg = ast.Expr(value=ast.Call(func=_name("_rr_trust"), args=[_name(name)], keywords=[]))
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
        return _wrap("_rr_trust", node)


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
    names of modules the tests reference). Each top-level statement is compiled separately,
    so one failing statement counts as one failed unit and the next one still runs.
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
