"""The request context of the task being executed (``self.request`` inside a task)."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Request:
    """What a running task knows about its own call; Celery's ``self.request`` fields."""

    id: str | None = None
    task: str | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    retries: int = 0
    is_eager: bool = False
    eta: float | None = None
    expires: float | None = None
    hostname: str | None = None
    delivery_info: dict[str, Any] = field(default_factory=dict)
    delivery_count: int = 1
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    origin: str | None = None
    reply_to: str | None = None
    timelimit: tuple[float | None, float | None] = (None, None)
    callbacks: list[dict[str, Any]] | None = None
    errbacks: list[dict[str, Any]] | None = None
    chain: list[dict[str, Any]] | None = None
    chord: dict[str, Any] | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    ignore_result: bool = False

    @property
    def correlation_id(self) -> str | None:
        return self.id

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default)


_current: contextvars.ContextVar[Request | None] = contextvars.ContextVar(
    "celeriac_request", default=None
)


def current_request() -> Request | None:
    """The request of the task running in this thread or coroutine, if any."""
    return _current.get()


def set_request(request: Request | None) -> contextvars.Token[Request | None]:
    return _current.set(request)


def reset_request(token: contextvars.Token[Request | None]) -> None:
    _current.reset(token)
