"""The untrusted side: the zygote (a confined fork server) and the program process it forks.

Nothing here is trusted by the verdict. Whatever this code sends, the judge (judge.py) treats
as the program's answer; a program that rewrites this module can only send other answers.

Zygote: forked by the worker at start-up, before any job exists (its memory holds no test, no
program, no earlier job), confined once by confine.py (PID 1 of its own namespaces), then a
loop over the control socket:
    {"op": "spawn", limits} + fds (RPC socket, output file) -> SIGKILL what is left of the
    previous job, empty the job folder, fork one program process, send the worker its pidfd
(the worker reads the program's CPU time and exit status from /proc and kills it itself).
Program process: its own session, a nested Landlock layer (writes only in the job folder, no
signals out of its domain), rlimits, stdout/stderr into the output file (write-through, so
nothing is lost when it is killed), then serves the judge's requests:
    def  {code, names, calls}  exec the program (a marshalled code object) in a fresh module;
                               reply the values of `names` and the answers to the prefetched
                               literal `calls`
    call {h, a, k}             call handle h; reply the result and mutated list/dict/set args
    get / set {h, n, v}        attribute of handle h
    next {h, n}                up to n items of iterator handle h
and calls back into the judge (tcall / tget / tset) for trusted objects the tests passed to it.
"""

from __future__ import annotations

import base64
import builtins
import collections
import datetime
import decimal
import fractions
import io
import json
import marshal
import math
import os
import re
import resource
import shutil
import signal
import socket
import sys
import tempfile
import types

from retainrl.verify import wire

_ITER_MODULES = frozenset({"builtins", "itertools", "collections", "_collections", "re", "enum"})
NEXT_BATCH_MAX = 4096


# ------------------------------------------------------------------------------ values
class TrustedRef:
    """A trusted object (a test's function, class or object) seen from the program: calls and
    attribute reads go back to the judge. Identity-only equality and hash."""

    __slots__ = ("_tid", "_side")

    def __call__(self, *args, **kwargs):
        side = self._side
        return side.back({"op": "tcall", "t": self._tid, "a": [side.enc(a) for a in args],
                          "k": [[k, side.enc(v)] for k, v in kwargs.items()]})

    def __getattr__(self, name):
        return self._side.back({"op": "tget", "t": self._tid, "n": name})

    def __setattr__(self, name, value):
        if name in TrustedRef.__slots__:
            object.__setattr__(self, name, value)
        else:
            self._side.back({"op": "tset", "t": self._tid, "n": name, "v": self._side.enc(value)})

    def __repr__(self):
        return f"<trusted object {self._tid}>"


