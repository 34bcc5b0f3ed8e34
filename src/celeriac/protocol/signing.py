"""HMAC-SHA256 signatures on task messages, remote-control messages and result documents.

No I/O: keys come in a :class:`Keyring` (:mod:`celeriac.keyring` builds one from the settings).

A **task message** is signed over its exact body bytes, its content type and a canonical JSON of
the headers that decide what runs (:data:`SIGNED_HEADERS`); the body holds the arguments and
the workflow (callbacks, errbacks, chain, chord: PROTOCOL.md §1.3), so those are covered
byte for byte. The signature and the signing key's id travel in two headers of their own
(:data:`SIGNATURE_HEADER`, :data:`KEY_ID_HEADER`), which Celery workers ignore. Headers a broker
or worker rewrites on the way (a delivery count, redelivery marks, ``x-death``) are left out,
so a redelivered message still verifies.

A **remote-control message** (a command or a reply) is a JSON object that transports decode
and re-encode, so it is signed over a canonical JSON of the decoded body plus its ``expires``
header, and the two values go in its headers too.

A **result document** carries its signature inside itself (:data:`RESULT_FIELD`), computed over
the canonical JSON of the rest of the document, so it survives any re-encoding by a backend.

Canonical JSON: keys sorted, no spaces, ASCII only, a float with an integral value written as
an integer (AMQP and JSON disagree on ``60`` vs ``60.0``), bytes as ``{"$bytes": hex}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celeriac.exceptions import SignatureError
from celeriac.protocol.message import Message
from celeriac.protocol.serializers import Serializer

SIGNATURE_HEADER = "x-celeriac-signature"
KEY_ID_HEADER = "x-celeriac-key-id"
RESULT_FIELD = "celeriac_signature"

#: Headers that decide what runs, when, how often and how the body reads. Display-only headers
#: (argsrepr, shadow, origin) and those rewritten in transit stay outside.
SIGNED_HEADERS = (
    "task",
    "id",
    "eta",
    "expires",
    "retries",
    "timelimit",
    "root_id",
    "parent_id",
    "group",
    "group_index",
    "ignore_result",
    "compression",
)

_TASK_DOMAIN = b"celeriac-task-v1\x00"
_CONTROL_DOMAIN = b"celeriac-control-v1\x00"
_RESULT_DOMAIN = b"celeriac-result-v1\x00"
_ID_DOMAIN = b"celeriac-key-id"


def key_id(key: bytes) -> str:
    """A key's public name: the first 16 hex digits of an HMAC of a fixed text under it.

    It reveals no more about the key than any signature does, and lets a worker pick the key
    a message was signed with among several (rotation) without trying each.
    """
    # hashlib and hmac load OpenSSL: imported where a key is used, not by every process.
    import hashlib
    import hmac

    return hmac.new(key, _ID_DOMAIN, hashlib.sha256).hexdigest()[:16]


@dataclass(frozen=True, slots=True, repr=False)
class Keyring:
    """The keys accepted here by id, in order; the first one signs."""

    keys: tuple[tuple[str, bytes], ...]

    @classmethod
    def of(cls, keys: list[bytes]) -> Keyring:
        seen: dict[str, bytes] = {}
        for key in keys:
            seen.setdefault(key_id(key), key)
        if not seen:
            raise ValueError("a keyring needs at least one key")
        return cls(tuple(seen.items()))

    @property
    def signer(self) -> tuple[str, bytes]:
        return self.keys[0]

    def key(self, kid: Any) -> bytes:
        for known, key in self.keys:
            if known == kid:
                return key
        raise SignatureError(f"signed with key id {kid!r}, which is not an accepted signing key")

    def __repr__(self) -> str:  # never the keys themselves
        return f"<Keyring signs with {self.keys[0][0]}, accepts {[k for k, _ in self.keys]}>"


# Built once: json.dumps() with options builds an encoder per call (2 us of a 6 us call).
_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
)
_AS_IS = frozenset({str, bool, int, type(None)})


def canonical(value: Any) -> bytes:
    """The canonical JSON of ``value`` (see the module docstring)."""
    try:
        return _ENCODER.encode(_norm(value)).encode("ascii")
    except (TypeError, ValueError, RecursionError) as exc:
        raise SignatureError(f"cannot sign or check this content: {exc}") from exc


def _norm(value: Any) -> Any:
    kind = type(value)
    if kind in _AS_IS:  # exact types first: this runs for every header of every message
        return value
    if kind is float:
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if kind is list or kind is tuple:
        return [_norm(v) for v in value]
    if kind is dict:
        return {k if type(k) is str else str(k): _norm(v) for k, v in value.items()}
    if isinstance(value, bool | str):
        return bool(value) if isinstance(value, bool) else str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _norm(float(value))
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": bytes(value).hex()}
    if isinstance(value, list | tuple):
        return [_norm(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _norm(v) for k, v in value.items()}
    raise TypeError(f"a {type(value).__name__} has no canonical form")


def _mac(key: bytes, *parts: bytes) -> str:
    # hmac.digest: OpenSSL's one-shot HMAC, without building an hmac object in Python.
    import hmac

    return hmac.digest(key, b"".join(parts), "sha256").hex()


def _task_material(message: Message) -> tuple[bytes, ...]:
    headers = message.headers
    signed = [message.content_type, {name: headers.get(name) for name in SIGNED_HEADERS}]
    # The canonical JSON is ASCII, never a NUL: the separator makes the split unambiguous.
    return (_TASK_DOMAIN, canonical(signed), b"\x00", message.body)


def sign_message(message: Message, keyring: Keyring) -> None:
    """Add the signature headers to ``message`` (in place)."""
    kid, key = keyring.signer
    message.headers[SIGNATURE_HEADER] = _mac(key, *_task_material(message))
    message.headers[KEY_ID_HEADER] = kid


def verify_message(message: Message, keyring: Keyring) -> None:
    """Raise :class:`SignatureError` unless ``message`` was signed by an accepted key and not
    changed since (in its body or a signed header)."""
    headers = message.headers
    signature = headers.get(SIGNATURE_HEADER)
    if not signature:
        raise SignatureError(f"message is not signed (no {SIGNATURE_HEADER} header)")
    key = keyring.key(headers.get(KEY_ID_HEADER))
    expected = _mac(key, *_task_material(message))
    import hmac

    if not isinstance(signature, str) or not hmac.compare_digest(expected, signature):
        raise SignatureError("message signature does not match its content (changed after signing)")


def _control_material(body: Mapping[str, Any], headers: Mapping[str, Any]) -> bytes:
    return canonical([body, headers.get("expires") or 0, headers.get("ticket")])


def sign_control(body: Mapping[str, Any], headers: dict[str, Any], keyring: Keyring) -> None:
    """Add the signature headers to a remote-control message's ``headers`` (in place)."""
    kid, key = keyring.signer
    headers[SIGNATURE_HEADER] = _mac(key, _CONTROL_DOMAIN, _control_material(body, headers))
    headers[KEY_ID_HEADER] = kid


