"""World functions: sample a chain of operations, render it as Python, run it, break it.

Everything here is trusted code generated from `ops.OPS`; it runs in-process (never a model's
output). The one way a generated function could blow up is a huge `range`, so functions run
with a `range` that refuses more than `MAX_RANGE` items, and the generator throws away inputs
that raise or whose output is long. Randomness comes only from the `random.Random` passed in.
"""

from __future__ import annotations

import ast
import builtins
import copy
import io
import random
import re
import tokenize
from dataclasses import dataclass

from retainrl.data.world.ops import LETTERS, OPS, VAR, Op

MAX_RANGE = 1000        # most items a generated function may ask of range() while we make tests
MAX_LITERAL = 32        # longest repr of an input or output used in a test
START_TYPES = (("list", 5), ("int", 2), ("str", 3))   # weights for a function's argument type


@dataclass(frozen=True)
class Level:
    """What one difficulty setting means."""

    ops: tuple[int, int]       # number of operations in a function, inclusive range
    list_len: tuple[int, int]  # length of input lists
    values: tuple[int, int]    # list items and integer inputs
    words: tuple[int, int]     # words in an input string
    word_len: tuple[int, int]  # letters per word


LEVELS = {
    1: Level(ops=(1, 2), list_len=(2, 4), values=(0, 9), words=(1, 2), word_len=(2, 4)),
    2: Level(ops=(1, 3), list_len=(2, 5), values=(0, 12), words=(1, 3), word_len=(2, 5)),
    3: Level(ops=(2, 3), list_len=(3, 6), values=(-3, 15), words=(1, 3), word_len=(2, 6)),
    4: Level(ops=(3, 4), list_len=(3, 7), values=(-5, 20), words=(2, 3), word_len=(3, 6)),
}


@dataclass(frozen=True)
class Step:
    """One operation of a chain with its constants filled in."""

    op: Op
    params: tuple[tuple[str, object], ...] = ()

    def fill(self, text: str, out: str = "") -> str:
        return text.format(out=out, **dict(self.params))


# ----------------------------------------------------------------------------- sampling

def _weighted(rng: random.Random, pairs) -> str:
    names, weights = zip(*pairs)
    return rng.choices(names, weights=weights)[0]


def sample_shape(rng: random.Random, level: Level) -> tuple[int, str]:
    """(number of operations, argument type): the first two draws of a chain."""
    return rng.randint(*level.ops), _weighted(rng, START_TYPES)


def sample_chain(rng: random.Random, level: Level, shape: tuple[int, str] | None = None) -> list[Step]:
    """A random chain of operations; intermediate values are never bool.

    `shape` fixes (number of operations, argument type) instead of drawing them first.
    """
    n_ops, typ = sample_shape(rng, level) if shape is None else shape
    chain: list[Step] = []
    for i in range(n_ops):
        last = i == n_ops - 1
        prev = chain[-1].op.name if chain else None
        options = [op for op in OPS if op.src == typ and op.name != prev and (last or op.dst != "bool")]
        op = rng.choice(options)
        params: list[tuple[str, object]] = []
        if op.ks:
            params.append(("k", rng.choice(op.ks)))
        if op.letters:
            c, d = rng.sample(LETTERS, 2)
            params += [("c", c), ("d", d)][: op.letters]
        chain.append(Step(op, tuple(params)))
        typ = op.dst
    return chain


def sample_input(rng: random.Random, typ: str, level: Level):
    """One argument value of type `typ`."""
    if typ == "list":
        return [rng.randint(*level.values) for _ in range(rng.randint(*level.list_len))]
    if typ == "int":
        return rng.randint(max(0, level.values[0]), level.values[1])
    words = ("".join(rng.choice(LETTERS) for _ in range(rng.randint(*level.word_len)))
             for _ in range(rng.randint(*level.words)))
    return " ".join(words)


# ----------------------------------------------------------------------------- rendering

def render(chain: list[Step], loops: bool = False) -> str:
    """The Python source of `def f(...)` for a chain, ending in a newline. loops=True writes every
    single-generator list comprehension as an explicit loop (the verbose "before" of a refactor
    task)."""
    lines = [f"def f({VAR[chain[0].op.src]}):"]
    for i, step in enumerate(chain):
        last = i == len(chain) - 1
        out = VAR.get(step.op.dst, "")
        code = step.fill(step.op.code, out)
        loop = _loop_lines(code, out, last) if loops and not step.op.stmt else None
        if loop is not None:
            lines += ["    " + line for line in loop]
        elif step.op.stmt:
            lines += ["    " + line for line in code.split("\n")]
            if last:
                lines.append(f"    return {out}")
        else:
            lines.append(f"    return {code}" if last else f"    {out} = {code}")
    return "\n".join(lines) + "\n"


