"""Verifier v2 (issue 13): one hostile group per attack class, honest controls, confinement.

Every hostile program here is wrong (it does not compute what its tests ask) and tries to get
the reward anyway through one of the classes of the issue; none may pass. The honest controls
are the kinds of correct programs the previous verifier refused or failed. The confinement
tests run probes inside the program process and check each layer `Sandbox.isolation` claims.
"""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import pytest

from retainrl.data.task import Task
from retainrl.verify import Sandbox, Verdict
from retainrl.verify.checks import verify_many
from retainrl.verify.sandbox import _to_verdict
from retainrl.verify.verdict import Job

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# The expected answers are unguessable strings that exist only in the tests' text.
TESTS_SECRET = "assert f(0) == 'qz71-wk4r'\nassert f(1) == 'mv09-tt2p'\n"


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(workers=2) as sb:
        yield sb


def dedent(s: str) -> str:
    return textwrap.dedent(s).lstrip("\n")


def none_pass(sandbox, cases: dict) -> None:
    names = list(cases)
    verdicts = sandbox.run_tests_many([cases[n] for n in names], timeout_s=5.0)
    passed = [f"{n}: {v}" for n, v in zip(names, verdicts) if v.passed or v.score == 1.0]
    assert not passed, "hostile programs got reward: " + "; ".join(passed)
    assert sandbox.run_tests("def f(x):\n    return x + 1\n", "assert f(1) == 2\n").passed  # still serving


# ------------------------------------------------------------------ class 1: forged records
FORGE_FRAME = dedent("""
    import json, os, struct
    def frame(obj):
        body = json.dumps(obj).encode()
        return struct.pack('!I', len(body)) + body
    FORGED = [frame({'r': 'qz71-wk4r'}), frame({'status': 'passed', 'units_passed': 2}),
              struct.pack('!Q', 40) + b'{"status": "passed", "id": 0, "x": 1}   ']
    def spray():
        for fd in range(0, 64):
            for rec in FORGED:
                try:
                    os.write(fd, rec)
                except OSError:
                    pass
""")


def test_class1_forged_records_after_program_code_runs_again(sandbox):
    none_pass(sandbox, {
        "gc_callback_sprays": (FORGE_FRAME + dedent("""
            import gc
            gc.callbacks.append(lambda phase, info: spray())
            def f(x):
                gc.collect()
                return 'no'
        """), TESTS_SECRET),
        "del_sprays_at_teardown": (FORGE_FRAME + dedent("""
            class Bomb:
                def __del__(self):
                    spray()
            def f(x):
                Bomb()
                return 'no'
        """), TESTS_SECRET),
        "default_factory_sprays": (FORGE_FRAME + dedent("""
            import collections
            d = collections.defaultdict(lambda: spray())
            def f(x):
                d[x]
                return 'no'
        """), TESTS_SECRET),
        "replaced_json_and_memoryview": (dedent("""
            import builtins, json
            json.dumps = lambda *a, **k: '{"r": "qz71-wk4r"}'
            json.JSONEncoder.encode = lambda self, o: '{"r": "qz71-wk4r"}'
            builtins.memoryview = lambda b: b
            def f(x):
                return 'no'
        """), TESTS_SECRET),
        "server_rewritten_to_answer_true": (dedent("""
            import sys
            side = sys.modules['retainrl.verify.program'].ProgramSide
            side.serve = lambda self, msg: {'r': True, 'names': {}}
            def f(x):
                return 'no'
        """), TESTS_SECRET),
        "thread_sprays_during_tests": (FORGE_FRAME + dedent("""
            import threading
            threading.Thread(target=lambda: [spray() for _ in iter(int, 1)], daemon=True).start()
            def f(x):
                return 'no'
        """), TESTS_SECRET),
    })


