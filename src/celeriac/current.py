"""The app a signature built without one uses: Celery's ``current_app``, made explicit.

Celery resolves a signature's app from the signature, then its first task, then a thread-local
"current app" that falls back to a default app it creates (a broker on localhost nobody asked
for). Code written for Celery relies on it: ``signature("proj.add", (1, 2)).delay()`` or a
``chain`` of such signatures names no app. Here the current app is one per *process*, not per
thread (an app made in one thread and used from a web server's worker threads is the common
case), and there is no implicit default: with no app created yet, the error says so.

The last :class:`~celeriac.app.Celeriac` created becomes current, as in Celery
(``set_as_current=True``); :meth:`Celeriac.set_current` chooses another. Only a weak reference
is kept, so a test's throwaway apps are not kept alive by it.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from celeriac.exceptions import ConfigurationError

if TYPE_CHECKING:
    from celeriac.app import Celeriac

_current: weakref.ref[Celeriac] | None = None


def set_current_app(app: Celeriac) -> None:
    global _current
    _current = weakref.ref(app)


def current_app() -> Celeriac:
    """The current app, or :class:`ConfigurationError` when no app exists in this process."""
    app = _current() if _current is not None else None
    if app is None:
        raise ConfigurationError(
            "no Celeriac app exists in this process: create one (Celeriac('proj')) before "
            "calling a signature built without a task, or build it with task.s(...)"
        )
    return app
