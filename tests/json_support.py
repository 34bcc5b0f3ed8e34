"""Comparing JSON texts whose spelling may differ: with orjson installed, a plain value is
written without kombu's spaces (``celeriac.protocol.fastjson``); without it, kombu's bytes."""

from __future__ import annotations

import json


def spelled_alike(text: str | bytes) -> str:
    """``text`` as :mod:`json` spells it (kombu's spacing, ``\\u`` escapes): two texts of the same
    value, keys in the same order, give the same result."""
    return json.dumps(json.loads(text))
