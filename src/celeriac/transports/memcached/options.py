"""``result_backend_transport_options`` of ``memcached://`` (and Celery's ``cache+memcached://``).

memcached carries no broker, so there are no ``broker_transport_options`` here: a
``memcached://`` broker URL is refused before any option is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

#: memcached's default item size limit (its ``-I`` option, ``item_size_max`` in ``stats settings``)
DEFAULT_ITEM_SIZE_MAX = 1024 * 1024


@dataclass(frozen=True, slots=True)
class MemcachedOptions:
    #: bytes, the servers' item size limit (memcached's ``-I``; 1 MiB unless it was started with
    #: another): a result document that would not fit is stored as a FAILURE raising
    #: ``ResultTooLarge`` instead (the item's key and header take some of it, see backend.py)
    item_size_max: int = DEFAULT_ITEM_SIZE_MAX
    #: put in front of every key (several apps sharing servers, tests)
    key_prefix: str = ""
    #: s a connection to a server may take to open
    connect_timeout: float = 2.0
    #: s a command may wait for its reply
    socket_timeout: float = 2.0
    #: s, the longest pause between two reads of a result ``get()`` waits for: memcached tells
    #: no one of a change, so a wait polls, 5 ms after the first read, doubling up to this
    polling_interval: float = 0.1

    #: Celery's cache backend reads no transport options: no name here is kombu's alone.
    KOMBU_ONLY: ClassVar[frozenset[str]] = frozenset()
