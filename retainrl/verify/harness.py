"""What runs inside the forked child: define the program, run the rewritten tests, report.

Trust model. The program (model output) is hostile; the tests and this harness are trusted.
Both run in one process (the child), so the harness cannot rely on anything the program can
reach. It relies on four things:

1. An audit hook (PEP 578), installed before the program runs and impossible to remove from
   Python, refuses: frame access (`sys._getframe`, `tb_frame`, `gi_frame`, `__code__`, ...),
   `gc` object walking, tracing/profiling hooks, changing attributes of any class or function
   that existed before the program ran, process creation, signals to other processes,
   sockets, ctypes and a few native modules, writes outside the job's temp directory, and
   reading `/proc/<pid>/mem`. Without frames or `gc` the program cannot find the harness's
   locals (the nonce, the unit counts) or the test namespace.
2. The tests run in their own namespace (a copy of the program's globals plus the guards), so
   the program's functions, whose globals are the program's namespace, cannot rebind the
   guards; the builtins and the pre-imported modules are restored from a snapshot after every
   untrusted call, undoing monkeypatching.
3. The guards (see `retainrl.verify.transform`) check that every value the tests use is plain
   data and that no trusted callee (builtin, stdlib) runs a dunder method of an untrusted
   object; comparisons are then between plain data, whose methods the program cannot change.
4. The verdict leaves the child as one JSON record carrying a per-job random nonce that only
   the harness's locals hold; the worker rejects anything else (exit codes, printed markers,
   writes to the pipe, early exits all give "not passed").
"""

from __future__ import annotations

import builtins
import io
import json
import os
import sys
import types

# Types whose instances are inert data: comparing, hashing, iterating them runs no program code.
_PLAIN_SCALARS = (type(None), bool, int, float, complex, str, bytes, range, slice,
                  type(Ellipsis), type(NotImplemented))
_PLAIN_SEQUENCES = (list, tuple, set, frozenset, bytearray)
_PLAIN_MAPPINGS = (dict,)
_STDLIB_VALUE_TYPES = (
    ("collections", ("deque",), ("Counter", "OrderedDict", "defaultdict")),
    ("decimal", ("Decimal",), ()),
    ("fractions", ("Fraction",), ()),
    ("datetime", ("date", "datetime", "time", "timedelta", "timezone"), ()),
)
JUDGING_BUILTINS = frozenset({
    "abs", "all", "any", "bool", "callable", "dict", "enumerate", "float", "frozenset", "getattr", "hasattr",
    "hash", "id", "int", "isinstance", "issubclass", "iter", "len", "list", "map", "next", "object", "print",
    "range", "repr", "reversed", "round", "set", "sorted", "str", "tuple", "type", "zip", "eval", "exec",
    "compile", "open", "super", "vars", "globals", "locals", "min", "max",
})
MAX_ELEMENTS = 1_000_000  # deep checks and materialised iterators stop here (a failed unit)
MAX_DEPTH = 200


class UntrustedValue(Exception):
    """A value the tests were about to use is not plain data (fails the unit)."""


class SandboxViolation(PermissionError, ValueError):
    """Raised by the audit hook. PermissionError for file/process denials; ValueError so that
    stdlib code that probes frames (namedtuple, enum, typing) degrades gracefully."""


def value_types() -> tuple[frozenset, frozenset]:
    """(sequence-like types, mapping-like types) allowed as data, from the loaded stdlib."""
    seqs, maps = set(_PLAIN_SEQUENCES), set(_PLAIN_MAPPINGS)
    for modname, seq_names, map_names in _STDLIB_VALUE_TYPES:
        mod = sys.modules.get(modname)
        if mod is None:
            continue
        for n in seq_names:
            seqs.add(getattr(mod, n))
        for n in map_names:
            maps.add(getattr(mod, n))
    seqs |= {type({}.keys()), type({}.values())}
    maps |= {type({}.items())}  # iterated as pairs below
    return frozenset(seqs), frozenset(maps)


