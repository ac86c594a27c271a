"""Adversarial suite: hostile programs must never get a passing verdict, honest ones must pass.

Every hostile program below solves nothing (its `f` is wrong or absent) and tries to get the
reward anyway, or attacks the machine. The tests for all of them ask f(1) == 2 and f(5) == 6,
the honest solution being `def f(x): return x + 1`.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
import time

import pytest

from retainrl.verify import Sandbox
from retainrl.verify.verdict import Job

TESTS = "assert f(1) == 2\nassert f(5) == 6\n"
TESTS_ABS = "assert abs(f(1) - 2) < 1e-6\nassert abs(f(5) - 6) < 1e-6\n"
TESTS_ISCLOSE = "import math\nassert math.isclose(f(1), 2)\nassert math.isclose(f(5), 6)\n"
TESTS_CHECK = textwrap.dedent("""
    def check(candidate):
        assert candidate(1) == 2
        assert candidate(5) == 6
    check(f)
""")
TESTS_LIST = "assert list(f(3)) == [1, 2, 3]\n"
TESTS_NOT = "assert not f(1)\n"
TESTS_SORTED = "assert sorted(f(3)) == [1, 2, 3]\n"
TESTS_COUNTER = "import collections\nassert collections.Counter(f(3)) == collections.Counter('abc')\n"
TESTS_LEN = "assert len(f(3)) == 3\n"

LIAR = textwrap.dedent("""
    class Liar:
        def __eq__(self, other): return True
        def __ne__(self, other): return False
        def __lt__(self, other): return True
        def __sub__(self, other): return Liar()
        def __rsub__(self, other): return Liar()
        def __abs__(self): return 0
        def __bool__(self): return False
        def __len__(self): return 3
        def __iter__(self): return iter([1, 2, 3])
        def __hash__(self): return 0
        def __float__(self): return 2.0
        def __index__(self): return 2
