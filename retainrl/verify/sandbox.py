"""Sandbox: a pool of warm workers that run untrusted programs against trusted tests.

    from retainrl.verify import Sandbox
    with Sandbox(workers=2) as sb:
        v = sb.run_tests(program, tests, timeout_s=5.0)                 # -> Verdict
        vs = sb.run_tests_many([(program, tests), ...], timeout_s=5.0)   # parallel, order kept

What is isolated (see worker.py and harness.py for how):
- each program runs in its own process, forked from a warm worker that pre-imported the
  standard library (no interpreter start per program), in a new session and process group;
- wall-clock limit enforced from outside (SIGKILL to the process group), CPU-time, address
  space, file size, open files and (with a sandbox uid) process-count rlimits;
- stdin is /dev/null; output is captured in memory and truncated; the environment is scrubbed;
  cwd, HOME and TMPDIR are a fresh temp directory, removed afterwards;
- when run as root: an empty network namespace for the workers, and every child drops to a
  per-worker uid with no other files of its own, so it cannot write outside its temp directory
  or signal the worker; after each job every process of that uid is killed;
- always: an audit hook refusing process creation, signals, sockets, ctypes, frame and gc
  introspection, tracing, changes to pre-existing classes and functions, writes outside the
  temp directory; guards that let only plain data reach the tests' comparisons; a verdict
  record authenticated by a per-job nonce.

What is NOT isolated:
- reads of world-readable files (the program can read the file system);
- without root: no network namespace (sockets are refused by the audit hook only), no uid
  drop (file writes are refused by the audit hook only), no process-count limit;
- no mount namespace, seccomp or cgroup: CPU and memory are limited per process, not per tree;
- a test that hands one of its own functions to the program exposes the test namespace to it;
  a program can change `__class__` of pre-existing non-module objects (e.g. the global
  `random` instance); native extension modules that the program imports run unconfined.
The Sandbox survives workers that die (they are restarted) and keeps serving.
"""

from __future__ import annotations

import atexit
import itertools
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
import weakref

from retainrl.verify.verdict import Verdict
from retainrl.verify.worker import read_message, write_message

_instance_counter = itertools.count()
_live_sandboxes: "weakref.WeakSet[Sandbox]" = weakref.WeakSet()


def _pick_uids(n: int) -> list[int]:
    """Per-worker uids for this sandbox, unlikely to collide with other sandboxes or users."""
    slot = (os.getpid() * 16 + next(_instance_counter)) % 50_000
    return [200_000 + slot * 16 + i for i in range(n)]


