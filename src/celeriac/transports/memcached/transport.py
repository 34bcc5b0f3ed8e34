"""memcached: a result backend only; as a broker URL it is refused with what to use instead."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeriac.exceptions import ConfigurationError
from celeriac.transports.base import BackendConfig, Transport
from celeriac.urls import redact

if TYPE_CHECKING:
    from celeriac.backends.base import ResultBackend
    from celeriac.brokers.base import Broker
    from celeriac.transports.memcached.connection import Servers


class MemcachedTransport(Transport):
    schemes = ("memcached", "cache+memcached")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._servers: list[Servers] = []

    def _open_broker(self, transport_options: dict[str, Any]) -> Broker:
        from celeriac.transports import broker_transport_class

        broker_transport_class(self.url)  # raises: memcached:// is a result backend only
        raise AssertionError("unreachable")

    def _open_backend(self, url: str, config: BackendConfig) -> ResultBackend:
        try:
            from celeriac.transports.memcached.backend import MemcachedBackend
            from celeriac.transports.memcached.connection import Servers
            from celeriac.transports.memcached.options import MemcachedOptions
        except ImportError as exc:  # pymemcache is an extra
            raise ConfigurationError(
                f"{redact(url)!r} needs pymemcache: pip install 'celeriac[memcached]' ({exc})"
            ) from exc
        from celeriac.transports.options import BACKEND, parse_options

        options = dict(config.transport_options or {})
        servers = Servers(url, parse_options(MemcachedOptions, options, url=url, setting=BACKEND))
        self._servers.append(servers)
        return MemcachedBackend(
            url,
            servers=servers,
            serializer=config.serializer,
            accept=config.accept,
            expires=config.expires,
            transport_options=options,
        )

    def _close_connections(self) -> None:
        servers, self._servers = self._servers, []
        for each in servers:
            each.close()
