"""Beat: sends periodic tasks. Run as many as you like; the lease holder sends.

Each loop a beat (1) notices entry changes through the store's version, (2) takes, renews or
watches the leader lease, and (3) if it leads, works through every due tick, oldest first: it
claims the tick in the store (the lease check and a compare-and-set of the entry's last tick in
one atomic step, so a beat whose lease ran out cannot claim it, and no two beats can) and sends
its message. The task id is derived from entry and tick (uuid5), with headers ``beat_entry``
and ``beat_tick``: whoever sends a tick, and however often, it has one task id.

Claim and send are one step where the transport allows (:class:`~celeriac.beat.store.TickSender`):

* SQLite and Redis record the tick and store its message in one transaction, or one script
  call: the tick is recorded if and only if its message is stored. A beat killed at any moment
  loses and doubles nothing; after a send that raised, beat reads the store to learn whether
  it went through, and sends the tick again only if it did not.
* Elsewhere (a store on another server than the broker, a broadcast on Redis) three steps:
  claim the tick as unsent, publish, settle it. A tick left unsent (beat was killed, or the
  publish failed) is sent again with the same task id by whichever beat leads next: never
  lost, but sent twice when the publish had gone through and was not settled.

A new leader starts from the ticks its predecessor recorded: ticks that came due while nobody
led are sent late, each once, as long as they are no older than ``grace``; older ones were
missed (beat was down) and are skipped, or sent once for an entry with ``"catchup": True``.
An unsent tick follows the same rules.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from celeriac import signals
from celeriac.beat import api
from celeriac.beat.entries import Entry, Step, next_step, parse_entry
from celeriac.beat.store import BeatStore, TickSender, tick_sender
from celeriac.exceptions import CeleriacError, ConfigurationError
from celeriac.sending import announce

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.protocol.publication import Publication

logger = logging.getLogger("celeriac.beat")

#: Task ids of beat messages are uuid5(this, "<entry>@<tick>"): the same tick, the same id.
TASK_ID_NAMESPACE = uuid.UUID("6f1c3f0e-2b8a-4a51-9f7c-8f4f4c6f1b2e")
DEFAULT_LEASE_TTL = 1.5
#: Ticks sent for one entry in one loop; the rest wait a loop, so the lease is renewed.
MAX_STEPS_PER_LOOP = 100


def tick_task_id(entry: str, tick: float) -> str:
    return str(uuid.uuid5(TASK_ID_NAMESPACE, f"{entry}@{tick!r}"))


class Progress(enum.Enum):
    """How far one entry got in one loop."""

    DONE = "done"  # nothing more is due
    REFUSED = "refused"  # a claim was refused, or the lease is gone: look again at once
    FAILED = "failed"  # a send failed: try again next loop


class Beat:
    """The periodic task sender. ``Beat(app).run()`` blocks until :meth:`stop` or a signal.

    ``lease_ttl`` (s): how long a leader's lease lasts without renewal; it is renewed four times
    per TTL, and followers look every ``lease_ttl / 6`` s, so a dead leader is replaced within
    about ``lease_ttl + 0.25`` s. ``grace`` (s, default ``2 * lease_ttl + 1``): how late a tick may
    be sent before it counts as missed. ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        app: Celeriac,
        *,
        store: BeatStore | None = None,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        grace: float | None = None,
        clock: Callable[[], float] = time.time,
        holder: str | None = None,
        strict_tasks: bool | None = None,
    ) -> None:
        if lease_ttl <= 0:
            raise ConfigurationError(f"beat lease_ttl must be positive, not {lease_ttl!r}")
        self.app = app
        self.store = store if store is not None else app.beat_store
        self.lease_ttl = float(lease_ttl)
        self.renew_every = self.lease_ttl / 4
        self.poll_interval = min(0.25, self.lease_ttl / 6)
        self.grace = float(grace) if grace is not None else 2 * self.lease_ttl + 1.0
        self.clock = clock
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.strict_tasks = strict_tasks
        self.is_leader = False
        self.entries: dict[str, Entry] = {}
        self._static: dict[str, Entry] | None = None
        self._tz = api.app_timezone(app)
        self._paused: set[str] = set()
        self._last: dict[str, float | None] = {}
        self._unsent: set[str] = set()
        #: A send's outcome is unknown: read the ticks from the store before the next one.
        self._stale = False
        self._tick_sender: TickSender | None = None
        self._version: int | None = None
        self._renew_at = 0.0
        self._bad_dynamic: dict[str, str] = {}
        self._broken: dict[str, Entry] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- loading ----------------------------------------------------------------------------
    def load(self) -> None:
        """Read and check the static schedule: raises :class:`ConfigurationError` naming the
        first bad entry (unknown task, bad schedule, bad options)."""
        self.app.import_modules()
        self._tz = api.app_timezone(self.app)
        static = api.static_entries(self.app)
        for entry in static.values():
            warning = api.check_entry(self.app, entry, strict=self.strict_tasks)
            if warning:
                logger.warning("%s; sending it anyway", warning)
        self._static = static
        self.entries = dict(static)
        self._version = None

    def _refresh(self) -> None:
        """Pick up dynamic entries and pause flags when the store's version moved."""
        version = self.store.version()
        if version == self._version:
            return
        assert self._static is not None
        entries = dict(self._static)
        for name, spec in self.store.entries().items():
            if name in self._static:
                self._once(name, f"dynamic entry {name!r} ignored: beat_schedule defines it")
                continue
            try:
                entries[name] = parse_entry(name, spec, dynamic=True)
            except ConfigurationError as exc:
                self._once(name, f"dynamic entry skipped: {exc}")
        self.entries = entries
        self._load_states()
        self._version = version

    def _once(self, name: str, message: str) -> None:
        if self._bad_dynamic.get(name) != message:
            self._bad_dynamic[name] = message
            logger.error("%s", message)

    def _load_states(self) -> None:
        states = self.store.states()
        self._paused = {n for n, s in states.items() if s.paused}
        self._last = {n: s.last_tick for n, s in states.items()}
        self._unsent = {n for n, s in states.items() if s.unsent}
        self._stale = False

    # -- the loop ---------------------------------------------------------------------------
    def run(self, *, install_signal_handlers: bool = True) -> None:
        """Load, then loop until :meth:`stop`; gives the lease up on the way out."""
        if self._static is None:
            self.load()
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)
        logger.info("beat %s starting; entries: %s", self.holder, ", ".join(self.entries) or "none")
        try:
            while not self._stop.is_set():
                try:
                    delay = self.run_once()
                except Exception:
                    # A bug must not silence every beat at once; fencing keeps this safe.
                    logger.exception("beat %s: unexpected error; carrying on", self.holder)
                    delay = 1.0
                self._stop.wait(delay)
        finally:
            self._step_down()

    def run_once(self) -> float:
        """One pass: refresh, lead, send what is due. Returns seconds to wait for the next."""
        if self._static is None:
            self.load()
        try:
            self._refresh()
            now = self.clock()
            self._lead(now)
            if not self.is_leader:
                return self.poll_interval
            return self._send_due(now)
        except CeleriacError as exc:
            # The store or broker is unreachable or failing: keep trying; fencing keeps a beat
            # that cannot reach the store from sending anything.
            logger.warning("beat: %s; retrying", exc)
            return self.poll_interval

    def _lead(self, now: float) -> None:
        if self.is_leader:
            if now < self._renew_at:
                return
            if self.store.renew(self.holder, self.lease_ttl):
                self._renew_at = now + self.renew_every
                return
            self.is_leader = False
            logger.warning("beat %s lost the leader lease", self.holder)
        lease = self.store.leader()
        if lease is not None and lease.holder != self.holder:
            return
        if self.store.acquire(self.holder, self.lease_ttl):
            self.is_leader = True
            self._renew_at = now + self.renew_every
            # Continue from what the previous leader recorded.
            self._load_states()
            logger.info("beat %s is now the leader", self.holder)

    def _send_due(self, now: float) -> float:
        if self._stale:
            self._load_states()
        wake = min(self.poll_interval, max(0.0, self._renew_at - now))
        for name, entry in list(self.entries.items()):
            if name in self._paused or self._broken.get(name) is entry:
                continue
            try:
                progress = self._advance(entry, now)
                if progress is Progress.REFUSED:
                    return 0.01  # lost the lease or raced: look again almost at once
                if progress is Progress.FAILED:
                    continue  # tried again after a poll interval, not at once
                last = self._last.get(name)
                nxt = entry.schedule.next_after(last, self._tz) if last is not None else None
            except CeleriacError:
                raise
            except Exception:
                # A bug in one entry (its schedule maths, say) must not stop the others. It is
                # retried when it changes or beat restarts.
                logger.exception("beat: entry %r failed; skipping it", name)
                self._broken[name] = entry
                continue
            if nxt is not None:
                wake = min(wake, max(0.0, nxt - now))
        return wake

    def _advance(self, entry: Entry, now: float) -> Progress:
        """Claim and send, or settle, every due tick of ``entry``, oldest first."""
        name = entry.name
        for _ in range(MAX_STEPS_PER_LOOP):
            last = self._last.get(name)
            unsent = name in self._unsent
            step = next_step(entry, last, now, self.grace, self._tz, unsent=unsent)
            if step is None:
                return Progress.DONE
            progress = self._settle(entry, step) if step.recorded else self._claim(entry, step)
            if progress is not Progress.DONE:
                return progress
        return Progress.DONE

    def _claim(self, entry: Entry, step: Step) -> Progress:
        name, last = entry.name, self._last.get(entry.name)
        if step.send:
            publication = self._publication(entry, step.tick)
            if publication is None:
                return Progress.FAILED
            try:
                announce(self.app, signals.before_task_publish, [publication])
                claimed = self._sender().claim_and_send(
                    self.holder, name, step.tick, last, publication
                )
            except Exception as exc:
                return self._failed(entry, step.tick, exc)
            if claimed:
                announce(self.app, signals.after_task_publish, [publication])
        else:
            claimed = self.store.claim_tick(self.holder, name, step.tick, last)
        if not claimed:
            logger.info("beat %s: claim of %r refused; re-reading state", self.holder, name)
            self._renew_at = 0.0  # find out at once whether we still lead
            self._load_states()
            return Progress.REFUSED
        self._last[name] = step.tick
        if step.send:
            logger.info("beat: sent %r (%s) for %s", name, entry.task, self._fmt(step.tick))
        elif step.missed:
            logger.warning(
                "beat: %r missed its ticks up to %s while no beat ran; skipped",
                name,
                self._fmt(step.tick),
            )
        return Progress.DONE

    def _settle(self, entry: Entry, step: Step) -> Progress:
        """A tick claimed to be sent whose message is not known to be with the broker."""
        name = entry.name
        if not step.send:
            self.store.settle_tick(name, step.tick)
            logger.warning(
                "beat: %r tick %s was never sent and is older than grace; given up",
                name,
                self._fmt(step.tick),
            )
        else:
            publication = self._publication(entry, step.tick)
            if publication is None:
                return Progress.FAILED
            # Sending it is not fenced by the store: make sure the lease is still ours first.
            if not self.store.renew(self.holder, self.lease_ttl):
                self._renew_at = 0.0
                return Progress.REFUSED
            try:
                self._sender().send(name, step.tick, publication)
            except Exception as exc:
                return self._failed(entry, step.tick, exc)
            logger.info(
                "beat: sent %r (%s) for %s, again with the same task id: the first try may "
                "not have reached the broker",
                name,
                entry.task,
                self._fmt(step.tick),
            )
        self._unsent.discard(name)
        return Progress.DONE

    def _publication(self, entry: Entry, tick: float) -> Publication | None:
        options: dict[str, Any] = dict(entry.options)
        headers = {**dict(options.pop("headers", None) or {}), "beat_entry": entry.name}
        headers["beat_tick"] = tick
        try:
            return self.app.prepare_message(
                entry.task,
                entry.args,
                entry.kwargs,
                task_id=tick_task_id(entry.name, tick),
                headers=headers,
                **options,
            )
        except Exception as exc:
            logger.error("beat: the message of %r cannot be made: %s", entry.name, exc)
            return None

    def _failed(self, entry: Entry, tick: float, exc: Exception) -> Progress:
        logger.error(
            "beat: sending %r (tick %s) failed: %s; the store will say whether it went through",
            entry.name,
            self._fmt(tick),
            exc,
        )
        self._stale = True
        return Progress.FAILED

    def _sender(self) -> TickSender:
        broker = self.app.broker
        sender = self._tick_sender
        if sender is None or sender.broker is not broker:
            sender = self._tick_sender = tick_sender(broker, self.store)
            sender.clock = self.clock  # sends are timed as ticks are
        return sender

    def _fmt(self, tick: float) -> str:
        return dt.datetime.fromtimestamp(tick, self._tz).isoformat(timespec="milliseconds")

    # -- stopping ---------------------------------------------------------------------------
    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to end; waits for an embedded beat's thread."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        logger.info("beat %s: signal %d, stopping", self.holder, signum)
        self._stop.set()

    def _step_down(self) -> None:
        if not self.is_leader:
            return
        self.is_leader = False
        try:
            self.store.release(self.holder)
            logger.info("beat %s gave up the leader lease", self.holder)
        except CeleriacError as exc:
            logger.warning("beat %s: releasing the lease failed: %s", self.holder, exc)

    def start_in_thread(self) -> threading.Thread:
        """Run in a daemon thread (``worker -B``); :meth:`stop` ends and joins it."""
        if self._static is None:
            self.load()  # configuration errors surface in the caller, not in the thread
        thread = threading.Thread(
            target=self.run,
            kwargs={"install_signal_handlers": False},
            name="celeriac-beat",
            daemon=True,
        )
        self._thread = thread
        thread.start()
        return thread


def start_embedded_beat(app: Celeriac, **options: Any) -> Beat:
    """Start a beat thread inside a worker (``celeriac worker -B``); call ``.stop()`` on
    shutdown. Raises :class:`ConfigurationError` before starting if the schedule is bad."""
    beat = Beat(app, **options)
    beat.start_in_thread()
    return beat


__all__ = ["DEFAULT_LEASE_TTL", "Beat", "start_embedded_beat", "tick_task_id"]
