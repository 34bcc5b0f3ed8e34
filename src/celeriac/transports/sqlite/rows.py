"""Message rows read back into :class:`Message` objects, and what makes a row unreadable.

A row in ``celeriac_messages`` or ``celeriac_dead_letters`` holds the headers and properties as
JSON text, the content type and encoding as text and the body as a blob. Only this package writes
them, but a file is open to anyone with ``sqlite3`` (a hand edit, a restore from elsewhere, a
bug), and SQLite stores whatever type it is given whatever the column says. So a row is checked
as it is read: the worker's claim dead-letters one that does not make a message (with the reason
:func:`message_of` gives) instead of failing the whole batch, and listing dead letters shows
what can be read of one (:func:`salvage`) instead of failing the listing.
"""

from __future__ import annotations

from typing import Any

from celeriac.exceptions import DecodeError
from celeriac.protocol import fastjson
from celeriac.protocol.message import Message


class UnreadableRow(DecodeError, ValueError):
    """A row that cannot be turned into a message; the text says which column and why."""


def message_of(
    headers: object, properties: object, content_type: object, encoding: object, body: object
) -> Message:
    """The message a row holds; :class:`UnreadableRow` when it holds none."""
    return Message(
        _object(headers, "headers"),
        _object(properties, "properties"),
        _blob(body),
        _text(content_type, "content_type"),
        _text(encoding, "content_encoding"),
    )


def salvage(
    headers: object, properties: object, content_type: object, encoding: object, body: object
) -> tuple[Message, str]:
    """What can be read of a row, for showing it: unreadable parts are left empty (the row
    itself is untouched, and a replay copies it as it is). Also why it is not whole ("" when
    it is)."""
    problems: list[str] = []

    def keep(read: Any, value: object, *args: str) -> Any:
        try:
            return read(value, *args)
        except UnreadableRow as exc:
            problems.append(str(exc))
            return None

    message = Message(
        keep(_object, headers, "headers") or {},
        keep(_object, properties, "properties") or {},
        keep(_blob, body) or b"",
        keep(_text, content_type, "content_type") or "",
        keep(_text, encoding, "content_encoding") or "",
    )
    return message, "; ".join(problems)


def _object(value: object, column: str) -> dict[str, Any]:
    if not isinstance(value, str | bytes):
        raise UnreadableRow(f"{column} are {_sql_type(value)}, not JSON text")
    try:
        doc = fastjson.loads(value)
    except (ValueError, RecursionError) as exc:  # also a blob's UnicodeDecodeError, and JSON
        # nested deeper than Python's recursion limit
        raise UnreadableRow(f"{column} are not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise UnreadableRow(f"{column} are not a JSON object but {type(doc).__name__}")
    return doc


def _blob(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):  # text where a blob belongs (the sqlite3 shell writes text)
        return value.encode("utf-8", "surrogateescape")
    # bytes(5) would be five zero bytes: a wrong type is never read as a body.
    raise UnreadableRow(f"body is {_sql_type(value)}, not a blob")


def _text(value: object, column: str) -> str:
    if not isinstance(value, str):
        raise UnreadableRow(f"{column} is {_sql_type(value)}, not text")
    return value


def _sql_type(value: object) -> str:
    """SQLite's name for the storage class a value came back as."""
    if value is None:
        return "NULL"
    return {int: "an INTEGER", float: "a REAL", str: "TEXT", bytes: "a BLOB"}.get(
        type(value), type(value).__name__
    )