# ------------------------------------------------------------------ class 2: frames and memory
SCAN = dedent("""
    import gc, re, sys
    PAT = re.compile(r'[a-z]{2}\\d\\d-[a-z]{2}\\d[a-z]')
    found = []
    def look(obj):
        if isinstance(obj, str):
            m = PAT.search(obj)
            if m:
                found.append(m.group(0))
        elif isinstance(obj, (bytes, bytearray)):
            m = PAT.search(obj.decode('latin-1'))
            if m:
                found.append(m.group(0))
    def scan_frames(fr):
        while fr is not None:
            for v in list(fr.f_locals.values()) + list(fr.f_globals.values()):
                look(v)
            look(fr.f_code.co_consts)
            for c in fr.f_code.co_consts:
                look(c)
            fr = fr.f_back
    def scan_heap():
        for o in gc.get_objects():
            look(o)
            if isinstance(o, (list, tuple, dict)):
                for v in (o.values() if isinstance(o, dict) else o):
                    look(v)
    def answer():
        return found[0] if found else 'nothing found'
""")


def test_class2_frames_and_gc_reach_no_test_data(sandbox):
    none_pass(sandbox, {
        "signal_handler_frame": (SCAN + dedent("""
            import signal
            signal.signal(signal.SIGALRM, lambda s, frame: scan_frames(frame))
            signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
            def f(x):
                t = __import__('time').time() + 0.05
                while __import__('time').time() < t:
                    pass
                return answer()
        """), TESTS_SECRET),
        "raise_signal_frame": (SCAN + dedent("""
            import signal
            signal.signal(signal.SIGUSR1, lambda s, frame: scan_frames(frame))
            def f(x):
                signal.raise_signal(signal.SIGUSR1)
                return answer()
        """), TESTS_SECRET),
        "gc_saveall_garbage": (SCAN + dedent("""
            import gc
            gc.set_debug(gc.DEBUG_SAVEALL)
            def f(x):
                gc.collect()
                for o in gc.garbage:
                    look(o)
                scan_heap()
                return answer()
        """), TESTS_SECRET),
        "proc_self_mem_scan": (SCAN + dedent("""
            def f(x):
                with open('/proc/self/maps') as maps, open('/proc/self/mem', 'rb', 0) as mem:
                    for line in maps:
                        lo, hi = (int(v, 16) for v in line.split()[0].split('-'))
                        if 'r' not in line.split()[1] or hi - lo > 1 << 26:
                            continue
                        try:
                            mem.seek(lo)
                            look(mem.read(hi - lo))
                        except OSError:
                            pass
                return answer()
        """), TESTS_SECRET),
        "other_processes_memory": (SCAN + dedent("""
            import os
            def f(x):
                for pid in [p for p in os.listdir('/proc') if p.isdigit()] + [str(os.getppid())]:
                    try:
                        with open(f'/proc/{pid}/mem', 'rb', 0) as mem, open(f'/proc/{pid}/maps') as maps:
                            for line in maps:
                                lo, hi = (int(v, 16) for v in line.split()[0].split('-'))
                                mem.seek(lo)
                                look(mem.read(min(hi - lo, 1 << 24)))
                    except OSError:
                        pass
                    for name in ('cmdline', 'environ'):
                        try:
                            look(open(f'/proc/{pid}/{name}', 'rb').read())
                        except OSError:
                            pass
                return answer()
        """), TESTS_SECRET),
    })


