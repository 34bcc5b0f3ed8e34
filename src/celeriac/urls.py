"""Passwords in URLs, masked wherever a URL is printed or logged.

One rule for every place (error messages, the worker's startup line, ``inspect conf``, CLI
errors, log lines): the password part of ``scheme://user:password@host`` becomes ``**``, as
Celery's ``maybe_sanitize_url`` does, and so does a ``password=`` query parameter. The user name
and the host stay, so a message still says which server it is about.
"""

from __future__ import annotations

import logging
import re

MASK = "**"

# scheme://[user]:password@ — the password runs to the last '@' of the URL (a raw '@' in a
# password is common enough), never across whitespace, quotes or the ';' between the URLs of a
# failover list.
_PASSWORD = re.compile(
    r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/@\s'\";]*:)(?P<pw>[^\s'\";]*)(?=@)", re.IGNORECASE
)
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&;]password=)(?P<pw>[^&\s'\"#]+)", re.IGNORECASE)


def _sub(m: re.Match[str]) -> str:
    return m.group("head") + MASK


def mask_urls(text: str) -> str:
    """``text`` with the password of every URL in it masked."""
    if "://" not in text and "password=" not in text.lower():
        return text
    return _QUERY_PASSWORD.sub(_sub, _PASSWORD.sub(_sub, text))


def redact(url: str | None) -> str:
    """One URL (or ``None``, shown as ``''``) with its password masked, for messages and logs."""
    return mask_urls(url or "")


class MaskingFilter(logging.Filter):
    """A logging filter that masks URL passwords in every record a handler emits."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_urls(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def mask_log_handlers() -> None:
    """Mask URL passwords in whatever the root logger's handlers emit (call after setting
    them up: ``logging.basicConfig``)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, MaskingFilter) for f in handler.filters):
            handler.addFilter(MaskingFilter())
