"""When a periodic entry is due: pure maths, no I/O, no clock.

Every schedule answers two questions about instants given as unix seconds:

* :meth:`Schedule.next_after` — the first tick strictly after ``after`` (``None``: no more);
* :meth:`Schedule.latest_in` — the latest tick in ``(after, until]`` (``None``: none).

Three kinds, with Celery's names:

>>> schedule(run_every=30)                        # every 30 s (a number or a timedelta)
>>> crontab(minute=30, hour=2)                    # 02:30 every day, in the app's timezone
>>> clocked(datetime(2030, 1, 1, tzinfo=UTC))     # once

An interval's ticks lie on a grid through the tick before (``after + k * run_every``), so a
beat that takes over from another continues the same grid. Crontab is parsed and iterated by
`cronsim`_, which follows Debian cron across daylight-saving changes: a daily 02:30 job runs
once on the spring-forward day (at 03:00, right after the gap) and once on the fall-back day
(at the first 02:30). Day of month and day of week must *both* match, as in Celery (classic
cron ORs them when both are set).

A bad schedule does not raise when it is built: beat_schedule is often written as a literal, and
the error is far more useful when it names the entry. :meth:`Schedule.validate` raises
:class:`ConfigurationError`, and loading an entry prefixes the entry's name.

.. _cronsim: https://pypi.org/project/cronsim/
"""

from __future__ import annotations

import datetime as dt
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar

from cronsim import CronSim, CronSimError

from celeriac.exceptions import ConfigurationError

UTC = dt.timezone.utc

#: cronsim's field names in its messages -> Celery's keyword names.
_FIELDS = {
    "minute": "minute",
    "hour": "hour",
    "day-of-month": "day_of_month",
    "month": "month_of_year",
    "day-of-week": "day_of_week",
}
_DAY_NAMES = re.compile(r"(sun|mon|tue|wed|thu|fri|sat)[a-z]*", re.IGNORECASE)
_MONTH_NAMES = re.compile(r"(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*", re.IGNORECASE)


