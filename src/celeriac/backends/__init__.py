"""The result backend interface; each technology's backend lives in its transport."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celeriac.backends.base import ChordPart, DisabledBackend, EncodedResult, ResultBackend


def create_backend(
    url: str | None,
    *,
    serializer: str = "json",
    accept: Sequence[str] = ("json",),
    expires: float | None = 86400.0,
    transport_options: dict[str, Any] | None = None,
    broker_url: str = "",
) -> ResultBackend:
    """A result backend on a transport of its own: closing it closes its connections.

    ``broker_url`` is the server of backends that ride on the broker's (``rpc://``). An app
    opens backends through :class:`celeriac.connections.Connections` instead.
    """
    if not url or url in ("disabled", "disabled://"):
        return DisabledBackend()
    from celeriac.transports import BackendConfig, backend_server_url, open_transport

    config = BackendConfig(serializer, tuple(accept), expires, transport_options)
    return open_transport(backend_server_url(url, broker_url)).backend(url, config)


__all__ = [
    "ChordPart",
    "DisabledBackend",
    "EncodedResult",
    "ResultBackend",
    "create_backend",
]
