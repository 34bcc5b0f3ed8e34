"""Running the dashboard: check who may reach it, then serve it with uvicorn."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from celeriac.dashboard.config import DashboardConfig
from celeriac.exceptions import ConfigurationError

if TYPE_CHECKING:
    from celeriac.app import Celeriac

logger = logging.getLogger("celeriac.dashboard")


def serve(app: Celeriac, config: DashboardConfig, log_level: str = "warning") -> None:
    """Serve until interrupted; refuses to listen beyond loopback without credentials."""
    config.check_exposure()
    try:
        import uvicorn

        from celeriac.dashboard.app import create_app
    except ImportError as exc:
        raise ConfigurationError(
            f"the dashboard needs its extra: pip install 'celeriac[dashboard]' ({exc})"
        ) from None
    web = create_app(app, config)
    logger.warning("dashboard on http://%s:%d/", config.host, config.port)
    uvicorn.run(web, host=config.host, port=config.port, log_level=log_level, access_log=False)