def verify_control(body: Mapping[str, Any], headers: Mapping[str, Any], keyring: Keyring) -> None:
    """Raise :class:`SignatureError` unless this command or reply is signed by an accepted key."""
    signature = headers.get(SIGNATURE_HEADER)
    if not signature:
        raise SignatureError(f"not signed (no {SIGNATURE_HEADER} header)")
    key = keyring.key(headers.get(KEY_ID_HEADER))
    expected = _mac(key, _CONTROL_DOMAIN, _control_material(body, headers))
    import hmac

    if not isinstance(signature, str) or not hmac.compare_digest(expected, signature):
        raise SignatureError("signature does not match its content")


def sign_document(doc: Mapping[str, Any], keyring: Keyring) -> dict[str, Any]:
    """``doc`` with its signature field (``"<key id>:<hex>"``) added."""
    kid, key = keyring.signer
    rest = {k: v for k, v in doc.items() if k != RESULT_FIELD}
    return {**rest, RESULT_FIELD: f"{kid}:{_mac(key, _RESULT_DOMAIN, canonical(rest))}"}


def verify_document(doc: Mapping[str, Any], keyring: Keyring, what: str) -> dict[str, Any]:
    """``doc`` without its signature field; :class:`SignatureError` naming ``what`` unless the
    signature is there, by an accepted key, and matches."""
    field = doc.get(RESULT_FIELD)
    if not isinstance(field, str) or ":" not in field:
        raise SignatureError(f"{what} is not signed (no {RESULT_FIELD!r} field)")
    kid, _, signature = field.partition(":")
    rest = {k: v for k, v in doc.items() if k != RESULT_FIELD}
    try:
        expected = _mac(keyring.key(kid), _RESULT_DOMAIN, canonical(rest))
    except SignatureError as exc:
        raise SignatureError(f"{what}: {exc}") from None
    import hmac

    if not hmac.compare_digest(expected, signature):
        raise SignatureError(
            f"{what}: signature does not match its content (changed after signing)"
        )
    return rest


def sign_encoded(data: bytes, serializer: Serializer, keyring: Keyring) -> bytes:
    """An encoded result document, signed: decoded first, so that the signature covers the
    values a reader will decode (a datetime becomes a string, a tuple a list)."""
    doc = serializer.loads(data)
    if not isinstance(doc, Mapping):
        raise SignatureError("a result document to sign is not a mapping")
    return serializer.dumps(sign_document(doc, keyring))
