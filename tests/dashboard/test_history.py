"""The history store, the recorder's rules and the charts' numbers, without servers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from celeriac import Celeriac
from celeriac.dashboard.actions import retry_arguments
from celeriac.dashboard.charts import buckets, line_chart, percentile
from celeriac.dashboard.config import DashboardConfig
from celeriac.dashboard.history import (
    Finished,
    HistoryError,
    HistoryStore,
    TaskQuery,
    TaskRow,
    open_history,
)
from celeriac.dashboard.recorder import Recorder
from celeriac.dashboard.sqlite_history import SQLiteHistory
from celeriac.exceptions import ConfigurationError
from celeriac.transports.postgres.history import DEFAULT_SCHEMA, PostgresHistory, history_url
from tests.conftest import service_url
from tests.postgres_support import postgres_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def history(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HistoryStore]:
    """Each store, empty: an SQLite file, or a PostgreSQL schema of its own, dropped after."""
    if request.param == "sqlite":
        store = open_history(f"sqlite:///{tmp_path / 'h.sqlite3'}")
        assert isinstance(store, SQLiteHistory)
    else:
        store = open_history(postgres_url(request))
        assert isinstance(store, PostgresHistory)
    yield store
    store.close()


def ev(kind: str, uuid: str, at: float, **fields: object) -> dict[str, object]:
    return {"type": kind, "uuid": uuid, "timestamp": at, "hostname": "w@x", **fields}


def test_events_make_one_row_and_a_finished_state_stays(history: HistoryStore) -> None:
    t = 1000.0
    history.record(
        [
            ev("task-received", "a", t, name="p.add", args="(1, 2)", kwargs="{}", retries=0),
            ev("task-started", "a", t + 1),
            ev("task-succeeded", "a", t + 2, result="3", runtime=0.5),
            # a client's task-sent, late: it neither undoes SUCCESS nor moves the first sight
            {"type": "task-sent", "uuid": "a", "timestamp": t - 1, "name": "p.add", "queue": "q"},
        ]
    )
    row = history.get("a")
    assert row is not None
    assert (row.state, row.name, row.args, row.result, row.runtime) == (
        "SUCCESS",
        "p.add",
        "(1, 2)",
        "3",
        0.5,
    )
    assert (row.worker, row.queue, row.retries) == ("w@x", "q", 0)
    assert (row.seen_at, row.sent_at, row.received_at, row.started_at, row.finished_at) == (
        t - 1,
        t - 1,
        t,
        t + 1,
        t + 2,
    )
    assert history.count() == 1


def test_a_failure_keeps_its_traceback(history: HistoryStore) -> None:
    history.record(
        [
            ev("task-received", "f", 1.0, name="p.boom"),
            ev("task-failed", "f", 2.0, exception="ValueError('x')", traceback="Traceback ..."),
        ]
    )
    row = history.get("f")
    assert row is not None
    assert (row.state, row.exception, row.traceback) == (
        "FAILURE",
        "ValueError('x')",
        "Traceback ...",
    )


def _fill(history: HistoryStore, n: int) -> None:
    history.record(
        [
            ev("task-received", f"t{i:03d}", 100.0 + i, name=f"p.{'odd' if i % 2 else 'even'}")
            for i in range(n)
        ]
    )


def test_pages_follow_each_other_newest_first(history: HistoryStore) -> None:
    _fill(history, 25)
    seen: list[str] = []
    cursor = ""
    for _ in range(3):
        page = history.page(TaskQuery(cursor=cursor, limit=10))
        seen += [r.uuid for r in page.rows]
        cursor = page.next_cursor
    assert seen == [f"t{i:03d}" for i in range(24, -1, -1)]
    assert cursor == ""


def test_search_by_text_state_and_name(history: HistoryStore) -> None:
    _fill(history, 10)
    history.record([ev("task-succeeded", "t004", 300.0, result="x")])
    assert [r.uuid for r in history.page(TaskQuery(text="t00")).rows][:3] == [
        "t009",
        "t008",
        "t007",
    ]
    assert [r.uuid for r in history.page(TaskQuery(state="SUCCESS")).rows] == ["t004"]
    assert len(history.page(TaskQuery(name="p.odd")).rows) == 5
    assert len(history.page(TaskQuery(text="odd")).rows) == 5
    assert history.page(TaskQuery(text="%")).rows == []  # LIKE's wildcards are literal
    assert len(history.page(TaskQuery(text="ODD")).rows) == 5  # ASCII case is ignored


def test_tasks_first_seen_together_page_by_id(history: HistoryStore) -> None:
    history.record([ev("task-received", f"s{i}", 50.0) for i in (3, 1, 4, 0, 2)])
    first = history.page(TaskQuery(limit=2))
    second = history.page(TaskQuery(cursor=first.next_cursor, limit=2))
    third = history.page(TaskQuery(cursor=second.next_cursor, limit=2))
    assert [r.uuid for p in (first, second, third) for r in p.rows] == [
        "s4",
        "s3",
        "s2",
        "s1",
        "s0",
    ]
    assert third.next_cursor == ""


def test_prune_drops_what_is_older_than_the_retention(history: HistoryStore) -> None:
    _fill(history, 10)
    assert history.prune(105.0) == 5
    assert history.count() == 5
    assert history.get("t004") is None and history.get("t005") is not None


def test_masked_tasks_are_stored_with_their_arguments_hidden(history: HistoryStore) -> None:
    app = Celeriac("mask", broker_url="memory://")
    config = DashboardConfig(masked_tasks=("p.secret_*",))
    recorder = Recorder(app, history, config)
    recorder.apply(
        [
            ev("task-received", "s", 1.0, name="p.secret_login", args="('hunter2',)", kwargs="{}"),
            ev("task-received", "o", 1.0, name="p.open", args="('visible',)", kwargs="{}"),
            {"type": "worker-heartbeat", "hostname": "w@x", "timestamp": time.time(), "freq": 2.0},
        ]
    )
    secret, open_ = history.get("s"), history.get("o")
    assert secret is not None and open_ is not None
    assert (secret.args, secret.kwargs) == ("***", "***")
    assert open_.args == "('visible',)"
    assert recorder.recorded == 2
    assert [w.hostname for w in recorder.state.alive_workers()] == ["w@x"]


def test_retry_reads_arguments_back_from_their_reprs() -> None:
    assert retry_arguments("(1, 'a', [2])", "{'k': None}") == ([1, "a", [2]], {"k": None})
    for args in ("***", "(<object at 0x1>,)", "(1, 2, ...", "42"):
        with pytest.raises(ValueError):
            retry_arguments(args, "{}")


def test_chart_buckets_count_and_take_percentiles() -> None:
    finished = [Finished(10.0 + i, float(i), "SUCCESS") for i in range(10)]
    finished += [Finished(25.0, 1.0, "FAILURE"), Finished(99.0, None, "SUCCESS")]
    b = buckets(finished, 0.0, 30.0, 3)
    assert (b.succeeded, b.failed) == ([0, 10, 0], [0, 0, 1])
    assert (b.p50, b.p95, b.p99) == ([None, 4.0, 1.0], [None, 9.0, 1.0], [None, 9.0, 1.0])
    assert percentile([], 50) is None
    svg = line_chart("T", {"a": [1.0, None, 2.0, 3.0]}, chart_id="c")
    assert svg.count("<polyline") == 1 and svg.count("<circle") == 1
    assert 'data-total="6"' in svg


def test_stored_rows_feed_the_charts(history: HistoryStore) -> None:
    rows = [
        TaskRow(
            f"b{i}",
            "p.x",
            "SUCCESS",
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            float(i),
            None,
            None,
            None,
            float(i),
            float(i),
        )
        for i in range(3)
    ]
    assert isinstance(history, SQLiteHistory | PostgresHistory)
    history.insert_rows(rows)
    assert [f.at for f in history.finished_since(1.0)] == [1.0, 2.0]
    assert history.count() == 3


def test_urls_pick_the_store(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not supported"):
        open_history("mysql://x/y")
    store = open_history(str(tmp_path / "plain.sqlite3"))  # a bare path works too
    assert isinstance(store, SQLiteHistory)
    store.close()


def test_postgres_urls_name_a_schema() -> None:
    assert history_url("postgresql://u@h/db")[1] == DEFAULT_SCHEMA == "celeriac_dashboard"
    assert history_url("postgres://u@h/db?sslmode=disable&schema=mine")[1] == "mine"
    with pytest.raises(ConfigurationError, match="schema"):
        history_url("postgresql://u@h/db?schema=Bad-Name")


@pytest.mark.postgres
def test_postgres_dashboards_starting_together_make_the_tables_once(
    request: pytest.FixtureRequest,
) -> None:
    url = postgres_url(request)
    schema = history_url(url)[1]
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: open_history(url), range(4)))
    stores[0].record([ev("task-received", "x", 1.0)])
    assert [s.count() for s in stores] == [1, 1, 1, 1]
    for store in stores:
        store.close()
    with psycopg.connect(service_url("postgres"), autocommit=True) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (schema,)
        ).fetchall()
    assert tables == [("dash_meta",), ("dash_tasks",)]


@pytest.mark.postgres
def test_postgres_history_connects_again_after_losing_its_connection(
    request: pytest.FixtureRequest,
) -> None:
    store = open_history(postgres_url(request))
    assert isinstance(store, PostgresHistory)
    store.record([ev("task-received", "y", 1.0)])
    [idle] = store._idle  # its one connection, between calls; only it is ended (shared server)
    with psycopg.connect(service_url("postgres"), autocommit=True) as admin:
        [(ended,)] = admin.execute(
            "SELECT pg_terminate_backend(%s)", (idle.info.backend_pid,)
        ).fetchall()
    assert ended is True
    with pytest.raises(HistoryError, match="counting tasks"):
        store.count()
    assert store.count() == 1
    store.close()