# ------------------------------------------------------------------ class 3: paths and identity
PROBE = dedent("""
    import json, os, signal, socket, subprocess
    out = {}
    def attempt(name, fn):
        try:
            fn()
            out[name] = 'allowed'
        except BaseException as e:
            out[name] = 'refused: ' + type(e).__name__
    def dirfd_write():
        d = os.open('/', os.O_RDONLY)
        fd = os.open('retainrl_v2_pwned', os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=d)
        os.write(fd, b'x')
    attempt('write_tmp_outside_job', lambda: open('/tmp/retainrl_v2_pwned', 'w').write('x'))
    attempt('write_via_dir_fd', dirfd_write)
    attempt('write_repo', lambda: open('/work/main/retainrl_v2_pwned', 'w').write('x'))
    attempt('read_dataset_dir', lambda: os.listdir('/work/shared/data'))
    attempt('read_repo_tests', lambda: open('/work/main/tests/test_verifier_v2.py').read())
    attempt('exec_binary', lambda: subprocess.run(['/bin/true'], check=True))
    attempt('tcp_connect', lambda: socket.create_connection(('127.0.0.1', 22), timeout=0.5))
    attempt('signal_pid1', lambda: os.kill(1, signal.SIGTERM))
    attempt('open_pid1_mem', lambda: open('/proc/1/mem', 'rb').read(1))
    attempt('write_own_job_dir', lambda: open('scratch.txt', 'w').write('ok'))
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    def checked(rc):
        if rc != 0:
            raise OSError(ctypes.get_errno(), 'refused')
    attempt('unshare_user_namespace', lambda: checked(libc.unshare(0x10000000)))
    attempt('ptrace_attach_pid1', lambda: checked(libc.ptrace(16, 1, None, None)))
    attempt('fork_still_works', lambda: os.waitpid(os.fork() or os._exit(0), 0))
    out['uid'] = os.getuid()
    out['ppid'] = os.getppid()
    out['pids'] = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
    out['self'] = os.getpid()
    out['others'] = {}
    for pid in out['pids']:
        if pid not in (1, out['self']):
            for what in ('mem', 'environ', 'maps'):
                attempt(f'{pid}/{what}', lambda: open(f'/proc/{pid}/{what}', 'rb').read(1))
                out['others'][f'{pid}/{what}'] = out.pop(f'{pid}/{what}')
    print(json.dumps(out))
""")


def test_class3_paths_identity_and_processes_are_confined(sandbox):
    iso = sandbox.isolation
    layers = iso["layers"]
    assert layers, iso  # something is enforced, and it says what
    v = sandbox.run_tests(PROBE, "assert True\n", timeout_s=10.0)
    assert v.passed, v
    out = json.loads(v.stdout)
    assert out["write_own_job_dir"] == "allowed"
    assert not Path("/tmp/retainrl_v2_pwned").exists() and not Path("/retainrl_v2_pwned").exists()
    assert not Path("/work/main/retainrl_v2_pwned").exists()
    if "landlock" in layers:
        for k in ("write_tmp_outside_job", "write_via_dir_fd", "write_repo", "read_dataset_dir",
                  "read_repo_tests", "exec_binary"):
            assert out[k].startswith("refused"), (k, out)
    if "namespaces" in layers:
        assert out["tcp_connect"].startswith("refused"), out
        # no process outside the job's namespace is visible, and of those inside (the zygote,
        # the previous job's processes that may still be dying) none can be read
        assert out["ppid"] == 1, out
        assert all(r.startswith("refused") for r in out["others"].values()), out
        if "itself visible" in layers["proc"]:
            assert out["pids"] == [out["self"]], out
        assert out["open_pid1_mem"].startswith("refused"), out
    if "seccomp" in layers:
        assert out["unshare_user_namespace"].startswith("refused"), out
        assert out["ptrace_attach_pid1"].startswith("refused"), out
    assert out["fork_still_works"] == "allowed", out
    if "identity" in layers:
        assert out["uid"] != 0 and out["uid"] == iso["uid"], out
    # whatever the program did to PID 1 (the zygote), the sandbox keeps serving
    assert sandbox.run_tests("def f(x):\n    return x + 1\n", "assert f(1) == 2\n").passed


# ------------------------------------------------------------------ class 4: names the tests use
POLY_PREFIX = dedent('''
    import math


    def poly(xs: list, x: float):
        """Evaluates polynomial with coefficients xs at point x."""
        return sum([coeff * math.pow(x, i) for i, coeff in enumerate(xs)])


    def find_zero(xs: list):
        """Returns a zero of the polynomial xs."""
''')
POLY_TESTS = dedent("""
    def check(candidate):
        for coeffs in ([1, 2], [-6, 11, -6, 1], [2, 0, 0, 1]):
            solution = candidate(list(coeffs))
            assert math.fabs(poly(coeffs, solution)) < 1e-4
    check(find_zero)
""")
SHIFT_PREFIX = dedent('''
    def encode_shift(s: str):
        """Shift every letter by 5."""
        return "".join([chr(((ord(ch) + 5 - ord("a")) % 26) + ord("a")) for ch in s])


    def decode_shift(s: str):
        """Decode a string encoded with encode_shift."""
''')
SHIFT_TESTS = dedent("""
    def check(candidate):
        for s in ("hello", "verifier", "zebra"):
            assert candidate(encode_shift(s)) == s
    check(decode_shift)
""")


