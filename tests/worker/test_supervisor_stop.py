"""The prefork supervisor's warm stop reaches every child, one forked while it began too.

Regression: CI hung 30 s on a prefork worker with ``--max-tasks-per-child``: SIGTERM came while
the supervisor was replacing a retired child. A thread other than the main one took the signal,
so the main thread's mask did not hold it back, and Python ran the handler (``stop``) on the
main thread right after the fork, before the new child was listed: nothing signalled that
child, and the supervisor waited for it for ever.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path


def test_a_child_forked_as_the_stop_begins_is_stopped_too(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import json, os, signal, time
        from celeriac import Celeriac
        from celeriac.worker import supervisor as sv
        from celeriac.worker.pools._process import Forked
        from celeriac.worker.worker import Worker

        app = Celeriac("stop", broker={f"sqlite:///{tmp_path / 'b.sqlite3'}"!r})
        sup = sv.Supervisor(Worker(app, pool="prefork", concurrency=1))

        def child_main(*args):
            stopped = []
            signal.signal(signal.SIGTERM, lambda *a: stopped.append(1))
            signal.pthread_sigmask(signal.SIG_UNBLOCK, sv._STOP_SIGNALS)
            deadline = time.monotonic() + 3
            while not stopped and time.monotonic() < deadline:
                time.sleep(0.01)
            os._exit(7 if stopped else 3)  # 7: told to stop; 3: never told

        def fork_then_handler(self):
            fork(self)
            sup._on_signal(signal.SIGTERM, None)  # where Python may run it: the next line

        sv._child_main = child_main
        fork, Forked.start = Forked.start, fork_then_handler
        sup._spawn(0)
        child = sup.children[0]
        child.join(10)
        print(json.dumps([sup._stopping, child.exitcode]))
        app.close()
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [True, 7]
