"""Results in PostgreSQL (``{schema}.results``): our own table, not Celery's ``celery_taskmeta``.

Each row holds the serialized result document (JSON unless ``result_serializer`` says
otherwise), its state and its expiry. A stored SUCCESS is final until it expires: the ``WHERE``
of the upsert makes that atomic. Expired rows are deleted by the writers themselves, at most
once a minute each, so nothing needs beat to run a cleanup.

A chord is counted in one statement per group (:data:`_CHORD_RECORD`): the header task's row is
inserted unless already there, the chord's counter raised by what was inserted and, when the
count reaches the size, the chord claimed by this task, all under the chord row's lock.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from celeriac.backends.base import CHORD_CLAIM_STALE, ChordPart, EncodedResult, ResultBackend
from celeriac.exceptions import BackendError
from celeriac.transports.postgres.connection import Database

if TYPE_CHECKING:
    import psycopg

UPSERT = """
INSERT INTO {s}.results AS r (task_id, status, meta, expires_at) VALUES (%s, %s, %s, %s)
ON CONFLICT (task_id) DO UPDATE
   SET status = excluded.status, meta = excluded.meta, expires_at = excluded.expires_at
 WHERE r.status <> 'SUCCESS' OR r.expires_at <= %s
"""

_CHORD_RECORD = """
WITH part AS (
    INSERT INTO {s}.chord_parts (group_id, idx, task_id, status, meta)
    SELECT %(group)s, * FROM unnest(%(idx)s::int[], %(tids)s::text[], %(states)s::text[],
                                    %(metas)s::bytea[])
    ON CONFLICT DO NOTHING
    RETURNING 1
), n AS (SELECT count(*)::int AS added FROM part)
INSERT INTO {s}.chords AS c (group_id, size, counted, claimed_at, claimer, expires_at)
SELECT %(group)s, %(size)s, n.added,
       CASE WHEN n.added >= %(size)s THEN %(now)s END,
       CASE WHEN n.added >= %(size)s THEN %(me)s END,
       %(expires)s
  FROM n
ON CONFLICT (group_id) DO UPDATE
   SET counted = c.counted + (SELECT added FROM n),
       claimed_at = CASE WHEN NOT c.done
                          AND c.counted + (SELECT added FROM n) >= COALESCE(c.size, excluded.size)
                          AND (c.claimed_at IS NULL OR c.claimed_at < %(stale)s
                               OR c.claimer = %(me)s)
                         THEN %(now)s ELSE c.claimed_at END,
       claimer = CASE WHEN NOT c.done
                       AND c.counted + (SELECT added FROM n) >= COALESCE(c.size, excluded.size)
                       AND (c.claimed_at IS NULL OR c.claimed_at < %(stale)s
                            OR c.claimer = %(me)s)
                      THEN %(me)s ELSE c.claimer END,
       size = COALESCE(c.size, excluded.size)
