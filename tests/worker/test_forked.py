"""``worker/pools/_process.Forked`` and ``worker/shared.py``: what the prefork supervisor used
``multiprocessing`` for, without importing it.

Each case runs in a fresh interpreter (forking the test runner would copy its threads' state),
which prints one JSON line of what it saw.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

PRELUDE = textwrap.dedent(
    """
    import json, logging, os, signal, sys, threading, time
    from celeriac.worker.pools._process import Forked, wait_ready
    from celeriac.worker.shared import SharedBytes, SharedFloats, SharedInts

    def rss_kb():
        with open("/proc/self/status") as f:
            return int(next(l for l in f if l.startswith("VmRSS:")).split()[1])

    def ended(target, *args, name="ForkPoolWorker-1"):
        proc = Forked(target, args, name)
        proc.start()
        proc.join(20)
        return proc.exitcode
    """
)


def run(body: str) -> Any:
    out = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_exit_codes_are_multiprocessings() -> None:
    got, stderr = run(
        """
        def fine(): pass
        def code(): sys.exit(3)
        def text(): sys.exit("told to stop")
        def boom(): raise ValueError("boom in the child")
        def killed(): os.kill(os.getpid(), signal.SIGKILL)
        print(json.dumps([ended(f) for f in (fine, code, text, boom, killed)]))
        """
    )
    assert got == [0, 3, 1, 1, -9]
    assert "told to stop\n" in stderr
    assert "Process ForkPoolWorker-1:" in stderr and "ValueError: boom in the child" in stderr


def test_the_sentinel_is_readable_only_once_the_child_ended() -> None:
    got, _ = run(
        """
        r, w = os.pipe()
        def wait_for_word(): os.read(r, 1)
        proc = Forked(wait_for_word, (), "c")
        proc.start()
        before = (wait_ready([proc.sentinel], 0.2), proc.exitcode, proc.is_alive())
        proc.join(0.1)  # a timeout, not an end
        still = proc.is_alive()
        os.write(w, b"x")
        ready = wait_ready([proc.sentinel], 10) == [proc.sentinel]
        proc.join(10)
        print(json.dumps([before, still, ready, proc.exitcode, proc.is_alive()]))
        """
    )
    assert got == [[[], None, True], True, True, 0, False]


def test_the_child_has_its_name_in_logs_a_null_stdin_and_waits_for_its_threads() -> None:
    got, _ = run(
        """
        r, w = os.pipe()
        def child():
            record = logging.getLogger("t").makeRecord("t", logging.INFO, "f", 1, "m", (), None)
            late = lambda: (time.sleep(0.3), os.write(w, b"thread finished"))
            threading.Thread(target=late).start()  # not a daemon: waited for
            os.write(w, f"{record.processName}|{sys.stdin.read()!r}|".encode())
        code = ended(child, name="ForkPoolWorker-7")
        os.close(w)
        said = b"".join(iter(lambda: os.read(r, 100), b"")).decode()
        parent = logging.getLogger("t").makeRecord("t", logging.INFO, "f", 1, "m", (), None)
        print(json.dumps([code, said, parent.processName]))
        """
    )
    assert got == [0, "ForkPoolWorker-7|''|thread finished", "MainProcess"]


def test_shared_cells_written_in_a_child_are_read_in_the_parent() -> None:
    got, _ = run(
        """
        ints, floats, data = SharedInts(4), SharedFloats(2), SharedBytes(64)
        zero = [ints[i] for i in range(4)] + [floats[0], floats[1], data.read(0, 4).hex()]
        def child():
            ints[3] = 2**62 + 1
            ints[0] += 5
            floats[1] = 1.5
            data.write(10, b"held")
        code = ended(child)
        print(json.dumps([zero, code, [ints[0], ints[3], floats[1]], data.read(10, 4).decode(),
                          len(ints), len(floats), len(data)]))
        """
    )
    assert got == [[0, 0, 0, 0, 0.0, 0.0, "00000000"], 0, [5, 2**62 + 1, 1.5], "held", 4, 2, 64]


def test_shared_memory_is_resident_only_where_written() -> None:
    """multiprocessing's heap zero-filled its arrays: the revoked ring's 512 KB were resident
    in every worker process; an untouched mapping costs nothing."""
    got, _ = run(
        """
        from celeriac.worker.revoked import RevokedRing
        before = rss_kb()
        rings = [RevokedRing() for _ in range(8)]  # 8 x 512 KB
        made = rss_kb()
        for ring in rings:
            for i in range(4096):
                ring.write(f"id-{i}")
        print(json.dumps([made - before, rss_kb() - made, rings[0].read_since(4090)]))
        """
    )
    made, written, tail = got
    assert made < 256  # KB: of 4 MB mapped
    assert written >= 4000  # 8 x 512 KB touched now
    assert tail == [4096, [f"id-{i}" for i in range(4090, 4096)]]


def test_a_child_ends_though_a_task_left_a_thread_pool_behind() -> None:
    """``concurrent.futures`` stops its idle threads from a hook run at interpreter exit; a
    child that only joined its threads waited for that pool for ever (and its supervisor for
    the child), where ``multiprocessing``'s children end."""
    got, _ = run(
        """
        import concurrent.futures
        pools = []
        def task_module_pool():
            pools.append(concurrent.futures.ThreadPoolExecutor(2))
            pools[0].submit(time.sleep, 0.01).result()
        proc = Forked(task_module_pool, (), "ForkPoolWorker-1")
        proc.start()
        proc.join(10)
        alive = proc.is_alive()
        if alive:
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(5)
        print(json.dumps([alive, proc.exitcode]))
        """
    )
    assert got == [False, 0]


def test_a_child_never_returns_into_its_parents_code() -> None:
    """With stderr unusable (fd 2 closed: ``sys.stderr`` is None), reporting a failure raised
    again: the child left ``start()`` and ran its parent's code after the fork."""
    got, _ = run(
        """
        parent = os.getpid()
        def broker_unreachable():
            raise ConnectionError("broker unreachable")
        saved, sys.stderr = sys.stderr, None
        proc = Forked(broker_unreachable, (), "ForkPoolWorker-1")
        r, w = os.pipe()
        try:
            proc.start()
        finally:
            if os.getpid() != parent:  # a child here went past start()
                os.write(w, b"child returned")
                os._exit(0)
        sys.stderr = saved
        proc.join(10)
        os.close(w)
        said = os.read(r, 100).decode()
        print(json.dumps([proc.exitcode, said]))
        """
    )
    assert got == [1, ""]


def test_a_childs_end_is_seen_though_a_process_it_forked_lives_on() -> None:
    """A task that forks (a ``multiprocessing`` pool left running) and then its child killed
    for a hard time limit: a pipe sentinel stayed open in the grandchild, and the supervisor
    neither settled nor replaced the dead child."""
    got, _ = run(
        """
        r, w = os.pipe()
        def forks_then_dies():
            grandchild = os.fork()
            if grandchild == 0:
                time.sleep(30)
                os._exit(0)
            os.write(w, str(grandchild).encode())
            os.kill(os.getpid(), signal.SIGKILL)
        proc = Forked(forks_then_dies, (), "ForkPoolWorker-1")
        proc.start()
        seen = wait_ready([proc.sentinel], 10) == [proc.sentinel]
        proc.join(5)
        os.kill(int(os.read(r, 20)), signal.SIGKILL)
        print(json.dumps([seen, proc.exitcode]))
        """
    )
    assert got == [True, -9]
