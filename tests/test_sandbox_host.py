"""The sandbox confines its own processes and leaves the host alone.

Found the hard way this session: a work-in-progress confinement step mounted a tmpfs over the
host's /tmp and a hidepid /proc over the host's /proc when its namespaces were not in force,
hiding every other process's files. The mount table of the process that runs the Sandbox (the
trainer's) must be the same before, during and after jobs, with uid isolation on and off.
"""

from __future__ import annotations

import pytest

from retainrl.verify import Sandbox


def _mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:  # mount id, parent, device, root, mount point, options, ...
        return sorted(" ".join(line.split()[3:6]) for line in f)


@pytest.mark.parametrize("isolate_uid", [None, False])
def test_running_jobs_does_not_change_the_hosts_mounts(tmp_path, isolate_uid):
    before = _mounts()
    marker = tmp_path / "still-here"
    marker.write_text("x")
    with Sandbox(workers=1, isolate_uid=isolate_uid) as sb:
        v = sb.run_tests("def f(x):\n    return x + 1\n", "assert f(1) == 2\n")
        assert v.passed, v
        during = _mounts()
    after = _mounts()
    assert during == before, sorted(set(during) ^ set(before))
    assert after == before, sorted(set(after) ^ set(before))
    assert marker.read_text() == "x", "the host's /tmp must stay visible"
