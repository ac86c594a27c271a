"""Sandbox: a pool of warm workers that run untrusted programs against trusted tests.

    from retainrl.verify import Sandbox
    with Sandbox(workers=2) as sb:
        v = sb.run_tests(program, tests, timeout_s=5.0)                 # -> Verdict
        vs = sb.run_tests_many([(program, tests), ...], timeout_s=5.0)   # parallel, order kept
        sb.isolation                                                     # what is enforced here

Design (see worker.py, judge.py, program.py, confine.py): the verdict is decided in a process
the program cannot touch. Each worker is a trusted judge; it forks, at start-up and before
any job exists, a confined zygote, which forks one program process per job. The tests run in
the worker and reach the program only through a socket carrying plain data (wire.py): calls
by handle with tagged-literal arguments, tagged-literal results, program objects as handles
without truth value, length, iteration, subscripting or equality of the program's making.
Prompt helpers the tests use come from the task's trusted text (`trusted=`), never from the
program; builtin names are the builtins unless the task exports them (`exports=`). Calls
with literal arguments only are sent with the program and answered in one round trip. The
program's output and exit are data, never a verdict.

What is isolated:
- the program cannot read or write the worker's memory, files or pipes: another process,
  outside its PID namespace and its Landlock domain (no ptrace, no signals out of it); its
  /proc shows only itself (hidepid=invisible), not the zygote or a previous job's process;
- where permitted (reported in `isolation`, warned about when missing): mount, network
  (empty), IPC, UTS and PID namespaces; a per-worker uid when root (or a user namespace
  mapping the caller's uid); Landlock: reads only in the Python installation and system
  libraries, writes only in the job's own folder on a private /tmp, no execve, no TCP;
  rlimits (CPU, address space, file size, open files, core, processes with an own uid);
- the wall clock from outside; every process of a job is killed when the job ends (as PID 1
  of the namespace, the zygote kills all others); stdin is /dev/null; output goes to a
  file the worker reads (first 4 KiB kept); the environment is scrubbed;
- the program never sees the tests, the datasets, or other jobs' programs (the zygote was
  forked before any job, and each program process only receives its own program).

What is NOT isolated:
- seccomp is a deny-list (dangerous syscalls refused), not an allow-list: the rest of the
  kernel's syscall surface is reachable (Landlock and namespaces limit what the calls can
  touch); no cgroup: CPU and memory are limited per process;
- world-readable files under /usr and the Python installation are readable;
- the trusted tests run in the worker on data the program chose: a value that makes trusted
  code slow or large is bounded by the deadline (SIGALRM, then the Sandbox's outer limit,
  which restarts the worker), message and value size limits and the worker's 4 GiB
  address-space limit, not by a separate process; tests that change module state (random's
  seed, say) change it for the worker's later jobs;
- processes of a job that are killed but still being torn down may briefly coexist with the
  next job's program (killed processes never run again; they are not visible to it);
- a test that passes its own functions or objects to the program lets the program call them
  (with data) and read their public attributes.
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
import warnings
import weakref

from retainrl.verify.verdict import STATUSES, Job, Verdict
from retainrl.verify.worker import read_message, write_message

OUTER_MARGIN_S = 5.0  # past the job's own limit, the Sandbox gives up on a worker
EXPECTED_MISSING = frozenset()  # every layer of confine.py is expected; a missing one is warned about

_instance_counter = itertools.count()
_live_sandboxes: "weakref.WeakSet[Sandbox]" = weakref.WeakSet()


def _pick_uids(n: int) -> list[int]:
    """Per-worker uids for this sandbox, unlikely to collide with other sandboxes or users."""
    slot = (os.getpid() * 16 + next(_instance_counter)) % 50_000
    return [200_000 + slot * 16 + i for i in range(n)]


class _WorkerHandle:
    """One worker process plus the pipes to it; restarted when it dies."""

    def __init__(self, uid: int | None, index: int, cpu: int | None = None):
        self.uid, self.index, self.cpu = uid, index, cpu
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH", "LANG", "LC_ALL",
                                                          "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                                          "VIRTUAL_ENV")}
        env.update({"PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "OPENBLAS_NUM_THREADS": "1",
                    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "retainrl.verify.worker", str(self.uid) if self.uid is not None else "-",
             str(self.cpu) if self.cpu is not None else "-"],
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
        self.proc = None


class Sandbox:
    """A pool of `workers` warm worker processes. Use as a context manager or call close().

    memory_mb:     address-space budget per program on top of the worker's own footprint.
    output_limit:  unused (kept for callers); the first 4 KiB of output are kept, up to the
                   16 MiB file-size limit is counted.
    isolate_uid:   run programs under a per-worker uid (needs root; default: when root).
    pin_workers:   pin worker i (with its zygote and programs) to the i-th allowed CPU (fewer
                   migrations and cache-cold copy-on-write; measured 1.15-1.4x on 2 cores).
    """

    def __init__(self, workers: int = 2, *, memory_mb: int = 512, output_limit: int = 65536,
                 isolate_uid: bool | None = None, pin_workers: bool = True):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.memory_mb, self.output_limit = memory_mb, output_limit
        if isolate_uid is None:
            isolate_uid = os.geteuid() == 0
        uids = _pick_uids(workers) if isolate_uid else [None] * workers
        cpus = sorted(os.sched_getaffinity(0)) if pin_workers and hasattr(os, "sched_getaffinity") else []
        self._workers = [_WorkerHandle(uid, i, cpus[i % len(cpus)] if cpus else None) for i, uid in enumerate(uids)]
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
        missing = {k: v for k, v in self.isolation["missing"].items() if k not in EXPECTED_MISSING}
        if missing:
            warnings.warn("retainrl Sandbox: isolation layers NOT enforced on this machine: "
                          + "; ".join(f"{k}: {v}" for k, v in missing.items()), RuntimeWarning, stacklevel=2)

    # ------------------------------------------------------------------------------------
    @property
    def isolation(self) -> dict:
        """What the program processes run under on this machine, from the first worker:
        {"layers": {layer: description}, "missing": {layer: why not}, "uid": ...,
        "pid_namespace": bool, "landlock_abi": int}. See confine.py for the layers."""
        return self._workers[0].info.get("isolation") or {"layers": {}, "missing": {"all": "no worker"}}

    @property
    def network_isolated(self) -> bool:
        return all(w.info.get("network_isolated") for w in self._workers)

    @property
    def uid_isolated(self) -> bool:
        """True when every program runs under a sandbox uid of its own (root only)."""
        return all(w.info.get("uid") is not None for w in self._workers)

    def run_tests(self, program: str, tests: str, timeout_s: float = 5.0, *, trusted: str = "",
                  exports=()) -> Verdict:
        """One job; see Job for `trusted` and `exports`."""
        return self.run_tests_many([Job(program, tests, trusted, exports)], timeout_s=timeout_s)[0]

    def run_tests_many(self, jobs, timeout_s: float | list[float] = 5.0) -> list[Verdict]:
        """Run jobs ((program, tests) pairs or Job) in parallel across the workers; results in
        input order. Never raises for a job's content: every job gets a Verdict."""
        jobs = list(jobs)
        timeouts = list(timeout_s) if isinstance(timeout_s, (list, tuple)) else [float(timeout_s)] * len(jobs)
        if len(timeouts) != len(jobs):
            raise ValueError("timeout_s list must have one entry per job")
        if self._closed:
            raise RuntimeError("Sandbox is closed")
        results: list[Verdict | None] = [None] * len(jobs)
        todo: queue.Queue = queue.Queue()
        for i, (job, t) in enumerate(zip(jobs, timeouts)):
            program, tests = job
            todo.put((i, {"id": i, "program": program, "tests": tests, "timeout_s": max(0.05, float(t)),
                          "trusted": getattr(job, "trusted", ""), "exports": list(getattr(job, "exports", ())),
                          "memory_mb": self.memory_mb}))
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
            try:
                results[i] = self._run_on(w, job)
            except Exception as e:  # noqa: BLE001 - a Verdict for every job, whatever happened
                results[i] = Verdict(False, "killed", 0.0, f"sandbox error: {type(e).__name__}: {e}"[:300])

    def _run_on(self, w: _WorkerHandle, job: dict) -> Verdict:
        t0 = time.monotonic()
        if not w.alive():
            self._restart(w)
        try:
            w.send(job)
            # The worker enforces the job's own limit; this outer one only catches a stuck worker.
            msg = w.recv(job["timeout_s"] + OUTER_MARGIN_S)
        except (OSError, ValueError):
            msg = None
        if msg is None or msg.get("id") != job["id"]:
            # A worker stuck past the job's limit (trusted test code in a long C call on data
            # the program chose) is replaced; the job timed out.
            stuck = w.alive()
            self._restart(w)
            return Verdict(False, "timeout" if stuck else "killed", 0.0,
                           "sandbox worker stopped answering" if stuck else "sandbox worker died",
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
    """The Verdict for a worker's result record (a malformed record gives "killed")."""
    try:
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
        extra = {k: msg[k] for k in ("statements_done", "stdout_bytes") if msg.get(k) is not None}
        return Verdict(passed=passed, status=status if status in STATUSES else "error",
                       score=score, details=str(msg.get("details") or "")[:500],
                       stdout=str(msg.get("stdout") or ""), cpu_s=float(msg.get("cpu_s") or 0.0),
                       wall_s=float(msg.get("wall_s") or 0.0), units_passed=passed_units, units_total=total,
                       extra=extra)
    except (TypeError, ValueError, AttributeError) as e:
        return Verdict(False, "killed", 0.0, f"malformed result record: {type(e).__name__}")


@atexit.register
def _close_all() -> None:
    for sb in list(_live_sandboxes):
        try:
            sb.close()
        except Exception:
            pass
