"""Task states, spelled as Celery spells them on the wire."""

from __future__ import annotations

PENDING = "PENDING"
RECEIVED = "RECEIVED"
STARTED = "STARTED"
RETRY = "RETRY"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REVOKED = "REVOKED"
REJECTED = "REJECTED"
IGNORED = "IGNORED"

#: States after which nothing more happens to a task.
READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
#: Ready states that mean the task did not succeed; ``get()`` raises for them.
EXCEPTION_STATES = frozenset({FAILURE, REVOKED, RETRY})
PROPAGATE_STATES = frozenset({FAILURE, REVOKED})
UNREADY_STATES = frozenset({PENDING, RECEIVED, STARTED, RETRY, REJECTED})
ALL_STATES = READY_STATES | UNREADY_STATES | {IGNORED}
