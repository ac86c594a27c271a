"""A warm worker: pre-imports the standard library once, then forks one child per program.

Started by `Sandbox` as `python -m retainrl.verify.worker UID` in its own process group. It
reads length-prefixed JSON jobs on stdin and writes length-prefixed JSON results on stdout.

Per job:
  trusted, in the worker: size limits, compile the program (syntax errors never fork), rewrite
  the tests (transform.py), make a fresh temp directory;
  in the child (fork): new session and process group, stdin/stdout/stderr on /dev/null (Python
  output captured and truncated in memory), every other fd closed but the result pipe, cwd and
  HOME and TMPDIR = the temp directory, environment scrubbed, rlimits (CPU, address space,
  file size, open files, core; processes when a sandbox uid is used), privileges dropped to a
  per-worker uid when running as root, then harness.run_child;
  back in the worker: a wall-clock deadline on the result pipe, SIGKILL to the child's process
  group, and, with a sandbox uid, a sweep that kills every process of that uid (detached
  children included); the temp directory is removed.
"""

from __future__ import annotations

import json
import math
import os
import resource
import select
import shutil
import signal
import struct
import sys
import tempfile
import time

# Modules a program or test commonly imports. Importing them here makes each fork cheap and
# puts their functions and classes into the trusted snapshot.
PREIMPORT = (
    "abc array ast base64 binascii bisect calendar cmath collections collections.abc copy csv "
    "dataclasses datetime decimal difflib enum fractions functools hashlib heapq io itertools "
    "json keyword math numbers operator pprint queue random re statistics string struct "
    "tempfile textwrap time typing unicodedata uuid zlib threading sys os"
).split()
HEADER = struct.Struct("!Q")
MAX_SOURCE_BYTES = 1_000_000
MAX_RESULT_BYTES = 1_000_000


# ----------------------------------------------------------------------------------------
# framing
# ----------------------------------------------------------------------------------------
def read_message(fd: int) -> dict | None:
    head = _read_exact(fd, HEADER.size)
    if head is None:
        return None
    (n,) = HEADER.unpack(head)
    body = _read_exact(fd, n)
    return None if body is None else json.loads(body)