def task(prefix: str, tests: str, entry: str) -> Task:
    return Task(task_id=f"v2/{entry}", skill="gen", source="t", prompt=prefix, tests=tests,
                program_prefix=prefix, entry_point=entry, timeout_s=5.0)


def test_class4_prompt_helpers_and_builtins_come_from_trusted_text(sandbox):
    poly, shift = task(POLY_PREFIX, POLY_TESTS, "find_zero"), task(SHIFT_PREFIX, SHIFT_TESTS, "decode_shift")
    hostile = [
        (poly, "    return 0.0\n\n\ndef poly(xs, x):\n    return 0.0\n"),
        (poly, "    return 0.0\n\n\nclass math:\n    fabs = staticmethod(lambda x: 0.0)\n"),
        (poly, "    return 0.0\n\n\nimport builtins\nbuiltins.sum = lambda *a: 0.0\n"),
        (shift, "    return s\n\n\ndef encode_shift(s):\n    return s\n"),
        (shift, "    return s\n\n\nencode_shift = lambda s: s\n"),
    ]
    verdicts = verify_many(sandbox, hostile)
    assert not any(v.passed for v in verdicts), verdicts
    honest = [
        (poly, "    lo, hi = -1.0, 1.0\n    while poly(xs, lo) * poly(xs, hi) > 0:\n        lo, hi = 2 * lo, 2 * hi\n"
               "    for _ in range(200):\n        mid = (lo + hi) / 2\n"
               "        if poly(xs, lo) * poly(xs, mid) <= 0:\n            hi = mid\n        else:\n"
               "            lo = mid\n    return lo\n"),
        (shift, '    return "".join([chr(((ord(ch) - 5 - ord("a")) % 26) + ord("a")) for ch in s])\n'),
    ]
    verdicts = verify_many(sandbox, honest)
    assert all(v.passed for v in verdicts), verdicts


def test_class4_builtin_and_exception_names_stay_builtin(sandbox):
    tests = dedent("""
        assert abs(f(1) - 2) < 1e-9
        assert sorted(g(3)) == [1, 2, 3]
        assert len(g(3)) == 3 and isinstance(f(1), int)
        try:
            f(-1)
            assert False
        except ValueError:
            pass
    """)
    none_pass(sandbox, {
        "shadows_judging_builtins": (dedent("""
            def abs(x): return 0
            def sorted(x): return [1, 2, 3]
            def len(x): return 3
            def isinstance(a, b): return True
            class ValueError(Exception): pass
            def f(x):
                if x < 0:
                    raise ValueError('neg')
                return 100
            def g(n): return 'zz'
        """), tests),
        "exception_class_named_like_builtin": (dedent("""
            class ValueError(BaseException): pass
            def f(x):
                raise ValueError()
            def g(n): return [3, 2, 1]
        """), tests),
        # exporting the entry point does not make the program's `sum` the tests' `sum`
        "exported_name_is_not_a_license": Job("def sum(*a):\n    return 6\ndef f(n):\n    return [0]\n",
                                              "assert sum(f(3)) == 6\n", exports=["f"]),
    })


# ------------------------------------------------------------------ class 5: StopIteration
def test_class5_stopiteration_from_the_program_cannot_end_a_check_early(sandbox):
    prog = "def f(x):\n    raise StopIteration\n"
    none_pass(sandbox, {
        "all_map": (prog, "assert all(map(f, [1, 2, 3]))\n"),
        "all_genexp": (prog, "assert all(f(x) == x + 1 for x in [1, 2, 3])\n"),
        "sum_map": (prog, "assert sum(map(f, [1, 2])) == 0\n"),
        "generator_raises_stop_in_body": ("def f(n):\n    yield 1\n    raise StopIteration\n",
                                          "assert list(f(3)) == [1, 2, 3]\n"),
    })