def thread_counter():
    """A function returning the number of OS threads of this process (program threads included,
    also those started through _thread directly)."""
    import time as _time

    listdir, sleep = os.listdir, _time.sleep
    if os.path.isdir("/proc/self/task"):
        def count() -> int:
            n = len(listdir("/proc/self/task"))
            for _ in range(20):  # a joined thread's OS task takes a moment to disappear
                if n <= 1:
                    break
                sleep(0.002)
                n = len(listdir("/proc/self/task"))
            return n
        return count
    import threading

    return threading.active_count


def make_guards(trusted_ids: frozenset, preexisting_type_ids: frozenset, restore, record_unit):
    """Build the guard functions used by rewritten tests (see transform.py).

    All builtins they use are bound here, so the program cannot swap them later.
    trusted_ids: ids of callables and modules that existed before the program ran.
    restore: undoes monkeypatching of builtins and pre-imported modules.
    record_unit(ok: bool, line: int, why: str): the harness's unit counter.
    """
    _type, _id, _len, _iter, _hasattr, _bool = type, id, len, iter, hasattr, bool
    _dict_items = dict.items
    seq_types, map_types = value_types()
    view_items = type({}.items())
    plain_scalars = set(_PLAIN_SCALARS)
    re_mod = sys.modules.get("re")
    if re_mod is not None:
        plain_scalars |= {re_mod.Match, re_mod.Pattern}
    plain_scalars = frozenset(plain_scalars)
    callable_types = frozenset({types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                                types.MethodDescriptorType, types.WrapperDescriptorType,
                                types.MethodWrapperType, types.ClassMethodDescriptorType,
                                types.ModuleType})
    container_dunders = ("__iter__", "__getitem__", "__contains__", "__len__")
    test_defined: set[int] = set()
    tainted: set[int] = set()   # ids of iterators that program code returned
    keep_alive: list = []       # objects whose ids are recorded stay alive, so ids stay unique
    n_threads = thread_counter()

    def type_name(t) -> str:
        return type.__dict__["__name__"].__get__(t)

    def is_trusted_callable(f) -> bool:
        t = _type(f)
        if _id(f) in trusted_ids or _id(f) in test_defined:
            return True
        if t is type:  # a class
            return _id(f) in preexisting_type_ids
        if t is types.BuiltinMethodType:  # e.g. len, "".join, [].count, math.isclose
            owner = f.__self__
            ot = _type(owner)
            if ot is types.ModuleType:
                return _id(owner) in trusted_ids
            if ot is type:  # classmethods of types, e.g. dict.fromkeys
                return _id(owner) in preexisting_type_ids
            return ot in plain_scalars or ot in seq_types or ot in map_types or _id(ot) in preexisting_type_ids
        if t is types.MethodType:
            return _id(f.__func__) in trusted_ids and _id(_type(f.__self__)) in preexisting_type_ids
        if t in (types.MethodDescriptorType, types.WrapperDescriptorType, types.ClassMethodDescriptorType,
                 types.MethodWrapperType):
            return True  # methods of C types, which the program cannot define
        return False

    def inert_instance(t) -> bool:
        """An instance of a pre-existing, non-container class (e.g. random.Random)."""
        if _id(t) not in preexisting_type_ids:
            return False
        for name in container_dunders:
            if _hasattr(t, name):
                return False
        return True

    def check_value(x, depth=0, seen=None, budget=None):
        """Raise UntrustedValue unless x is inert data (deep)."""
        if budget is None:
            budget = [MAX_ELEMENTS]
        budget[0] -= 1
        if budget[0] < 0 or depth > MAX_DEPTH:
            raise UntrustedValue("value too large or too deep")
        t = _type(x)
        if t in plain_scalars:
            return
        if t in seq_types or t in map_types:
            seen = seen if seen is not None else set()
            if _id(x) in seen:
                return
            seen.add(_id(x))
            if t in map_types and t is not view_items:
                for k, v in _dict_items(x):
                    check_value(k, depth + 1, seen, budget)
                    check_value(v, depth + 1, seen, budget)
            else:
                for e in x:  # iteration of these C containers runs no program code
                    check_value(e, depth + 1, seen, budget)
            return
        if (t in callable_types or t is type) and is_trusted_callable(x):
            return
        if _id(x) not in tainted and inert_instance(t):
            return
        if _id(t) in test_defined:  # an instance of a class the tests define (its attributes are
            return                  # checked where they are used)
        raise UntrustedValue(f"a value of type {type_name(t)!r} is not plain data")

    def is_iterator(x) -> bool:
        t = _type(x)
        return _id(t) in preexisting_type_ids and _hasattr(t, "__next__")

    def materialise(it) -> list:
        out = []
        for e in it:  # may run program code (a generator body); elements are checked
            check_value(e)
            out.append(e)
            if _len(out) > MAX_ELEMENTS:
                raise UntrustedValue("iterator yields too many elements")
        restore()
        return out

    def validating_wrapper(f):
        def wrapped(*a, **k):
            r = f(*a, **k)
            restore()
            check_value(r)
            return r
        return wrapped

    def guard_arg(a):
        """An argument on its way into a trusted (builtin/stdlib) callee."""
        if _id(a) in tainted or is_iterator(a):  # generators of the tests may yield program values too
            return _iter(materialise(a))
        t = _type(a)
        if t in callable_types or t is type:
            if is_trusted_callable(a):
                return a
            return validating_wrapper(a)
        check_value(a)
        return a

    def rr_call(f, /, *args, **kwargs):
        if _id(f) in test_defined:
            return f(*args, **kwargs)
        if is_trusted_callable(f):
            args = [guard_arg(a) for a in args]
            kwargs = {k: guard_arg(v) for k, v in _dict_items(kwargs)}
            return f(*args, **kwargs)
        result = f(*args, **kwargs)  # program code
        restore()
        if n_threads() > 1:  # a live program thread could patch what the tests use next
            raise UntrustedValue("the program left a thread running")
        if is_iterator(result):
            tainted.add(_id(result))
            keep_alive.append(result)
        return result

    def rr_v(x):
        check_value(x)
        return x

    def rr_iter(x):
        t = _type(x)
        if _id(x) in tainted or not (t in plain_scalars or t in seq_types or t in map_types or is_iterator(x)):
            return materialise(x)
        if not is_iterator(x):
            check_value(x)
        return x

    def rr_assert(value, line):
        try:
            check_value(value)
            ok = _bool(value)
        except UntrustedValue as e:
            record_unit(False, line, f"assert on line {line}: {e}")
            return
        record_unit(ok, line, "" if ok else f"assert on line {line} failed")

    def rr_trust(f):
        test_defined.add(_id(f))
        keep_alive.append(f)
        return f

    return {"_rr_call": rr_call, "_rr_v": rr_v, "_rr_iter": rr_iter, "_rr_assert": rr_assert, "_rr_trust": rr_trust}


