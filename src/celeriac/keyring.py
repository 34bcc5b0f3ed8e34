"""The signing keys the settings name, read once per process.

``task_signing_key`` names one key (it signs, and it is the only one accepted);
``task_signing_keys`` several (all accepted, the first signs: rotation). Each value is the
key itself, ``"env:NAME"`` (the environment variable ``NAME`` holds it) or ``"file:/path"``
(the file holds it; one trailing newline is dropped). Setting both is an error: which key
signs would be ambiguous. Errors name the setting, the variable or the path, never a key.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from celeriac.exceptions import ConfigurationError
from celeriac.protocol.signing import Keyring

if TYPE_CHECKING:
    from celeriac.settings import Settings

#: Shorter keys can be guessed offline from any one signed message.
MIN_KEY_BYTES = 16


def keyring_of(conf: Settings) -> Keyring | None:
    """The keyring the settings name, or None when signing is off."""
    single, many = conf.task_signing_key, conf.task_signing_keys
    if not single and not many:
        return None
    if single and many:
        raise ConfigurationError(
            "set task_signing_key (one key) or task_signing_keys (rotation: the first signs), "
            "not both"
        )
    if single:
        return _keyring(("task_signing_key", (single,)))
    specs = (many,) if isinstance(many, str) else tuple(many)
    return _keyring(("task_signing_keys", specs))


def result_keyring_of(conf: Settings) -> Keyring | None:
    """The keyring that signs and checks result documents (``result_signing``), or None."""
    if not conf.result_signing:
        return None
    keyring = keyring_of(conf)
    if keyring is None:
        raise ConfigurationError("result_signing needs task_signing_key or task_signing_keys")
    return keyring


@functools.lru_cache(maxsize=8)
def _keyring(spec: tuple[str, Sequence[str]]) -> Keyring:
    setting, values = spec
    return Keyring.of([_read(setting, value) for value in values])


def _read(setting: str, value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        key = value
    elif not isinstance(value, str):
        raise ConfigurationError(f"{setting}: a key is a string, 'env:NAME' or 'file:/path'")
    elif value.startswith("env:"):
        name = value[4:]
        key = os.environ.get(name, "").encode()
        if not key:
            raise ConfigurationError(f"{setting}: environment variable {name!r} is not set")
    elif value.startswith("file:"):
        path = value[5:]
        try:
            with open(path, "rb") as f:
                key = f.read()
        except OSError as exc:
            raise ConfigurationError(
                f"{setting}: cannot read key file {path!r}: {exc.strerror}"
            ) from None
        key = key.removesuffix(b"\n").removesuffix(b"\r")
    else:
        key = value.encode()
    if len(key) < MIN_KEY_BYTES:
        raise ConfigurationError(
            f"{setting}: a signing key needs at least {MIN_KEY_BYTES} bytes "
            "(e.g. python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return key