RETURNING c.claimer = %(me)s AND c.claimed_at = %(now)s
"""

_SWEEP_EVERY = 60.0


class PostgresBackend(ResultBackend):
    def __init__(self, url: str, *, db: Database, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.db = db
        self.channel = db.channel("r")
        self._upsert = db.sql(UPSERT)
        self._last_sweep = 0.0

    def _store(self, items: Sequence[EncodedResult]) -> None:
        with self.db.transaction(BackendError, f"storing {len(items)} result(s)") as cur:
            self.store_in(cur, items)

    def store_in(self, cur: psycopg.Cursor[Any], items: Sequence[EncodedResult]) -> None:
        """Store results inside the caller's transaction (``cur``'s); waiters wake on commit."""
        now = time.time()
        expires_at = now + self.expires if self.expires else None
        rows = [(r.task_id, r.state, r.meta, expires_at, now) for r in items]
        if len(rows) == 1:
            cur.execute(self._upsert, rows[0])
        else:
            cur.executemany(self._upsert, rows)
        cur.execute("SELECT pg_notify(%s, '')", (self.channel,))
        if now - self._last_sweep > _SWEEP_EVERY:
            self._last_sweep = now
            self._sweep(cur, now)

    def _sweep(self, cur: psycopg.Cursor[Any], now: float) -> None:
        """Delete what expired (a bounded number per sweep: a writer never stalls on it)."""
        for table, key in (("results", "task_id"), ("groups", "group_id"), ("chords", "group_id")):
            cur.execute(
                self.db.sql(
                    f"DELETE FROM {{s}}.{table} WHERE {key} IN (SELECT {key} FROM {{s}}.{table}"
                    " WHERE expires_at < %s LIMIT 10000)"
                ),
                (now,),
            )

    def _read(self, what: str, query: str, params: Sequence[Any]) -> list[Any]:
        with self.db.cursor(BackendError, what) as cur:
            return cur.execute(self.db.sql(query), params).fetchall()

    def _load(self, task_id: str) -> bytes | None:
        rows = self._read(
            f"reading the result of {task_id}",
            "SELECT meta FROM {s}.results WHERE task_id = %s"
            " AND (expires_at IS NULL OR expires_at > %s)",
            (task_id, time.time()),
        )
        return bytes(rows[0][0]) if rows else None

    def get_states(self, task_ids: Sequence[str]) -> dict[str, str]:
        if not task_ids:
            return {}
        rows = self._read(
            "reading result states",
            "SELECT task_id, status FROM {s}.results WHERE task_id = ANY(%s)"
            " AND (expires_at IS NULL OR expires_at > %s)",
            (list(task_ids), time.time()),
        )
        return {str(t): str(s) for t, s in rows}

    def _delete(self, task_id: str) -> None:
        with self.db.cursor(BackendError, f"forgetting {task_id}") as cur:
            cur.execute(self.db.sql("DELETE FROM {s}.results WHERE task_id = %s"), (task_id,))

    def _expires_at(self) -> float | None:
        return time.time() + self.expires if self.expires else None

    # -- chords -------------------------------------------------------------------------------
    def chord_start(self, group_id: str, size: int) -> None:
        with self.db.cursor(BackendError, "starting a chord") as cur:
            cur.execute(
                self.db.sql(
                    "INSERT INTO {s}.chords (group_id, size, expires_at) VALUES (%s, %s, %s)"
                    " ON CONFLICT (group_id) DO UPDATE SET size = excluded.size"
                ),
                (group_id, size, self._expires_at()),
            )

    def chord_record(self, parts: Sequence[ChordPart]) -> list[str]:
        by_group: dict[str, list[ChordPart]] = {}
        for p in parts:
            by_group.setdefault(p.group_id, []).append(p)
        now = time.time()
        claimed: list[str] = []
        with self.db.transaction(BackendError, "recording chord parts") as cur:
            for gid, group in by_group.items():
                [(won,)] = cur.execute(
                    self.db.sql(_CHORD_RECORD),
                    {
                        "group": gid,
                        "idx": [p.index for p in group],
                        "tids": [p.task_id for p in group],
                        "states": [p.state for p in group],
                        "metas": [p.meta for p in group],
                        "size": group[0].size,
                        "now": now,
                        "me": group[-1].task_id,
                        "stale": now - CHORD_CLAIM_STALE,
                        "expires": self._expires_at(),
                    },
                ).fetchall()
                if won:
                    claimed.append(gid)
        return claimed

    def chord_results(self, group_id: str) -> list[EncodedResult]:
        rows = self._read(
            "reading chord results",
            "SELECT task_id, status, meta FROM {s}.chord_parts WHERE group_id = %s ORDER BY idx",
            (group_id,),
        )
        return [EncodedResult(str(t), str(s), bytes(m)) for t, s, m in rows]

    def chord_done(self, group_id: str) -> None:
        with self.db.transaction(BackendError, "finishing a chord") as cur:
            cur.execute(
                self.db.sql("UPDATE {s}.chords SET done = true WHERE group_id = %s"), (group_id,)
            )
            cur.execute(self.db.sql("DELETE FROM {s}.chord_parts WHERE group_id = %s"), (group_id,))

    def save_group(self, group_id: str, result_tuple: Any) -> None:
        data = self.encode_meta({"result": result_tuple})
        with self.db.cursor(BackendError, "saving a group") as cur:
            cur.execute(
                self.db.sql(
                    "INSERT INTO {s}.groups (group_id, meta, expires_at) VALUES (%s, %s, %s)"
                    " ON CONFLICT (group_id) DO UPDATE"
                    " SET meta = excluded.meta, expires_at = excluded.expires_at"
                ),
                (group_id, data, self._expires_at()),
            )

    def restore_group(self, group_id: str) -> Any:
        rows = self._read(
            "reading a group",
            "SELECT meta FROM {s}.groups WHERE group_id = %s"
            " AND (expires_at IS NULL OR expires_at > %s)",
            (group_id, time.time()),
        )
        return self.decode_meta(bytes(rows[0][0])).get("result") if rows else None

    def forget_group(self, group_id: str) -> None:
        with self.db.cursor(BackendError, "forgetting a group") as cur:
            cur.execute(self.db.sql("DELETE FROM {s}.groups WHERE group_id = %s"), (group_id,))

    # -- waiting: LISTEN on the results channel ------------------------------------------------
    def _change_token(self) -> Any:
        # Listen before the result is read: a store committed after the read then wakes us.
        self.db.listen((self.channel,), BackendError)
        return None

    def _wait_for_change(self, task_id: str, token: Any, timeout: float) -> None:
        self.db.wait((self.channel,), timeout, BackendError)
