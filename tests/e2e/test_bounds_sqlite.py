"""Issue 15's bounded decoding against a real worker process: a message over
``broker_max_message_size`` (as it came, or as it inflates) is dead-lettered for its size, the
good ones around it run, and the worker's memory stays bounded while it refuses them."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest

from celeriac import states
from celeriac.exceptions import MessageTooLarge
from celeriac.protocol.message import Message, build_task_message
from celeriac.protocol.publication import Publication, Route
from celeriac.protocol.serializers import default_registry

from .conftest import wait_for

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
LIMIT = 16 * MiB  # broker_max_message_size's default; e2e_tasks does not change it


def zlib_zeros(size: int) -> bytes:
    """A level-9 zlib stream of ``size`` zero bytes, made without holding them."""
    enc = zlib.compressobj(9)
    block = bytes(MiB)
    return b"".join(enc.compress(block) for _ in range(size // MiB)) + enc.flush()


def raw(task_id: str, body: bytes, compression: str | None) -> Message:
    msg = build_task_message(default_registry, task_name="e2e_tasks.add", task_id=task_id)
    if compression:
        msg.headers["compression"] = compression
    return Message(msg.headers, msg.properties, body, msg.content_type, msg.content_encoding)


def tree_hwm_kib(pid: int) -> dict[int, int]:
    """Peak resident set (VmHWM, KiB) of ``pid`` and each of its descendants."""
    out: dict[int, int] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
        line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
        out[p] = int(line.split()[1])
    return out


def test_bomb_and_oversize_messages_are_dead_lettered_while_good_tasks_run(e2e):
    env, tasks = e2e
    app = tasks.app
    bomb_body = zlib_zeros(1024 * MiB)  # 1 GiB of zeros
    assert 900_000 < len(bomb_body) < 1_100_000
    bomb = raw("bomb", bomb_body, "application/x-zlib")
    oversize = raw("oversize", os.urandom(LIMIT + 1), None)
    for msg in (bomb, oversize):
        app.broker.publish(Publication(msg, Route("celery")))
    good = [tasks.add.delay(i, i) for i in range(5)]

    worker = env.start_worker("-c", "1")
    assert [r.get(timeout=30) for r in good] == [0, 2, 4, 6, 8]
    wait_for(lambda: len(app.broker.dead_letters()) == 2, 20, "two dead letters")
    hwm = tree_hwm_kib(worker.pid)
    reasons = {d.message.task_id: d.reason for d in app.broker.dead_letters()}
    assert reasons == {
        "bomb": (
            f"MessageTooLarge: body decompresses (application/x-zlib) to more than {LIMIT} "
            f"bytes, over broker_max_message_size={LIMIT}; decompression stopped there"
        ),
        "oversize": (
            f"MessageTooLarge: message body is {LIMIT + 1} bytes, over "
            f"broker_max_message_size={LIMIT}"
        ),
    }
    for task_id in ("bomb", "oversize"):
        result = app.AsyncResult(task_id)
        assert result.state == states.FAILURE
        with pytest.raises(MessageTooLarge):
            result.get(timeout=5)
    # Still serving after both, and every process of the worker stayed small: inflating the
    # bomb whole would take 1 GiB in one of them.
    assert tasks.add.delay(20, 22).get(timeout=30) == 42
    assert worker.poll() is None
    # The supervisor and its consuming child. Measured: ~33 MB and ~127 MB (the child read a
    # 16 MiB row through SQLite and wrote it to the dead letters; the bomb alone: ~48 MB).
    assert len(hwm) == 2, hwm
    assert sum(hwm.values()) < 200 * 1024, hwm
    assert env.stop_worker(worker) == 0