# ------------------------------------------------------------------ class 6: modules and caches
def test_class6_imports_caches_and_containers_of_the_program_stay_its_own(sandbox):
    none_pass(sandbox, {
        "meta_path_fake_module": (dedent("""
            import sys, types, importlib.abc, importlib.machinery
            class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
                def find_spec(self, name, path, target=None):
                    if name == 'colorsys':
                        return importlib.machinery.ModuleSpec(name, self)
                def create_module(self, spec):
                    m = types.ModuleType('colorsys')
                    m.rgb_to_hsv = lambda *a: (0.5, 0.5, 0.5)
                    return m
                def exec_module(self, m):
                    pass
            sys.meta_path.insert(0, Finder())
            sys.modules.pop('colorsys', None)
            def f(x): return (0.0, 0.0, 0.0)
        """), "import colorsys\nassert colorsys.rgb_to_hsv(*f(1)) == (0.5, 0.5, 0.5)\n"),
        "sys_modules_injection": (dedent("""
            import sys, types
            fake = types.ModuleType('statistics')
            fake.mean = lambda xs: 2
            sys.modules['statistics'] = fake
            def f(x): return [0]
        """), "import statistics\nassert statistics.mean(f(1)) == 2\n"),
        "path_hooks_injection": (dedent("""
            import sys
            sys.path_hooks.insert(0, lambda p: (_ for _ in ()).throw(ImportError))
            sys.path_importer_cache.clear()
            def f(x): return 'abc'
        """), "import wave\nassert f(1) == wave.__name__\n"),
        "poisoned_re_cache": (dedent("""
            import re
            class P:
                def fullmatch(self, s, *a): return True
                match = search = fullmatch
            for flags in (0, re.UNICODE):
                re._cache[(str, r'\\d+', flags)] = P()
            def f(x): return 'abc'
        """), "import re\nassert re.fullmatch(r'\\d+', f(1))\n"),
        "poisoned_codec_cache": (dedent("""
            import codecs, encodings
            real = codecs.lookup('latin_1')
            fake = codecs.CodecInfo(lambda s, e='strict': (b'ok', len(s)), real.decode, name='latin_1')
            encodings._cache['latin_1'] = fake
            encodings._cache['latin-1'] = fake
            def f(x): return 'no'
        """), "assert f(1).encode('latin_1') == b'ok'\n"),
        "simplenamespace_that_lies": (dedent("""
            import types
            class NS(types.SimpleNamespace):
                def __eq__(self, other): return True
            def f(x): return NS(a=0)
        """), "import types\nassert f(1) == types.SimpleNamespace(a=2)\n"),
        "slice_with_liar_inside": (dedent("""
            class L:
                def __eq__(self, o): return True
                __hash__ = object.__hash__
            def f(x): return slice(L(), L())
        """), "assert f(1) == slice(2, 3)\n"),
        "init_subclass_on_program_base": (dedent("""
            class Base:
                def __init_subclass__(cls, **kw):
                    cls.ok = True
            def f(x): return Base
        """), "class T(f(1)):\n    ok = False\nassert T.ok\n"),
    })


# ------------------------------------------------------------------ class 7: test data on disk
def test_class7_benchmark_files_are_not_readable(sandbox):
    path = DATA / "humaneval" / "HumanEval.jsonl.gz"
    if not path.is_file():
        pytest.skip("benchmark data not present: nothing to protect")
    prog = f"def f(x):\n    return len(open({str(path)!r}, 'rb').read(10))\n"
    v = sandbox.run_tests(prog, "assert f(0) == 10\n")
    # refused (Landlock) or not there at all (a clone under /tmp is behind the program's private /tmp)
    assert not v.passed and ("PermissionError" in v.details or "FileNotFoundError" in v.details), v


