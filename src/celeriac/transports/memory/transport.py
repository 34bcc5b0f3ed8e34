"""The in-process transport: nothing to connect to, everything in this process's memory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeriac.transports.base import BackendConfig, EventConfig, Transport

if TYPE_CHECKING:
    from celeriac.backends.base import ResultBackend
    from celeriac.beat.store import BeatStore
    from celeriac.brokers.base import Broker
    from celeriac.control.mailbox import Mailbox
    from celeriac.events.channel import EventChannel
    from celeriac.transports.memory.events import Hub


class MemoryTransport(Transport):
    schemes = ("memory",)
    shared_between_processes = False
    results_by_default = True
    _hub: Hub | None = None

    def _open_broker(self, transport_options: dict[str, Any]) -> Broker:
        from celeriac.transports.memory.broker import MemoryBroker

        return MemoryBroker(self.url, transport_options)

    def _open_backend(self, url: str, config: BackendConfig) -> ResultBackend:
        from celeriac.transports.memory.backend import MemoryBackend

        return MemoryBackend(
            url,
            serializer=config.serializer,
            accept=config.accept,
            expires=config.expires,
            transport_options=config.transport_options,
        )

    def _open_beat_store(self, transport_options: dict[str, Any]) -> BeatStore:
        from celeriac.transports.memory.beat_store import MemoryBeatStore

        return MemoryBeatStore(self.url, transport_options)

    def _open_mailbox(self, transport_options: dict[str, Any]) -> Mailbox:
        from celeriac.transports.memory.mailbox import MemoryMailbox

        return MemoryMailbox(self.url)

    def _open_events(self, config: EventConfig) -> EventChannel:
        from celeriac.transports.memory import events

        if self._hub is None:  # every channel of this transport shares one
            self._hub = events.Hub()
        return events.MemoryEventChannel(self._hub)
