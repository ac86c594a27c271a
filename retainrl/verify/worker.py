"""A warm worker: the trusted judge of its jobs, and the parent of a confined zygote.

Started by `Sandbox` as `python -m retainrl.verify.worker UID` in its own process group. It
reads length-prefixed JSON jobs on stdin and writes length-prefixed JSON results on stdout.

Start-up: pre-import the standard library, freeze the heap, then fork the zygote, before any
job exists (so no test or program is in its memory). The zygote confines itself once
(confine.py) and forks one program process per job (program.py).

Per job, here (trusted): size limits, compile the program (a syntax error never forks), the
test plan (judge.build_plan, cached per test source), then: ask the zygote for a program
process (passing it one end of a fresh socket pair and the output file), define the program
there, run the tests here against it (judge.run_tests), all under one wall-clock deadline
(select timeouts on the channel, SIGALRM for the tests' own code); finally ask the zygote to
kill and reap everything of the job. The verdict is computed here from decoded data; what the
program process sends is only ever an answer.
"""

from __future__ import annotations

import base64
import gc
import json
import marshal
import os
import resource
import select
import signal
import socket
import struct
import sys
import tempfile
import time

from retainrl.verify import confine, judge, program, wire

# Modules a program or test commonly imports. Importing them here makes each program cheap
# (its process is a fork of this image) and gives the tests a trusted copy. Deliberately not
# here: threading and what imports it (queue, logging, concurrent.futures): its after-fork
# handler alone costs every program process ~125 copy-on-write page faults; and the codecs
# beyond the default ones (2 MB more to copy at every fork). Programs import those as usual.
PREIMPORT = (
    "abc array ast base64 binascii bisect calendar cmath collections collections.abc copy csv "
    "dataclasses datetime decimal difflib enum fractions functools hashlib heapq io itertools "
    "json keyword math numbers operator pprint random re statistics string struct "
    "tempfile textwrap time typing unicodedata uuid zlib sys os inspect traceback"
).split()
HEADER = struct.Struct("!Q")
MAX_SOURCE_BYTES = 1_000_000
STDOUT_KEEP = 4096
ZYGOTE_REPLY_S = 10.0
WORKER_MEMORY_BYTES = 4 * 2**30


# ----------------------------------------------------------------------------------------
# framing with the Sandbox (trusted on both ends)
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
class _JobState:
    armed = False
    timed_out = False


