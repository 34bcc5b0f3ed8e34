"""Rebuilding an exception from a stored result runs no code the result names: it imports no
module, and runs no constructor of a type that is not builtin or Celeriac's."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac.exceptions import RemoteTaskError, TaskRevokedError
from celeriac.protocol.results import exception_from_dict

calls: list[str] = []


class LoudInit(Exception):
    def __init__(self, *args: object) -> None:
        calls.append("init")
        super().__init__(*args)


class LoudNew(ValueError):
    def __new__(cls, *args: object) -> LoudNew:
        calls.append("new")
        return super().__new__(cls, *args)


class LoudSetattr(Exception):
    def __setattr__(self, name: str, value: object) -> None:
        calls.append("setattr")
        super().__setattr__(name, value)


class Meta(type):
    def __call__(cls, *args: object, **kwargs: object) -> object:
        calls.append("metaclass call")
        return super().__call__(*args, **kwargs)


class LoudMeta(Exception, metaclass=Meta):
    pass


@pytest.fixture
def loud_module() -> Iterator[str]:
    """An imported module holding exception types whose construction leaves a trace; its
    ``__getattr__`` (PEP 562) leaves one too."""
    name = "celeriac_test_loud_errors"
    mod = types.ModuleType(name)
    for cls in (LoudInit, LoudNew, LoudSetattr, LoudMeta):
        setattr(mod, cls.__name__, cls)

    def module_getattr(attr: str) -> object:
        calls.append(f"module __getattr__ {attr}")
        raise AttributeError(attr)

    mod.__getattr__ = module_getattr  # type: ignore[method-assign]
    sys.modules[name] = mod
    calls.clear()
    yield name
    del sys.modules[name]


@pytest.mark.parametrize("type_name", ["LoudInit", "LoudNew", "LoudSetattr", "LoudMeta"])
def test_a_constructor_with_side_effects_is_not_run(loud_module: str, type_name: str) -> None:
    exc = exception_from_dict(
        {"exc_type": type_name, "exc_module": loud_module, "exc_message": ["boom", 7]}
    )
    assert type(exc).__name__ == type_name
    assert type(exc).__module__ == __name__  # the real type, found among imported modules
    assert exc.args == ("boom", 7)
    assert calls == []


def test_a_missing_name_in_an_imported_module_runs_no_module_hook(loud_module: str) -> None:
    exc = exception_from_dict({"exc_type": "Nope", "exc_module": loud_module, "exc_message": []})
    assert isinstance(exc, RemoteTaskError)
    assert (exc.exc_module, exc.exc_type) == (loud_module, "Nope")
    assert calls == []


def test_builtin_and_celeriac_types_are_built_as_usual() -> None:
    key = exception_from_dict(
        {"exc_type": "KeyError", "exc_module": "builtins", "exc_message": ["k"]}
    )
    assert type(key) is KeyError and key.args == ("k",)
    revoked = exception_from_dict(
        {"exc_type": "TaskRevokedError", "exc_module": "celery.exceptions", "exc_message": ["x"]}
    )
    assert type(revoked) is TaskRevokedError and revoked.args == ("x",)


def test_an_unimported_module_is_not_imported(tmp_path: Path) -> None:
    # A module on the path that, if imported, writes a file; checked in a fresh interpreter
    # so that nothing else in the test run has imported it.
    (tmp_path / "celeriac_test_trap.py").write_text(
        textwrap.dedent(
            """
            from pathlib import Path
            Path(__file__).with_name("imported").write_text("yes")
            class Trap(Exception):
                pass
            """
        )
    )
    script = textwrap.dedent(
        """
        import sys
        from celeriac.protocol.results import exception_from_dict
        exc = exception_from_dict(
            {"exc_type": "Trap", "exc_module": "celeriac_test_trap", "exc_message": ["t"]}
        )
        print(type(exc).__name__, type(exc).__mro__[1].__name__, exc.args,
              "celeriac_test_trap" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert out.split() == ["Trap", "RemoteTaskError", "('t',)", "False"]
    assert not (tmp_path / "imported").exists()
