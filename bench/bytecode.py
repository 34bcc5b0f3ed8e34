"""Compile Celeriac and the bench apps to bytecode before a bench starts any process.

A wheel install is compiled (pip writes the ``.pyc`` files), and so are the peers, which are
installed from wheels. A checkout run with ``PYTHONDONTWRITEBYTECODE`` set (as on this machine)
compiles every module again in every process it starts: measured on a ``prefork -c 2`` SQLite
worker, 1.3 MB more RSS per process (the compiler's garbage) and a slower start. Compiling first
measures Celeriac as a user's install runs it; the files go to ``__pycache__/`` (git-ignored).
"""

from __future__ import annotations

import compileall
import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parent


def compile_sources() -> None:
    # find_spec honours PYTHONPATH, so another checkout given to the bench is the one compiled
    spec = importlib.util.find_spec("celeriac")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("celeriac is not importable")
    for folder in [*spec.submodule_search_locations, str(HERE)]:
        compileall.compile_dir(folder, quiet=1, workers=1)
