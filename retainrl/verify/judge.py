"""The trusted side: run the tests in the worker, against a program in another process.

The tests (trusted text) are compiled here; only their asserts are rewritten, into calls of
a counter that records one unit per executed assert and never raises (so a failing assert
does not hide the next ones). Every top-level statement is one exec; a raising statement is
one failed unit.

The test namespace is built here, from trusted parts only:
  1. the trusted prelude (the task's own helper definitions, e.g. HumanEval/32's `poly`,
     compiled from the task text, never taken from the program);
  2. names the tests use that the program defines, as values the program sent: plain data
     decoded here into fresh objects of trusted types, modules by name (the worker's own copy
     of an already imported module), and everything else as a `Remote` handle. A name that is
     a builtin is taken from the program only when the task exports it (MBPP's `sum`);
  3. the real builtins.
A `Remote` answers calls and attribute reads by asking the program; it has no truth value,
no length, no iteration, no subscripting, and identity-only equality and hash, so a program
object can never decide a comparison or a truth test. A program iterator (`RemoteIter`) is
iterated in batches; its items are decoded data. Exceptions of the program become fresh
trusted exceptions (a builtin `Exception` subclass of the same name, else `ProgramError`;
never StopIteration, SystemExit or KeyboardInterrupt, so `all(map(f, xs))` cannot be ended
early by the program).

Trusted objects the tests pass to the program (their functions, lambdas, classes and objects,
a few pure builtins) travel by reference; the program may call them and read their public
attributes, through this judge (`serve`), never reach them directly.
"""

from __future__ import annotations

import ast
import builtins
import collections
import datetime
import decimal
import fractions
import math
import operator
import sys
import types
from dataclasses import dataclass

from retainrl.verify import wire
from retainrl.verify.wire import Malformed

TRUSTED_FILES = frozenset({"<tests>", "<prelude>"})
ASSERT_FN = "_rr_assert"
NEXT_BATCH = 256
MAX_FRACTION_BITS = 100_000
_BUILTIN_NAMES = frozenset(dir(builtins))
_PASSABLE_BUILTINS = frozenset(id(getattr(builtins, n)) for n in (
    "abs", "all", "any", "bool", "chr", "dict", "divmod", "float", "frozenset", "hash", "int", "len",
    "list", "max", "min", "ord", "pow", "repr", "round", "set", "sorted", "str", "sum", "tuple", "bytes",
))
_PASSABLE_MODULES = (math, operator)
# builtin classes travel by name (isinstance(x, int) in a program called with `int`)
_BUILTIN_TYPES = {c.__name__: c for c in (int, float, complex, str, bytes, bytearray, bool, list, tuple, dict,
                                          set, frozenset, object, type, range, slice)}
_EXCEPTIONS = {n: c for n, c in vars(builtins).items()
               if isinstance(c, type) and issubclass(c, Exception)
               and not issubclass(c, (StopIteration, StopAsyncIteration))}


class ProgramError(Exception):
    """The program raised an exception that has no trusted counterpart."""


class Abort(BaseException):
    """The job cannot go on (the program died or broke the protocol); `status` says how."""

    def __init__(self, status: str, details: str):
        super().__init__(details)
        self.status, self.details = status, details


# ------------------------------------------------------------------------------ test plans
@dataclass
class TestPlan:
    statements: list      # [(code, line)]
    prelude: object       # code of the trusted prelude, or None
    prelude_names: frozenset
    ask: list             # names whose program values the tests need
    exports: frozenset
    prefetch: list        # [(name, args, kwargs)]: literal calls sent with the program (batched IPC)


class TestSourceError(ValueError):
    """The trusted test source (or prelude) is not valid Python: a task bug, not a model failure."""


class _AssertRewriter(ast.NodeTransformer):
    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        test = self.visit(node.test)
        # The message is dropped: it is only for humans, and the unit is recorded either way.
        call = ast.Call(func=ast.Name(ASSERT_FN, ast.Load()), args=[test, ast.Constant(node.lineno)], keywords=[])
        return ast.copy_location(ast.Expr(value=call), node)


