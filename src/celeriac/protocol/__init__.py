"""Celery's task protocol v2 (and v1 for reading), with no I/O: build, parse, serialize; and
the record of a message on its way out (:class:`Publication`, :class:`Route`)."""

from celeriac.protocol.message import Message, TaskHeaders, build_task_message, read_headers
from celeriac.protocol.publication import Publication, Route
from celeriac.protocol.serializers import Serializer, SerializerRegistry, default_registry

__all__ = [
    "Message",
    "Publication",
    "Route",
    "Serializer",
    "SerializerRegistry",
    "TaskHeaders",
    "build_task_message",
    "default_registry",
    "read_headers",
]
