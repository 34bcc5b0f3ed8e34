"""Finding the app that ``-A proj``, ``-A proj:app`` or ``-A proj.app`` names."""

from __future__ import annotations

import importlib
import os
import sys

from celeriac.app import Celeriac
from celeriac.exceptions import ConfigurationError

_CANDIDATES = ("app", "celery", "celeriac")


def load_app(spec: str) -> Celeriac:
    # Like Celery: modules next to where the command runs are importable.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name or "." not in module_name:
            raise ConfigurationError(f"cannot import app module {module_name!r}: {exc}") from exc
        # "proj.app": the last part may be an attribute, not a module.
        module_name, _, attr = module_name.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc2:
            raise ConfigurationError(f"cannot import {spec!r}: {exc2}") from exc2
    except ImportError as exc:
        raise ConfigurationError(f"cannot import app module {module_name!r}: {exc}") from exc
    if attr:
        obj = getattr(module, attr, None)
        if not isinstance(obj, Celeriac):
            raise ConfigurationError(f"{module_name}:{attr} is not a Celeriac app")
        return obj
    for name in _CANDIDATES:
        obj = getattr(module, name, None)
        if isinstance(obj, Celeriac):
            return obj
    found = [v for v in vars(module).values() if isinstance(v, Celeriac)]
    if len(found) == 1:
        return found[0]
    raise ConfigurationError(
        f"no Celeriac app found in module {module_name!r}; name it with -A {module_name}:app"
    )
