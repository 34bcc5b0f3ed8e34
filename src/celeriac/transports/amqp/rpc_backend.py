"""``rpc://`` results: sent as AMQP messages to the reply queue of the client that sent the task.

Celery's layout (PROTOCOL.md §3.6), so a Celery client reads results from Celeriac workers and
the other way round: each client process has a reply queue named by its ``oid`` (durable,
auto-delete, ``x-expires`` = ``result_expires``), put in the ``reply_to`` property of the tasks it
sends. A worker publishes each state of such a task to the default exchange with that routing
key, ``correlation_id`` = task id, transient (``delivery_mode`` 1).

Only the client that sent a task hears of it; results arrive once and are kept in this process
(the newest per task, a SUCCESS never replaced). There is nothing to look up later, so chords
and saved groups are not supported, as in Celery.

The backend rides on the AMQP broker's connection: ``rpc://`` is handed out by the transport of
the ``amqp://`` broker (a URL such as ``rpc://user:pw@host:5672/vhost`` names another server).
Where a result goes travels with it (:attr:`EncodedResult.reply_to`, read by the worker from the
task's message); a client names its reply queue in what it sends (:meth:`RPCBackend.reply_to`),
and the queue is declared before the first task names it, since a worker's answer needs it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import amqp

from celeriac.backends.base import EncodedResult, ResultBackend
from celeriac.exceptions import BackendError
from celeriac.states import SUCCESS
from celeriac.transports.amqp.connection import Link
from celeriac.transports.amqp.publisher import Outgoing

logger = logging.getLogger("celeriac.backend.rpc")

_TIMEOUT = 30.0
_KEEP = 100_000  # results held in memory for this process


class RPCBackend(ResultBackend):
    def __init__(self, url: str, *, link: Link, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.oid = str(uuid.uuid4())
        self._link = link
        self._epoch: int | None = None
        self._results: OrderedDict[str, bytes] = OrderedDict()
        self._cond = threading.Condition()
        self._version = 0
        self._closed = False
        serializer = self.registry.get(self.serializer)
        self._encoding = serializer.content_encoding

    # -- connection --------------------------------------------------------------------------
    def _get_link(self) -> Link:
        if self._closed:
            raise BackendError("rpc://: the backend was closed")
        return self._link

    def reply_to(self) -> str:
        """This process's reply queue, declared and consumed: tasks sent from here name it."""
        self._listen()
        return self.oid

    def _listen(self) -> None:
        """Declare the reply queue and consume it (again after a reconnection)."""
        link = self._get_link()
        chan = link.existing("rpc")
        if chan is not None and chan.epoch == self._epoch:
            # Already consuming: every publish and every poll asks, and a hop onto the I/O
            # thread to learn that would cost as much as the publish itself.
            return
        try:
            link.run(self._consume, _TIMEOUT, "listening for results")
        except Exception as exc:
            raise BackendError(f"rpc://: cannot listen on reply queue {self.oid}: {exc}") from exc

    def _consume(self) -> None:
        """Declare the reply queue and consume it, on the link's I/O thread."""
        chan = self._get_link().channel("rpc")
        if chan.epoch == self._epoch:
            return
        args: dict[str, Any] = {"x-expires": int(self.expires * 1000)} if self.expires else {}
        # Celery's reply queue, argument for argument, so either side may declare it first.
        chan.channel.queue_declare(
            self.oid, durable=True, exclusive=False, auto_delete=True, arguments=args
        )
        chan.channel.basic_consume(self.oid, callback=self._on_reply, no_ack=True)
        self._epoch = chan.epoch

    def _on_reply(self, msg: amqp.Message) -> None:
        task_id = msg.properties.get("correlation_id")
        body = msg.body
        if not task_id:
            try:
                task_id = json.loads(body).get("task_id")
            except (ValueError, AttributeError):
                task_id = None
        if not task_id:
            logger.warning("rpc://: a reply without a task id on %s was dropped", self.oid)
            return
        self._accept(task_id, body)

    def _accept(self, task_id: str, body: bytes) -> None:
        with self._cond:
            if self._state(self._results.get(task_id)) == SUCCESS:
                return
            self._results[task_id] = body
            self._results.move_to_end(task_id)
            while len(self._results) > _KEEP:
                self._results.popitem(last=False)
            self._version += 1
            self._cond.notify_all()

    def _state(self, data: bytes | None) -> str | None:
        if data is None:
            return None
        try:
            return str(self.decode_meta(data).get("status"))
        except Exception:
            return None

    # -- worker side: send -------------------------------------------------------------------
    def _store(self, items: Sequence[EncodedResult]) -> None:
        sends = self.replies_for(items)
        if not sends:
            return
        link = self._get_link()
        deadline = time.monotonic() + _TIMEOUT
        try:
            link.publisher.send([self._outgoing(*send) for send in sends], deadline)
        except Exception as exc:
            raise BackendError(f"rpc://: sending {len(sends)} result(s) failed: {exc}") from exc

    def _outgoing(self, reply_to: str, correlation_id: str, data: bytes) -> Outgoing:
        """A reply to ``reply_to``: transient, not mandatory (as Celery sends it)."""
        properties = {
            "content_type": self.content_type,
            "content_encoding": self._encoding,
            "correlation_id": correlation_id,
            "delivery_mode": 1,
        }
        return Outgoing(data, "", reply_to, properties, mandatory=False)

    def replies_for(self, items: Sequence[EncodedResult]) -> list[tuple[str, str, bytes]]:
        """``(reply queue, correlation id, document)`` to publish for ``items``; results for
        this process's own reply queue are taken in directly."""
        sends = []
        for item in items:
            if not item.reply_to:
                continue  # nobody asked (Celery does the same)
            if item.reply_to == self.oid:
                self._accept(item.task_id, item.meta)  # our own queue: no round trip needed
            else:
                sends.append((item.reply_to, item.correlation_id or item.task_id, item.meta))
        return sends

    def publish_reply(
        self, channel: amqp.Channel, reply_to: str, correlation_id: str, data: bytes
    ) -> None:
        """Write a reply on ``channel`` without waiting (the link's I/O thread)."""
        reply = self._outgoing(reply_to, correlation_id, data)
        # Not mandatory: a client that went away leaves no queue, and its results with it.
        channel.basic_publish(amqp.Message(data, **reply.properties), "", reply_to)

    # -- client side: receive ----------------------------------------------------------------
    def _load(self, task_id: str) -> bytes | None:
        self._listen()
        with self._cond:
            return self._results.get(task_id)

    def _change_token(self) -> Any:
        return self._version

    def _wait_for_change(self, task_id: str, token: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._version == token:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)

    def get_states(self, task_ids: Sequence[str]) -> dict[str, str]:
        with self._cond:
            found = {t: self._results[t] for t in task_ids if t in self._results}
        return {t: str(self._state(d)) for t, d in found.items()}

    def _delete(self, task_id: str) -> None:
        with self._cond:
            self._results.pop(task_id, None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        super().close()