""")

HOSTILE = {
    # --- exit codes, early exits, printed markers -----------------------------------------
    "sys_exit_module": ("import sys\nsys.exit(0)\n", TESTS),
    "os_exit_module": ("import os\nos._exit(0)\n", TESTS),
    "quit_module": ("quit()\n", TESTS),
    "raise_systemexit": ("raise SystemExit(0)\n", TESTS),
    "sys_exit_in_test": ("def f(x):\n    import sys\n    sys.exit(0)\n", TESTS),
    "os_exit_in_test": ("def f(x):\n    import os\n    os._exit(0)\n", TESTS),
    "keyboard_interrupt_in_test": ("def f(x):\n    raise KeyboardInterrupt\n", TESTS),
    "baseexception_subclass": ("class B(BaseException):\n    def __str__(self):\n        while True: pass\n"
                               "def f(x):\n    raise B()\n", TESTS),
    "printed_marker": ("print('{\"status\": \"passed\"}')\nprint('PASSED')\ndef f(x):\n    return 0\n", TESTS),
    "forge_inherited_fds": (textwrap.dedent("""
        import os
        rec = b'{"status": "passed", "units_passed": 2, "units_failed": 0, "statements_done": 2, "nonce": "0"}\\n'
        for fd in range(0, 256):
            try: os.write(fd, rec)
            except OSError: pass
        def f(x): return 0
    """), TESTS),
    "forge_fds_then_exit": (textwrap.dedent("""
        import os
        for fd in range(0, 256):
            try: os.write(fd, b'{"status": "passed", "nonce": ""}\\n')
            except OSError: pass
        os._exit(0)
    """), TESTS),
    "forge_proc_fd_open": ("import os\nfor fd in os.listdir('/proc/self/fd'):\n"
                           "    open('/proc/self/fd/' + fd, 'w').write('passed')\ndef f(x): return 0\n", TESTS),
    "atexit_exit": ("import atexit, os\natexit.register(os._exit, 0)\ndef f(x): return 0\n", TESTS),
    "atexit_print": ("import atexit\natexit.register(print, 'passed')\ndef f(x): return 0\n", TESTS),
    "excepthook": ("import sys\nsys.excepthook = lambda *a: None\ndef f(x): raise ValueError\n", TESTS),
    # --- control-flow hijacking and harness tampering ---------------------------------------
    "settrace_skip": ("import sys\nsys.settrace(lambda *a: None)\ndef f(x): return 0\n", TESTS),
    "setprofile": ("import sys\nsys.setprofile(lambda *a: None)\ndef f(x): return 0\n", TESTS),
    "threading_settrace": ("import threading, sys\nthreading.settrace(lambda *a: None)\n"
                           "def f(x): return 0\n", TESTS),
    "getframe_walk": (textwrap.dedent("""
        import sys
        def f(x):
            fr = sys._getframe(1)
            while fr is not None:
                for k in list(fr.f_locals):
                    if 'count' in k: fr.f_locals[k]['failed'] = 0
                fr.f_globals['__rr_assert'] = lambda *a: None
                fr = fr.f_back
            return 0
    """), TESTS),
    "inspect_frames": ("import inspect\ndef f(x):\n    inspect.stack()\n    return 0\n", TESTS),
    "traceback_frame_walk": (textwrap.dedent("""
        def f(x):
            try:
                1 / 0
            except ZeroDivisionError as e:
                fr = e.__traceback__.tb_frame
                fr.f_back.f_globals['__rr_assert'] = lambda *a: None
            return 0
    """), TESTS),
    "generator_frame_walk": ("def g():\n    yield 1\ndef f(x):\n    gen = g()\n    gen.gi_frame.f_back\n"
                             "    return 0\n", TESTS),
    "gc_walk_counts": (textwrap.dedent("""
        import gc
        def f(x):
            for o in gc.get_objects():
                if isinstance(o, dict) and 'failed' in o and 'passed' in o:
                    o['failed'] = 0
            return 0
    """), TESTS),
    "gc_referents_patch_int": (textwrap.dedent("""
        import gc
        gc.get_referents(int.__dict__)[0]['__eq__'] = lambda a, b: True
        def f(x): return 0
    """), TESTS),
    "globals_patch_guard": ("def f(x):\n    globals()['__rr_assert'] = lambda *a: None\n    return 0\n", TESTS),
    "predefine_guard_names": ("__rr_assert = lambda *a: None\n__rr_call = lambda f, *a: 2\ndef f(x): return 0\n",
                              TESTS),
    "builtins_dict_swap": ("__builtins__ = {'abs': lambda x: 0}\ndef f(x): return 0\n", TESTS_ABS),
    "replace_code_of_stdlib": ("import statistics\nstatistics.mean.__code__ = (lambda *a: 2).__code__\n"
                               "def f(x): return 0\n", "import statistics\nassert statistics.mean([f(1)]) == 2\n"),
    # --- values that lie --------------------------------------------------------------------
    "lying_eq": (LIAR + "def f(x): return Liar()\n", TESTS),
    "lying_eq_check_fn": (LIAR + "def f(x): return Liar()\n", TESTS_CHECK),
    "lying_sub_abs": (LIAR + "def f(x): return Liar()\n", TESTS_ABS),
    "lying_isclose_float": (LIAR + "def f(x): return Liar()\n", TESTS_ISCLOSE),
    "lying_bool": (LIAR + "def f(x): return Liar()\n", TESTS_NOT),
    "lying_len": (LIAR + "def f(x): return Liar()\n", TESTS_LEN),
    "lying_iter_sorted": (LIAR + "def f(x): return Liar()\n", TESTS_SORTED),
    "int_subclass_eq": ("class I(int):\n    def __eq__(s, o): return True\ndef f(x): return I(0)\n", TESTS),
    "str_subclass_eq": ("class S(str):\n    def __eq__(s, o): return True\ndef f(x): return S('')\n",
                        "assert f(1) == 'one'\n"),
    "list_subclass_eq": ("class L(list):\n    def __eq__(s, o): return True\ndef f(x): return L()\n", TESTS_LIST),
    "generator_of_liars": (LIAR + "def f(x):\n    for _ in range(3): yield Liar()\n", TESTS_LIST),
    "dict_with_liar_keys": (LIAR + "def f(x): return {Liar(): 1}\n", "assert f(1) == {2: 1}\n"),
    "liar_in_tuple": (LIAR + "def f(x): return (Liar(), Liar())\n", "assert f(1) == (2, 3)\n"),
    "liar_via_assignment": (LIAR + "def f(x): return Liar()\n", "x = f(1)\ny = f(5)\nassert x == 2\nassert y == 6\n"),
    "liar_subscript": (LIAR + "class G:\n    def __getitem__(s, i): return 2\ndef f(x): return G()\n",
                       "assert f(1)[0] == 2\n"),
    "liar_attribute_eq": (LIAR + "class A:\n    real = None\ndef f(x):\n    a = A()\n    a.real = Liar()\n    return a\n", "assert f(1).real == 2\n"),
    # Not in the list: `assert f(1).count(2) == 1` passed by an object whose count() returns 1.
    # A method call on a program object is program code answering the test (duck typing), as
    # with a Stack class under test; the judge only guarantees that its *result* is plain data.
    "liar_fstring": ("class A:\n    def __format__(s, spec): return '2'\ndef f(x): return A()\n",
                     "assert f'{f(1)}' == '2'\n"),
    "liar_in_operator": (LIAR + "def f(x): return [Liar()]\n", "assert 2 in f(1)\n"),
    "thread_started_during_test": (textwrap.dedent("""
        import builtins, threading
        def spam():
            while True: builtins.abs = lambda v: 0
        def f(x):
            threading.Thread(target=spam, daemon=True).start()
            return 100
    """), TESTS_ABS),
    "metaclass_eq": ("class M(type):\n    def __eq__(c, o): return True\n    __hash__ = type.__hash__\n"
                     "class C(metaclass=M): pass\ndef f(x): return C\n", TESTS),
    "namedtuple_eq": ("import collections\nP = collections.namedtuple('P', 'a')\nP.__eq__ = lambda s, o: True\n"
                      "def f(x): return P(0)\n", TESTS),
    # --- monkeypatching the tests' tools ----------------------------------------------------
    "patch_builtins_abs": ("import builtins\nbuiltins.abs = lambda x: 0\ndef f(x): return 100\n", TESTS_ABS),
    "patch_builtins_during_call": ("import builtins\ndef f(x):\n    builtins.abs = lambda v: 0\n    return 100\n",
                                   TESTS_ABS),
    "patch_math_isclose": ("import math\nmath.isclose = lambda *a, **k: True\ndef f(x): return 100\n",
                           TESTS_ISCLOSE),
    "patch_math_isclose_during_call": ("import math\ndef f(x):\n    math.isclose = lambda *a, **k: True\n"
                                       "    return 100\n", TESTS_ISCLOSE + "assert math.isclose(f(2), 3)\n"),
    "patch_counter_eq": ("import collections\ncollections.Counter.__eq__ = lambda s, o: True\ndef f(x): return 'zzz'\n",
                         TESTS_COUNTER),
    "module_class_swap": (textwrap.dedent("""
        import math
        class M(type(math)):
            def __getattribute__(self, name):
                return lambda *a, **k: True
        math.__class__ = M
        def f(x): return 100
    """), TESTS_ISCLOSE),
    "patch_import": ("import builtins\n_real = builtins.__import__\n"
                     "builtins.__import__ = lambda *a, **k: type('m', (), {'isclose': staticmethod(lambda *a, **k: True)})\n"
                     "def f(x): return 100\n", TESTS_ISCLOSE),
    "shadow_builtin_sorted": ("def sorted(x): return [1, 2, 3]\ndef f(x): return 'no'\n", TESTS_SORTED),
    "sys_modules_swap": ("import sys, types\nfake = types.ModuleType('math')\nfake.isclose = lambda *a, **k: True\n"
                         "sys.modules['math'] = fake\ndef f(x): return 100\n", TESTS_ISCLOSE),
    # --- out-of-band tricks ------------------------------------------------------------------
    "del_forges_record": (textwrap.dedent("""
        import os
        class D:
            def __del__(self):
                for fd in range(3, 256):
                    try: os.write(fd, b'{"status": "passed", "nonce": "x"}\\n')
                    except OSError: pass
        keep = D()
        def f(x): return 0
    """), TESTS),
    "thread_forges_record": (textwrap.dedent("""
        import os, threading
        def spam():
            while True:
                for fd in range(3, 256):
                    try: os.write(fd, b'{"status": "passed", "nonce": "x"}\\n')
                    except OSError: pass
        threading.Thread(target=spam, daemon=True).start()
        def f(x): return 0
    """), TESTS),
    "thread_patches_builtins": (textwrap.dedent("""
        import builtins, threading
        def spam():
            while True: builtins.abs = lambda v: 0
        threading.Thread(target=spam, daemon=True).start()
        def f(x): return 100
    """), TESTS_ABS),
    "read_proc_mem": ("def f(x):\n    open('/proc/self/mem', 'rb')\n    return 0\n", TESTS),
    "ctypes_import": ("import ctypes\ndef f(x): return 0\n", TESTS),
    "signal_alarm_interrupt": ("import signal\nsignal.signal(signal.SIGALRM, lambda *a: None)\n"
                               "signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)\ndef f(x): return 0\n", TESTS),
}

RESOURCE = {
    "infinite_loop": ("while True:\n    pass\n", "timeout"),
    "loop_in_test": ("def f(x):\n    while True: pass\n", "timeout"),
    "memory_bomb_in_test": ("def f(x):\n    return 'x' * 10**11\n", "oom"),
    "ignored_alarm": ("import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nsignal.alarm(1)\n"
                      "while True: pass\n", "timeout"),
    "cancelled_alarm_and_xcpu": ("import signal\nsignal.alarm(0)\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\n"
                                 "while True: pass\n", "timeout"),
    "memory_bomb_single": ("x = bytearray(10**11)\n", "oom"),
    "memory_bomb_growing": ("l = []\nwhile True:\n    l.append(bytearray(10**7))\n", ("oom", "timeout")),
    "fork_bomb": ("import os\nwhile True:\n    os.fork()\n", "error"),
    # A fork is allowed (up to the process limit); the job's PID namespace ends every process.
    # The parent defines no `f`, so the tests fail.
    "detached_child": ("import os\nif os.fork() == 0:\n    os.setsid()\n    import time\n    time.sleep(100)\n", "failed"),
    "subprocess_detached": ("import subprocess\nsubprocess.Popen(['sleep', '100'], start_new_session=True)\n", "error"),
    "posix_spawn": ("import os\nos.posix_spawn('/bin/sleep', ['sleep', '100'], {})\n", "error"),
    "system": ("import os\nos.system('sleep 100 &')\n", "failed"),  # no execve: the shell never runs
    "runaway_threads": ("import threading\nfor _ in range(10000):\n"
                        "    threading.Thread(target=lambda: [0 for _ in iter(int, 1)], daemon=True).start()\n"
                        "while True: pass\n", None),
    "unbounded_output": ("while True:\n    print('x' * 1000)\n", "timeout"),
    "deep_recursion": ("def r(n):\n    return r(n + 1)\nr(0)\n", "error"),
    "deep_recursion_raised_limit": ("import sys\nsys.setrecursionlimit(10**7)\ndef r(n):\n    return r(n + 1) + 1\n"
                                    "r(0)\n", None),
    "stdin_block": ("input()\n", "error"),
    "stdin_read": ("import sys\nsys.stdin.read()\nwhile True: pass\n", "timeout"),
    "kill_parent": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", "error"),
    "kill_group": ("import os, signal\nos.killpg(0, signal.SIGKILL)\n", ("killed", "timeout")),  # kills itself
    # refused, or it only reaches the previous job's dying processes: the zygote (PID 1) is immune
    "kill_all": ("import os, signal\nos.kill(-1, signal.SIGKILL)\n", ("error", "failed")),
    "fd_exhaustion": ("fs = [open('f%d' % i, 'w') for i in range(100000)]\n", "error"),
    "disk_fill": ("with open('big', 'wb') as fh:\n    while True: fh.write(b'x' * 2**20)\n", "error"),
    "write_outside": ("open('/tmp/retainrl_pwned', 'w').write('x')\n", "error"),
    "write_home_outside": ("import os\nos.makedirs('/var/tmp/retainrl_pwned_dir')\n", "error"),
    "network": ("import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 22))\n", "error"),
}

HONEST = {
    "plain": "def f(x):\n    return x + 1\n",
    "prints_a_lot": "for i in range(20000):\n    print('line', i, 'x' * 50)\ndef f(x):\n    print(x)\n    return x + 1\n",
    "stdlib_imports": textwrap.dedent("""
        import collections, itertools, math, re, heapq, functools, json, datetime, fractions, decimal
        import random, string, statistics, bisect, typing, dataclasses, enum, copy, operator
        def f(x):
            return int(math.sqrt((x + 1) ** 2)) + len(re.findall('z', 'abc'))
    """),
    "temp_files": textwrap.dedent("""
        import tempfile, os
        with tempfile.NamedTemporaryFile('w', delete=False) as fh:
            fh.write('1')
        with open('local.txt', 'w') as fh:
            fh.write('1')
        os.makedirs('sub/dir', exist_ok=True)
        def f(x):
            return x + int(open('local.txt').read())
    """),
    "recursion": "def f(x, d=500):\n    return x + 1 if d == 0 else f(x, d - 1)\n",
    "allocates_50mb": "buf = bytearray(50 * 2**20)\ndef f(x):\n    b = [0] * (6 * 10**6)\n    return x + 1 + b[-1]\n",
    "sleeps": "import time\ntime.sleep(0.2)\ndef f(x):\n    return x + 1\n",
    "namedtuple_enum_dataclass": textwrap.dedent("""
        import collections, enum, dataclasses, typing
        P = collections.namedtuple('P', 'a b')
        class Color(enum.Enum):
            RED = 1
        @dataclasses.dataclass
        class D:
            v: int
        T = typing.NamedTuple('T', [('a', int)])
        def f(x):
            return P(x, 1).a + D(1).v + Color.RED.value - 1
    """),
    "class_based": "class Adder:\n    def __init__(self, k): self.k = k\n    def __call__(self, x): return x + self.k\n"
                   "f = Adder(1)\n",
    "thread_join": "import threading\nout = []\nt = threading.Thread(target=lambda: out.append(1))\nt.start()\nt.join()\n"
                   "def f(x):\n    return x + out[0]\n",
    "numpy_if_present": "try:\n    import numpy as np\nexcept ImportError:\n    np = None\n"
                        "def f(x):\n    return int(np.int64(x) + 1) if np is not None else x + 1\n",
}


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(workers=2) as sb:
        yield sb


def test_hostile_suite_is_large_enough():
    assert len(HOSTILE) + len(RESOURCE) >= 40


def test_hostile_programs_never_pass(sandbox):
    names = list(HOSTILE)
    verdicts = sandbox.run_tests_many([HOSTILE[n] for n in names], timeout_s=3.0)
    passed = [(n, v) for n, v in zip(names, verdicts) if v.passed or v.score == 1.0]
    assert not passed, "hostile programs got reward: " + "; ".join(f"{n}: {v}" for n, v in passed)


def test_honest_programs_pass_in_every_test_style(sandbox):
    jobs, labels = [], []
    for name, prog in HONEST.items():
        for tname, tests in (("plain", TESTS), ("abs", TESTS_ABS), ("isclose", TESTS_ISCLOSE), ("check", TESTS_CHECK)):
            jobs.append((prog, tests))
            labels.append(f"{name}/{tname}")
    verdicts = sandbox.run_tests_many(jobs, timeout_s=10.0)
    failed = [(n, v) for n, v in zip(labels, verdicts) if not v.passed]
    assert not failed, "; ".join(f"{n}: {v.status} {v.details}" for n, v in failed)


def test_honest_output_is_captured_and_truncated(sandbox):
    v = sandbox.run_tests(HONEST["prints_a_lot"], TESTS, timeout_s=10.0)
    assert v.passed and v.stdout.startswith("line 0 ")
    assert len(v.stdout) <= 4096 and v.extra["stdout_bytes"] > 1_000_000


def test_honest_generator_consumed_by_trusted_list(sandbox):
    prog = "def f(n):\n    for i in range(1, n + 1):\n        yield i\n"
    assert sandbox.run_tests(prog, TESTS_LIST).passed
    assert sandbox.run_tests(prog, "assert sum(f(3)) == 6\nassert [x * 2 for x in f(2)] == [2, 4]\n").passed


def test_honest_benchmark_idioms(sandbox):
    cases = {
        "setup_builds_program_objects": ("class Node:\n    def __init__(self, v, left=None):\n        self.v, self.left = v, left\n"
                                         "def height(n):\n    return 0 if n is None else 1 + height(n.left)\n",
                                         "root = Node(1, Node(2))\nassert height(root) == 2\n"),
        "trusted_stdlib_object": ("def f(x):\n    return x + 1\n",
                                  "import random\nrng = random.Random(42)\nfor _ in range(5):\n"
                                  "    v = rng.randint(0, 9)\n    assert f(v) == v + 1\n"),
        "re_match_truth": ("import re\ndef f(s):\n    return re.search('a+', s)\n",
                           "assert f('baa')\nassert not f('bbb')\nassert f('baa').group(0) == 'aa'\n"),
        "class_in_tests": ("def f(x):\n    return x + 1\n",
                           "class Checker:\n    def run(self):\n        return f(1) == 2\nassert Checker().run()\n"),
        "kwarg_named_f": ("def g(**kw):\n    return kw\n", "assert dict(f=1) == {'f': 1}\nassert g(f=2) == {'f': 2}\n"),
        # a builtin name means the program's only when the task exports it (MBPP's `sum`)
        "program_shadows_sum": Job("def sum(a, b):\n    return a + b\n", "assert sum(10, 15) == 25\n", exports=["sum"]),
        "program_object_method": ("class Stack:\n    def __init__(self): self.items = []\n"
                                  "    def push(self, x): self.items.append(x); return len(self.items)\n",
                                  "s = Stack()\nassert s.push(3) == 1\nassert s.push(4) == 2\n"),
        "shift_jis_codec": ("def f(s):\n    return s.encode('shift_jis')\n", "assert f('12:00') == b'12:00'\n"),
    }
    names = list(cases)
    verdicts = sandbox.run_tests_many([cases[n] for n in names], timeout_s=10.0)
    failed = [(n, v) for n, v in zip(names, verdicts) if not v.passed]
    assert not failed, "; ".join(f"{n}: {v.status} {v.details}" for n, v in failed)


def test_honest_program_classes_can_be_passed_back(sandbox):
    prog = ("class Pair:\n    def __init__(self, a, b): self.a, self.b = a, b\n"
            "def longest(pairs, n):\n    return max(p.b - p.a for p in pairs)\n")
    assert sandbox.run_tests(prog, "assert longest([Pair(1, 5), Pair(2, 3)], 2) == 4\n").passed


@pytest.mark.parametrize("name", sorted(RESOURCE))
def test_hostile_resource_use_fails_fast(sandbox, name):
    prog, expected_status = RESOURCE[name]
    t0 = time.monotonic()
    v = sandbox.run_tests(prog, TESTS, timeout_s=1.5)
    assert not v.passed, f"{name}: {v}"
    assert time.monotonic() - t0 < 8.0, f"{name} took too long"
    if expected_status is not None:
        allowed = expected_status if isinstance(expected_status, tuple) else (expected_status,)
        assert v.status in allowed, f"{name}: {v}"
    # the sandbox keeps serving after every attack
    assert sandbox.run_tests(HONEST["plain"], TESTS).passed


def test_no_writes_outside_temp_dir(sandbox):
    for path in ("/tmp/retainrl_pwned", "/var/tmp/retainrl_pwned_dir"):
        assert not os.path.exists(path)


def test_status_and_score_semantics(sandbox):
    half = sandbox.run_tests("def f(x):\n    return 2\n", TESTS)
    assert (half.status, half.passed, half.score, half.units_total) == ("failed", False, 0.5, 2)
    assert sandbox.run_tests("def f(:\n", TESTS).status == "syntax_error"
    assert sandbox.run_tests("raise ValueError('x')\n", TESTS).status == "error"
    raising = sandbox.run_tests("def f(x):\n    raise ValueError\n", TESTS)
    assert raising.status == "failed" and raising.score == 0.0 and "ValueError" in raising.details


def test_close_leaves_no_process_behind():
    sb = Sandbox(workers=2)
    pids = [w.proc.pid for w in sb._workers]
    uids = [w.info.get("uid") for w in sb._workers]
    sb.run_tests_many([("import time\ntime.sleep(30)\n", "assert True\n")] * 2, timeout_s=0.5)
    sb.close()
    time.sleep(0.2)
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    if all(u is not None for u in uids):
        out = subprocess.run(["ps", "-eo", "uid="], capture_output=True, text=True).stdout.split()
        assert not set(map(str, uids)) & set(out)