# ----------------------------------------------------------------------------------------
# Snapshot / restore of interpreter state the program could monkeypatch
# ----------------------------------------------------------------------------------------
_IMMUTABLE_TYPE = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE: C types whose attributes cannot be set


def snapshot_modules() -> list[tuple[str, object, dict]]:
    """(module name, live object, saved copy of its dict) for builtins, sys.modules, every
    loaded module, and every class those modules define whose attributes can be set.

    Audit events cover only special attributes of classes (`__module__`, `__bases__`, ...),
    so `collections.Counter.__eq__ = ...` is undone by restoring, not refused.
    """
    snaps = [("builtins", builtins.__dict__, dict(builtins.__dict__)), ("sys.modules", sys.modules, dict(sys.modules))]
    seen_classes = set()
    for name, mod in list(sys.modules.items()):
        d = getattr(mod, "__dict__", None)
        if not isinstance(d, dict):
            continue
        if d is not builtins.__dict__:
            snaps.append((name, d, dict(d)))
        for v in list(d.values()):
            if isinstance(v, type) and not (v.__flags__ & _IMMUTABLE_TYPE) and id(v) not in seen_classes:
                seen_classes.add(id(v))
                snaps.append((name, v, dict(v.__dict__)))
    return snaps


def module_closure(names) -> frozenset[str]:
    """The named loaded modules plus every module reachable from their globals (transitively):
    what trusted code called by the tests can reach, so what a cheap restore must cover."""
    out, stack = set(), [n for n in names if n in sys.modules]
    by_id = {id(m): k for k, m in list(sys.modules.items())}
    while stack:
        name = stack.pop()
        if name in out:
            continue
        out.add(name)
        for v in list(getattr(sys.modules.get(name), "__dict__", {}).values()):
            if isinstance(v, types.ModuleType) and id(v) in by_id:
                stack.append(by_id[id(v)])
            elif isinstance(v, (type, types.FunctionType)):
                mod = getattr(v, "__module__", None)
                if isinstance(mod, str) and mod in sys.modules:
                    stack.append(mod)
    return frozenset(out)


