"""What the pages show, gathered from the app (no HTTP here): rows for the templates."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeriac.dashboard.recorder import MASK

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.dashboard.config import DashboardConfig
    from celeriac.events import WorkerState

logger = logging.getLogger("celeriac.dashboard")


@dataclass(frozen=True)
class WorkerRow:
    hostname: str
    online: bool
    pool: str
    concurrency: Any
    active: int
    processed: int
    load: str
    heartbeat_age: float | None


def worker_rows(
    known: list[WorkerState], stats: dict[str, dict[str, Any]], now: float
) -> list[WorkerRow]:
    """Workers seen in events, with what ``inspect stats`` said of their pool."""
    rows = []
    for w in sorted(known, key=lambda w: w.hostname):
        pool = (stats.get(w.hostname) or {}).get("pool") or {}
        rows.append(
            WorkerRow(
                hostname=w.hostname,
                online=w.alive(now),
                pool=str(pool.get("implementation", "")).removeprefix("celeriac:"),
                concurrency=pool.get("max-concurrency", ""),
                active=int(w.active or 0),
                processed=int(w.processed or 0),
                load=" ".join(f"{x:.2f}" for x in (w.loadavg or [])),
                heartbeat_age=w.heartbeat_age(now),
            )
        )
    return rows


@dataclass(frozen=True)
class DeadLetterRow:
    id: Any
    queue: str
    task: str
    task_id: str
    args: str
    reason: str
    failed_at: float


def dead_letter_rows(app: Celeriac, config: DashboardConfig, limit: int) -> list[DeadLetterRow]:
    rows = []
    for d in app.broker.dead_letters(limit):
        task = str(d.message.headers.get("task") or "")
        args = str(d.message.headers.get("argsrepr") or "")
        rows.append(
            DeadLetterRow(
                d.id,
                d.queue,
                task,
                str(d.message.headers.get("id") or ""),
                MASK if config.masks(task) else args,
                d.reason,
                d.failed_at,
            )
        )
    return rows


def beat_rows(app: Celeriac) -> tuple[list[dict[str, Any]], str]:
    """Beat's entries (``celeriac beat list``), or why they cannot be read."""
    from celeriac.beat.api import list_entries

    try:
        return [e.as_dict() for e in list_entries(app)], ""
    except Exception as exc:
        logger.warning("cannot list beat entries: %s", exc)
        return [], str(exc)


def task_from_backend(app: Celeriac, uuid: str) -> dict[str, Any] | None:
    """What the result backend holds for a task the history has not seen (or None)."""
    try:
        meta = app.backend.get_meta(uuid)
    except Exception as exc:
        logger.debug("no backend meta for %s: %s", uuid, exc)
        return None
    return meta if meta and meta.get("status") else None
