"""Reading results from a real SQLite file whose rows or pages are not what was written."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from celeriac import states
from celeriac.backends import EncodedResult, create_backend
from celeriac.backends.base import ChordPart, ResultBackend
from celeriac.exceptions import BackendError


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "r.db"


@pytest.fixture
def backend(path: Path) -> Iterator[ResultBackend]:
    b = create_backend(f"sqlite:///{path}")
    b.store_result("ok", 42, states.SUCCESS)  # the file and its tables exist from here on
    yield b
    b.close()


def raw(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as conn, conn:
        return conn.execute(sql, params).fetchall()


@pytest.mark.parametrize(
    ("meta", "error"),
    [
        (b"{not json", "a result stored in .* is unreadable: cannot decode application/json"),
        (b"[1, 2]", "stored result is not a document"),
        ("{not json either", "a result stored in .* is unreadable"),
        (5, "the result of bad in .* is int, not a stored document"),  # not five zero bytes
        (2.5, "the result of bad in .* is float, not a stored document"),
    ],
)
def test_a_result_row_that_is_not_a_document_is_a_backend_error(
    backend: ResultBackend, path: Path, meta: object, error: str
) -> None:
    raw(path, "INSERT INTO celeriac_results VALUES ('bad', 'SUCCESS', ?, NULL)", (meta,))
    with pytest.raises(BackendError, match=error):
        backend.get_meta("bad")
    with pytest.raises(BackendError, match=error):
        backend.wait_for("bad", timeout=1)
    assert backend.get_states(["bad", "ok"]) == {"bad": "SUCCESS", "ok": "SUCCESS"}
    assert backend.get_meta("ok")["result"] == 42  # the others read as before


def test_a_chord_part_or_group_that_is_not_a_document_is_a_backend_error(
    backend: ResultBackend, path: Path
) -> None:
    backend.chord_record([ChordPart("g", 0, "t0", states.SUCCESS, b'{"result": 1}', 2)])
    raw(path, "INSERT INTO celeriac_chord_parts VALUES ('g', 1, 't1', 'SUCCESS', 7)")
    with pytest.raises(BackendError, match=r"chord part t1 in .* is int"):
        backend.chord_results("g")
    raw(path, "INSERT INTO celeriac_groups VALUES ('grp', 7, NULL)")
    with pytest.raises(BackendError, match=r"group grp in .* is int"):
        backend.restore_group("grp")


def _damage_table(path: Path, table: str) -> None:
    """Overwrite the root page of ``table`` with garbage, as a failing disk might."""
    [(page_size,)] = raw(path, "PRAGMA page_size")
    [(root,)] = raw(path, "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,))
    raw(path, "PRAGMA wal_checkpoint(TRUNCATE)")
    with open(path, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xa5" * page_size)


def test_a_damaged_results_table_is_a_backend_error_on_every_read(
    backend: ResultBackend, path: Path
) -> None:
    backend.store_encoded(
        [EncodedResult(f"t{i}", states.SUCCESS, b'{"result": %d}' % i) for i in range(300)]
    )
    backend.close()
    _damage_table(path, "celeriac_results")
    reader = create_backend(f"sqlite:///{path}")
    try:
        for read in (
            lambda: reader.get_states(["t1", "t2"]),
            lambda: reader.get_meta("t1"),
            lambda: reader.wait_for("t1", timeout=1),
        ):
            with pytest.raises(BackendError, match="malformed"):
                read()
    finally:
        reader.close()