def make_restore(snaps, light_names=()):
    """Two functions that reset snapshotted dicts' original keys to their original values.

    restore_full() covers every module (and its classes) loaded before the program (a few
    ms, run once after the program is defined); restore_light() only builtins, sys,
    sys.modules and the modules in `light_names` (module_closure of what the tests reference),
    cheap enough to run before every test statement and after every call into program code.
    """
    _dict_items, _len, _type, _isinstance = dict.items, len, type, isinstance
    module_type, set_class = types.ModuleType, object.__setattr__
    type_setattr, type_delattr, type_dict = type.__setattr__, type.__delattr__, type.__dict__["__dict__"].__get__
    wanted = {"builtins", "sys.modules", "sys"} | set(light_names)
    modules = [m for k, m in sys.modules.items() if k in wanted and type(m) is types.ModuleType]
    light = [(live, saved) for name, live, saved in snaps if name in wanted]
    # Touching an object in a forked child copies its memory page (reference counts), so the
    # "full" restore covers only what the tests can reach too; a patch elsewhere cannot affect
    # a trusted computation of the tests.
    full = light
    _missing = object()

    def reset_class(cls, saved):
        live = type_dict(cls)
        for k, v in _dict_items(saved):
            if live.get(k, _missing) is not v:
                type_setattr(cls, k, v)
        if _len(live) != _len(saved):
            for k in [k for k in live if k not in saved]:
                type_delattr(cls, k)

    def reset(pairs):
        for live, saved in pairs:
            if _type(live) is dict:
                for k, v in _dict_items(saved):
                    if live.get(k, _missing) is not v:
                        live[k] = v
            else:
                reset_class(live, saved)
        for m in modules:  # `module.__class__ = Hostile` would hijack attribute lookups
            if _type(m) is not module_type:
                set_class(m, "__class__", module_type)

    return (lambda: reset(full)), (lambda: reset(light))