class Schedule(ABC):
    """Base of every schedule; ``to_spec()`` / :func:`from_spec` round-trip through JSON."""

    kind: ClassVar[str]
    #: Whether missed ticks are sent once on restart when the entry does not say.
    catchup_default: ClassVar[bool] = False

    _error: str | None = None

    def validate(self) -> None:
        """Raise :class:`ConfigurationError` if this schedule cannot be evaluated."""
        if self._error is not None:
            raise ConfigurationError(self._error)

    @abstractmethod
    def next_after(self, after: float, tz: dt.tzinfo) -> float | None:
        """The first tick strictly after ``after``, or ``None`` when there is none."""

    def latest_in(self, after: float, until: float, tz: dt.tzinfo) -> float | None:
        """The latest tick in ``(after, until]``, or ``None`` when there is none."""
        latest = None
        nxt = self.next_after(after, tz)
        while nxt is not None and nxt <= until:
            latest = nxt
            nxt = self.next_after(nxt, tz)
        return latest

    def first_anchor(self, now: float) -> float:
        """Where ticks are counted from for an entry seen for the first time.

        Celery's habit: an interval entry first runs one interval after beat first sees it, and
        a crontab entry at its next matching time; neither runs at once.
        """
        return now

    @abstractmethod
    def to_spec(self) -> dict[str, Any]:
        """A JSON-able description that :func:`from_spec` turns back into this schedule."""

    @abstractmethod
    def describe(self) -> str:
        """A short human description for listings."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and self.to_spec() == other.to_spec()

    def __hash__(self) -> int:
        return hash(repr(sorted(self.to_spec().items())))

    def __repr__(self) -> str:
        return f"<{self.describe()}>"


class schedule(Schedule):
    """Every ``run_every`` seconds (a number or a :class:`~datetime.timedelta`)."""

    kind = "every"

    def __init__(self, run_every: float | dt.timedelta) -> None:
        seconds = math.nan
        if isinstance(run_every, dt.timedelta):
            seconds = run_every.total_seconds()
        elif isinstance(run_every, int | float) and not isinstance(run_every, bool):
            seconds = float(run_every)
        self.seconds = seconds
        if not (math.isfinite(seconds) and seconds > 0):
            self._error = f"interval must be a positive number of seconds, not {run_every!r}"

    @property
    def run_every(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.seconds)

    def next_after(self, after: float, tz: dt.tzinfo) -> float | None:
        self.validate()
        return after + self.seconds

    def latest_in(self, after: float, until: float, tz: dt.tzinfo) -> float | None:
        self.validate()
        # Arithmetic instead of stepping: after a long outage a 1 s entry has missed many ticks.
        steps = math.floor((until - after) / self.seconds)
        if steps < 1:
            return None
        tick = after + steps * self.seconds
        # Guard float rounding at the boundary so that the answer stays inside (after, until].
        while tick > until:
            steps -= 1
            tick = after + steps * self.seconds
        return tick if steps >= 1 else None

    def to_spec(self) -> dict[str, Any]:
        return {"every": self.seconds}

    def describe(self) -> str:
        return f"every {self.seconds:g}s"


class crontab(Schedule):
    """Cron fields with Celery's keywords; each is a cron string, a number or numbers.

    ``crontab(minute=0, hour="*/3")``, ``crontab(minute=30, hour=7, day_of_week="mon-fri")``,
    ``crontab.from_string("*/5 * * * *")``. Evaluated in the app's ``timezone``.
    """

    kind = "crontab"

    def __init__(
        self,
        minute: str | int | Iterable[int] = "*",
        hour: str | int | Iterable[int] = "*",
        day_of_week: str | int | Iterable[int] = "*",
        day_of_month: str | int | Iterable[int] = "*",
        month_of_year: str | int | Iterable[int] = "*",
    ) -> None:
        self.minute = _field(minute)
        self.hour = _field(hour)
        self.day_of_week = _DAY_NAMES.sub(lambda m: m.group(1), _field(day_of_week))
        self.day_of_month = _field(day_of_month)
        self.month_of_year = _MONTH_NAMES.sub(lambda m: m.group(1), _field(month_of_year))
        self._error = self._check()
        # Beat asks for the tick after the same last tick every loop: remember one answer.
        self._memo: tuple[float, dt.tzinfo, float | None] | None = None

    @classmethod
    def from_string(cls, expression: str) -> crontab:
        """A crontab from the five cron fields: ``"minute hour day-of-month month day-of-week"``."""
        parts = expression.split() if isinstance(expression, str) else []
        if len(parts) != 5:
            bad = cls()
            bad._error = (
                f"bad crontab {expression!r}: expected 5 fields "
                "(minute hour day-of-month month day-of-week)"
            )
            return bad
        minute, hour, dom, month, dow = parts
        return cls(minute, hour, day_of_week=dow, day_of_month=dom, month_of_year=month)

    @property
    def expression(self) -> str:
        """The fields in cron's order."""
        return " ".join(
            (self.minute, self.hour, self.day_of_month, self.month_of_year, self.day_of_week)
        )

    def _iterator(self, start: dt.datetime, reverse: bool = False) -> CronSim:
        it = CronSim(self.expression, start, reverse=reverse)
        # Celery requires both day fields to match; cronsim (like cron) ORs them when both are
        # restricted. ``day_and`` is the one switch cronsim reads for that (pinned by a test).
        it.day_and = True
        return it

    def _check(self) -> str | None:
        for name, value in (
            ("minute", self.minute),
            ("hour", self.hour),
            ("day_of_week", self.day_of_week),
            ("day_of_month", self.day_of_month),
            ("month_of_year", self.month_of_year),
        ):
            if not value or any(ch.isspace() for ch in value):
                return f"bad crontab {name}={value!r}: one cron field, without spaces"
        try:
            it = self._iterator(dt.datetime(2000, 1, 1, tzinfo=UTC))
        except CronSimError as exc:
            field = str(exc).removeprefix("Bad ").strip()
            name = _FIELDS.get(field, field)
            value = getattr(self, name, "?")
            return f"bad crontab {name}={value!r} in {self.expression!r}: not a valid cron field"
        try:
            next(it)
        except StopIteration:
            return f"crontab {self.expression!r} never matches a date"
        return None

    def next_after(self, after: float, tz: dt.tzinfo) -> float | None:
        memo = self._memo
        if memo is not None and memo[0] == after and memo[1] is tz:
            return memo[2]
        tick = self._next_after(after, tz)
        self._memo = (after, tz, tick)
        return tick

    def _next_after(self, after: float, tz: dt.tzinfo) -> float | None:
        self.validate()
        it = self._iterator(dt.datetime.fromtimestamp(after, tz))
        try:
            while True:
                tick = next(it).timestamp()
                # cronsim works on wall-clock time for fixed-time jobs; starting inside a
                # repeated (fall-back) hour it can name the hour's first pass, which is before
                # ``after``. That occurrence was due already: step on.
                if tick > after:
                    return tick
        except StopIteration:
            return None

    def latest_in(self, after: float, until: float, tz: dt.tzinfo) -> float | None:
        self.validate()
        # Search backwards from ``until`` for a candidate, then step forwards to be exact: the
        # forward direction is the one whose DST behaviour the tests pin down.
        start = dt.datetime.fromtimestamp(math.floor(until) + 1, tz)
        try:
            candidate: float | None = next(self._iterator(start, reverse=True)).timestamp()
        except StopIteration:
            candidate = None
        if candidate is None or candidate <= after or candidate > until:
            candidate = self.next_after(after, tz)
            if candidate is None or candidate > until:
                return None
        nxt = self.next_after(candidate, tz)
        while nxt is not None and nxt <= until:
            candidate, nxt = nxt, self.next_after(nxt, tz)
        return candidate

    def to_spec(self) -> dict[str, Any]:
        return {"crontab": self.expression}

    def describe(self) -> str:
        return f"crontab {self.expression}"


