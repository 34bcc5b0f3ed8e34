"""The broker interface; each technology's broker lives in its transport package."""

from __future__ import annotations

from typing import Any

from celeriac.brokers.base import Broker, DeadLetter, Delivery


def create_broker(url: str, transport_options: dict[str, Any] | None = None) -> Broker:
    """A broker on a transport of its own: closing the broker closes its connections.

    An app opens brokers through :class:`celeriac.connections.Connections` instead, so that
    its broker and backend share a server's connections.
    """
    from celeriac.transports import open_transport

    return open_transport(url).broker(transport_options)


__all__ = ["Broker", "DeadLetter", "Delivery", "create_broker"]
