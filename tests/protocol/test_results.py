"""Result documents and exception dicts as Celery writes them (PROTOCOL.md §4.2)."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import pytest

from celeriac import exceptions
from celeriac.protocol.results import exception_from_dict, exception_to_dict, make_meta


def test_builtin_exception_round_trip() -> None:
    data = exception_to_dict(ValueError("bad input", 42))
    assert data == {
        "exc_type": "ValueError",
        "exc_message": ["bad input", 42],
        "exc_module": "builtins",
    }
    exc = exception_from_dict(data)
    assert type(exc) is ValueError
    assert exc.args == ("bad input", 42)


def test_exception_args_are_kept_when_encodable_and_repr_otherwise() -> None:
    # Celery's ensure_serializable: each argument the serializer can encode is kept as is.
    marker = object()
    data = exception_to_dict(ValueError({"field": "x"}, [1, 2], marker))
    assert data["exc_message"][:2] == [{"field": "x"}, [1, 2]]
    assert data["exc_message"][2] == repr(marker)
    assert exception_from_dict(data).args[:2] == ({"field": "x"}, [1, 2])


@pytest.mark.parametrize(
    "exc",
    [
        exceptions.NotRegistered("tasks.nope"),
        exceptions.TaskRevokedError("expired"),
        exceptions.TimeLimitExceeded(5.0),
    ],
)
def test_celeriac_errors_are_written_under_celery_exceptions(exc: Exception) -> None:
    data = exception_to_dict(exc)
    assert data["exc_module"] == "celery.exceptions"
    assert data["exc_type"] == type(exc).__name__
    back = exception_from_dict(data)
    assert type(back) is type(exc) and back.args == exc.args


def test_celery_written_revocation_reads_as_ours() -> None:
    data = {
        "exc_type": "TaskRevokedError",
        "exc_message": ["expired"],
        "exc_module": "celery.exceptions",
    }
    exc = exception_from_dict(data)
    assert isinstance(exc, exceptions.TaskRevokedError)
    assert exc.args == ("expired",)


@pytest.fixture
def unimported_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An importable module defining ``MyErr`` that nobody has imported yet."""
    name = "celeriac_test_unimported_errors"
    (tmp_path / f"{name}.py").write_text("class MyErr(Exception):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_unknown_module_gives_remote_error_without_importing(unimported_module: str) -> None:
    data = {"exc_type": "MyErr", "exc_message": ["custom"], "exc_module": unimported_module}
    exc = exception_from_dict(data)
    assert unimported_module not in sys.modules
    assert isinstance(exc, exceptions.RemoteTaskError)
    assert type(exc).__name__ == "MyErr"
    assert type(exc).exc_module == unimported_module
    assert exc.args == ("custom",)
    # Written back, it is the same document a Celery worker wrote.
    assert exception_to_dict(exc) == data


def test_already_imported_module_gives_the_real_class(unimported_module: str) -> None:
    module = __import__(unimported_module)
    exc = exception_from_dict(
        {"exc_type": "MyErr", "exc_message": ["x"], "exc_module": unimported_module}
    )
    assert type(exc) is module.MyErr


@pytest.mark.parametrize(
    ("module", "name"),
    [("builtins", "eval"), ("os", "system"), ("builtins", "NoSuchError")],
)
def test_names_that_are_not_exception_classes_are_never_called(module: str, name: str) -> None:
    exc = exception_from_dict(
        {"exc_type": name, "exc_message": ["echo pwned"], "exc_module": module}
    )
    assert isinstance(exc, exceptions.RemoteTaskError)
    assert type(exc).__name__ == name


def test_a_non_dict_result_still_gives_an_exception() -> None:
    exc = exception_from_dict("something went wrong")
    assert isinstance(exc, exceptions.RemoteTaskError)
    assert exc.args == ("something went wrong",)


def test_make_meta_success() -> None:
    meta = make_meta("tid", "SUCCESS", 4)
    assert set(meta) == {"status", "result", "traceback", "children", "date_done", "task_id"}
    assert (meta["status"], meta["result"], meta["task_id"]) == ("SUCCESS", 4, "tid")
    assert meta["traceback"] is None and meta["children"] == []
    done = dt.datetime.fromisoformat(meta["date_done"])
    assert done.utcoffset() == dt.timedelta(0)
    assert abs(done - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(seconds=5)


def test_make_meta_failure_and_optional_fields() -> None:
    meta = make_meta(
        "tid",
        "FAILURE",
        ValueError("bad input", 42),
        traceback="Traceback...",
        group_id="g",
        parent_id="p",
        extended={"name": "tasks.boom", "retries": 0},
    )
    assert meta["result"] == {
        "exc_type": "ValueError",
        "exc_message": ["bad input", 42],
        "exc_module": "builtins",
    }
    assert meta["traceback"] == "Traceback..."
    assert (meta["group_id"], meta["parent_id"]) == ("g", "p")
    assert (meta["name"], meta["retries"]) == ("tasks.boom", 0)


@pytest.mark.parametrize("state", ["STARTED", "RETRY", "PENDING"])
def test_unready_states_have_no_date_done(state: str) -> None:
    meta = make_meta("tid", state, {"pid": 1})
    assert meta["date_done"] is None
    assert "group_id" not in meta and "parent_id" not in meta
