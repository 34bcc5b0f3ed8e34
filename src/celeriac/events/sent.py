"""``task-sent``: what a client publishes, as an event (``task_send_sent_event``).

Sent right after the publish, as Celery's client does; several messages published together
(a group, a chord's header) go as one ``task.multi`` batch. A process keeps one dispatcher per
set of connections of its app (a new one after ``app.close()`` or a fork). A failed send is
logged and dropped: an event must never fail a publish that went through.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from celeriac.events.dispatcher import EventDispatcher

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.connections import Connections
    from celeriac.protocol.publication import Publication

logger = logging.getLogger("celeriac.events")

_dispatchers: weakref.WeakKeyDictionary[Connections, EventDispatcher] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _dispatcher(app: Celeriac) -> EventDispatcher:
    connections = app.connections
    with _lock:
        dispatcher = _dispatchers.get(connections)
        if dispatcher is None:
            # Celery's client names itself gen<pid>@<host>; a worker sending follow-ups, its node
            hostname = app.conf.worker_hostname or f"gen{os.getpid()}@{socket.gethostname()}"
            dispatcher = EventDispatcher(connections.event_channel(), hostname, buffer_groups=())
            _dispatchers[connections] = dispatcher
        return dispatcher


def sent(app: Celeriac, publications: Sequence[Publication]) -> None:
    """Send ``task-sent`` for each publication (one batch)."""
    try:
        dispatcher = _dispatcher(app)
    except Exception as exc:
        logger.warning("task-sent events are off: cannot open the event channel: %s", exc)
        return
    events = [dispatcher.event("task-sent", **_fields(p)) for p in publications]
    dispatcher.publish(events)


def _fields(p: Publication) -> dict[str, Any]:
    headers = p.message.headers
    exchange, routing_key = p.route.address
    return {
        "uuid": headers.get("id"),
        "root_id": headers.get("root_id"),
        "parent_id": headers.get("parent_id"),
        "name": headers.get("task"),
        "args": headers.get("argsrepr"),
        "kwargs": headers.get("kwargsrepr"),
        "retries": headers.get("retries", 0),
        "eta": headers.get("eta"),
        "expires": headers.get("expires"),
        "queue": p.route.name,
        "exchange": exchange,
        "routing_key": routing_key,
    }
