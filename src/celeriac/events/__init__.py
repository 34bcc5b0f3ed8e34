"""Celery's events: send them from workers, receive them anywhere, keep a cluster state."""

from celeriac.events.channel import EXCHANGE, Event, EventChannel, Subscription
from celeriac.events.dispatcher import EventDispatcher
from celeriac.events.receiver import EventReceiver
from celeriac.events.state import State, TaskState, WorkerState

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
