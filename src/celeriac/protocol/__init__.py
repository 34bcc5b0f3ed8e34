"""Celery's task protocol v2 (and v1 for reading), with no I/O: build, parse, serialize."""

from celeriac.protocol.message import Message, TaskHeaders, build_task_message, read_headers
from celeriac.protocol.serializers import Serializer, SerializerRegistry, default_registry

__all__ = [
    "Message",
    "Serializer",
    "SerializerRegistry",
    "TaskHeaders",
    "build_task_message",
    "default_registry",
    "read_headers",
]
