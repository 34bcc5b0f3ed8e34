"""Connections to one PostgreSQL database: URLs, one connection per thread, errors, LISTEN.

Each thread of each process gets its own connection, in autocommit mode (a statement is a
transaction unless :meth:`Database.transaction` opens one): a fetch that waits on LISTEN then
never holds up the thread that renews leases or stores results. A connection that fails with
an :class:`psycopg.OperationalError` (the server restarted, the network dropped) is thrown away
and the call raises the part's error; the next call connects again, so a worker outlives a
server restart without being restarted itself.

After a ``fork`` the child must neither use nor close its parent's connections: closing one
would tell the server to end the parent's session. The child forgets them and opens its own
(psycopg finalises a connection only in the process that opened it, so forgetting is safe).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from celeriac._fork import generation
from celeriac.exceptions import CeleriacError, ConfigurationError
from celeriac.urls import redact

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger("celeriac.transport.postgres")

SCHEMES = ("postgresql", "postgres", "db+postgresql")
#: where the tables live unless the URL says ``?schema=``
DEFAULT_SCHEMA = "celeriac"
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,39}")
#: s to connect before giving up (libpq's ``connect_timeout``) unless the URL says otherwise
CONNECT_TIMEOUT = 5


def parse_url(url: str) -> tuple[str, str]:
    """libpq's connection URL and the schema for ``url``.

    ``postgres://``, ``db+postgresql://`` (Celery's spelling for a database result backend) and
    ``postgresql://`` are one thing; ``schema`` is our own query parameter and is taken out
    before libpq sees the URL (libpq rejects parameters it does not know).
    """
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise ConfigurationError(f"not a postgresql:// URL: {redact(url)!r}")
    parts = urlsplit("postgresql" + url[len(scheme) :])
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = DEFAULT_SCHEMA
    rest: list[tuple[str, str]] = []
    for key, value in query:
        if key == "schema":
            schema = value
        else:
            rest.append((key, value))
    if not _IDENTIFIER.fullmatch(schema):
        raise ConfigurationError(
            f"schema {schema!r} in {redact(url)!r} is not a plain lower-case SQL name "
            "(letters, digits, _; at most 40 characters)"
        )
    if not any(k == "connect_timeout" for k, _ in rest):
        rest.append(("connect_timeout", str(CONNECT_TIMEOUT)))
    conninfo = urlunsplit(parts._replace(query=urlencode(rest)))
    return conninfo, schema


def sql(text: str, schema: str) -> str:
    """``text`` with ``{s}`` standing for the (checked, quoted) schema name."""
    return text.replace("{s}", f'"{schema}"')


class Database:
    """Per-thread connections to one database and schema, with the schema made on first use."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conninfo, self.schema = parse_url(url)
        #: the database's name, as libpq will resolve it (URL path, else PGDATABASE, else user)
        self.dbname = _dbname(self.conninfo)
        self._local = threading.local()
        self._gen = generation()
        self._lock = threading.Lock()
        self._open: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()
        self._ready = False
        self._closed = False
        #: channels a connection listens on, by connection id
        self._listening: weakref.WeakKeyDictionary[psycopg.Connection[Any], set[str]] = (
            weakref.WeakKeyDictionary()
        )

    def sql(self, text: str) -> str:
        return sql(text, self.schema)

    # -- connections ------------------------------------------------------------------------
    def connection(self, error: type[CeleriacError]) -> psycopg.Connection[Any]:
        """This thread's connection, connecting (and making the schema) when it has none."""
        if self._gen != generation():
            self._after_fork()
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is not None and not conn.closed:
            return conn
        conn = self._connect(error)
        self._local.conn = conn
        return conn

    def _connect(self, error: type[CeleriacError]) -> psycopg.Connection[Any]:
        import psycopg

        from celeriac.transports.postgres import schema

        if self._closed:
            raise error(f"the connections to {redact(self.url)} were closed")
        try:
            conn = psycopg.connect(self.conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise error(f"cannot connect to {redact(self.url)}: {_first_line(exc)}") from exc
        with self._lock:
            self._open.add(conn)
        if not self._ready:
            try:
                schema.ensure(conn, self.schema)
            except psycopg.Error as exc:
                conn.close()
                raise error(f"{redact(self.url)}: making schema {self.schema!r}: {exc}") from exc
            except BaseException:  # an out-of-date schema: no connection is kept for it
                conn.close()
                raise
            self._ready = True
        return conn

    def drop(self) -> None:
        """Throw this thread's connection away (it failed); the next call connects again."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # a broken connection may fail to close: it is gone either way
                logger.debug("closing a failed connection failed", exc_info=True)

    @contextmanager
    def cursor(self, error: type[CeleriacError], what: str) -> Iterator[psycopg.Cursor[Any]]:
        """A cursor on this thread's connection (autocommit); a failure as ``error``."""
        import psycopg

        conn = self.connection(error)
        try:
            with conn.cursor() as cur:
                yield cur
        except psycopg.Error as exc:
            raise self._failed(exc, error, what) from exc

    @contextmanager
    def transaction(
        self, error: type[CeleriacError], what: str, *, pipeline: bool = False
    ) -> Iterator[psycopg.Cursor[Any]]:
        """A cursor inside one transaction: committed when the block ends, else rolled back.

        ``pipeline``: statements go out without waiting for each other's replies (psycopg's
        pipeline mode) until a result is read, so a transaction of several statements whose
        last one returns rows costs two round trips (that one, and the COMMIT)."""
        import psycopg

        conn = self.connection(error)
        try:
            if pipeline:
                with conn.pipeline(), conn.transaction(), conn.cursor() as cur:
                    yield cur
                return
            with conn.transaction(), conn.cursor() as cur:
                yield cur
        except psycopg.Error as exc:
            raise self._failed(exc, error, what) from exc

    def _failed(self, exc: Exception, error: type[CeleriacError], what: str) -> CeleriacError:
        import psycopg

        if isinstance(exc, psycopg.OperationalError) or self._broken():
            self.drop()
        return error(f"{what} on {redact(self.url)}: {_first_line(exc)}")

    def _broken(self) -> bool:
        conn = getattr(self._local, "conn", None)
        return conn is None or conn.closed or conn.broken

    # -- LISTEN / NOTIFY ----------------------------------------------------------------------
    def channel(self, name: str) -> str:
        """A NOTIFY channel of this schema (identifiers are at most 63 bytes)."""
        return f"celeriac_{self.schema}_{name}"

    def wait(
        self, channels: tuple[str, ...], timeout: float, error: type[CeleriacError]
    ) -> list[str]:
        """Wait up to ``timeout`` s for a NOTIFY on one of ``channels`` (this thread listens on
        them from its first wait on); the payloads that came (``[]``: none)."""
        import psycopg

        conn = self.listen(channels, error)
        try:
            got = list(conn.notifies(timeout=max(0.0, timeout), stop_after=1))
        except psycopg.Error as exc:
            raise self._failed(exc, error, "waiting for NOTIFY") from exc
        return [n.payload for n in got if n.channel in channels]

    def listen(
        self, channels: tuple[str, ...], error: type[CeleriacError]
    ) -> psycopg.Connection[Any]:
        """Start listening now (so a NOTIFY sent before the first :meth:`wait` is kept); the
        connection that listens (a new one after a failure: it missed what came meanwhile)."""
        import psycopg

        conn = self.connection(error)
        try:
            heard = self._listening.setdefault(conn, set())
            for channel in channels:
                if channel not in heard:
                    conn.execute(f'LISTEN "{channel}"')
                    heard.add(channel)
        except psycopg.Error as exc:
            raise self._failed(exc, error, "LISTEN") from exc
        return conn

    # -- lifecycle ----------------------------------------------------------------------------
    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # a parent's thread may have held the old one
        self._open = weakref.WeakSet()
        self._local = threading.local()
        self._listening = weakref.WeakKeyDictionary()
        self._gen = generation()

    def close(self) -> None:
        """Close every connection this process opened (other threads' too)."""
        self._closed = True
        if self._gen != generation():
            self._after_fork()
            return
        with self._lock:
            conns = list(self._open)
            self._open = weakref.WeakSet()
        for conn in conns:
            try:
                conn.close()
            except Exception:
                logger.debug("closing a connection failed", exc_info=True)
        self._local = threading.local()


def _dbname(conninfo: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(conninfo)
    name = params.get("dbname") or os.environ.get("PGDATABASE")
    return str(name or params.get("user") or os.environ.get("PGUSER") or "")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
