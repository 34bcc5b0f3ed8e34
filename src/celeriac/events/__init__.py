"""Celery's events: send them from workers, receive them anywhere, keep a cluster state."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celeriac.events.channel import EXCHANGE, Event, EventChannel, Subscription
    from celeriac.events.dispatcher import EventDispatcher
    from celeriac.events.receiver import EventReceiver
    from celeriac.events.state import State, TaskState, WorkerState

#: Where each name lives, imported on first use: a worker sends events (dispatcher, channel)
#: and need not carry the receiving side and the cluster state in each of its processes.
_HOMES = {
    "EXCHANGE": "celeriac.events.channel",
    "Event": "celeriac.events.channel",
    "EventChannel": "celeriac.events.channel",
    "EventDispatcher": "celeriac.events.dispatcher",
    "EventReceiver": "celeriac.events.receiver",
    "State": "celeriac.events.state",
    "Subscription": "celeriac.events.channel",
    "TaskState": "celeriac.events.state",
    "WorkerState": "celeriac.events.state",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)


__all__ = [
    "EXCHANGE",
    "Event",
    "EventChannel",
    "EventDispatcher",
    "EventReceiver",
    "State",
    "Subscription",
    "TaskState",
    "WorkerState",
]