def write_message(fd: int, obj: dict) -> None:
    data = json.dumps(obj).encode()
    _write_all(fd, HEADER.pack(len(data)) + data)


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        b = os.read(fd, n - got)
        if not b:
            return None
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# ----------------------------------------------------------------------------------------
# isolation helpers
# ----------------------------------------------------------------------------------------
def try_unshare_network() -> bool:
    """Move this worker (and so every child) into an empty network namespace, if permitted."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        clone_newnet = 0x40000000
        return libc.unshare(clone_newnet) == 0
    except Exception:
        return False


def build_trusted_snapshot():
    """ids of callables, classes and modules that exist before any program runs."""
    import gc
    import types

    keep, trusted, type_ids = [], set(), set()
    callable_types = (types.FunctionType, types.BuiltinFunctionType, types.ModuleType)
    for obj in gc.get_objects():
        if isinstance(obj, type):
            type_ids.add(id(obj))
            keep.append(obj)
        elif isinstance(obj, callable_types):
            trusted.add(id(obj))
            keep.append(obj)
    for mod in list(sys.modules.values()):
        keep.append(mod)
        trusted.add(id(mod))
        for v in list(getattr(mod, "__dict__", {}).values()):
            if isinstance(v, type):
                type_ids.add(id(v))
                keep.append(v)
            elif callable(v) and isinstance(v, callable_types):
                trusted.add(id(v))
                keep.append(v)
    # Static (non-heap) builtin types are not gc-tracked: add every class reachable from object.
    stack = [object]
    while stack:
        t = stack.pop()
        if id(t) not in type_ids:
            type_ids.add(id(t))
            keep.append(t)
        try:
            stack.extend(s for s in type.__subclasses__(t) if id(s) not in type_ids)
        except TypeError:
            pass
    type_ids.add(id(type))
    return frozenset(trusted), frozenset(type_ids), keep


def vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def set_limits(job: dict, sandbox_uid: int | None) -> None:
    cpu = int(math.ceil(float(job["timeout_s"]))) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    mem = vm_bytes() + int(job.get("memory_mb", 1024)) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    fsize = int(job.get("file_limit_mb", 16)) * 2**20
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sandbox_uid is not None:
        nproc = int(job.get("max_processes", 16))  # threads count too
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


def sweep_uid(uid: int) -> None:
    """Kill every process owned by `uid` (detached children too). Root only."""
    for _ in range(1):
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                os.kill(-1, signal.SIGKILL)  # every process of this uid, never the caller
            except Exception:
                pass
            os._exit(0)
        os.waitpid(pid, 0)


# ----------------------------------------------------------------------------------------
# one job
# ----------------------------------------------------------------------------------------
class Worker:
    def __init__(self, sandbox_uid: int | None):
        self.sandbox_uid = sandbox_uid
        self.network_isolated = False
        self.test_cache: dict[str, tuple] = {}
        self.current_child: int | None = None
        self._prctl = None

    def setup(self) -> None:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        for name in PREIMPORT:
            try:
                __import__(name)
            except Exception:
                pass
        import encodings
        import pkgutil

        for mod in pkgutil.iter_modules(encodings.__path__):  # every codec, e.g. shift_jis
            try:
                __import__(f"encodings.{mod.name}")
            except Exception:
                pass
        try:
            import ctypes

            self._prctl = ctypes.CDLL(None, use_errno=True).prctl
        except Exception:
            self._prctl = None
        signal.signal(signal.SIGTERM, self._on_term)
        if self._prctl is not None:
            self._prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans of a job become ours
        try:  # its import probes frames (refused in a child), so programs get it pre-imported
            import numpy  # noqa: F401
        except Exception:
            pass
        if os.geteuid() == 0 or os.environ.get("RETAINRL_SANDBOX_UNSHARE") == "1":
            self.network_isolated = try_unshare_network()
        from retainrl.verify import harness, transform

        self.harness, self.transform = harness, transform
        self.trusted_ids, self.type_ids, self._keep = build_trusted_snapshot()
        hidden = {"__main__", "__mp_main__"} | {k for k in sys.modules if k.startswith("retainrl")
                                                or k.split(".")[0] in harness.BLOCKED_IMPORTS}
        self.hidden_modules = hidden
        snaps = harness.snapshot_modules()
        snaps[1] = ("sys.modules", sys.modules, {k: v for k, v in snaps[1][2].items() if k not in hidden})
        self.snaps = snaps
        # tmpfs when there is one: creating and removing a job directory there costs microseconds
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.base_dir = tempfile.mkdtemp(prefix="retainrl-sandbox-", dir=shm)
        import gc

        gc.collect()
        gc.freeze()  # children's collections skip the worker's objects: fewer copy-on-write faults
        os.chmod(self.base_dir, 0o711)

    def _on_term(self, signum, frame) -> None:
        """Sandbox.close(): take the running child down with the worker."""
        if self.current_child is not None:
            self._kill(self.current_child)
        shutil.rmtree(getattr(self, "base_dir", ""), ignore_errors=True)
        os._exit(0)

    def rewrite(self, tests: str):
        hit = self.test_cache.get(tests)
        if hit is None:
            statements, n, names = self.transform.rewrite_tests(tests)
            closure = self.harness.module_closure(names)
            wanted = {"builtins", "sys.modules", "sys"} | closure
            # only what the tests can reach is restored; filter here, once, not in each child
            hit = (statements, n, closure, [e for e in self.snaps if e[0] in wanted])
            if len(self.test_cache) > 512:
                self.test_cache.clear()
            self.test_cache[tests] = hit
        return hit

    def run(self, job: dict) -> dict:
        t0 = time.monotonic()
        program, tests = job.get("program", ""), job.get("tests", "")
        if not isinstance(program, str) or not isinstance(tests, str):
            return {"status": "error", "details": "program and tests must be strings"}
        if len(program) > MAX_SOURCE_BYTES or len(tests) > MAX_SOURCE_BYTES:
            return {"status": "error", "details": "source too large"}
        try:
            job["program_code"] = compile(program, "<program>", "exec", dont_inherit=True)
        except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as e:
            return {"status": "syntax_error", "details": f"{type(e).__name__}: {getattr(e, 'msg', e)}"[:300]}
        try:
            statements, n_statements, light_names, snaps = self.rewrite(tests)
        except self.transform.TestSourceError as e:
            return {"status": "error", "details": str(e)[:300]}
        workdir = tempfile.mkdtemp(dir=self.base_dir)
        try:
            return self._fork_and_wait(job, statements, n_statements, light_names, snaps, workdir, t0)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _fork_and_wait(self, job, statements, n_statements, light_names, snaps, workdir, t0) -> dict:
        uid = self.sandbox_uid
        if uid is not None:
            os.chown(workdir, uid, uid)
        nonce = os.urandom(16).hex()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # ---- child ----
            try:
                os.close(r)
                self._enter_child(job, w, workdir)
                self.harness.run_child(job, statements, w, nonce, workdir, self.trusted_ids,
                                       self.type_ids, snaps, light_names)
            finally:
                os._exit(70)
        self.current_child = pid
        os.close(w)
        buf, deadline = bytearray(), t0 + float(job["timeout_s"])
        timed_out = False
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                ready, _, _ = select.select([r], [], [], left)
                if not ready:
                    continue
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > MAX_RESULT_BYTES or b"\n" in buf:
                    break
        finally:
            os.close(r)
            self._kill(pid)
        _, status, rusage = os.wait4(pid, 0)
        self.current_child = None
        if self._descendants_left():  # only when something escaped the job's process group
            if uid is not None:
                sweep_uid(uid)
            self._kill_orphans()
        out = self._interpret(buf, nonce, status, timed_out, n_statements, job)
        out["cpu_s"] = rusage.ru_utime + rusage.ru_stime
        out["wall_s"] = time.monotonic() - t0
        return out

    @staticmethod
    def _descendants_left() -> bool:
        """Reap finished orphans; True if any process of a job is still alive. As a subreaper
        the worker inherits every orphan of its jobs, so none escapes this check."""
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True

    @staticmethod
    def _kill_orphans() -> None:
        me = str(os.getpid())
        for _ in range(3):
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry}/stat") as fh:
                        ppid = fh.read().rsplit(")", 1)[1].split()[1]
                except (OSError, IndexError):
                    continue
                if ppid == me:
                    try:
                        os.kill(int(entry), signal.SIGKILL)
                    except OSError:
                        pass
            try:
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                return
            time.sleep(0.01)

    @staticmethod
    def _kill(pid: int) -> None:
        for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
            try:
                target()
            except (ProcessLookupError, PermissionError):
                pass

    def _enter_child(self, job: dict, result_fd: int, workdir: str) -> None:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        keep = sorted({0, 1, 2, result_fd})
        os.closerange(3, result_fd)
        os.closerange(result_fd + 1, 65536)
        del keep
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # oversized writes fail instead of killing
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        os.chdir(workdir)
        os.environ.clear()
        os.environ.update({"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
                           "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"})
        tempfile.tempdir = workdir
        set_limits(job, self.sandbox_uid)
        if self.sandbox_uid is not None:
            os.setgroups([])
            os.setgid(self.sandbox_uid)
            os.setuid(self.sandbox_uid)
        if self._prctl is not None:
            self._prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the worker
        for name in self.hidden_modules:
            sys.modules.pop(name, None)
        sys.modules["__main__"] = type(sys)("__main__")
        sys.setrecursionlimit(int(job.get("recursion_limit", 3000)))

    @staticmethod
    def _interpret(buf: bytes, nonce: str, status: int, timed_out: bool, n_statements: int, job: dict) -> dict:
        record = None
        if buf:
            try:
                record = json.loads(bytes(buf))
            except ValueError:
                record = None
            if not isinstance(record, dict) or record.get("nonce") != nonce:
                return {"status": "killed", "details": "malformed or forged result on the verdict pipe"}
        if record is None:
            if timed_out:
                return {"status": "timeout", "details": f"wall-clock limit of {job['timeout_s']} s"}
            if os.WIFSIGNALED(status):
                sig = os.WTERMSIG(status)
                if sig in (signal.SIGXCPU, signal.SIGKILL):
                    return {"status": "timeout", "details": f"CPU limit (signal {signal.Signals(sig).name})"}
                return {"status": "killed", "details": f"killed by signal {signal.Signals(sig).name}"}
            code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
            return {"status": "killed", "details": f"exited with code {code} without a verdict"}
        st = record.get("status")
        out = {k: record.get(k) for k in ("status", "details", "units_passed", "units_failed",
                                           "statements_done", "stdout", "stdout_bytes", "violations")}
        if st == "passed" and record.get("statements_done") != n_statements:
            out["status"], out["details"] = "failed", "not every test statement ran"
        return out


def stdlib_readable_by_others() -> bool:
    """A child dropped to another uid can import only what "others" may read: every folder from
    / down to the standard library and site-packages must be world-searchable, else the uid
    drop would break `import` of anything not pre-imported (pyenv under /root, say)."""
    import sysconfig

    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = os.path.realpath(sysconfig.get_paths()[key])
        while True:
            try:
                if not os.stat(path).st_mode & 0o001:
                    return False
            except OSError:
                return False
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
    return True


def main() -> None:
    uid = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] != "-" else None
    if uid is not None and not stdlib_readable_by_others():
        uid = None  # fall back to the audit-hook layer alone; reported as uid_isolated=False
    worker = Worker(uid)
    worker.setup()
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    write_message(stdout, {"ready": True, "network_isolated": worker.network_isolated,
                           "pid": os.getpid(), "uid": uid})
    while True:
        job = read_message(stdin)
        if job is None:
            break
        try:
            result = worker.run(job)
        except Exception as e:  # the worker itself must never die on one job
            result = {"status": "error", "details": f"worker error: {type(e).__name__}: {e}"[:300]}
        result["id"] = job.get("id")
        write_message(stdout, result)
    shutil.rmtree(worker.base_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
