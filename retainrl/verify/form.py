"""Form checks of a code answer: pure AST and text rules, nothing executed.

A task states its form in meta["form"] (the world's `refactor` skill); `form_problem` returns
the first rule the (untrusted) code breaks, or None. The rules:

    signature:        "def f(xs: list) -> int:": the code defines top-level `f` (the name in the
                      string) exactly once, with exactly these parameters, annotations and return
                      annotation (compared as ASTs, so spacing does not matter).
    no_loops:         true: no `for` or `while` statement anywhere (comprehensions are allowed).
    no_print:         true: no call to a name `print`.
    max_line_length:  an int: no line of the code is longer.

`retainrl.verify.checks` runs this after the compile check of a unit_tests task and before the
sandbox: a form violation is a verdict of status "failed".
"""

from __future__ import annotations

import ast

RULES = ("signature", "no_loops", "no_print", "max_line_length")


def _parse(code: str) -> ast.Module | None:
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _signature_parts(node: ast.FunctionDef) -> str:
    return ast.dump(node.args) + "|" + (ast.dump(node.returns) if node.returns is not None else "-")


def _required_def(signature: str) -> ast.FunctionDef:
    tree = _parse(signature.rstrip() + "\n    pass\n")
    if tree is None or len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef):
        raise ValueError(f"form signature {signature!r} is not a `def name(...):` line")
    return tree.body[0]


def form_problem(code: str, form: dict) -> str | None:
    """The first broken rule of `form` as a short reason, or None if the code meets every rule.

    Raises ValueError for a malformed form (the task author's error, not the answer's)."""
    unknown = sorted(set(form) - set(RULES))
    if unknown:
        raise ValueError(f"unknown form rules {unknown}; expected some of {RULES}")
    tree = _parse(code)
    if tree is None:
        return "code does not parse"
    if form.get("signature"):
        want = _required_def(form["signature"])
        defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == want.name]
        if len(defs) != 1:
            return f"expected one top-level `def {want.name}`, found {len(defs)}"
        if isinstance(defs[0], ast.AsyncFunctionDef) or _signature_parts(defs[0]) != _signature_parts(want):
            return f"signature is not `{form['signature']}`"
    if form.get("no_loops") and any(isinstance(n, (ast.For, ast.AsyncFor, ast.While)) for n in ast.walk(tree)):
        return "uses a for/while loop"
    if form.get("no_print") and any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"
                                    for n in ast.walk(tree)):
        return "calls print"
    limit = form.get("max_line_length")
    if limit is not None:
        longest = max((len(line) for line in code.split("\n")), default=0)
        if longest > int(limit):
            return f"a line is {longest} characters long (limit {int(limit)})"
    return None