class ProgramSide:
    """Handle tables and the value codec of the program process."""

    def __init__(self, chan: wire.Channel):
        self.chan, self.pid = chan, os.getpid()
        self.objs: dict[int, object] = {}
        self.ids: dict[int, int] = {}
        self.trefs: dict[int, TrustedRef] = {}
        self.ns: dict = {}
        self._nt: dict = {}
        d = {}
        self.view_types = {type(d.keys()): "keys", type(d.values()): "values", type(d.items()): "items"}

    # -- encoding ---------------------------------------------------------------------------
    def handle(self, x) -> int:
        h = self.ids.get(id(x))
        if h is None:
            h = len(self.objs) + 1
            self.objs[h], self.ids[id(x)] = x, h
        return h

    def enc(self, x, d: int = 0):
        t = type(x)
        if t is str or t is bool or t is float or x is None:
            return x
        if t is int:
            return wire.int_tag(x)
        if d > wire.MAX_DEPTH:
            raise ValueError("value nested too deeply to return")
        d += 1
        e = self.enc
        plain = wire.enc_plain(e, x, t, d)
        if plain is not None:
            return plain
        if t is TrustedRef:
            return ["T", x._tid]
        if t is type and getattr(builtins, x.__name__, None) is x:
            return ["B", x.__name__]
        if t is re.Match:
            groups = [[x.group(i), *x.span(i)] for i in range(len(x.groups()) + 1)]
            return ["M", e(x.string, d), [[e(g, d), s, f] for g, s, f in groups], dict(x.re.groupindex)]
        if isinstance(x, tuple) and type(getattr(t, "_fields", None)) is tuple:
            return ["nt", t.__name__, list(t._fields), *[e(v, d) for v in x]]
        if t in self.view_types:
            return ["kv", self.view_types[t], *[e(v, d) for v in x]]
        if isinstance(x, types.GeneratorType) or (hasattr(t, "__next__") and t.__module__ in _ITER_MODULES):
            return ["g", self.handle(x)]
        for base, tag in ((int, None), (float, None), (str, None), (bytes, None), (list, "l"),
                          (tuple, "t"), (dict, "d"), (set, "s"), (frozenset, "fs")):
            if isinstance(x, base):  # a subclass of a value type travels as its base value
                plain = base(x)
                if type(plain) is base:
                    return e(plain, d)
        return ["h", self.handle(x), "f" if callable(x) else "o", getattr(t, "__name__", "?")[:80]]

    # -- decoding (values from the judge: well-formed) ---------------------------------------
    def dec(self, x):
        if type(x) is not list:
            return x
        tag, rest = x[0], x[1:]
        dec = self.dec
        if tag == "H":
            return self.objs[rest[0]]
        if tag == "T":
            ref = self.trefs.get(rest[0])
            if ref is None:
                ref = TrustedRef()
                ref._tid, ref._side = rest[0], self
                self.trefs[rest[0]] = ref
            return ref
        if tag == "I":
            return int(rest[0], 16)
        if tag == "B":
            return getattr(builtins, rest[0])
        if tag == "l":
            return [dec(v) for v in rest]
        if tag == "t":
            return tuple(dec(v) for v in rest)
        if tag in ("d", "C", "OD", "dd"):
            pairs = [(dec(rest[i]), dec(rest[i + 1])) for i in range(0, len(rest), 2)]
            return {"d": dict, "C": collections.Counter, "OD": collections.OrderedDict,
                    "dd": lambda p: collections.defaultdict(None, p)}[tag](pairs)
        if tag == "s":
            return {dec(v) for v in rest}
        if tag == "fs":
            return frozenset(dec(v) for v in rest)
        if tag == "b":
            return rest[0].encode("latin-1")
        if tag == "ba":
            return bytearray(rest[0].encode("latin-1"))
        if tag == "nt":
            key = (rest[0], tuple(rest[1]))
            cls = self._nt.get(key)
            if cls is None:
                cls = self._nt[key] = collections.namedtuple(rest[0], rest[1])
            return cls(*[dec(v) for v in rest[2:]])
        return _decode_common(tag, rest, dec)

    # -- calls back into the judge -------------------------------------------------------------
    def back(self, req: dict):
        reply = self.chan.request(req)
        if "exc" in reply:
            name, msg = reply["exc"]
            cls = getattr(builtins, name, None)
            if not (isinstance(cls, type) and issubclass(cls, Exception)):
                cls = RuntimeError
            raise cls(msg)
        return self.dec(reply.get("r"))

    # -- serving the judge --------------------------------------------------------------------
    def serve(self, msg: dict) -> dict:
        try:
            reply = self._serve(msg)
        except BaseException as e:  # noqa: BLE001 - any exception is an answer
            reply = {"exc": exc_info(e)}
        if os.getpid() != self.pid:  # a fork of the program returned into this loop
            os._exit(0)
        return reply

    def serve_call(self, name: str, a: list, k: list) -> dict:
        """A prefetched call of the program's global `name`."""
        f = self.ns.get(name)
        if f is None:
            return {"exc": ["NameError", f"name {name!r} is not defined"]}
        return self.serve({"op": "call", "h": self.handle(f), "a": a, "k": k})

    def _serve(self, msg: dict) -> dict:
        op = msg["op"]
        if op == "call":
            f = self.objs[msg["h"]]
            raw = msg["a"]
            args = [self.dec(a) for a in raw]
            kwargs = {k: self.dec(v) for k, v in msg["k"]}
            result = f(*args, **kwargs)
            out = {"r": self.enc(result)}
            changed = [[i, now] for i, (a, before) in enumerate(zip(args, raw))
                       if type(a) in (list, dict, set, bytearray) and (now := self.enc(a)) != before]
            if changed:
                out["m"] = changed
            return out
        if op == "get":
            return {"r": self.enc(getattr(self.objs[msg["h"]], msg["n"]))}
        if op == "set":
            setattr(self.objs[msg["h"]], msg["n"], self.dec(msg["v"]))
            return {"r": None}
        if op == "next":
            it, items = self.objs[msg["h"]], []
            for _ in range(min(int(msg["n"]), NEXT_BATCH_MAX)):
                try:
                    items.append(self.enc(next(it)))
                except StopIteration:
                    return {"r": items, "end": True}
                except BaseException as e:  # noqa: BLE001
                    return {"r": items, "exc": exc_info(e)}
            return {"r": items, "end": False}
        if op == "def":
            out = self._define(msg["code"], msg["names"])
            calls = msg.get("calls")
            if calls:
                out["calls"] = [self.serve_call(name, a, k) for name, a, k in calls]
            return out
        raise ValueError(f"unknown op {op!r}")

    def _define(self, code: str, names: list) -> dict:
        module = types.ModuleType("__program__")
        sys.modules["__program__"] = module
        ns = self.ns = module.__dict__
        ns["__builtins__"] = builtins
        # the worker compiled the program (its syntax check); the code object comes marshalled
        exec(marshal.loads(base64.b64decode(code)), ns)
        out = {}
        for name in names:
            if name in ns and not name.startswith("__"):
                v = ns[name]
                try:
                    out[name] = ["mod", v.__name__] if type(v) is types.ModuleType else self.enc(v)
                except Exception:  # noqa: BLE001 - an unencodable global is simply not offered
                    continue
        return {"names": out}


