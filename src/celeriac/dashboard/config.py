"""The dashboard's settings, one frozen object, and the rule about who may reach it.

Listening on a loopback address needs no credentials (only this machine reaches it);
anywhere else the dashboard refuses to start without a token or a ``user:password`` for
basic auth, since its buttons revoke tasks and replay or purge dead letters.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

from celeriac.exceptions import ConfigurationError

#: s a task stays in the history (a week)
DEFAULT_RETENTION = 7 * 86400.0


@dataclass(frozen=True)
class DashboardConfig:
    host: str = "127.0.0.1"
    port: int = 5555
    #: where the history lives (an SQLite file in the working directory by default, or
    #: ``postgresql://user@host/db``)
    history_url: str = "sqlite:///celeriac-dashboard.sqlite3"
    #: s tasks are kept in the history (by when first seen); 0 keeps them forever
    retention: float = DEFAULT_RETENTION
    #: a secret the browser presents once (``/login``) or a client as ``Authorization: Bearer``
    token: str | None = field(default=None, repr=False)
    #: ``user:password`` for HTTP basic auth
    basic_auth: str | None = field(default=None, repr=False)
    #: task names (shell patterns: ``proj.secret.*``) whose arguments are shown as ``***``
    masked_tasks: tuple[str, ...] = ()
    #: queues to show besides the default one, ``task_queues`` and those workers consume
    queues: tuple[str, ...] = ()
    #: s between the live parts' refreshes in the browser
    refresh: float = 1.0
    #: tasks on one page of the list
    page_size: int = 50

    def __post_init__(self) -> None:
        if self.basic_auth is not None and ":" not in self.basic_auth:
            raise ConfigurationError("basic auth must be given as user:password")
        if self.retention < 0:
            raise ConfigurationError("retention must be 0 (forever) or a number of seconds")

    @property
    def protected(self) -> bool:
        return bool(self.token or self.basic_auth)

    def check_exposure(self) -> None:
        """Refuse to listen beyond loopback without credentials (module docstring)."""
        if not is_loopback(self.host) and not self.protected:
            raise ConfigurationError(
                f"the dashboard would listen on {self.host}, beyond this machine, with no "
                "credentials: give --token (or CELERIAC_DASHBOARD_TOKEN) or --basic-auth "
                "user:password, or listen on 127.0.0.1"
            )

    def masks(self, task_name: str | None) -> bool:
        return bool(task_name) and any(
            fnmatch.fnmatchcase(str(task_name), p) for p in self.masked_tasks
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def masked_tasks(setting: Sequence[str] | str | None, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The setting ``dashboard_masked_tasks`` (a list, or a comma-separated string from the
    environment) plus names given on the command line."""
    if isinstance(setting, str):
        setting = [s.strip() for s in setting.split(",")]
    return tuple(p for p in [*(setting or ()), *extra] if p)