# ----------------------------------------------------------------------------------------
# The audit hook
# ----------------------------------------------------------------------------------------
BLOCKED_IMPORTS = frozenset({
    "ctypes", "_ctypes", "cffi", "_posixsubprocess", "subprocess", "multiprocessing",
    "_multiprocessing", "socket", "_socket", "ssl", "_ssl", "pty", "faulthandler", "_testcapi",
    "_testinternalcapi", "_xxsubinterpreters", "resource", "fcntl", "mmap", "_signal_helpers",
})
BLOCKED_EVENTS = frozenset({
    "sys._getframe", "sys._current_frames", "sys._current_exceptions", "sys.settrace",
    "sys.setprofile", "sys.addaudithook", "gc.get_objects", "gc.get_referrers",
    "gc.get_referents", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.exec",
    "os.system", "os.startfile", "subprocess.Popen", "os.kill", "os.killpg",
    "signal.pthread_kill", "resource.setrlimit", "resource.prlimit", "os.setuid",
    "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.addressof", "ctypes.string_at",
    "ctypes.wstring_at", "cpython.run_command", "pty.spawn", "sys.monitoring.register_callback",
    "os.chroot", "os.setns", "os.unshare", "os.memfd_create", "mmap.__new__",
})
PATH_EVENTS = frozenset({
    "os.chmod", "os.chown", "os.chflags", "os.link", "os.mkdir", "os.remove", "os.rename",
    "os.rmdir", "os.symlink", "os.truncate", "os.utime", "os.setxattr", "os.removexattr",
    "os.chdir", "shutil.copyfile", "shutil.copymode", "shutil.copystat", "shutil.copytree",
    "shutil.move", "shutil.rmtree", "shutil.make_archive", "shutil.unpack_archive",
})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def make_audit_hook(workdir: str, preexisting_type_ids: frozenset, trusted_ids: frozenset, violations: list):
    """The PEP 578 hook. `violations` collects (event, detail) of refused operations."""
    _str, _isinstance, _type, _id = str, isinstance, type, id
    realpath, fspath, startswith = os.path.realpath, os.fspath, str.startswith
    root = os.path.realpath(workdir) + os.sep
    frame_attrs = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "gi_code", "cr_code",
                             "ag_code", "__code__", "f_back", "__globals__"})

    def inside(path) -> bool:
        try:
            p = fspath(path)
            if _isinstance(p, bytes):
                p = p.decode("utf-8", "surrogateescape")
            return startswith(realpath(p) + os.sep, root)
        except Exception:
            return False

    def deny(event, detail=""):
        if len(violations) < 50:
            violations.append((event, _str(detail)[:120]))
        raise SandboxViolation(f"sandbox: {event} is not allowed {detail}".rstrip())

    def hook(event, args):
        if event in BLOCKED_EVENTS:
            deny(event)
        elif event == "import":
            name = args[0] if args else ""
            if _isinstance(name, _str) and name.split(".")[0] in BLOCKED_IMPORTS:
                deny(event, name)
        elif event == "object.__getattr__":
            if len(args) > 1 and args[1] in frame_attrs:
                deny(event, args[1])
        elif event in ("object.__setattr__", "object.__delattr__"):
            obj = args[0]
            if _type(obj) is type or _isinstance(obj, type):
                if _id(obj) in preexisting_type_ids:
                    deny(event, args[1] if len(args) > 1 else "")
            elif _id(obj) in trusted_ids:
                deny(event, args[1] if len(args) > 1 else "")
        elif event == "open":
            path, mode, flags = (list(args) + [None, None, None])[:3]
            if _isinstance(path, int) or path is None:
                return
            p = fspath(path) if not _isinstance(path, (str, bytes)) else path
            if _isinstance(p, bytes):
                p = p.decode("utf-8", "surrogateescape")
            rp = realpath(p)
            if startswith(rp, "/proc/") and ("/mem" in rp or "/fd" in rp or "/environ" in rp
                                             or "/root" in rp or "/map_files" in rp):
                deny(event, rp)
            writing = (mode is not None and _isinstance(mode, _str) and any(c in mode for c in "wax+")) or \
                      (_isinstance(flags, int) and flags & _WRITE_FLAGS)
            if writing and not startswith(rp + os.sep, root):
                deny(event, rp)
        elif event in PATH_EVENTS:
            for a in args:
                if _isinstance(a, (str, bytes, os.PathLike)) and not inside(a):
                    deny(event, a)
        elif event.startswith("socket.") or event.startswith("ctypes."):
            deny(event)

    return hook


# ----------------------------------------------------------------------------------------
# Output capture
# ----------------------------------------------------------------------------------------
class TruncatingSink(io.RawIOBase):
    """Keeps the first `limit` bytes written, silently drops the rest."""

    def __init__(self, limit: int):
        self.limit, self.kept, self.total = limit, bytearray(), 0

    def writable(self):
        return True

    def write(self, b):
        n = len(b)
        room = self.limit - len(self.kept)
        if room > 0:
            self.kept += bytes(b[:room])
        self.total += n
        return n


def capture_output(limit: int) -> TruncatingSink:
    sink = TruncatingSink(limit)
    stream = io.TextIOWrapper(io.BufferedWriter(sink), encoding="utf-8", errors="replace", write_through=True)
    sys.stdout = sys.stderr = stream
    sys.__stdout__ = sys.__stderr__ = stream
    return sink