def _decode_common(tag, rest, dec):
    if tag == "c":
        return complex(rest[0], rest[1])
    if tag == "r":
        return range(dec(rest[0]), dec(rest[1]), dec(rest[2]))
    if tag == "sl":
        return slice(dec(rest[0]), dec(rest[1]), dec(rest[2]))
    if tag == "E":
        return Ellipsis
    if tag == "D":
        return decimal.Decimal(rest[0])
    if tag == "F":
        return fractions.Fraction(dec(rest[0]), dec(rest[1]))
    if tag == "date":
        return datetime.date(*rest)
    if tag == "dt":
        tz = None if rest[7] is None else datetime.timezone(datetime.timedelta(seconds=rest[7]))
        return datetime.datetime(*rest[:7], tzinfo=tz, fold=rest[8])
    if tag == "tm":
        tz = None if rest[4] is None else datetime.timezone(datetime.timedelta(seconds=rest[4]))
        return datetime.time(*rest[:4], tzinfo=tz, fold=rest[5])
    if tag == "td":
        return datetime.timedelta(days=rest[0], seconds=rest[1], microseconds=rest[2])
    if tag == "dq":
        return collections.deque([dec(v) for v in rest[1:]], rest[0])
    if tag == "kv":
        items = [dec(v) for v in rest[1:]]
        if rest[0] == "keys":
            return dict.fromkeys(items).keys()
        if rest[0] == "values":
            return dict(enumerate(items)).values()
        return dict(items).items()
    raise ValueError(f"unknown tag {tag!r}")


def exc_info(e: BaseException) -> list:
    """[name of the nearest builtin exception class, message] for an exception of the program."""
    name = "Exception"
    for cls in type(e).__mro__:
        if cls.__module__ == "builtins":
            name = cls.__name__
            break
    try:
        msg = str(e) if type(e).__module__ == "builtins" else type(e).__name__
    except Exception:  # noqa: BLE001
        msg = ""
    return [name, msg[:300]]


# ------------------------------------------------------------------------------ output
class FdSink(io.RawIOBase):
    """Raw writes to a file descriptor; a write the file-size limit refuses is dropped."""

    def __init__(self, fd: int):
        super().__init__()
        self.fd = fd

    def writable(self):
        return True

    def write(self, b):
        n = len(b)
        try:
            view = memoryview(b)
            while view:
                view = view[os.write(self.fd, view):]
        except OSError:
            pass
        return n


