"""Periodic entries: parsed from ``beat_schedule`` or from the store, checked, and planned.

An entry is Celery's ``{"task": ..., "schedule": ..., "args": ..., "kwargs": ..., "options":
...}`` plus two Celeriac keys: ``"catchup": True`` (send one missed tick after an outage instead
of skipping it) and ``"unregistered": True`` (the task lives elsewhere: do not check its name;
also accepted inside ``options`` for Celery-shaped configs). Every error names the entry.

:func:`next_step` is the whole timing policy, as a pure function of the last recorded tick and
the clock, so the scheduler only has to carry it out.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
from dataclasses import dataclass, field
from typing import Any

from celeriac.beat.schedules import Schedule, from_spec, to_schedule
from celeriac.exceptions import ConfigurationError

ENTRY_KEYS = frozenset(
    {"task", "schedule", "args", "kwargs", "options", "relative", "catchup", "unregistered"}
)


@dataclass(frozen=True)
class Entry:
    """One periodic task: what to send and when."""

    name: str
    task: str
    schedule: Schedule
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    catchup: bool = False
    unregistered: bool = False
    #: True for entries added at runtime (kept in the store), False for beat_schedule ones.
    dynamic: bool = False

    def to_spec(self) -> dict[str, Any]:
        """The JSON document a dynamic entry is stored as."""
        spec: dict[str, Any] = {
            "task": self.task,
            "schedule": self.schedule.to_spec(),
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "options": dict(self.options),
            "catchup": self.catchup,
        }
        if self.unregistered:
            spec["unregistered"] = True
        return spec


def parse_entry(name: str, raw: Any, *, dynamic: bool = False) -> Entry:
    """An :class:`Entry` from a beat_schedule value; :class:`ConfigurationError` names ``name``."""
    try:
        return _parse(name, raw, dynamic)
    except ConfigurationError as exc:
        where = "beat entry" if dynamic else "beat_schedule entry"
        raise ConfigurationError(f"{where} {name!r}: {exc}") from None


def _parse(name: str, raw: Any, dynamic: bool) -> Entry:
    if not isinstance(raw, dict):
        raise ConfigurationError(f"must be a dict with 'task' and 'schedule', not {raw!r}")
    unknown = sorted(set(raw) - ENTRY_KEYS)
    if unknown:
        close = difflib.get_close_matches(unknown[0], ENTRY_KEYS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigurationError(f"unknown key {unknown[0]!r}{hint}")
    task = raw.get("task")
    if not isinstance(task, str) or not task:
        raise ConfigurationError(f"'task' must be a task name, not {task!r}")
    if "schedule" not in raw:
        raise ConfigurationError("no 'schedule'")
    value = raw["schedule"]
    sched = from_spec(value) if isinstance(value, dict) else to_schedule(value)
    sched.validate()
    args = raw.get("args") or ()
    if not isinstance(args, list | tuple):
        raise ConfigurationError(f"'args' must be a list or tuple, not {args!r}")
    kwargs = raw.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ConfigurationError(f"'kwargs' must be a dict, not {kwargs!r}")
    options = dict(raw.get("options") or {})
    unregistered = bool(raw.get("unregistered") or options.pop("unregistered", False))
    catchup = raw.get("catchup", sched.catchup_default)
    return Entry(
        name=name,
        task=task,
        schedule=sched,
        args=tuple(args),
        kwargs=dict(kwargs),
        options=options,
        catchup=bool(catchup),
        unregistered=unregistered,
        dynamic=dynamic,
    )


def check_json(entry: Entry) -> None:
    """Dynamic entries are stored as JSON: their arguments must survive the round trip."""
    try:
        json.dumps(entry.to_spec())
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"beat entry {entry.name!r}: arguments and options must be JSON-serializable ({exc})"
        ) from None


@dataclass(frozen=True)
class Step:
    """What to record for an entry next: ``tick`` as done, and whether to send a message."""

    tick: float
    send: bool
    #: True when ``tick`` stands for one or more ticks that were missed (sent or skipped).
    missed: bool = False
    #: True when ``tick`` is recorded already, as unsent: settle it (sending its message again
    #: when ``send``) instead of claiming it.
    recorded: bool = False


def next_step(
    entry: Entry,
    last: float | None,
    now: float,
    grace: float,
    tz: dt.tzinfo,
    *,
    unsent: bool = False,
) -> Step | None:
    """The next thing to do for ``entry``, whose last recorded tick is ``last``; None: nothing.

    * First sight: record an anchor (no message); ticks are counted from it.
    * A tick no older than ``grace`` is *late, not missed* (a leader died and another took
      over, or beat was restarted quickly): it is sent, each on its own.
    * Ticks older than ``grace`` were missed while no beat ran: they collapse into one step at
      the latest of them, sent when the entry asks for catch-up and skipped otherwise.
    * An ``unsent`` last tick (claimed to be sent, its message not known to be with the broker)
      comes first, by the same rules: sent again while it is late, not missed; once missed,
      given up, or sent as a catch-up entry's one message unless a later missed tick will be.
    """
    sched = entry.schedule
    if last is None:
        return Step(tick=sched.first_anchor(now), send=False)
    if unsent:
        if last >= now - grace:
            return Step(tick=last, send=True, recorded=True)
        later = sched.next_after(last, tz)
        superseded = later is not None and later < now - grace
        return Step(tick=last, send=entry.catchup and not superseded, missed=True, recorded=True)
    nxt = sched.next_after(last, tz)
    if nxt is None or nxt > now:
        return None
    if nxt >= now - grace:
        return Step(tick=nxt, send=True)
    latest = sched.latest_in(last, now - grace, tz)
    return Step(tick=latest if latest is not None else nxt, send=entry.catchup, missed=True)


__all__ = ["ENTRY_KEYS", "Entry", "Step", "check_json", "next_step", "parse_entry"]
