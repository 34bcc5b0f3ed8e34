"""ISO-8601 timestamps with offsets, as the protocol carries them."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def to_iso(ts: float | dt.datetime | None) -> str | None:
    """Unix seconds or a datetime (naive means UTC) as ISO-8601 with an offset."""
    if ts is None:
        return None
    if isinstance(ts, dt.datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=dt.timezone.utc)
        return ts.isoformat()
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat()


def parse_iso(value: Any) -> float | None:
    """An ISO-8601 string (or unix seconds) as unix seconds; naive strings are taken as UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dt.datetime):
        parsed = value
    else:
        text = str(value)
        if text.endswith("Z"):  # Python 3.10's fromisoformat does not take the Z suffix
            text = text[:-1] + "+00:00"
        parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.timestamp()


def now() -> float:
    return time.time()
