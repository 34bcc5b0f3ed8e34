"""Beat's Python API: Celery's ``add_periodic_task`` and ``on_after_configure``, and dynamic
entries (add, change, pause, resume, remove, list) kept in the broker's store.

Static entries come from ``app.conf.beat_schedule`` (and ``add_periodic_task``, which writes
there, as Celery's does); dynamic ones live in the store, so every beat sees them within a
poll or two. Pause and resume work on both kinds.
"""

from __future__ import annotations

import datetime as dt
import difflib
import logging
import time
import weakref
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeriac.beat.entries import Entry, check_json, parse_entry
from celeriac.beat.schedules import Schedule
from celeriac.exceptions import ConfigurationError
from celeriac.signals import Signal

if TYPE_CHECKING:
    from celeriac.app import Celeriac

logger = logging.getLogger("celeriac.beat")

# Until the app carries ``on_after_configure`` itself, each app's signal lives here.
_signals: weakref.WeakKeyDictionary[Celeriac, Signal] = weakref.WeakKeyDictionary()
_configured: weakref.WeakSet[Celeriac] = weakref.WeakSet()


def on_after_configure(app: Celeriac) -> Signal:
    """``app.on_after_configure``: receivers run once, before beat reads ``beat_schedule``."""
    own = getattr(app, "on_after_configure", None)
    if isinstance(own, Signal):
        return own
    signal = _signals.get(app)
    if signal is None:
        signal = _signals[app] = Signal("on_after_configure", "The app's settings are final.")
    return signal


def configure(app: Celeriac) -> None:
    """Send ``on_after_configure`` once per app, re-raising a receiver's configuration error
    (signals log and swallow errors; a bad ``add_periodic_task`` must stop beat instead)."""
    if app in _configured:
        return
    _configured.add(app)
    for _receiver, outcome in on_after_configure(app).send(sender=app, source=app.conf):
        if isinstance(outcome, ConfigurationError):
            raise outcome


def add_periodic_task(
    app: Celeriac,
    schedule: Schedule | float | Any,
    sig: Any,
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    name: str | None = None,
    **opts: Any,
) -> str:
    """Celery's ``app.add_periodic_task(schedule, sig, args=(), kwargs=(), name=None, **opts)``.

    ``sig`` is a signature (``add.s(2, 2)``), a task or a task name; ``args``/``kwargs`` are
    added to the signature's. ``opts`` are send options, plus Celeriac's ``catchup=True`` and
    ``unregistered=True``. Returns the entry's name (default: the signature's repr, as Celery).
    """
    task_name, sig_args, sig_kwargs, sig_opts = _unpack(sig)
    call_args = [*sig_args, *args]
    call_kwargs = {**sig_kwargs, **(kwargs or {})}
    entry: dict[str, Any] = {
        "task": task_name,
        "schedule": schedule,
        "args": tuple(call_args),
        "kwargs": call_kwargs,
    }
    for key in ("catchup", "unregistered"):
        if key in opts:
            entry[key] = opts.pop(key)
    entry["options"] = {**sig_opts, **opts}
    key = name or _sig_repr(task_name, call_args, call_kwargs)
    parse_entry(key, entry)  # fail here, naming the entry, rather than in beat later
    app.conf.beat_schedule[key] = entry
    return key


def _unpack(sig: Any) -> tuple[str, list[Any], dict[str, Any], dict[str, Any]]:
    if isinstance(sig, str):
        return sig, [], {}, {}
    if isinstance(sig, Mapping) and "task" in sig:
        return (
            str(sig["task"]),
            list(sig.get("args") or ()),
            dict(sig.get("kwargs") or {}),
            dict(sig.get("options") or {}),
        )
    name = getattr(sig, "name", None)
    if isinstance(name, str):  # a task object
        return name, [], {}, {}
    raise ConfigurationError(f"add_periodic_task needs a signature or a task, not {sig!r}")


def _sig_repr(task: str, args: list[Any], kwargs: dict[str, Any]) -> str:
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"{task}({', '.join(parts)})"


# -- loading ---------------------------------------------------------------------------------
def app_timezone(app: Celeriac) -> dt.tzinfo:
    """The ``timezone`` setting as a zoneinfo zone (crontab entries are evaluated in it)."""
    name = app.conf.timezone or "UTC"
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(f"timezone {name!r} is not a known IANA zone: {exc}") from None


def static_entries(app: Celeriac) -> dict[str, Entry]:
    """The entries of ``beat_schedule`` (after ``on_after_configure``), checked."""
    configure(app)
    schedule = app.conf.beat_schedule or {}
    if not isinstance(schedule, Mapping):
        raise ConfigurationError(f"beat_schedule must be a dict of entries, not {schedule!r}")
    return {str(name): parse_entry(str(name), raw) for name, raw in schedule.items()}


def check_entry(app: Celeriac, entry: Entry, *, strict: bool | None = None) -> str | None:
    """Check that the entry's task exists and its options make a message.

    An unknown task name is an error naming the entry, unless the entry says
    ``unregistered`` — or ``strict`` is False (by default: when no task of the app's own is
    registered in this process, i.e. beat runs without the task modules), then it is returned
    as a warning.
    """
    warning = None
    if not entry.unregistered and entry.task not in app.tasks:
        if strict is None:
            strict = any(not n.startswith(("celery.", "celeriac.")) for n in app.tasks)
        problem = (
            f"beat entry {entry.name!r}: {app.tasks.missing_message(entry.task)} "
            "(import the task's module, or give the entry 'unregistered': True when the task "
            "lives elsewhere)"
        )
        if strict:
            raise ConfigurationError(problem)
        warning = problem
    try:
        # Builds the message without sending it: unknown options and arguments the
        # serializer refuses are reported now, not on every tick.
        app.prepare_message(entry.task, entry.args, entry.kwargs, **entry.options)
    except (TypeError, ValueError, ConfigurationError) as exc:
        raise ConfigurationError(f"beat entry {entry.name!r}: {exc}") from None
    return warning