# ------------------------------------------------------------------ crashes: never raise
def test_malformed_replies_are_killed_not_raised(sandbox):
    takeover = dedent("""
        import os, sys
        prog = sys.modules['retainrl.verify.program']
        def bad_serve(self, msg):
            os.write(self.chan.wfd, PAYLOAD)
            return {'r': 0}
        prog.ProgramSide.serve = bad_serve
        def f(x): return 0
    """)
    import struct as _struct

    def frame(body: bytes) -> bytes:
        return _struct.pack("!I", len(body)) + body

    payloads = {
        "huge_header": _struct.pack("!I", 2**31) + b"x",
        "non_int_handle": frame(b'{"r": ["h", "7", "f", "x"]}'),
        "float_handle": frame(b'{"r": ["h", 1.5, "f", "x"]}'),
        "unknown_tag": frame(b'{"r": ["zz", 1]}'),
        "deep_nesting": frame(b'{"r": ' + b'["l", ' * 5000 + b'1' + b']' * 5000 + b'}'),
        "big_decimal_int": frame(b'{"r": ' + b'9' * 20000 + b'}'),
        "exc_wrong_shape": frame(b'{"exc": [1, 2, 3]}'),
        "not_an_object": frame(b'[1, 2]'),
        "bad_utf8": frame(b'{"r": "\xff\xfe"}'),
        "bad_date": frame(b'{"r": ["date", 2020, 13, 40]}'),
        "bad_match": frame(b'{"r": ["M", "s", [], {"a": 9}]}'),
    }
    jobs, names = [], []
    for name, data in payloads.items():
        # the program's server is replaced after `def`: every later reply is the payload
        prog = f"PAYLOAD = {data!r}\n" + takeover
        jobs.append((prog, "assert f(1) == 0\nassert f(2) == 0\n"))
        names.append(name)
    verdicts = sandbox.run_tests_many(jobs, timeout_s=5.0)
    for name, v in zip(names, verdicts):
        assert isinstance(v, Verdict) and not v.passed, (name, v)
        assert v.status in ("killed", "failed"), (name, v)


def test_to_verdict_with_forged_fields_is_killed():
    v = _to_verdict({"status": "passed", "units_passed": "two", "units_failed": []})
    assert isinstance(v, Verdict) and v.status == "killed" and not v.passed


def test_huge_hex_literal_answers_get_a_verdict(sandbox):
    code = "def f(x):\n    return x\n"
    out = Task(task_id="o", skill="reason", source="t", prompt="p", check="output_prediction",
               tests=code, entry_point="f", call_input="3")
    inp = Task(task_id="i", skill="reason", source="t", prompt="p", check="input_prediction",
               tests=code, entry_point="f", expected="3")
    big = "0x" + "f" * 4000
    verdicts = verify_many(sandbox, [(out, big), (inp, big), (out, f"[{big}, {big}]"), (out, "3")])
    assert [v.passed for v in verdicts] == [False, False, False, True], verdicts


