"""A worker's answers to remote control: a thread that listens as the node and replies.

It runs in the node's main process (a prefork worker whose children consume: the supervisor)
and answers Celery's commands with Celery's reply formats (``celery/worker/control.py``), so
``celery inspect``, Flower and Celeriac's own client read them alike. What it reports and
changes it asks a :class:`~celeriac.worker.remote_views.View` of the worker. A command the
worker cannot honour is answered ``{"error": "...", "unsupported": true}``
(:class:`~celeriac.exceptions.Unsupported`); an unknown one or a failure ``{"error": ...}``, as
Celery answers it. ``shutdown`` gets no reply (Celery's neither).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac.backends.base import DisabledBackend, EncodedResult
from celeriac.control.mailbox import Command, tick
from celeriac.exceptions import CeleriacError, ConfigurationError, TaskRevokedError, Unsupported
from celeriac.protocol.results import make_meta
from celeriac.routing import Queue
from celeriac.worker.limits import parse_rate
from celeriac.worker.remote_conf import masked_conf

if TYPE_CHECKING:
    from celeriac.control.mailbox import Mailbox
    from celeriac.worker.remote_views import View

logger = logging.getLogger("celeriac.control")

Handler = Callable[["View", dict[str, Any]], Any]
HANDLERS: dict[str, Handler] = {}
#: Commands that are answered by no reply at all.
_SILENT = {"shutdown"}
#: States a broadcast revoke may overwrite with REVOKED (nothing ran yet); as Celery 5.7.
_UNSTARTED = {states.PENDING, states.RECEIVED, states.RETRY, states.REJECTED}


def command(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[name] = fn
        return fn

    return register


def ok(value: Any) -> dict[str, Any]:
    return {"ok": value}


def dispatch(view: View, cmd: Command) -> Any:
    """The reply to ``cmd`` (what Celery's worker would answer)."""
    handler = HANDLERS.get(cmd.method)
    if handler is None:
        return {"error": repr(KeyError(cmd.method))}
    try:
        return handler(view, cmd.arguments)
    except Unsupported as exc:
        return {"error": str(exc), "unsupported": True}
    except Exception as exc:
        logger.exception("remote-control command %r failed", cmd.method)
        return {"error": repr(exc)}


# -- inspect ----------------------------------------------------------------------------------
@command("ping")
def _ping(view: View, args: dict[str, Any]) -> Any:
    return ok("pong")


@command("active")
def _active(view: View, args: dict[str, Any]) -> Any:
    return view.active()


@command("reserved")
def _reserved(view: View, args: dict[str, Any]) -> Any:
    return view.reserved()


@command("scheduled")
def _scheduled(view: View, args: dict[str, Any]) -> Any:
    return view.scheduled()


@command("registered")
def _registered(view: View, args: dict[str, Any]) -> Any:
    builtins = bool(args.get("builtins"))
    names = view.app.tasks.names(include_builtin=builtins)
    return [n for n in names if builtins or not n.startswith("celery.")]


@command("stats")
def _stats(view: View, args: dict[str, Any]) -> Any:
    return view.stats()


@command("revoked")
def _revoked(view: View, args: dict[str, Any]) -> Any:
    return view.revoked.ids()


@command("active_queues")
def _active_queues(view: View, args: dict[str, Any]) -> Any:
    return [_queue_dict(view, q) for q in view.queues]


@command("conf")
def _conf(view: View, args: dict[str, Any]) -> Any:
    return masked_conf(view.app.conf, with_defaults=bool(args.get("with_defaults")))


@command("query_task")
def _query_task(view: View, args: dict[str, Any]) -> Any:
    ids = args.get("ids") or []
    wanted = {ids} if isinstance(ids, str) else set(ids)
    out: dict[str, Any] = {}
    for kind, infos in (("active", view.active()), ("reserved", view.reserved())):
        for info in infos:
            if info["id"] in wanted and info["id"] not in out:
                out[info["id"]] = [kind, info]
    return out


@command("hello")
def _hello(view: View, args: dict[str, Any]) -> Any:
    if args.get("from_node") == view.hostname:
        return None
    revoked = args.get("revoked")
    if revoked:
        view.revoked.add([str(r) for r in revoked])
    return {"revoked": view.revoked.ids(), "clock": tick()}


# -- control ----------------------------------------------------------------------------------
@command("revoke")
def _revoke(view: View, args: dict[str, Any]) -> Any:
    given = args.get("task_id") or []
    ids = [given] if isinstance(given, str) else [str(t) for t in given]
    view.revoked.add(ids)
    _store_revoked(view, ids)
    if args.get("terminate"):
        signame = str(args.get("signal") or "SIGTERM")
        terminated = view.terminate(ids, signame)
        return ok(
            f"terminate: {', '.join(terminated)}" if terminated else "terminate: tasks unknown"
        )
    logger.info("tasks flagged as revoked: %s", ", ".join(ids))
    return ok(f"tasks {set(ids)} flagged as revoked")


def _store_revoked(view: View, ids: list[str]) -> None:
    """REVOKED for the tasks nothing ran yet (Celery 5.7's worker does the same), so every
    worker sees it before it would start one, and the client sees it."""
    backend = view.app.backend
    if isinstance(backend, DisabledBackend) or not ids:
        return
    try:
        known = backend.get_states(ids)
        items = []
        for tid in ids:
            if known.get(tid, states.PENDING) not in _UNSTARTED:
                continue
            meta = make_meta(tid, states.REVOKED, TaskRevokedError("revoked"))
            items.append(EncodedResult(tid, states.REVOKED, backend.encode_meta(meta)))
        if items:
            backend.store_encoded(items)
    except CeleriacError as exc:
        logger.warning("could not mark %s revoked in the result backend: %s", ids, exc)


@command("rate_limit")
def _rate_limit(view: View, args: dict[str, Any]) -> Any:
    rate = args.get("rate_limit")
    try:
        parse_rate(rate)
    except ConfigurationError as exc:
        return {"error": f"Invalid rate limit string: {exc}"}
    task = view.app.tasks.get(str(args.get("task_name")))
    if task is None:
        return {"error": "unknown task"}
    view.set_rate_limit(task.name, rate)
    if not args.get("rate_limit"):
        return ok("rate limit disabled successfully")
    return ok("new rate limit set successfully")


@command("time_limit")
def _time_limit(view: View, args: dict[str, Any]) -> Any:
    task = view.app.tasks.get(str(args.get("task_name")))
    if task is None:
        return {"error": "unknown task"}
    view.set_time_limit(task.name, _seconds(args.get("soft")), _seconds(args.get("hard")))
    return ok("time limits set successfully")


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)


