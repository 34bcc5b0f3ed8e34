"""The SQLite beat store on a real file with a row that is not what beat wrote."""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from celeriac.transports import open_transport


def test_an_entry_that_is_not_json_is_left_out_and_the_others_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "b.db"
    store = open_transport(f"sqlite:///{path}").beat_store()
    try:
        good = {"task": "t", "schedule": 5.0}
        assert store.put_entry("good", good, replace=False)
        with closing(sqlite3.connect(path)) as conn, conn:
            conn.execute(
                "INSERT INTO celeriac_beat_entries (name, spec, updated_at)"
                " VALUES ('bad', '{not json', 0)"
            )
        with caplog.at_level(logging.ERROR, "celeriac.beat"):
            assert store.entries() == {"good": good}
        assert [r.message for r in caplog.records] == [
            f"beat entry 'bad' in {path} is not JSON (Expecting property name enclosed in "
            "double quotes: line 1 column 2 (char 1)); left out until it is replaced or removed"
        ]
        assert store.remove_entry("bad")
        assert store.entries() == {"good": good}
    finally:
        store.close()