def _parse(src: str, what: str) -> ast.Module:
    try:
        return ast.parse(src, filename=f"<{what}>", mode="exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise TestSourceError(f"{what} source does not parse: {type(e).__name__}: {e}") from None


def _defined_names(tree: ast.Module) -> set[str]:
    out = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                out.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
    return out


def build_plan(tests: str, prelude: str = "", exports=()) -> TestPlan:
    if ASSERT_FN in tests:
        raise TestSourceError(f"test source uses the reserved name {ASSERT_FN}")
    tree = _parse(tests, "tests")
    pre_tree = _parse(prelude, "prelude") if prelude else None
    prelude_names = frozenset(_defined_names(pre_tree)) if pre_tree else frozenset()
    used = {n.id for t in (tree, pre_tree) if t is not None for n in ast.walk(t) if isinstance(n, ast.Name)}
    exports = frozenset(exports)
    ask = sorted((used | exports) - prelude_names - (_BUILTIN_NAMES - exports) - {ASSERT_FN})
    tree = _AssertRewriter().visit(tree)
    ast.fix_missing_locations(tree)
    statements = [(compile(ast.Module(body=[s], type_ignores=[]), "<tests>", "exec", dont_inherit=True),
                   getattr(s, "lineno", 0)) for s in tree.body]
    pre_code = compile(pre_tree, "<prelude>", "exec", dont_inherit=True) if pre_tree else None
    return TestPlan(statements, pre_code, prelude_names, ask, exports, prefetch_calls(tree, set(ask)))


def prefetch_calls(tree: ast.Module, program_names: set) -> list:
    """Calls the tests make to program functions, in source order, when EVERY such call has
    only literal arguments (else none): they are sent with the program and answered in one
    round trip; the tests then take each answer from that cache, in order, and anything not
    cached goes over the channel as usual. The program runs the calls in the tests' source
    order before the tests run, so a program whose answers depend on the order of its calls
    relative to other (non-literal) interaction would see a different order: only literal-
    only plans are prefetched, and a program cannot gain by it (its answers are answers).

    A parameter of a test function is an alias of a program name when every top-level call
    of that function passes that name in its place (HumanEval's check(candidate)).
    """
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    program_names = program_names - _defined_names(tree)
    alias: dict[str, dict[str, str]] = {}
    passed = set()  # ids of Name nodes that hand a program name to a test function
    for stmt in tree.body:
        call = stmt.value if isinstance(stmt, ast.Expr) else None
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in funcs:
            params = [a.arg for a in funcs[call.func.id].args.args]
            for p, a in zip(params, call.args):
                if isinstance(a, ast.Name) and a.id in program_names:
                    passed.add(id(a))
                    if alias.setdefault(call.func.id, {}).setdefault(p, a.id) != a.id:
                        return []
    out = []
    scopes = [(tree, {}, set())] + [(fn, alias.get(name, {}), {a.arg for a in ast.walk(fn.args) if isinstance(a, ast.arg)})
                                  for name, fn in funcs.items()]
    for scope, names, params in scopes:
        body = scope.body if scope is tree else scope.body
        for node in _walk_in_order(body, skip_functions=scope is tree):
            if not isinstance(node, ast.Name) or id(node) in passed:
                continue
            target = names.get(node.id) or (node.id if node.id in program_names and node.id not in params else None)
            if target is None:
                continue
            call = getattr(node, "_rr_call", None)
            if call is None:
                return []  # the program name is used other than as a callee: no prefetch
            try:
                args = [ast.literal_eval(a) for a in call.args]
                kwargs = [(k.arg, ast.literal_eval(k.value)) for k in call.keywords]
            except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
                return []
            if any(isinstance(a, ast.Starred) for a in call.args) or any(k is None for k, _ in kwargs):
                return []
            out.append((target, args, kwargs))
    return out if len(out) <= 2000 else []


def _walk_in_order(body, skip_functions: bool):
    """Nodes of `body` in source order; each callee Name is tagged with its Call (`_rr_call`).
    With skip_functions, the bodies of top-level function definitions are left out (they are
    walked as their own scope)."""
    stack = list(reversed(body))
    while stack:
        node = stack.pop()
        if skip_functions and isinstance(node, ast.FunctionDef) and node in body:
            continue
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            node.func._rr_call = node
        yield node
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


# ------------------------------------------------------------------------------ handles
class Remote:
    """A program object. See the module docstring for what it refuses."""

    __slots__ = ("_j", "_h", "_tname", "__weakref__")

    def __call__(self, *args, **kwargs):
        return self._j.call(self._h, args, kwargs)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._j.request({"op": "get", "h": self._h, "n": name})

    def __setattr__(self, name, value):
        if name in Remote.__slots__:
            object.__setattr__(self, name, value)
        elif name.startswith("__"):
            raise AttributeError(name)
        else:
            self._j.request({"op": "set", "h": self._h, "n": name, "v": self._j.enc(value)})

    def __bool__(self):
        raise TypeError(f"a program object ({self._tname}) has no truth value in the tests")

    # No equality of either kind: identity would make `assert f(x) != 0` pass for any object.
    def __eq__(self, other):
        raise TypeError(f"a program object ({self._tname}) cannot be compared in the tests")

    __ne__ = __eq__
    __hash__ = object.__hash__  # handles may still be looked up by identity (e.g. as dict keys)

    def __repr__(self):
        return f"<program {self._tname} #{self._h}>"

    __str__ = __repr__

    def __format__(self, spec):
        return repr(self)


class RemoteIter(Remote):
    """A program iterator; items come in batches and are decoded data."""

    __slots__ = ("_buf", "_done")

    def __setattr__(self, name, value):
        if name in ("_buf", "_done"):
            object.__setattr__(self, name, value)
        else:
            Remote.__setattr__(self, name, value)

    def __iter__(self):
        return self

    def __next__(self):
        if not self._buf:
            if self._done:
                raise StopIteration
            reply = self._j.raw({"op": "next", "h": self._h, "n": NEXT_BATCH})
            items = reply.get("r")
            if type(items) is not list:
                raise Abort("killed", "malformed iterator reply")
            self._buf = collections.deque(self._j.dec(v) for v in items)
            if "exc" in reply:
                self._buf.append(self._j.exception(reply["exc"]))
                self._done = True
            elif reply.get("end") is not False:
                self._done = True
            if not self._buf:
                raise StopIteration
        item = self._buf.popleft()
        if isinstance(item, BaseException) and not self._buf and self._done:
            raise item
        return item


class MatchData:
    """A program's re.Match, as read-only data: always true, group/groups/span/start/end."""

    __slots__ = ("string", "_groups", "_index")

    def __init__(self, string, groups, index):
        self.string, self._groups, self._index = string, groups, index

    def _i(self, g):
        return self._index[g] if type(g) is str else g

    def group(self, *gs):
        if not gs:
            gs = (0,)
        out = tuple(self._groups[self._i(g)][0] for g in gs)
        return out[0] if len(out) == 1 else out

    __getitem__ = group

    def groups(self, default=None):
        return tuple(default if g[0] is None else g[0] for g in self._groups[1:])

    def groupdict(self, default=None):
        return {k: (default if self._groups[i][0] is None else self._groups[i][0]) for k, i in self._index.items()}

    def span(self, g=0):
        return tuple(self._groups[self._i(g)][1:])

    def start(self, g=0):
        return self._groups[self._i(g)][1]

    def end(self, g=0):
        return self._groups[self._i(g)][2]

    def __bool__(self):
        return True

    def __repr__(self):
        return f"<match {self._groups[0][0]!r}>"


# ------------------------------------------------------------------------------ one job
_NT_CACHE: dict = {}
_VIEW_TYPES = {type({}.keys()): "keys", type({}.values()): "values", type({}.items()): "items"}


class JudgeJob:
    """The trusted side of one job: codec, handle tables, requests, serving call-backs."""

    def __init__(self, chan: wire.Channel):
        self.chan = chan
        chan.serve = self.serve
        self.remotes: dict[int, Remote] = {}
        self.tobjs: dict[int, object] = {}
        self.tids: dict[int, int] = {}
        self.dead: Abort | None = None
        self.cache: dict = {}
        self.in_callback = 0  # > 0 while the program is calling back a trusted function

    # -- requests ---------------------------------------------------------------------------
    def raw(self, req: dict) -> dict:
        if self.dead is not None:
            raise self.dead
        try:
            return self.chan.request(req)
        except wire.ChannelClosed:
            self.dead = Abort("killed", "the program process exited during the tests")
        except Malformed as e:
            self.dead = Abort("killed", f"malformed reply from the program: {e}")
        raise self.dead

    def request(self, req: dict):
        reply = self.raw(req)
        if "exc" in reply:
            raise self.exception(reply["exc"])
        if "r" not in reply:
            self._malformed("reply without a result")
        return self.dec(reply["r"])

    def cache_prefetched(self, calls, replies, names) -> None:
        """Keep the answers to the prefetched calls, by (handle, encoded arguments)."""
        self.cache: dict[str, collections.deque] = {}
        if not calls or replies is None:
            return
        if type(replies) is not list or len(replies) > len(calls) or type(names) is not dict:
            self._malformed("bad prefetch replies")
        for (name, a, k), reply in zip(calls, replies):
            h = names.get(name)
            if type(reply) is not dict or type(h) is not list or len(h) < 2 or h[0] != "h":
                continue
            key = wire.encode_message({"h": h[1], "a": a, "k": k})
            self.cache.setdefault(key, collections.deque()).append(reply)

    def call(self, h: int, args, kwargs):
        enc = self.enc
        req = {"op": "call", "h": h, "a": [enc(a) for a in args],
               "k": [[wire.check_str(k, 1000), enc(v)] for k, v in kwargs.items()]}
        hit = self.cache.get(wire.encode_message({"h": h, "a": req["a"], "k": req["k"]})) if self.cache else None
        reply = hit.popleft() if hit else self.raw(req)
        if "exc" in reply:
            raise self.exception(reply["exc"])
        if "r" not in reply:
            self._malformed("reply without a result")
        result = self.dec(reply["r"])
        for entry in reply.get("m", ()):
            self._write_back(args, entry)
        return result

    def _write_back(self, args, entry) -> None:
        """The program mutated a list/dict/set/bytearray argument: mirror it in ours."""
        if type(entry) is not list or len(entry) != 2:
            self._malformed("bad mutation entry")
        i = wire.check_int(entry[0], 0, len(args) - 1 if args else 0)
        if i >= len(args):
            return
        new, old = self.dec(entry[1]), args[i]
        t = type(old)
        if t is not type(new):
            return
        if t is list or t is bytearray:
            old[:] = new
        elif t is dict or t is set:
            old.clear()
            old.update(new)

    def exception(self, exc) -> BaseException:
        if type(exc) is not list or len(exc) != 2 or type(exc[0]) is not str or type(exc[1]) is not str:
            self._malformed("bad exception record")
        name, msg = exc[0][:100], exc[1][:300]
        cls = _EXCEPTIONS.get(name)
        if cls is None:
            return ProgramError(f"{name}: {msg}" if msg else name)
        try:
            return cls(msg)
        except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError needs 5 arguments
            return ProgramError(f"{name}: {msg}")

    def _malformed(self, why: str):
        self.dead = Abort("killed", f"malformed reply from the program: {why}")
        raise self.dead

    # -- decoding program values (hostile input: every shape checked) -------------------------
    def dec(self, x, d: int = 0):
        t = type(x)
        if t is str or t is int or t is float or t is bool or x is None:
            return x
        if t is not list or not x or type(x[0]) is not str or d > wire.MAX_DEPTH:
            self._malformed("not a tagged value")
        try:
            return self._dec_tagged(x[0], x, d + 1)
        except Abort:
            raise
        except (TypeError, ValueError, IndexError, KeyError, OverflowError, ArithmeticError,
                MemoryError, RecursionError, AttributeError) as e:
            self._malformed(f"bad {x[0]!r} value ({type(e).__name__})")

    def _dec_tagged(self, tag, x, d):
        dec = self.dec
        if tag == "l":
            return [dec(v, d) for v in x[1:]]
        if tag == "t":
            return tuple(dec(v, d) for v in x[1:])
        if tag == "h" or tag == "g":
            h = wire.check_int(x[1], 1, 2**62)
            r = self.remotes.get(h)
            if r is None:
                r = RemoteIter.__new__(RemoteIter) if tag == "g" else Remote.__new__(Remote)
                r._j, r._h = self, h
                r._tname = wire.check_str(x[3], 80) if tag == "h" and len(x) > 3 else "iterator"
                if tag == "g":
                    r._buf, r._done = collections.deque(), False
                self.remotes[h] = r
            return r
        if tag in ("d", "C", "OD", "dd"):
            if len(x) % 2 != 1:
                raise ValueError("odd mapping")
            pairs = [(dec(x[i], d), dec(x[i + 1], d)) for i in range(1, len(x), 2)]
            if tag == "d":
                return dict(pairs)
            if tag == "C":
                return collections.Counter(dict(pairs))
            if tag == "OD":
                return collections.OrderedDict(pairs)
            return collections.defaultdict(None, pairs)
        if tag == "s":
            return {dec(v, d) for v in x[1:]}
        if tag == "fs":
            return frozenset(dec(v, d) for v in x[1:])
        if tag == "I":
            return wire.big_int(x[1])
        if tag == "b":
            return wire.check_str(x[1]).encode("latin-1")
        if tag == "ba":
            return bytearray(wire.check_str(x[1]).encode("latin-1"))
        if tag == "c":
            return complex(_num(x[1]), _num(x[2]))
        if tag == "r":
            return range(_int(dec(x[1], d)), _int(dec(x[2], d)), _int(dec(x[3], d)))
        if tag == "sl":
            return slice(dec(x[1], d), dec(x[2], d), dec(x[3], d))
        if tag == "E":
            return Ellipsis
        if tag == "D":
            return decimal.Decimal(wire.check_str(x[1], 10_000))
        if tag == "F":
            num, den = _int(dec(x[1], d)), _int(dec(x[2], d))
            if max(num.bit_length(), den.bit_length()) > MAX_FRACTION_BITS:
                raise ValueError("fraction too large")  # its gcd would be quadratic in C
            return fractions.Fraction(num, den)
        if tag == "date":
            return datetime.date(*map(_int, x[1:4]))
        if tag == "dt":
            return datetime.datetime(*map(_int, x[1:8]), tzinfo=_tz(x[8]), fold=_int(x[9]))
        if tag == "tm":
            return datetime.time(*map(_int, x[1:5]), tzinfo=_tz(x[5]), fold=_int(x[6]))
        if tag == "td":
            return datetime.timedelta(days=_int(x[1]), seconds=_int(x[2]), microseconds=_int(x[3]))
        if tag == "dq":
            maxlen = x[1] if x[1] is None else _int(x[1])
            return collections.deque([dec(v, d) for v in x[2:]], maxlen)
        if tag == "nt":
            name, fields = wire.check_str(x[1], 200), x[2]
            if type(fields) is not list or not all(type(f) is str for f in fields):
                raise ValueError("bad namedtuple fields")
            key = (name, tuple(fields))
            cls = _NT_CACHE.get(key)
            if cls is None:
                cls = collections.namedtuple(name, fields, rename=True)
                if len(_NT_CACHE) < 1000 and len(fields) <= 64:  # bounded memory across jobs
                    _NT_CACHE[key] = cls
            return cls(*[dec(v, d) for v in x[3:]])
        if tag == "kv":
            items = [dec(v, d) for v in x[2:]]
            if x[1] == "keys":
                return dict.fromkeys(items).keys()
            if x[1] == "values":
                return dict(enumerate(items)).values()
            if x[1] == "items":
                return dict(items).items()
            raise ValueError("bad view")
        if tag == "M":
            groups = []
            for g in x[2]:
                s, a, b = dec(g[0], d), _int(g[1]), _int(g[2])
                if not (s is None or type(s) in (str, bytes)):
                    raise ValueError("bad group")
                groups.append((s, a, b))
            index = x[3]
            if type(index) is not dict or not all(type(v) is int and 0 < v < len(groups) for v in index.values()):
                raise ValueError("bad group index")
            if not groups:
                raise ValueError("no groups")
            return MatchData(dec(x[1], d), groups, dict(index))
        if tag == "B":
            return _BUILTIN_TYPES[wire.check_str(x[1], 20)]
        if tag == "T":
            tid = wire.check_int(x[1], 1, 2**62)
            if tid not in self.tobjs:
                raise ValueError("unknown trusted reference")
            return self.tobjs[tid]
        raise ValueError(f"unknown tag {tag!r}")

    # -- encoding trusted values for the program ---------------------------------------------
    def enc(self, x, d: int = 0):
        t = type(x)
        if t is str or t is bool or t is float or x is None:
            return x
        if t is int:
            return wire.int_tag(x)
        if d > wire.MAX_DEPTH:
            raise TypeError("value nested too deeply to pass to the program")
        d += 1
        e = self.enc
        if t is Remote or t is RemoteIter:
            if x._j is not self:
                raise TypeError("a handle from another job")
            return ["H", x._h]
        plain = wire.enc_plain(e, x, t, d)
        if plain is not None:
            return plain
        if isinstance(x, tuple) and type(getattr(t, "_fields", None)) is tuple and t.__module__ != "__tests__":
            return ["nt", t.__name__, list(t._fields), *[e(v, d) for v in x]]
        if t in _VIEW_TYPES:
            return ["kv", _VIEW_TYPES[t], *[e(v, d) for v in x]]
        if t is type and _BUILTIN_TYPES.get(x.__name__) is x:
            return ["B", x.__name__]
        if _passable(x):
            tid = self.tids.get(id(x))
            if tid is None:
                tid = len(self.tobjs) + 1
                self.tobjs[tid], self.tids[id(x)] = x, tid
            return ["T", tid]
        raise TypeError(f"cannot pass a {t.__name__} to the program")

    # -- the program calling back --------------------------------------------------------------
    def serve(self, msg: dict) -> dict:
        self.in_callback += 1
        try:
            return self._serve(msg)
        finally:
            self.in_callback -= 1

    def _serve(self, msg: dict) -> dict:
        try:
            op = msg.get("op")
            tid = wire.check_int(msg.get("t"), 1, 2**62)
            obj = self.tobjs.get(tid)
            if obj is None:
                raise Malformed("unknown trusted reference")
            if op == "tcall":
                args = msg.get("a")
                kw = msg.get("k")
                if type(args) is not list or type(kw) is not list:
                    raise Malformed("bad call")
                if not callable(obj):
                    raise TypeError("not callable")
                a = [self.dec(v) for v in args]
                k = {wire.check_str(p[0], 1000): self.dec(p[1]) for p in kw}
                return {"r": self.enc(obj(*a, **k))}
            if op in ("tget", "tset"):
                name = wire.check_str(msg.get("n"), 1000)
                if name.startswith("_") or not _is_test_defined(obj):
                    raise AttributeError(name)
                if op == "tget":
                    return {"r": self.enc(getattr(obj, name))}
                if isinstance(obj, (type, types.FunctionType, types.MethodType)):
                    raise AttributeError(f"cannot set {name} on a trusted class or function")
                value = self.dec(msg.get("v"))
                # data only: a callable (the program's, or one the tests passed it) or a name the
                # class defines (a method, a property) would make the tests run program code
                # where they call their own method (`acc.ok = lambda: True`, then `assert acc.ok()`)
                if callable(value) or hasattr(type(obj), name):
                    raise AttributeError(f"a program may set data attributes on a test object, not "
                                         f"{name!r} to a {'callable' if callable(value) else 'name its class defines'}")
                setattr(obj, name, value)
                return {"r": None}
            raise Malformed(f"unknown request {op!r}")
        except (Malformed, Abort):
            raise
        except Exception as e:  # noqa: BLE001 - trusted code raising is an answer too
            return {"exc": [type(e).__name__ if type(e).__module__ == "builtins" else "Exception", str(e)[:300]]}


def _is_test_defined(obj) -> bool:
    """A function, class or object that the tests or the trusted prelude define."""
    if isinstance(obj, types.FunctionType):
        return obj.__code__.co_filename in TRUSTED_FILES
    if isinstance(obj, types.MethodType):
        return _is_test_defined(obj.__func__)
    cls = obj if isinstance(obj, type) else type(obj)
    return cls.__module__ == "__tests__" and type(cls) is type


def _passable(x) -> bool:
    """Trusted objects the program may hold references to (and call back)."""
    if _is_test_defined(x):
        return True
    if id(x) in _PASSABLE_BUILTINS:
        return True
    if isinstance(x, types.BuiltinFunctionType) and any(x.__self__ is m for m in _PASSABLE_MODULES):
        return True
    # methods of str/bytes/int/... looked up on the type: `key=str.lower`
    return isinstance(x, (types.MethodDescriptorType, types.ClassMethodDescriptorType)) and \
        x.__objclass__ in (str, bytes, int, float, list, tuple, dict, set, frozenset)


def _int(v) -> int:
    if type(v) is not int:
        raise ValueError("expected an int")
    return v


def _num(v) -> float:
    if type(v) not in (int, float):
        raise ValueError("expected a number")
    return float(v)


def _tz(off):
    if off is None:
        return None
    return datetime.timezone(datetime.timedelta(seconds=_num(off)))


# ------------------------------------------------------------------------------ running tests
# A program's global that is a module stands, in the tests, for the worker's own copy of that
# module, and only under its own name (`import math` -> math; `import os as store` -> nothing):
# the program cannot choose which trusted module a name the tests use refers to.
_MODULE_DENY = frozenset({"retainrl", "__main__", "__mp_main__", "__program__"})


def bind_names(job: JudgeJob, plan: TestPlan, offered, ns: dict) -> None:
    """Put the program's values for the names the tests use into the test namespace."""
    if type(offered) is not dict:
        job._malformed("names reply is not a mapping")
    for name in plan.ask:
        if name not in offered:
            continue
        v = offered[name]
        if type(v) is list and v and v[0] == "mod":
            modname = wire.check_str(v[1] if len(v) > 1 else None, 200)
            mod = sys.modules.get(modname)
            if mod is not None and modname.split(".")[0] not in _MODULE_DENY \
                    and name in (modname, modname.rsplit(".", 1)[-1]):
                ns[name] = mod
            continue
        ns[name] = job.dec(v)


def run_tests(job: JudgeJob, plan: TestPlan, program: str, state) -> dict:
    """Define the program in its process (`program`: its code object, marshalled and base64
    encoded), then run the tests here. Returns the result record
    (status, details, units_passed, units_failed, statements_done). `state` is the worker's
    per-job state (deadline flag)."""
    counts = {"passed": 0, "failed": 0, "statements_done": 0}
    first_failure: list[str] = []

    def record(ok, line, why):
        counts["passed" if ok else "failed"] += 1
        if not ok and not first_failure:
            first_failure.append(why)

    def rr_assert(value, line):
        if job.in_callback:
            # an assert in a test function the program is calling back: a plain assert for
            # the program to see, not a unit (the program could call it any number of times)
            if not (value is True or (value is not False and bool(value))):
                raise AssertionError(f"assert on line {line} failed")
            return
        try:
            ok = value is True or (value is not False and bool(value))
        except Exception as e:  # noqa: BLE001 - e.g. the truth of a program object
            record(False, line, f"assert on line {line}: {type(e).__name__}: {e}"[:300])
            return
        record(ok, line, "" if ok else f"assert on line {line} failed")

    def result(status, details=""):
        return dict(counts, status=status, details=details, units_passed=counts["passed"],
                    units_failed=counts["failed"])

    ns = {"__builtins__": builtins, "__name__": "__tests__"}
    if plan.prelude is not None:
        try:
            exec(plan.prelude, ns)
        except Exception as e:  # noqa: BLE001 - a task bug; reported, never a pass
            return result("error", f"trusted prelude raised {type(e).__name__}: {e}"[:300])
    calls = [[name, [job.enc(a) for a in args], [[k, job.enc(v)] for k, v in kwargs]]
             for name, args, kwargs in plan.prefetch]
    reply = job.raw({"op": "def", "code": program, "names": plan.ask, "calls": calls})
    if "exc" in reply:
        exc = job.exception(reply["exc"])
        status = "oom" if isinstance(exc, MemoryError) else "error"
        return result(status, f"program raised {type(exc).__name__}: {exc}"[:300])
    bind_names(job, plan, reply.get("names"), ns)
    job.cache_prefetched(calls, reply.get("calls"), reply.get("names"))
    ns[ASSERT_FN] = rr_assert
    saw_oom = False
    for code, line in plan.statements:
        try:
            exec(code, ns)
            counts["statements_done"] += 1
        except (Abort, wire.Deadline):
            raise
        except MemoryError:
            saw_oom = True
            record(False, line, f"MemoryError in test statement at line {line}")
        except BaseException as e:  # noqa: BLE001 - a raising statement is one failed unit
            record(False, line, f"test statement at line {line} raised {type(e).__name__}: {e}"[:300])
        if job.dead is not None:  # a test swallowed the abort; the job still ends here
            raise job.dead
        if state.timed_out:
            raise wire.Deadline()
        if ns.get(ASSERT_FN) is not rr_assert:
            ns[ASSERT_FN] = rr_assert
    if counts["failed"] == 0 and counts["statements_done"] == len(plan.statements):
        return result("passed")
    return result("oom" if saw_oom else "failed", first_failure[0] if first_failure else "tests failed")
