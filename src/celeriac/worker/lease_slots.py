"""What each prefork child holds, kept where its supervisor can read it: shared memory.

A consuming child writes the handles of the messages it holds into its slot whenever that
changes (a fetch, a settlement); the supervisor reads the slots to renew those leases from its
own process and, when a child dies, to give back exactly what it held. So nothing a task does
to its own interpreter (C code holding the GIL, a hung thread) can let its lease lapse, and a
crash charges a delivery to the message that was running, not to anything else.

A slot is written by one child and read by the supervisor, without a lock. It has two copies:
a write goes into the copy that is not the current one, between two steps of a sequence number
(odd while writing), so the reader always finds a complete copy, the current one, and looks
again only if the writer lapped it. A child killed in the middle of a write leaves its last
complete copy readable: what it held is still given back at once.
"""

from __future__ import annotations

import io
import logging
import pickle
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeriac.brokers.base import Delivery
from celeriac.protocol.message import Message
from celeriac.worker.activity import request_info
from celeriac.worker.shared import SharedBytes, SharedInts

if TYPE_CHECKING:
    from celeriac.worker.inflight import InFlight
    from celeriac.worker.job import Job

logger = logging.getLogger("celeriac.worker")

#: Bytes per slot: a handle is a queue name, a tag and a few ids (~150-220 bytes for Redis),
#: and a child may hold 16 of them (``worker_prefetch_growth``), with the running task's body.
SLOT_SIZE = 16384
_EMPTY = Message({}, {}, b"")
#: The message headers remote control's ``active`` reads of a running task.
_INFO_HEADERS = ("id", "task", "argsrepr", "kwargsrepr", "compression")


@dataclass(frozen=True, slots=True)
class Held:
    """A message a child holds, as its supervisor knows it."""

    queue: str
    tag: Any
    delivery_count: int
    task_id: str | None
    task_name: str | None

    def delivery(self) -> Delivery:
        """A :class:`Delivery` the broker can renew, requeue or acknowledge by its tag."""
        headers = {"id": self.task_id, "task": self.task_name} if self.task_id else {}
        message = Message(headers, {}, b"") if headers else _EMPTY
        return Delivery(message, self.queue, self.tag, self.delivery_count)