# ------------------------------------------------------------------------------ program process
def prepare_zygote(jobdir: str) -> None:
    """Per-process state every program process shares, set once in the zygote (its children
    inherit it): cwd, environment, signal dispositions, stdin, the output stream object."""
    os.chdir(jobdir)
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "HOME": jobdir, "TMPDIR": jobdir,
                       "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"})
    tempfile.tempdir = jobdir
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # oversized writes fail instead of killing
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE, signal.SIGCHLD, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    # write-through to fd 1 (the job's output file once a program process has it as fd 1):
    # nothing is lost when the process is killed
    stream = io.TextIOWrapper(FdSink(1), encoding="utf-8", errors="replace", write_through=True)
    sys.stdout = sys.stderr = sys.__stdout__ = sys.__stderr__ = stream
    sys.modules["__main__"] = types.ModuleType("__main__")


def program_main(rpc_fd: int, out_fd: int, keep_closed: list, limits: dict, confine_child) -> None:
    """Runs in the forked program process. Never returns."""
    try:
        os.setsid()
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        confine_child(limits)
        for fd in [out_fd, *keep_closed]:
            if fd > 2 and fd != rpc_fd:
                os.close(fd)
        sys.setrecursionlimit(int(limits.get("recursion_limit", 3000)))
        chan = wire.Channel(rpc_fd)
        side = ProgramSide(chan)
        chan.serve = side.serve
        while True:
            msg = chan.recv()
            chan.send(side.serve(msg))
    except BaseException:  # noqa: BLE001 - the channel closed, or the program broke us
        pass
    finally:
        os._exit(0)


# ------------------------------------------------------------------------------ zygote
def zygote_loop(ctl: socket.socket, jobdir: str, is_init: bool, confine_child, keep_closed: list) -> None:
    """Serve spawn requests from the worker until the control socket closes.

    Each spawn first ends whatever is left of the previous job (SIGKILL to every process in
    the namespace; a killed process never runs again, so its teardown is not waited for: it
    is reaped later) and empties the job folder (the same for every job, so that its Landlock
    rule is built once), then forks the program process and sends the worker a pidfd of it:
    the worker reads its CPU time and exit status and kills it itself, without another round
    trip.
    """
    pid = None
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(ctl, 65536, 4)
        except OSError:
            break
        if not data:
            break
        msg = json.loads(data)
        if msg["op"] == "spawn" and len(fds) == 2:
            _end_job(pid, is_init)
            _empty(jobdir)
            pid = os.fork()
            if pid == 0:
                ctl.close()
                program_main(fds[0], fds[1], keep_closed, msg["limits"], confine_child)
            for fd in fds:
                os.close(fd)
            pidfd = os.pidfd_open(pid)
            try:
                socket.send_fds(ctl, [b'{"spawned": true}'], [pidfd])
            finally:
                os.close(pidfd)
            _reap_dead(keep=pid)
        else:
            for fd in fds:
                os.close(fd)
    os._exit(0)


def _end_job(pid: int | None, is_init: bool) -> None:
    """SIGKILL every process left of a job (as PID 1 of the namespace: all others)."""
    if pid is None:
        return
    if is_init:
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
    else:
        for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
            try:
                target()
            except OSError:
                pass
        _kill_orphans()


def _kill_orphans() -> None:
    """Without a PID namespace: the zygote is a child subreaper, so a job's processes that left
    its process group (setsid) and lost their parent are the zygote's children; kill them."""
    me = str(os.getpid())
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = f.read().rsplit(b")", 1)[1].split()[1].decode()
        except (OSError, IndexError):
            continue
        if ppid == me:
            try:
                os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass


def _reap_dead(keep: int) -> None:
    """Reap every ended child except `keep` (the current program process, whose exit status
    the worker reads from /proc while it is a zombie), without blocking."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid == keep:
            return
        try:
            os.waitpid(info.si_pid, 0)
        except ChildProcessError:
            return


def _empty(jobdir: str) -> None:
    try:
        names = os.listdir(jobdir)
    except OSError:
        return
    for name in names:
        path = os.path.join(jobdir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass


def vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def set_limits(limits: dict, own_uid: bool, base_vm: int) -> None:
    cpu = int(math.ceil(float(limits["timeout_s"]))) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    mem = base_vm + int(limits.get("memory_mb", 512)) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    fsize = int(limits.get("file_limit_mb", 16)) * 2**20
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if own_uid:  # per real uid: only meaningful when the jobs have a uid of their own
        nproc = int(limits.get("max_processes", 16))
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
