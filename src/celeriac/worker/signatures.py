"""The signature gate of a worker with a signing key (``task_signing_key(s)``).

Runs first among the checks, before the headers are read: a v1 message's headers live in its
body, and nothing from an unchecked sender should be deserialised. A message that fails is
dead-lettered with a reason naming the signature, and no result is stored: its task id is only
its sender's word, and an unsigned sender must not be able to write over a real task's result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from celeriac.exceptions import SignatureError
from celeriac.keyring import keyring_of
from celeriac.protocol.signing import verify_message
from celeriac.worker.outcomes import refuse

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.protocol.message import Message
    from celeriac.worker.job import Outcome


def check_signature(app: Celeriac, job_id: int, message: Message) -> Outcome | None:
    """None when the message may go on (signing is off, or its signature holds); else the
    dead-letter outcome saying why."""
    keyring = keyring_of(app.conf)
    if keyring is None:
        return None
    try:
        verify_message(message, keyring)
    except SignatureError as exc:
        name = message.headers.get("task")
        claimed = f"task {name!r} id {message.task_id!r}" if name else "message"
        outcome = refuse(app, job_id, None, None, SignatureError(f"{claimed} refused: {exc}"))
        outcome.task_name = str(name) if name else None
        outcome.task_id = None
        return outcome
    return None