# ------------------------------------------------------------------ honest controls
HONEST = {
    "decimal_fraction_date": (dedent("""
        import datetime, decimal, fractions
        def f(x):
            return (decimal.Decimal('1.10') * x, fractions.Fraction(x, 3), datetime.date(2024, 2, x),
                    datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc), datetime.timedelta(days=x))
    """), dedent("""
        import datetime, decimal, fractions
        d, q, day, moment, delta = f(2)
        assert d == decimal.Decimal('2.20') and q == fractions.Fraction(2, 3)
        assert day == datetime.date(2024, 2, 2) and day.weekday() == 4
        assert moment.tzinfo is not None and moment.year == 2024 and delta.days == 2
    """)),
    "logging_and_futures": (dedent("""
        import logging, concurrent.futures
        log = logging.getLogger('p')
        def f(xs):
            log.warning('working')
            with concurrent.futures.ThreadPoolExecutor(max_workers=2) as ex:
                return list(ex.map(lambda v: v * 2, xs))
    """), "assert f([1, 2, 3]) == [2, 4, 6]\n"),
    "inspect_and_traceback": (dedent("""
        import inspect, traceback
        def f(a, b=2):
            try:
                1 / 0
            except ZeroDivisionError:
                tb = traceback.format_exc()
            return list(inspect.signature(f).parameters), 'ZeroDivisionError' in tb
    """), "assert f(1) == (['a', 'b'], True)\n"),
    "stdout_small_is_captured": ("print('hello from the program')\ndef f(x):\n    return x\n", "assert f(1) == 1\n"),
    "generator_counter_namedtuple": (dedent("""
        import collections
        P = collections.namedtuple('P', 'x y')
        def gen(n):
            yield from range(n)
        def count(s):
            return collections.Counter(s)
        def point():
            return P(1, 2)
    """), "assert list(gen(4)) == [0, 1, 2, 3]\nassert count('aab') == {'a': 2, 'b': 1}\n"
          "assert point().y == 2 and point() == (1, 2)\n"),
    "mutates_its_argument": ("def f(xs):\n    xs.sort()\n", "a = [3, 1, 2]\nf(a)\nassert a == [1, 2, 3]\n"),
    "calls_back_a_test_lambda": ("def apply(fn, xs):\n    return [fn(v) for v in xs]\n",
                                 "assert apply(lambda v: v * 10, [1, 2]) == [10, 20]\nassert apply(str, [1]) == ['1']\n"),
    "walks_test_objects": (dedent("""
        def reverse(node):
            prev = None
            while node:
                node.next, prev, node = prev, node, node.next
            return prev
    """), dedent("""
        class Node:
            def __init__(self, v, next=None):
                self.v, self.next = v, next
        head = reverse(Node(1, Node(2, Node(3))))
        assert [head.v, head.next.v, head.next.next.v] == [3, 2, 1]
    """)),
    "regex_match_result": ("import re\ndef f(s):\n    return re.search(r'(\\d+)-(?P<b>\\d+)', s)\n",
                           "m = f('a 12-34')\nassert m and m.group(1) == '12' and m.group('b') == '34'\n"
                           "assert m.span() == (2, 7)\nassert not f('none')\n"),
    "raises_what_the_tests_expect": ("def f(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x\n",
                                     "try:\n    f(-1)\n    assert False\nexcept ValueError as e:\n"
                                     "    assert 'negative' in str(e)\n"),
    "builtin_type_argument": ("def keep(xs, t):\n    return [v for v in xs if isinstance(v, t)]\n",
                              "assert keep([1, 'a', 2.5], str) == ['a']\n"),
}


def test_honest_controls_pass(sandbox):
    names = list(HONEST)
    verdicts = sandbox.run_tests_many([HONEST[n] for n in names], timeout_s=10.0)
    failed = [f"{n}: {v.status} {v.details}" for n, v in zip(names, verdicts) if not v.passed]
    assert not failed, "; ".join(failed)
    assert verdicts[names.index("stdout_small_is_captured")].stdout == "hello from the program\n"


def test_sortedness_check_over_5000_items_is_fast(sandbox):
    prog = "def f(xs):\n    return sorted(xs)\n"
    tests = ("import random\nxs = [random.Random(1).random() for _ in range(5000)]\nout = f(xs)\n"
             "assert all(out[i] <= out[i + 1] for i in range(len(out) - 1))\nassert len(out) == 5000\n")
    t0 = time.monotonic()
    v = sandbox.run_tests(prog, tests, timeout_s=10.0)
    assert v.passed, v
    assert time.monotonic() - t0 < 2.0


def test_prefetched_and_sequential_calls_agree(sandbox):
    # literal-only tests are batched with the program; a non-literal call disables that
    prog = "calls = []\ndef f(x):\n    calls.append(x)\n    return len(calls)\n"
    batched = sandbox.run_tests(prog, "assert f(5) == 1\nassert f(6) == 2\nassert f(5) == 3\n")
    x = "y = 6\n"
    sequential = sandbox.run_tests(prog, x + "assert f(5) == 1\nassert f(y) == 2\nassert f(5) == 3\n")
    assert batched.passed and sequential.passed, (batched, sequential)


def test_program_modules_bind_only_under_their_own_name_and_never_worker_acting_ones():
    from retainrl.verify import judge

    plan = judge.build_plan("x = (utils, math, shutil, store)\n")
    ns: dict = {}
    offered = {"utils": ["mod", "statistics"], "math": ["mod", "math"], "shutil": ["mod", "shutil"],
               "store": ["mod", "os"], "not_asked": ["mod", "math"]}
    from retainrl.verify import wire

    judge.bind_names(judge.JudgeJob(wire.Channel(-1)), plan, offered, ns)
    assert set(ns) == {"math", "shutil"}


