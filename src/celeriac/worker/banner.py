"""What a worker says when it is ready: Celery's banner, in our words.

Logged on the ``celeriac.worker.banner`` logger at INFO. ``celeriac worker`` lets that logger
through at every ``-l`` level (Celery prints its banner whatever the level), so the lines, the
last one ``<node> ready: ...``, always show; they say what the worker will do, nothing went
wrong.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from celeriac import __version__

if TYPE_CHECKING:
    from celeriac.app import Celeriac

logger = logging.getLogger("celeriac.worker.banner")

_POOLS = {
    "prefork": "{n} child process(es){how}",
    "threads": "{n} thread(s)",
    "asyncio": "one event loop, {n} task(s) at a time",
    "solo": "one task at a time, in the worker process",
}


def redact(url: str) -> str:
    """A URL with its password replaced, for logs (``redis://:***@host``)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


def describe_pool(pool: str, concurrency: int, consuming_children: bool = False) -> str:
    how = " (each consumes)" if consuming_children else ""
    return _POOLS.get(pool, "{n} slot(s)").format(n=concurrency, how=how)


def announce(
    app: Celeriac,
    hostname: str,
    queues: list[str],
    pool: str,
    concurrency: int,
    prefetch: str,
    *,
    consuming_children: bool = False,
) -> None:
    """Log the banner and the ``<node> ready:`` line (tests and tools wait for it)."""
    backend: str | None
    try:
        backend = app.result_backend_url()
    except Exception as exc:  # the banner never stops a worker
        backend = f"unknown ({exc})"
    tasks = sorted(name for name in app.tasks if not name.startswith("celery."))
    lines = [
        f"celeriac {__version__}: {hostname}",
        f"  app:         {app.main or '__main__'}",
        f"  broker:      {redact(app.conf.broker_url)}",
        f"  results:     {redact(backend) if backend else 'none (no result backend)'}",
        f"  pool:        {pool}: {describe_pool(pool, concurrency, consuming_children)}",
        f"  concurrency: {concurrency}",
        f"  prefetch:    {prefetch}",
        f"  queues:      {', '.join(queues)}",
        f"  tasks ({len(tasks)}):",
        *(f"    . {name}" for name in tasks),
    ]
    logger.info("\n".join(lines))
    logger.info(
        "%s ready: queues=%s pool=%s concurrency=%d prefetch=%s broker=%s",
        hostname,
        ",".join(queues),
        pool,
        concurrency,
        prefetch,
        redact(app.conf.broker_url),
    )