class _WorkerHandle:
    """One worker process plus the pipes to it; restarted when it dies."""

    def __init__(self, uid: int | None, index: int):
        self.uid, self.index = uid, index
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH", "LANG", "LC_ALL",
                                                          "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                                          "VIRTUAL_ENV", "RETAINRL_SANDBOX_UNSHARE")}
        env.update({"PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "OPENBLAS_NUM_THREADS": "1",
                    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "retainrl.verify.worker", str(self.uid) if self.uid is not None else "-"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True, env=env, close_fds=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        msg = self._recv(timeout)
        if not msg or not msg.get("ready"):
            raise RuntimeError(f"sandbox worker {self.index} failed to start")
        self.info = msg

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, job: dict) -> None:
        write_message(self.proc.stdin.fileno(), job)

    def _recv(self, timeout: float) -> dict | None:
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
        if not ready:
            return None
        try:
            return read_message(fd)
        except (OSError, ValueError):
            return None

    def recv(self, timeout: float) -> dict | None:
        return self._recv(timeout)

    def kill(self) -> None:
        if self.proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            if sig == signal.SIGTERM:
                try:
                    self.proc.wait(0.2)
                except subprocess.TimeoutExpired:
                    continue
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        if self.info.get("uid") is not None:
            _sweep_uid(self.info["uid"])
        self.proc = None


def _sweep_uid(uid: int) -> None:
    """Kill every process of a sandbox uid (root only), from a short-lived helper process."""
    try:
        subprocess.run([sys.executable, "-S", "-c", "import os,signal; os.kill(-1, signal.SIGKILL)"],
                       user=uid, group=uid, extra_groups=[], timeout=10,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={})
    except (OSError, subprocess.SubprocessError):
        pass


class Sandbox:
    """A pool of `workers` warm worker processes. Use as a context manager or call close().

    memory_mb:     address-space budget per program on top of the worker's own footprint.
    output_limit:  bytes of program output kept (the rest is dropped).
    isolate_uid:   drop each child to a per-worker uid (needs root; default: when root).
    """

    def __init__(self, workers: int = 2, *, memory_mb: int = 512, output_limit: int = 65536,
                 isolate_uid: bool | None = None):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.memory_mb, self.output_limit = memory_mb, output_limit
        if isolate_uid is None:
            isolate_uid = os.geteuid() == 0
        uids = _pick_uids(workers) if isolate_uid else [None] * workers
        self._workers = [_WorkerHandle(uid, i) for i, uid in enumerate(uids)]
        self._lock = threading.Lock()
        self._closed = False
        self.stats = {"jobs": 0, "worker_restarts": 0, "cpu_s": 0.0}
        for w in self._workers:
            w.start()
        try:
            for w in self._workers:
                w.wait_ready()
        except Exception:
            self.close()
            raise
        _live_sandboxes.add(self)

    # ------------------------------------------------------------------------------------
    @property
    def network_isolated(self) -> bool:
        return all(w.info.get("network_isolated") for w in self._workers)

    @property
    def uid_isolated(self) -> bool:
        """True when every child runs under a sandbox uid (root, and a world-readable Python)."""
        return all(w.info.get("uid") is not None for w in self._workers)

    def run_tests(self, program: str, tests: str, timeout_s: float = 5.0) -> Verdict:
        return self.run_tests_many([(program, tests)], timeout_s=timeout_s)[0]

    def run_tests_many(self, jobs, timeout_s: float | list[float] = 5.0) -> list[Verdict]:
        """Run (program, tests) pairs in parallel across the workers; results in input order."""
        jobs = list(jobs)
        timeouts = list(timeout_s) if isinstance(timeout_s, (list, tuple)) else [float(timeout_s)] * len(jobs)
        if len(timeouts) != len(jobs):
            raise ValueError("timeout_s list must have one entry per job")
        if self._closed:
            raise RuntimeError("Sandbox is closed")
        results: list[Verdict | None] = [None] * len(jobs)
        todo: queue.Queue = queue.Queue()
        for i, ((program, tests), t) in enumerate(zip(jobs, timeouts)):
            todo.put((i, {"id": i, "program": program, "tests": tests, "timeout_s": max(0.05, float(t)),
                          "memory_mb": self.memory_mb, "output_limit": self.output_limit}))
        with self._lock:
            threads = [threading.Thread(target=self._drain, args=(w, todo, results), daemon=True)
                       for w in self._workers[: max(1, min(len(self._workers), len(jobs)))]]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        self.stats["jobs"] += len(jobs)
        self.stats["cpu_s"] += sum(v.cpu_s for v in results if v is not None)
        return results  # type: ignore[return-value]

    def _drain(self, w: _WorkerHandle, todo: queue.Queue, results: list) -> None:
        while True:
            try:
                i, job = todo.get_nowait()
            except queue.Empty:
                return
            results[i] = self._run_on(w, job)

    def _run_on(self, w: _WorkerHandle, job: dict) -> Verdict:
        t0 = time.monotonic()
        if not w.alive():
            self._restart(w)
        try:
            w.send(job)
            # The worker enforces the job's own limit; this outer one only catches a stuck worker.
            msg = w.recv(job["timeout_s"] + 30.0)
        except (OSError, ValueError):
            msg = None
        if msg is None or msg.get("id") != job["id"]:
            self._restart(w)
            return Verdict(False, "killed", 0.0, "sandbox worker died or stopped answering",
                           wall_s=time.monotonic() - t0)
        return _to_verdict(msg)

    def _restart(self, w: _WorkerHandle) -> None:
        w.kill()
        w.start()
        w.wait_ready()
        self.stats["worker_restarts"] += 1

    # ------------------------------------------------------------------------------------
    def close(self) -> None:
        """End every process this sandbox started (workers, children, detached children)."""
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            w.kill()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _to_verdict(msg: dict) -> Verdict:
    status = msg.get("status", "error")
    passed_units = int(msg.get("units_passed") or 0)
    failed_units = int(msg.get("units_failed") or 0)
    total = passed_units + failed_units
    passed = status == "passed"
    if passed:
        score = 1.0
    elif total and status in ("failed", "oom"):
        score = passed_units / total
    else:
        score = 0.0
    extra = {k: msg[k] for k in ("statements_done", "stdout_bytes", "violations") if msg.get(k) is not None}
    return Verdict(passed=passed, status=status if status in
                   ("passed", "failed", "error", "timeout", "oom", "syntax_error", "killed") else "error",
                   score=score, details=str(msg.get("details") or "")[:500],
                   stdout=str(msg.get("stdout") or ""), cpu_s=float(msg.get("cpu_s") or 0.0),
                   wall_s=float(msg.get("wall_s") or 0.0), units_passed=passed_units, units_total=total,
                   extra=extra)


@atexit.register
def _close_all() -> None:
    for sb in list(_live_sandboxes):
        try:
            sb.close()
        except Exception:
            pass