def test_trusted_prelude_keeps_helpers_and_drops_the_entry_point():
    from retainrl.verify.checks import trusted_prelude

    src = trusted_prelude(POLY_PREFIX, "find_zero")
    assert "def poly(" in src and "import math" in src and "find_zero" not in src
    assert trusted_prelude("def add(a, b):\n", "add") == ""                    # an open signature only
    assert "X = 3" in trusted_prelude("X = 3\n\ndef add(a, b):\n", "add")      # cut before the open def
    assert trusted_prelude("", "f") == ""


def test_tests_that_print_or_read_stdin_do_not_disturb_the_worker(sandbox):
    prog = "def f(x):\n    return x + 1\n"
    tests = "print('from the tests', f(1))\ntry:\n    input()\nexcept EOFError:\n    pass\nassert f(1) == 2\n"
    verdicts = sandbox.run_tests_many([(prog, tests)] * 4 + [(prog, "assert f(2) == 3\n")], timeout_s=5.0)
    assert all(v.passed for v in verdicts), verdicts
    assert sandbox.stats["worker_restarts"] == 0


def test_asserts_in_a_called_back_test_function_are_not_units(sandbox):
    # the program calls the tests' checker 50 times: no inflated score, and a failing
    # assert inside it is the program's exception, not a unit either
    prog = "def run(check):\n    for _ in range(50):\n        check(1)\n    return 0\n"
    tests = "def check(v):\n    assert v == 1\nassert run(check) == 1\n"
    v = sandbox.run_tests(prog, tests)
    assert not v.passed and (v.units_passed, v.units_total) == (0, 1), v


def test_the_sandbox_never_changes_the_callers_mounts():
    # every mount (private /proc, /tmp, the hidden Python folder) is made in the zygote's own
    # mount namespace; the caller's mount table is the same before, during and after
    before = Path("/proc/self/mountinfo").read_text()
    with Sandbox(workers=1) as sb:
        assert sb.run_tests("def f(x):\n    return x + 1\n", "assert f(1) == 2\n").passed
        assert Path("/proc/self/mountinfo").read_text() == before
    assert Path("/proc/self/mountinfo").read_text() == before


# ------------------------------------------------------------------ found by an attack review (session 4)
def test_program_cannot_replace_a_test_objects_method(sandbox):
    """`acc.ok = lambda: True` would make the tests' own check run program code."""
    tests = dedent("""
        class Acc:
            def __init__(self):
                self.items = []
            def ok(self):
                return self.items == [1, 2]
        a = Acc()
        f(a)
        assert a.ok()
    """)
    for prog in ("def f(acc):\n    acc.ok = lambda: True\n",
                 "def f(acc):\n    acc.ok = 1\n",
                 "def f(acc):\n    acc.items = [1, 2]\n    acc.extra = print\n"):
        v = sandbox.run_tests(prog, tests)
        assert not v.passed, (prog, v)
    honest = "def f(acc):\n    acc.items = [1, 2]\n"  # data attributes are fine
    assert sandbox.run_tests(honest, tests).passed
    # a trusted callable the tests hand over may not be planted either
    v = sandbox.run_tests("def f(acc, g):\n    acc.ok = g\n", tests.replace("f(a)", "f(a, lambda: True)"))
    assert not v.passed, v


def test_program_objects_have_no_inequality_either(sandbox):
    v = sandbox.run_tests("def f(x):\n    return object()\n", "assert f(1) != 0\nassert f(2) != [1]\n")
    assert not v.passed, v
    v = sandbox.run_tests("def f(x):\n    return object()\n", "assert f(1) is not None\n")
    assert v.passed, v  # identity checks still work


def test_a_wide_namedtuple_result_is_honest_data(sandbox):
    """Honest control for the namedtuple cache bound (classes of more than 64 fields are built per
    job, not cached for the worker's life; the bound itself lives in the worker process)."""
    prog = ("import collections\n"
            "def f():\n"
            "    return collections.namedtuple('Wide', ['a%d' % j for j in range(500)])(*range(500))\n")
    v = sandbox.run_tests(prog, "assert f().a499 == 499\n")
    assert v.passed, v
