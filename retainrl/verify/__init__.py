"""Verifiers: untrusted code in, Verdict out. Knows nothing of torch or models.

    from retainrl.verify import Sandbox
    with Sandbox(workers=2) as sb:
        v = sb.run_tests(program, tests, timeout_s=5.0)
"""

from retainrl.verify.verdict import STATUSES, Verdict

__all__ = ["Sandbox", "Verdict", "STATUSES"]


def __getattr__(name):
    # Lazy import: the sandbox module is only needed by callers that actually run code.
    if name == "Sandbox":
        from retainrl.verify.sandbox import Sandbox

        return Sandbox
    raise AttributeError(name)