@command("shutdown")
def _shutdown(view: View, args: dict[str, Any]) -> Any:
    logger.warning("got shutdown from remote")
    view.shutdown()
    return None


def _fixed_by_hand(view: View, command: str) -> None:
    # As Celery: with --autoscale the autoscaler owns the size.
    if view.worker.autoscale is not None:
        raise Unsupported(
            f"{command} is not supported with autoscale; adjust the autoscale range instead"
        )


@command("pool_grow")
def _pool_grow(view: View, args: dict[str, Any]) -> Any:
    _fixed_by_hand(view, "pool_grow")
    view.resize(int(args.get("n") or 1))
    return ok("pool will grow")


@command("pool_shrink")
def _pool_shrink(view: View, args: dict[str, Any]) -> Any:
    _fixed_by_hand(view, "pool_shrink")
    view.resize(-int(args.get("n") or 1))
    return ok("pool will shrink")


@command("add_consumer")
def _add_consumer(view: View, args: dict[str, Any]) -> Any:
    queue = str(args.get("queue"))
    if queue in view.queues:
        return ok(f"already consuming from {queue!r}")
    view.add_consumer(queue)
    return ok(f"add consumer {queue}")


@command("cancel_consumer")
def _cancel_consumer(view: View, args: dict[str, Any]) -> Any:
    queue = str(args.get("queue"))
    view.cancel_consumer(queue)
    return ok(f"no longer consuming from {queue}")


def _queue_dict(view: View, name: str) -> dict[str, Any]:
    """A queue as kombu's ``Queue.as_dict(recurse=True)`` lays it out (the common keys)."""
    queue = view.app.topology.queues.get(name) or Queue(name)
    ex = queue.bound_to
    return {
        "name": name,
        "exchange": {
            "name": ex.name,
            "type": ex.type,
            "durable": ex.durable,
            "auto_delete": ex.auto_delete,
        },
        "routing_key": queue.key,
        "durable": queue.durable,
        "exclusive": queue.exclusive,
        "auto_delete": queue.auto_delete,
        "no_ack": False,
        "max_priority": queue.max_priority,
        "queue_arguments": queue.arguments() or None,
        "binding_arguments": None,
        "consumer_arguments": None,
        "bindings": [],
    }


class RemoteControl:
    """The thread that listens as ``view.hostname`` and answers commands."""

    #: s one wait for commands lasts (how soon stop() is noticed)
    poll = 0.5

    def __init__(self, view: View) -> None:
        self.view = view
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._mailbox: Mailbox | None = None

    def start(self) -> None:
        # Listening before the worker says it is ready: a command sent right after would
        # otherwise be missed (a pub/sub broadcast reaches only those subscribed already).
        try:
            self._mailbox = self._open()
        except CeleriacError as exc:
            logger.error("remote control: %s; listening again in 1s", exc)
        self._thread = threading.Thread(target=self._run, name="celeriac-remote", daemon=True)
        self._thread.start()

    def _open(self) -> Mailbox:
        mailbox = self.view.app.connections.mailbox()
        mailbox.listen(self.view.hostname)
        return mailbox

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                if self._mailbox is None:
                    self._mailbox = self._open()
                for cmd in self._mailbox.receive(self.poll):
                    self._answer(self._mailbox, cmd)
            except CeleriacError as exc:
                logger.error("remote control: %s; listening again in 1s", exc)
                self._close()
                self._stopped.wait(1.0)
        self._close()

    def _answer(self, mailbox: Mailbox, cmd: Command) -> None:
        started = time.monotonic()
        reply = dispatch(self.view, cmd)
        logger.debug("remote control %s in %.1f ms", cmd.method, (time.monotonic() - started) * 1e3)
        if cmd.method not in _SILENT and not (cmd.method == "hello" and reply is None):
            mailbox.reply(cmd, reply)

    def _close(self) -> None:
        mailbox, self._mailbox = self._mailbox, None
        if mailbox is not None:
            try:
                mailbox.close()
            except CeleriacError as exc:
                logger.debug("closing the remote-control mailbox: %s", exc)

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
