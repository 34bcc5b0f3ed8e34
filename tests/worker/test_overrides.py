"""The run-time settings a prefork supervisor publishes to its children (shared memory)."""

from __future__ import annotations

import os

import pytest

from celeriac.exceptions import Unsupported
from celeriac.worker.overrides import SIZE, Overrides, SharedOverrides


def test_published_overrides_reach_a_forked_child_and_its_acknowledgement_comes_back():
    shared = SharedOverrides(Overrides(("a",), 2), slots=2)
    new = shared.current.with_rate("t", "2/s").with_time_limits("t", None, 1.5)
    version = shared.publish(new)
    assert version == 2 and shared.read() == (2, new)
    pid = os.fork()
    if pid == 0:  # the child: reads what the parent published after creating it, acknowledges
        seen = shared.read()
        shared.applied(1, seen[0] if seen[1] == new else -1)
        os._exit(0)
    os.waitpid(pid, 0)
    assert shared.wait_applied(version, [1], timeout=1.0) == []
    assert shared.wait_applied(version, [0, 1], timeout=0.05) == [0]


def test_overrides_too_large_for_the_shared_memory_are_refused():
    shared = SharedOverrides(Overrides(("a",), 1), slots=1)
    huge = Overrides(tuple(f"q{i:06d}" for i in range(SIZE // 8)), 1)
    with pytest.raises(Unsupported, match="too many run-time changes"):
        shared.publish(huge)
    assert shared.read() == (1, Overrides(("a",), 1))