def spec(chain: list[Step], rng: random.Random) -> str:
    """The English description of a chain: one drawn phrase per step, joined by 'then'."""
    text = ", then ".join(step.fill(rng.choice(step.op.phrases)) for step in chain)
    return text[0].upper() + text[1:] + "."


def signature(chain: list[Step]) -> str:
    return f"def f({VAR[chain[0].op.src]}):"


def return_signature(chain: list[Step]) -> str:
    """`def f(xs) -> int:`: the signature with the result's type hint only (world v3's gen stub)."""
    return f"def f({VAR[chain[0].op.src]}) -> {chain[-1].op.dst}:"


def typed_signature(chain: list[Step]) -> str:
    """`def f(xs: list) -> int:`: the signature with the argument's and the result's type hints."""
    src, dst = chain[0].op.src, chain[-1].op.dst
    return f"def f({VAR[src]}: {src}) -> {dst}:"


def shape_of(chain: list[Step]) -> str:
    """The stratum a function is drawn from: operations and types, e.g. `2:list->int`."""
    return f"{len(chain)}:{chain[0].op.src}->{chain[-1].op.dst}"


def _loop_lines(code: str, out: str, last: bool) -> list[str] | None:
    """A single-generator list comprehension written as a for loop that appends, or None."""
    try:
        node = ast.parse(code, mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(node, ast.ListComp) or len(node.generators) != 1 or len(node.generators[0].ifs) > 1:
        return None
    gen = node.generators[0]
    lines = ["ys = []", f"for {ast.unparse(gen.target)} in {ast.unparse(gen.iter)}:"]
    if gen.ifs:
        lines += [f"    if {ast.unparse(gen.ifs[0])}:", f"        ys.append({ast.unparse(node.elt)})"]
    else:
        lines.append(f"    ys.append({ast.unparse(node.elt)})")
    return lines + (["return ys"] if last else [f"{out} = ys"])


# ----------------------------------------------------------------------------- running

def _guarded_range(*args):
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise OverflowError("range too large for a world test")
    return r


def compile_function(src: str):
    """Define `f` from trusted generated source; returns the function or None if it does not compile."""
    namespace = {"__builtins__": builtins, "range": _guarded_range}
    try:
        exec(compile(src, "<world>", "exec"), namespace)
    except Exception:  # noqa: BLE001 - a mutation may not compile; that is an answer, not an error
        return None
    return namespace.get("f")


def call(fn, arg):
    """(ok, value) of fn(arg) on a private copy of arg."""
    try:
        return True, fn(copy.deepcopy(arg))
    except Exception:  # noqa: BLE001
        return False, None


def make_cases(fn, typ: str, rng: random.Random, level: Level, n: int, tries: int = 40):
    """Up to n (input, output) pairs with distinct inputs, on which fn runs and both sides are short.

    Returns None if fewer than max(3, n - 1) were found or all outputs are equal (a degenerate
    function tells a verifier nothing).
    """
    cases, seen = [], set()
    for _ in range(tries):
        if len(cases) == n:
            break
        arg = sample_input(rng, typ, level)
        key = repr(arg)
        if key in seen or len(key) > MAX_LITERAL:
            continue
        seen.add(key)
        ok, out = call(fn, arg)
        if ok and out is not None and len(repr(out)) <= MAX_LITERAL:
            cases.append((arg, out))
    if len(cases) < max(3, n - 1) or len({repr(out) for _, out in cases}) < 2:
        return None
    return cases


def failing_cases(src: str, cases) -> list[int]:
    """Indices of the cases on which the function in `src` does not return the expected value."""
    fn = compile_function(src)
    if fn is None:
        return list(range(len(cases)))
    bad = []
    for i, (arg, out) in enumerate(cases):
        ok, got = call(fn, arg)
        if not ok or type(got) is not type(out) or got != out:
            bad.append(i)
    return bad


# ----------------------------------------------------------------------------- bugs

ARITH_SWAPS = {"+": ("-",), "-": ("+",), "*": ("+", "//"), "//": ("%", "*"), "%": ("//",),
               "+=": ("-=",), "*=": ("+=",)}
CMP_SWAPS = {">": (">=", "<"), "<": ("<=", ">"), ">=": (">",), "<=": ("<",), "==": ("!=",), "!=": ("==",)}
NAME_SWAPS = {"max": ("min",), "min": ("max",), "sum": ("len",), "len": ("sum",), "upper": ("lower",),
              "startswith": ("endswith",), "any": ("all",), "all": ("any",), "True": ("False",)}
BUG_TYPES = ("wrong_operator", "wrong_comparison", "off_by_one", "wrong_constant", "swapped_arguments",
             "wrong_builtin")


def _tokens(src: str):
    return [t for t in tokenize.generate_tokens(io.StringIO(src).readline)
            if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                              tokenize.ENDMARKER, tokenize.COMMENT)]


def _offsets(src: str) -> list[int]:
    starts, pos = [0], 0
    for line in src.split("\n"):
        pos += len(line) + 1
        starts.append(pos)
    return starts


