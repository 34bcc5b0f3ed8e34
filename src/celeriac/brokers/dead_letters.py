"""Caps on a broker's dead-letter store: how many dead letters it keeps, and for how long.

Dead letters wait for a person to look at them, and anyone who can write to the broker can make
more (a flood of undecodable messages), so every broker caps its store: at most
:data:`MAX_COUNT` (the oldest go first) and none older than :data:`MAX_AGE` seconds. They are
``broker_transport_options`` (``dead_letter_max_count``, ``dead_letter_max_age``; None or 0 turns
a cap off) rather than app settings, because each broker applies them in its own store and
RabbitMQ fixes them when the dead-letter queue is first declared.
"""

from __future__ import annotations

from collections.abc import Sequence

#: dead letters a broker keeps at most
MAX_COUNT = 10_000
#: s a dead letter is kept: a week
MAX_AGE = 7 * 86400.0


def excess(
    failed_at: Sequence[float], max_count: int | None, max_age: float | None, now: float
) -> int:
    """How many dead letters to drop from the front of a store (oldest first; ``failed_at``
    their times) to keep within the caps."""
    drop = 0
    if max_age:
        cutoff = now - max_age
        while drop < len(failed_at) and failed_at[drop] < cutoff:
            drop += 1
    if max_count and len(failed_at) - drop > max_count:
        drop = len(failed_at) - max_count
    return drop
