"""The app beat processes load in the end-to-end tests (``-A beat_app``).

The broker comes from ``CELERIAC_BROKER_URL``; ``BEAT_TEST_SCHEDULE`` picks the schedule;
``BEAT_TEST_FAULT`` injects a fault where beat writes its messages (see ``beat_faults.py``).
"""

from __future__ import annotations

import os
from typing import Any

from celeriac import Celeriac
from celeriac.beat import crontab

if os.environ.get("BEAT_TEST_FAULT"):
    import beat_faults  # type: ignore[import-not-found]  # on PYTHONPATH in beat processes

    beat_faults.install()

app = Celeriac("beat_app", result_backend=None)


@app.task(name="beat_app.tick")
def tick() -> None:
    """Never run in these tests: they count the messages beat sends."""


SCHEDULES: dict[str, dict[str, Any]] = {
    "none": {},
    "every-second": {"every-second": {"task": "beat_app.tick", "schedule": 1.0}},
    "bad-cron": {"broken-cron": {"task": "beat_app.tick", "schedule": crontab(minute="61")}},
    "bad-cron-string": {"broken-string": {"task": "beat_app.tick", "schedule": "*/5 * *"}},
    "unknown-task": {"typo": {"task": "beat_app.tikc", "schedule": 5.0}},
    "last-run": {
        "often": {"task": "beat_app.tick", "schedule": 1.0},
        "hourly": {"task": "beat_app.tick", "schedule": 3600.0},
    },
}

app.conf.beat_schedule = SCHEDULES[os.environ.get("BEAT_TEST_SCHEDULE", "none")]