# ----------------------------------------------------------------------------------------
# The child's main
# ----------------------------------------------------------------------------------------
def run_child(job: dict, statements, result_fd: int, nonce: str, workdir: str,
              trusted_ids: frozenset, preexisting_type_ids: frozenset, snaps, light_names=()) -> None:
    """Runs in the forked child after OS-level limits are in place. Never returns."""
    counts = {"passed": 0, "failed": 0, "statements_done": 0}
    first_failure: list[str] = []
    violations: list = []
    _write, _exit, _dumps = os.write, os._exit, json.dumps

    def record_unit(ok: bool, line: int, why: str):
        counts["passed" if ok else "failed"] += 1
        if not ok and not first_failure:
            first_failure.append(why)

    def finish(status: str, details: str):
        payload = {"nonce": nonce, "status": status, "details": details, "units_passed": counts["passed"],
                   "units_failed": counts["failed"], "statements_done": counts["statements_done"],
                   "stdout": sink.kept[:4096].decode("utf-8", "replace"), "stdout_bytes": sink.total,
                   "violations": violations[:10]}
        try:
            data = _dumps(payload).encode() + b"\n"
        except Exception:
            data = _dumps({"nonce": nonce, "status": "error", "details": "unserialisable result"}).encode() + b"\n"
        view = memoryview(data)
        while view:
            try:
                n = _write(result_fd, view)
            except InterruptedError:
                continue
            except OSError:
                break
            view = view[n:]
        _exit(0)

    def exc_summary(e: BaseException) -> str:
        name = type.__dict__["__name__"].__get__(type(e))
        tb = BaseException.__traceback__.__get__(e)
        line = 0
        while tb is not None:  # tb_lineno/tb_next are plain members, no program code runs
            line, tb = tb.tb_lineno, tb.tb_next
        return f"{name} (line {line})" if line else name

    sink = capture_output(int(job.get("output_limit", 65536)))
    for name, live, saved in snaps:  # restoring must keep the capture, not the worker's pipes
        if live is sys.__dict__:
            for k in ("stdout", "stderr", "__stdout__", "__stderr__"):
                saved[k] = sys.__dict__[k]
    restore, restore_light = make_restore(snaps, light_names)
    guards = make_guards(trusted_ids, preexisting_type_ids, restore_light, record_unit)
    # The program gets a real module, so stdlib code that looks up cls.__module__ (dataclasses,
    # pickle, typing) finds it.
    program_module = types.ModuleType("__program__")
    sys.modules["__program__"] = program_module
    program_ns = program_module.__dict__
    program_ns["__builtins__"] = builtins
    sys.addaudithook(make_audit_hook(workdir, preexisting_type_ids, trusted_ids, violations))

    # Phase 1: define the program.
    try:
        code = job.get("program_code") or compile(job["program"], "<program>", "exec")
    except BaseException as e:  # noqa: BLE001 - anything in compile is a syntax problem
        finish("syntax_error", exc_summary(e))
    try:
        exec(code, program_ns)
    except MemoryError:
        restore()
        finish("oom", "MemoryError while defining the program")
    except BaseException as e:  # SystemExit, KeyboardInterrupt, anything: the program failed
        restore()
        finish("error", f"program raised {exc_summary(e)}")
    restore()
    if thread_counter()() > 1:
        finish("error", "the program left a thread running (it could tamper with the tests)")

    # Phase 2: the tests, one top-level statement at a time, in their own namespace.
    # A program may define a function named like a builtin (MBPP's `sum`), and the tests then
    # call it; but not the builtins that tests use to judge results.
    test_ns = {k: v for k, v in dict.items(program_ns)
               if not (k.startswith("__") or k in JUDGING_BUILTINS)}
    test_ns.update(guards)
    test_ns["__builtins__"] = builtins
    test_ns["__name__"] = "__tests__"
    saw_oom = False
    for code, line in statements:
        restore_light()
        try:
            exec(code, test_ns)
            counts["statements_done"] += 1
        except MemoryError:
            saw_oom = True
            record_unit(False, line, f"MemoryError in test statement at line {line}")
        except BaseException as e:  # noqa: BLE001 - a raising statement is one failed unit
            record_unit(False, line, f"test statement at line {line} raised {exc_summary(e)}")
        for name, fn in guards.items():  # the guards must still be ours
            if test_ns.get(name) is not fn:
                test_ns[name] = fn
                record_unit(False, line, f"test namespace tampered with ({name})")
    if counts["failed"] == 0 and counts["statements_done"] == len(statements):
        finish("passed", "")
    finish("oom" if saw_oom else "failed", first_failure[0] if first_failure else "tests failed")
