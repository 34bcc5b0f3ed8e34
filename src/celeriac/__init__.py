"""Celeriac: a distributed task queue that speaks Celery's protocol.

>>> from celeriac import Celeriac
>>> app = Celeriac("proj")
>>> @app.task
... def add(x: int, y: int) -> int:
...     return x + y
"""

import logging as _logging

from celeriac import states
from celeriac.app import Celeriac
from celeriac.canvas import Signature, chain, chord, group, signature
from celeriac.exceptions import (
    CeleriacError,
    ConfigurationError,
    Ignore,
    NotRegistered,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    TimeLimitExceeded,
    TimeoutError,
)
from celeriac.result import AsyncResult, EagerResult, GroupResult
from celeriac.routing import Broadcast, Exchange, Queue
from celeriac.tasks.context import Request
from celeriac.tasks.task import Task

#: Celery's name for the app class, so that switching a project's ``from celery import
#: Celery`` to ``from celeriac import Celery`` is the whole change.
Celery = Celeriac

__version__ = "0.1.0"

# A library's logging etiquette (the logging HOWTO): a program that configured no logging gets
# Celeriac's errors as exceptions, not also as lines from logging's last-resort handler (an
# unreachable broker printed a reconnect warning every second besides its one BrokerError).
# A worker, or any program that configures logging, sees every line as before.
_logging.getLogger("celeriac").addHandler(_logging.NullHandler())

__all__ = [
    "AsyncResult",
    "Broadcast",
    "Celeriac",
    "CeleriacError",
    "Celery",
    "ConfigurationError",
    "EagerResult",
    "Exchange",
    "GroupResult",
    "Ignore",
    "NotRegistered",
    "Queue",
    "Reject",
    "Request",
    "Retry",
    "Signature",
    "SoftTimeLimitExceeded",
    "Task",
    "TimeLimitExceeded",
    "TimeoutError",
    "__version__",
    "chain",
    "chord",
    "group",
    "signature",
    "states",
]
