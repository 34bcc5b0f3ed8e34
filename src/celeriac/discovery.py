"""``app.autodiscover_tasks()``: import ``<package>.tasks`` for each package of a project, as
Celery does for Django's installed apps.

Discovery is lazy, as in Celery: the call records what to look at, and the modules are imported
when the app imports its modules (a worker or beat starting, or ``app.import_modules()``), by
which time a framework's settings are loaded. A package without a ``tasks`` module is skipped;
an error *inside* a tasks module is raised, not hidden.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable

#: Package names, or a callable that returns them when discovery runs (Celery accepts both)
Packages = Iterable[str] | Callable[[], Iterable[str]] | None


def django_apps() -> list[str]:
    """The module names of Django's installed apps; Django is set up first if it is not yet
    (a worker process loads settings only through ``DJANGO_SETTINGS_MODULE``)."""
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()
    return [config.name for config in apps.get_app_configs()]


def discover(packages: Packages, related_name: str) -> list[str]:
    """Import ``<package>.<related_name>`` for each package; return the modules imported."""
    if packages is None:
        names: Iterable[str] = django_apps()
    elif callable(packages):
        names = packages()
    else:
        names = packages
    imported = []
    for package in names:
        module = f"{package}.{related_name}" if related_name else package
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name in (module, package):  # no such module: nothing to discover there
                continue
            raise
        imported.append(module)
    return imported
