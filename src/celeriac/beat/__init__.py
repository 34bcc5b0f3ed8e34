"""Beat: periodic tasks, safe to run on every node (one leader sends, the others stand by).

>>> from celeriac.beat import crontab
>>> app.conf.beat_schedule = {
...     "nightly-report": {"task": "proj.report", "schedule": crontab(minute=30, hour=2)},
...     "heartbeat": {"task": "proj.ping", "schedule": 10.0, "catchup": True},
... }

Run it with ``celeriac -A proj beat`` or inside a worker with ``celeriac -A proj worker -B``.
"""

from celeriac.beat.api import add_periodic_task
from celeriac.beat.scheduler import Beat, start_embedded_beat
from celeriac.beat.schedules import Schedule, clocked, crontab, schedule

__all__ = [
    "Beat",
    "Schedule",
    "add_periodic_task",
    "clocked",
    "crontab",
    "schedule",
    "start_embedded_beat",
]
