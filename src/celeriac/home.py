"""Where an app's default SQLite file lives: beside the module that creates the app.

Every process of a project imports the module that creates its app (``proj.py``): the worker
through ``-A proj``, a client through ``import proj``. A path derived from that module's file is
therefore the same in all of them, whatever their working directories, where a path relative to
the working directory gave a client started elsewhere a file of its own (its ``get()`` waited
on a result no worker would store). An app created where there is no module file (an
interactive session, ``python -c``) falls back to the working directory.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEFAULT_SQLITE_NAME = "celeriac.sqlite3"


def creator_directory() -> Path:
    """The directory of the first module on the call stack outside Celeriac (the one calling
    ``Celeriac(...)``), or the working directory when that module has no file."""
    frame = sys._getframe(1)
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        if module != "celeriac" and not module.startswith("celeriac."):
            filename = frame.f_globals.get("__file__")
            if isinstance(filename, str) and filename:
                return Path(os.path.abspath(filename)).parent
            break
        frame = frame.f_back  # type: ignore[assignment]
    return Path.cwd()


def default_sqlite_url(directory: Path) -> str:
    """``sqlite:////abs/dir/celeriac.sqlite3`` (an absolute path: four slashes)."""
    return f"sqlite:///{(directory / DEFAULT_SQLITE_NAME).as_posix()}"