class LeaseSlots:
    """One slot per prefork child, in memory shared across the fork."""

    def __init__(self, count: int) -> None:
        self.count = count
        #: writes begun per slot: odd while one is under way; write k (from 1) goes to copy k % 2
        self._seq = SharedInts(count)
        self._len = SharedInts(2 * count)
        self._data = SharedBytes(2 * count * SLOT_SIZE)
        #: outcomes each child applied (worker-heartbeat's ``processed``), and those of the
        #: children replaced so far
        self._processed = SharedInts(count)
        self._retired = 0

    # -- the child's side ---------------------------------------------------------------------
    def writer(self, index: int) -> SlotWriter:
        """The slot for a new child (what the previous one processed is kept in the total)."""
        self._retired += self._processed[index]
        self._processed[index] = 0
        return SlotWriter(self, index)

    def _write(self, index: int, data: bytes) -> None:
        # Odd: being written, into the copy that is not current (still odd: a write its dead
        # child left unfinished, in that same copy, which this one does over).
        seq = self._seq[index] | 1
        self._seq[index] = seq
        copy = 2 * index + (seq // 2 + 1) % 2
        self._data.write(copy * SLOT_SIZE, data)
        self._len[copy] = len(data)
        self._seq[index] = seq + 1  # that copy is the current one

    # -- the supervisor's side ----------------------------------------------------------------
    def read(self, index: int) -> list[Held]:
        """What the child in slot ``index`` holds now (its last complete write)."""
        return self._read(index)[0]

    def running(self, index: int) -> dict[str, Any] | None:
        """The task the child in slot ``index`` runs, as remote control's ``active`` tells it."""
        return self._read(index)[1]

    def _read(self, index: int) -> tuple[list[Held], dict[str, Any] | None]:
        for _ in range(100):
            before = self._seq[index]
            copy = 2 * index + (before // 2) % 2  # the current copy, complete
            data = self._data.read(copy * SLOT_SIZE, self._len[copy])
            # Valid unless the writer began the write after next, which goes into this copy.
            if self._seq[index] <= before // 2 * 2 + 2:
                try:
                    return _decode(data)
                except Exception:
                    # Our own child's pickles: one that does not load was read torn all the
                    # same, which memory ordered more weakly than x86's (ARM) could let
                    # through. Look again rather than fail the supervisor's renewals.
                    continue
        return [], None

    def active(self) -> int:
        """Messages the children hold now (running, leased ahead, or finished and not settled)."""
        return sum(len(self.read(i)) for i in range(self.count))

    def processed(self) -> int:
        """Outcomes applied by every child so far, replaced ones included."""
        return self._retired + sum(self._processed[i] for i in range(self.count))

    def clear(self, index: int) -> None:
        """Forget what a dead child held (the supervisor dealt with it)."""
        self._write(index, b"")


class SlotWriter:
    """A child's view of its slot: :meth:`publish` what it holds whenever that changes."""

    def __init__(self, slots: LeaseSlots, index: int) -> None:
        self.slots, self.index = slots, index
        self._warned = False
        # The task thread and the flusher thread both settle: one write at a time, each of
        # what is held at that moment, so an older picture never lands after a newer one.
        self._lock = threading.Lock()
        self._inflight: InFlight | None = None
        #: the running task, as :func:`_decode` turns it into remote control's ``active``
        #: info, until it is settled (its id first)
        self._running: tuple[Any, ...] | None = None
        #: what is held, as the slot says it; each part pickled (None: not yet)
        self._items: list[tuple[Any, ...]] = []
        self._items_blob: bytes | None = None
        self._running_blob: bytes | None = _NONE

    def attach(self, inflight: InFlight) -> None:
        """Publish whatever ``inflight`` holds, now and whenever it changes."""
        self._inflight = inflight
        inflight.mirror = self.refresh
        self.refresh()

    def refresh(self) -> None:
        inflight = self._inflight
        assert inflight is not None
        with self._lock:
            running = self._running
            if running is not None and running[0] not in inflight.task_ids():
                running = self._running = None
                self._running_blob = _NONE
            self._items = _items(inflight.renewable())
            self._items_blob = None
            self._publish()
            self.slots._processed[self.index] = inflight.processed

    def running(self, job: Job, time_start: float, pid: int) -> None:
        """A task started: publish it along with what is held.

        Only the raw parts go into the slot (the body undecoded); the supervisor builds the
        ``active`` info from them when asked, so a task start costs no JSON decoding here."""
        message = job.message
        headers = message.headers
        running = (
            message.task_id,
            {k: headers[k] for k in _INFO_HEADERS if k in headers},
            message.properties.get("priority"),
            message.body,
            message.content_type,
            job.queue,
            job.hostname,
            time_start,
            pid,
            job.delivery_count > 1,
        )
        if self._inflight is None:
            self._running = running
            return
        with self._lock:
            self._running = running
            self._running_blob = None
            self._publish()

    def _publish(self) -> None:
        """Write what is held and what runs, each pickled once per change (a task start
        re-pickles only the running task, a settlement only the held list)."""
        items, running = self._items, self._running
        if not items and running is None:
            self.slots._write(self.index, b"")
            return
        if self._items_blob is None:
            self._items_blob = pickle.dumps(items, pickle.HIGHEST_PROTOCOL)
        if self._running_blob is None:
            self._running_blob = pickle.dumps(running, pickle.HIGHEST_PROTOCOL)
        data = self._items_blob + self._running_blob
        if len(data) > SLOT_SIZE:
            data = self._fitted(list(items), running)
        self.slots._write(self.index, data)

    def _fitted(self, items: list[tuple[Any, ...]], running: tuple[Any, ...] | None) -> bytes:
        """What fits in the slot when everything does not."""
        data = _encode(items, running)
        while len(data) > SLOT_SIZE and (items or running):
            # Not expected with a child's prefetch of one or a few: keep what fits, and the
            # child's own renewals keep the rest leased (a huge args list goes first).
            if running is not None and running[3] is not None:
                headers = {k: v for k, v in running[1].items() if not k.endswith("repr")}
                running = (running[0], headers, running[2], None, *running[4:])
            elif items:
                items.pop()
            else:
                running = None
            data = _encode(items, running)
            if not self._warned:
                self._warned = True
                logger.warning("lease slot full: the supervisor renews only part of a batch")
        return data


_NONE = pickle.dumps(None, pickle.HIGHEST_PROTOCOL)


def _items(held: Sequence[Delivery]) -> list[tuple[Any, ...]]:
    return [
        (d.queue, d.tag, d.delivery_count, d.message.task_id, d.message.headers.get("task"))
        for d in held
    ]


def _encode(items: list[tuple[Any, ...]], running: tuple[Any, ...] | None) -> bytes:
    """Two pickles one after the other: what is held, then what runs (or None)."""
    if not items and running is None:
        return b""
    return pickle.dumps(items, pickle.HIGHEST_PROTOCOL) + pickle.dumps(
        running, pickle.HIGHEST_PROTOCOL
    )


def _decode(data: bytes) -> tuple[list[Held], dict[str, Any] | None]:
    if not data:
        return [], None
    # Written by our own child process with our own code: not input from outside.
    stream = io.BytesIO(data)
    items, running = pickle.load(stream), pickle.load(stream)
    return [Held(*item) for item in items], None if running is None else _info(*running)


def _info(
    task_id: str | None,
    headers: dict[str, Any],
    priority: Any,
    body: bytes | None,
    content_type: str,
    queue: str,
    hostname: str,
    time_start: float,
    pid: int,
    redelivered: bool,
) -> dict[str, Any]:
    """Remote control's ``active`` info of a running task, from what its child published."""
    message = Message(headers, {"priority": priority}, body or b"", content_type)
    info = request_info(
        message,
        queue,
        hostname,
        time_start=time_start,
        pid=pid,
        acknowledged=True,
        redelivered=redelivered,
    )
    if body is None:  # left out: the slot was full
        info["args"] = info["kwargs"] = None
    return info