class Worker:
    def __init__(self, sandbox_uid: int | None):
        self.sandbox_uid = sandbox_uid
        self.plans: dict = {}
        self.state = _JobState()
        self.isolation: dict = {}
        self.broken = False

    # -- start-up -----------------------------------------------------------------------------
    def setup(self) -> None:
        for name in PREIMPORT:
            try:
                __import__(name)
            except Exception:  # noqa: BLE001
                pass
        self.out_fd = _output_file()
        signal.signal(signal.SIGALRM, self._on_alarm)
        signal.signal(signal.SIGTERM, self._on_term)
        confine.libc()  # loaded once here; the zygote and its programs inherit it
        gc.collect()
        gc.freeze()  # forked processes' collections skip these objects: fewer copy-on-write faults
        self._start_zygote()
        # Trusted code runs here on values the program chose: an allocation it provokes fails
        # with MemoryError (a failed unit) instead of pushing the machine into swap or OOM.
        limit = program.vm_bytes() + WORKER_MEMORY_BYTES
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def _start_zygote(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            try:
                ours.close()
                _zygote_entry(theirs, self.sandbox_uid, os.getppid())
            finally:
                os._exit(70)
        theirs.close()
        self.ctl, self.zygote_pid = ours, pid
        ready, _, _ = select.select([ours], [], [], 60.0)
        msg = json.loads(ours.recv(65536) or b"{}") if ready else {}
        if not msg.get("ready"):
            raise RuntimeError("the sandbox zygote failed to start")
        self.isolation = msg["isolation"]

    def _on_alarm(self, signum, frame) -> None:
        if self.state.armed:
            self.state.timed_out = True
            raise wire.Deadline()

    def _on_term(self, signum, frame) -> None:
        """Sandbox.close(): end the zygote (and so every program) and reap it, then exit.
        Were the worker killed instead, they would die anyway (PDEATHSIG), reaped by init."""
        try:
            os.kill(self.zygote_pid, signal.SIGTERM)
            os.waitpid(self.zygote_pid, 0)
        except (OSError, AttributeError):
            pass
        os._exit(0)

    # -- one job --------------------------------------------------------------------------------
    def plan(self, tests: str, trusted: str, exports) -> judge.TestPlan:
        key = (tests, trusted, tuple(exports))
        hit = self.plans.get(key)
        if hit is None:
            hit = judge.build_plan(tests, trusted, exports)
            if len(self.plans) > 512:
                self.plans.clear()
            self.plans[key] = hit
        return hit

    def run(self, job: dict) -> dict:
        t0, cpu0 = time.monotonic(), time.process_time()
        program_src, tests = job.get("program", ""), job.get("tests", "")
        trusted, exports = job.get("trusted") or "", job.get("exports") or ()
        if not all(isinstance(s, str) for s in (program_src, tests, trusted)) or \
                not all(isinstance(s, str) for s in exports):
            return {"status": "error", "details": "program, tests and trusted must be strings"}
        if max(len(program_src), len(tests), len(trusted)) > MAX_SOURCE_BYTES:
            return {"status": "error", "details": "source too large"}
        try:
            code = compile(program_src, "<program>", "exec", dont_inherit=True)
        except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as e:
            return {"status": "syntax_error", "details": f"{type(e).__name__}: {getattr(e, 'msg', e)}"[:300]}
        try:
            plan = self.plan(tests, trusted, exports)
        except judge.TestSourceError as e:
            return {"status": "error", "details": str(e)[:300]}
        out = self._judge(job, plan, base64.b64encode(marshal.dumps(code)).decode("ascii"), t0)
        out["cpu_s"] = float(out.get("cpu_s") or 0.0) + (time.process_time() - cpu0)
        out["wall_s"] = time.monotonic() - t0
        return out

    def _judge(self, job: dict, plan, program_src: str, t0: float) -> dict:
        timeout = float(job["timeout_s"])
        limits = {k: job[k] for k in ("timeout_s", "memory_mb") if k in job}
        os.ftruncate(self.out_fd, 0)
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            socket.send_fds(self.ctl, [json.dumps({"op": "spawn", "limits": limits}).encode()],
                            [theirs.fileno(), self.out_fd])
        except OSError:
            self.broken = True
            return {"status": "killed", "details": "sandbox zygote is gone"}
        finally:
            theirs.close()
        state = self.state
        deadline = t0 + timeout
        chan = wire.Channel(mine.fileno(), deadline=deadline)
        jj = judge.JudgeJob(chan)
        state.timed_out = False
        try:
            state.armed = True
            signal.setitimer(signal.ITIMER_REAL, max(0.001, deadline - time.monotonic()))
            out = judge.run_tests(jj, plan, program_src, state)
        except wire.Deadline:
            out = {"status": "timeout", "details": f"wall-clock limit of {timeout} s"}
        except judge.Abort as e:
            out = {"status": e.status, "details": e.details}
        finally:
            state.armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
        mine.close()
        wait_status, child_cpu = self._end(wait=out["status"] == "killed")
        if out["status"] == "killed" and wait_status is not None and os.WIFSIGNALED(wait_status):
            sig = os.WTERMSIG(wait_status)
            if sig in (signal.SIGXCPU, signal.SIGKILL) and "exited" in out["details"]:
                out = {"status": "timeout", "details": f"CPU limit (signal {signal.Signals(sig).name})"}
            elif "exited" in out["details"]:
                out["details"] = f"killed by signal {signal.Signals(sig).name}"
        elif out["status"] == "killed" and wait_status is not None and os.WIFEXITED(wait_status) \
                and "exited" in out["details"]:
            out["details"] = f"the program process exited with code {os.WEXITSTATUS(wait_status)}"
        out["cpu_s"] = child_cpu
        size = os.fstat(self.out_fd).st_size
        out["stdout"] = os.pread(self.out_fd, STDOUT_KEEP, 0).decode("utf-8", "replace")
        out["stdout_bytes"] = size
        return out

    def _end(self, wait: bool) -> tuple[int | None, float]:
        """End the job's program process through the pidfd the zygote sent after forking it:
        (its wait status if it had already ended, else None; its CPU seconds), then SIGKILL.
        With `wait` (it closed the channel, so it is exiting), wait briefly for its end. The
        zygote kills the rest of the job before the next spawn. A zygote that sent no pidfd
        is broken."""
        try:
            ready, _, _ = select.select([self.ctl], [], [], ZYGOTE_REPLY_S)
            if not ready:
                raise OSError("no pidfd from the zygote")
            _, fds, _, _ = socket.recv_fds(self.ctl, 1024, 1)
            if len(fds) != 1:
                raise OSError("no pidfd from the zygote")
        except OSError:
            self.broken = True
            return None, 0.0
        pidfd = fds[0]
        try:
            if wait:
                select.select([pidfd], [], [], 0.5)  # readable once the process has ended
            status, cpu = _proc_status(pidfd)
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass
            return status, cpu
        finally:
            os.close(pidfd)


def _proc_status(pidfd: int) -> tuple[int | None, float]:
    """(wait status if the process is a zombie, else None; utime + stime seconds) of the
    process behind a pidfd, from /proc (its pid in our namespace is in the pidfd's fdinfo)."""
    try:
        with open(f"/proc/self/fdinfo/{pidfd}") as f:
            pid = next(int(line.split()[1]) for line in f if line.startswith("Pid:"))
        if pid <= 0:
            return None, 0.0
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
        return (int(fields[49]) if fields[0] == b"Z" else None), cpu
    except (OSError, StopIteration, ValueError, IndexError):
        return None, 0.0


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _output_file() -> int:
    """An unlinked file for programs' stdout/stderr (tmpfs when there is one), append-only."""
    for d in ("/dev/shm", tempfile.gettempdir()):
        try:
            return os.open(d, os.O_TMPFILE | os.O_RDWR | os.O_APPEND, 0o600)
        except (OSError, AttributeError):
            continue
    fd, path = tempfile.mkstemp()
    os.unlink(path)
    return fd


def _zygote_entry(ctl: socket.socket, uid: int | None, worker_pid: int) -> None:
    """In the freshly forked zygote: confine, report, serve. Never returns."""
    lc = confine.libc()
    lc.prctl(confine.PR_SET_PDEATHSIG, signal.SIGKILL)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    keep = ctl.fileno()
    os.closerange(3, keep)
    os.closerange(keep + 1, 1 << 16)
    devnull = 0  # stdin stays /dev/null in every program process
    os.setsid()

    def fork_into_pid_ns() -> None:
        pid = os.fork()
        if pid:  # the outer process only waits: it is the worker's child, PID 1 is its child
            ctl.close()
            # the worker's close: end PID 1 (and with it the namespace) and reap it here, so
            # nothing is left for the host's init to reap
            signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGKILL))
            _, status = os.waitpid(pid, 0)
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
        lc.prctl(confine.PR_SET_PDEATHSIG, signal.SIGKILL)

    iso, base_dir = confine.confine_zygote(f"rr-{worker_pid}", uid, fork_into_pid_ns)
    lc.prctl(confine.PR_SET_PDEATHSIG, signal.SIGKILL)  # cleared by the uid change
    jobdir = os.path.join(base_dir, "job")
    os.mkdir(jobdir, 0o700)
    program.prepare_zygote(jobdir)
    child, child_closes = confine.make_child_confiner(iso, program.vm_bytes(), jobdir)
    ctl.send(json.dumps({"ready": True, "isolation": iso.as_dict()}).encode())
    program.zygote_loop(ctl, jobdir, iso.is_init, child, [devnull, *child_closes])