# -- dynamic entries -------------------------------------------------------------------------
def add_entry(
    app: Celeriac,
    name: str,
    task: str,
    schedule: Schedule | float | Any,
    *,
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    catchup: bool | None = None,
    unregistered: bool = False,
    replace: bool = False,
) -> Entry:
    """Add (or with ``replace=True`` change) a dynamic entry; every beat picks it up."""
    if name in (app.conf.beat_schedule or {}):
        raise ConfigurationError(
            f"beat entry {name!r} is defined in beat_schedule; change it there, or pick "
            "another name"
        )
    raw: dict[str, Any] = {
        "task": task,
        "schedule": schedule,
        "args": tuple(args),
        "kwargs": dict(kwargs or {}),
        "options": dict(options or {}),
        "unregistered": unregistered,
    }
    if catchup is not None:
        raw["catchup"] = catchup
    entry = parse_entry(name, raw, dynamic=True)
    check_json(entry)
    warning = check_entry(app, entry)
    if warning:
        logger.warning("%s", warning)
    if not app.beat_store.put_entry(name, entry.to_spec(), replace=replace):
        raise ConfigurationError(
            f"beat entry {name!r} exists already; use replace=True (CLI: --replace) to change it"
        )
    return entry


def remove_entry(app: Celeriac, name: str) -> None:
    """Remove a dynamic entry, with its recorded ticks."""
    if name in (app.conf.beat_schedule or {}):
        raise ConfigurationError(
            f"beat entry {name!r} is defined in beat_schedule, not at runtime; pause it instead"
        )
    store = app.beat_store
    if not store.remove_entry(name):
        raise ConfigurationError(_unknown(name, list(store.entries())))


def pause_entry(app: Celeriac, name: str) -> None:
    """Stop sending an entry (static or dynamic) until resumed; missed ticks are then skipped
    (or one sent, for a catch-up entry)."""
    _require(app, name)
    app.beat_store.set_paused(name, True)


def resume_entry(app: Celeriac, name: str) -> None:
    _require(app, name)
    app.beat_store.set_paused(name, False)


def _require(app: Celeriac, name: str) -> None:
    names = list(app.conf.beat_schedule or {}) + list(app.beat_store.entries())
    if name not in names:
        raise ConfigurationError(_unknown(name, names))


def _unknown(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"no beat entry named {name!r}{hint}"


@dataclass(frozen=True)
class EntryInfo:
    """One row of ``celeriac beat list``."""

    entry: Entry
    paused: bool
    last_tick: float | None
    next_tick: float | None
    #: why beat refuses the entry (an unknown task, ...); None: it runs
    problem: str | None = None
    #: when its message last went to the broker (unix seconds); None: never. ``last_tick``
    #: is the schedule's bookkeeping: the first-sight anchor or a skipped tick count there.
    last_sent: float | None = None

    @property
    def state(self) -> str:
        if self.problem is not None:
            return "unknown task" if "no task named" in self.problem else "invalid"
        return "paused" if self.paused else "active"

    def as_dict(self) -> dict[str, Any]:
        e = self.entry
        return {
            "name": e.name,
            "task": e.task,
            "schedule": e.schedule.to_spec(),
            "args": list(e.args),
            "kwargs": e.kwargs,
            "options": e.options,
            "catchup": e.catchup,
            "source": "dynamic" if e.dynamic else "beat_schedule",
            "paused": self.paused,
            "state": self.state,
            "problem": self.problem,
            "last_tick": self.last_tick,
            "last_sent": self.last_sent,
            "next_tick": self.next_tick,
        }


def list_entries(app: Celeriac) -> list[EntryInfo]:
    """Every entry with its state; ``next_tick`` is None when paused or finished."""
    tz = app_timezone(app)
    app.import_modules()  # as beat does before it checks the entries' tasks
    entries = dict(static_entries(app))
    store = app.beat_store
    for name, spec in store.entries().items():
        if name not in entries:
            try:
                entries[name] = parse_entry(name, spec, dynamic=True)
            except ConfigurationError as exc:
                logger.error("%s", exc)
    states = store.states()
    out = []
    for name in sorted(entries):
        entry = entries[name]
        state = states.get(name)
        last = state.last_tick if state else None
        paused = bool(state and state.paused)
        nxt = None
        if not paused:
            base = last if last is not None else entry.schedule.first_anchor(time.time())
            nxt = entry.schedule.next_after(base, tz)
        sent = state.last_sent if state else None
        out.append(EntryInfo(entry, paused, last, nxt, _problem(app, entry), sent))
    return out


def _problem(app: Celeriac, entry: Entry) -> str | None:
    """Why ``celeriac beat`` would refuse this entry (as :func:`check_entry` decides)."""
    try:
        check_entry(app, entry)
    except ConfigurationError as exc:
        return str(exc)
    return None


__all__ = [
    "EntryInfo",
    "add_entry",
    "add_periodic_task",
    "app_timezone",
    "check_entry",
    "configure",
    "list_entries",
    "on_after_configure",
    "pause_entry",
    "remove_entry",
    "resume_entry",
    "static_entries",
]