class clocked(Schedule):
    """Once, at ``clocked_time`` (a naive datetime is taken in UTC)."""

    kind = "clocked"
    #: A one-off that was missed is still wanted: it runs once, late.
    catchup_default = True

    def __init__(self, clocked_time: dt.datetime) -> None:
        self.at = math.nan
        if isinstance(clocked_time, dt.datetime):
            when = clocked_time
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            self.at = when.timestamp()
        else:
            self._error = f"clocked time must be a datetime, not {clocked_time!r}"
        self.clocked_time = clocked_time

    def next_after(self, after: float, tz: dt.tzinfo) -> float | None:
        self.validate()
        return self.at if self.at > after else None

    def latest_in(self, after: float, until: float, tz: dt.tzinfo) -> float | None:
        self.validate()
        return self.at if after < self.at <= until else None

    def first_anchor(self, now: float) -> float:
        # Counted from the beginning of time, so that a one-off first seen after its time
        # still runs (once).
        return 0.0

    def to_spec(self) -> dict[str, Any]:
        when = dt.datetime.fromtimestamp(self.at, UTC) if math.isfinite(self.at) else None
        return {"clocked": when.isoformat() if when else repr(self.clocked_time)}

    def describe(self) -> str:
        spec = self.to_spec()["clocked"]
        return f"once at {spec}"


def _field(value: str | int | Iterable[int]) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, Iterable):
        items = sorted({int(v) for v in value})
        return ",".join(map(str, items))
    return repr(value)  # not a cron field: _check() reports it


def to_schedule(value: Any) -> Schedule:
    """What beat_schedule accepts: a schedule, seconds, a timedelta, a datetime (once) or a
    cron string (``"*/5 * * * *"``). Raises :class:`ConfigurationError` for anything else."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, dt.timedelta) or (
        isinstance(value, int | float) and not isinstance(value, bool)
    ):
        return schedule(value)
    if isinstance(value, dt.datetime):
        return clocked(value)
    if isinstance(value, str):
        return crontab.from_string(value)
    raise ConfigurationError(
        f"schedule must be seconds, a timedelta, a datetime, a cron string, schedule(), "
        f"crontab() or clocked(), not {type(value).__name__} {value!r}"
    )


def from_spec(spec: dict[str, Any]) -> Schedule:
    """The schedule that :meth:`Schedule.to_spec` described (dynamic entries are stored so)."""
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigurationError(f"bad schedule spec {spec!r}: one of every/crontab/clocked")
    ((kind, value),) = spec.items()
    if kind == "every":
        return schedule(value)
    if kind == "crontab":
        return crontab.from_string(value)
    if kind == "clocked":
        try:
            when = dt.datetime.fromisoformat(str(value))
        except ValueError as exc:
            raise ConfigurationError(f"bad clocked time {value!r}: {exc}") from exc
        return clocked(when)
    raise ConfigurationError(f"bad schedule kind {kind!r}: one of every/crontab/clocked")


__all__ = ["Schedule", "clocked", "crontab", "from_spec", "schedule", "to_schedule"]