def main() -> None:
    uid = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] != "-" else None
    if len(sys.argv) > 2 and sys.argv[2] != "-":
        # pinned: the worker, its zygote and every program share one core (cache-warm
        # copy-on-write and hand-offs); the Sandbox spreads its workers over the cores
        try:
            os.sched_setaffinity(0, {int(sys.argv[2])})
        except (OSError, ValueError):
            pass
    # The protocol with the Sandbox moves to private fds; fds 0-2 (and so sys.std*) become
    # /dev/null, so a test that prints or calls input() cannot touch the protocol.
    stdin, stdout = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    worker = Worker(uid)
    worker.setup()
    write_message(stdout, {"ready": True, "pid": os.getpid(), "uid": worker.isolation.get("uid"),
                           "isolation": worker.isolation,
                           "network_isolated": "namespaces" in worker.isolation.get("layers", {})})
    while True:
        job = read_message(stdin)
        if job is None:
            break
        try:
            result = worker.run(job)
        except BaseException as e:  # noqa: BLE001 - the worker itself must never die on one job
            result = {"status": "error", "details": f"worker error: {type(e).__name__}: {e}"[:300]}
        result["id"] = job.get("id")
        write_message(stdout, result)
        if worker.broken:  # a fresh worker (and zygote) replaces this one
            break


if __name__ == "__main__":
    main()
