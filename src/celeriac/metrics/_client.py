"""The one place ``prometheus_client`` is imported, with an error that says what to install."""

from __future__ import annotations

from types import ModuleType

from celeriac.exceptions import ConfigurationError


def prometheus() -> ModuleType:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ConfigurationError(
            "metrics need prometheus-client: pip install 'celeriac[metrics]'"
        ) from exc
    return prometheus_client
