"""The ``conf`` inspect command: a worker's settings as JSON, secrets masked.

Masked as Celery's ``humanize(censored=True)``: a setting whose name says it holds a secret
(API, TOKEN, KEY, SECRET, PASS, SIGNATURE, DATABASE) becomes ``********``, and the password in
any URL (the broker's, the result backend's) ``**``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from celeriac.settings import Settings
from celeriac.urls import mask_urls

MASK = "********"
_SECRET_NAME = re.compile("API|TOKEN|KEY|SECRET|PASS|SIGNATURE|DATABASE", re.IGNORECASE)
#: name parts that match :data:`_SECRET_NAME` but hold nothing secret
_NOT_SECRET = ("routing_key", "keyprefix", "key_prefix")


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask_urls(value)
    if isinstance(value, dict):
        return {k: _mask(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_value(v) for v in value]
    return value


def _mask(name: str, value: Any) -> Any:
    if _SECRET_NAME.search(name) and not any(part in name.lower() for part in _NOT_SECRET):
        return MASK if value not in (None, "", {}) else value
    return _mask_value(value)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def masked_conf(conf: Settings, *, with_defaults: bool = False) -> dict[str, Any]:
    """Settings by name (only those changed from the defaults unless ``with_defaults``)."""
    defaults = Settings().as_dict()
    out = {}
    for name, value in conf.as_dict().items():
        if not with_defaults and defaults.get(name) == value:
            continue
        out[name] = _jsonable(_mask(name, value))
    return out