def bug_candidates(src: str) -> list[tuple[str, str]]:
    """Every single-site mutation of `src` as (bug_type, mutated source), in source order."""
    toks = _tokens(src)
    starts = _offsets(src)
    span = lambda t: (starts[t.start[0] - 1] + t.start[1], starts[t.end[0] - 1] + t.end[1])  # noqa: E731
    out: list[tuple[str, str]] = []

    def put(kind, a, b, text):
        out.append((kind, src[:a] + text + src[b:]))

    for i, t in enumerate(toks):
        prev = toks[i - 1] if i else None
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        a, b = span(t)
        unary = prev is None or (prev.type == tokenize.OP and prev.string not in ")]")
        if t.type == tokenize.OP and t.string in ARITH_SWAPS and not (unary and t.string == "-"):
            for rep in ARITH_SWAPS[t.string]:
                put("wrong_operator", a, b, rep)
        elif t.type == tokenize.OP and t.string in CMP_SWAPS:
            for rep in CMP_SWAPS[t.string]:
                put("wrong_comparison", a, b, rep)
        elif t.type == tokenize.NUMBER:
            v = int(t.string)
            before = toks[i - 2] if i >= 2 else None
            neg_index = prev is not None and prev.string == "-" and before is not None and before.string == "["
            subscript = (prev is not None and prev.string == "[" and nxt is not None and nxt.string == "]"
                         and before is not None and (before.type == tokenize.NAME or before.string in ")]"))
            in_slice = (prev is not None and prev.string == ":") or (nxt is not None and nxt.string == ":")
            in_index = neg_index or subscript or in_slice
            if in_index:
                for rep in (v + 1, v - 1):
                    if rep >= 0:
                        put("off_by_one", a, b, str(rep))
            elif not (prev is not None and prev.string == "def"):
                for rep in (v + 1, v - 1, v + 2):
                    if rep >= 0 and rep != v:
                        put("wrong_constant", a, b, str(rep))
        elif t.type == tokenize.NAME and t.string in NAME_SWAPS and not (prev and prev.string == "def"):
            for rep in NAME_SWAPS[t.string]:
                put("wrong_builtin", a, b, rep)
        # swapped operands of a non-commutative binary operator: `n - 5` -> `5 - n`
        if (t.type == tokenize.OP and t.string in ("-", "//", "%") and prev is not None and nxt is not None
                and prev.type in (tokenize.NAME, tokenize.NUMBER) and nxt.type in (tokenize.NAME, tokenize.NUMBER)
                and prev.string not in ("in", "if", "return", "else") and nxt.string not in ("in", "for")):
            after = toks[i + 2] if i + 2 < len(toks) else None
            before = toks[i - 2] if i >= 2 else None
            if (after is None or after.string not in ("(", "[", ".")) and (before is None or before.string != "."):
                pa, pb = span(prev)
                na, nb = span(nxt)
                out.append(("swapped_arguments", src[:pa] + nxt.string + src[pb:na] + prev.string + src[nb:]))
        # swapped string arguments: s.replace('a', 'o') -> s.replace('o', 'a')
        if (t.type == tokenize.STRING and nxt is not None and nxt.string == ","
                and i + 2 < len(toks) and toks[i + 2].type == tokenize.STRING):
            other = toks[i + 2]
            pa, pb = span(t)
            na, nb = span(other)
            out.append(("swapped_arguments", src[:pa] + other.string + src[pb:na] + t.string + src[nb:]))
    # swapped loop targets and off-by-one ranges, found textually
    for m in re.finditer(r"for (\w+), (\w+) in", src):
        out.append(("swapped_arguments", src[:m.start()] + f"for {m.group(2)}, {m.group(1)} in" + src[m.end():]))
    for m in re.finditer(r"range\((\w+)\)", src):
        for rep in (f"range({m.group(1)} + 1)", f"range(1, {m.group(1)})"):
            out.append(("off_by_one", src[:m.start()] + rep + src[m.end():]))
    for m in re.finditer(r"enumerate\((\w+)\)", src):
        out.append(("off_by_one", src[:m.start()] + f"enumerate({m.group(1)}, 1)" + src[m.end():]))
    return [(kind, s) for kind, s in out if s != src]


def inject_bug(src: str, cases, rng: random.Random):
    """(bug_type, buggy source, failing case indices) for one drawn bug that fails some case, or None.

    The bug type is drawn first (uniformly among the types this function admits), then a site.
    """
    by_type: dict[str, list[str]] = {}
    for kind, mutated in bug_candidates(src):
        by_type.setdefault(kind, []).append(mutated)
    kinds = [k for k in BUG_TYPES if k in by_type]
    rng.shuffle(kinds)
    for kind in kinds:
        options = by_type[kind][:]
        rng.shuffle(options)
        for mutated in options:
            bad = failing_cases(mutated, cases)
            if bad:
                return kind, mutated, bad
    return None

