"""Beat: periodic tasks, safe to run on every node (one leader sends, the others stand by).

>>> from celeriac.beat import crontab
>>> app.conf.beat_schedule = {
...     "nightly-report": {"task": "proj.report", "schedule": crontab(minute=30, hour=2)},
...     "heartbeat": {"task": "proj.ping", "schedule": 10.0, "catchup": True},
... }

Run it with ``celeriac -A proj beat`` or inside a worker with ``celeriac -A proj worker -B``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celeriac.beat.api import add_periodic_task
    from celeriac.beat.scheduler import Beat, start_embedded_beat
    from celeriac.beat.schedules import Schedule, clocked, crontab, schedule

#: Where each name lives, imported on first use: the transports import ``celeriac.beat.store``,
#: and a worker without beat need not carry the scheduler, cron maths and time zones.
_HOMES = {
    "Beat": "celeriac.beat.scheduler",
    "Schedule": "celeriac.beat.schedules",
    "add_periodic_task": "celeriac.beat.api",
    "clocked": "celeriac.beat.schedules",
    "crontab": "celeriac.beat.schedules",
    "schedule": "celeriac.beat.schedules",
    "start_embedded_beat": "celeriac.beat.scheduler",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)


__all__ = [
    "Beat",
    "Schedule",
    "add_periodic_task",
    "clocked",
    "crontab",
    "schedule",
    "start_embedded_beat",
]
