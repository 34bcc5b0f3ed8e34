"""Passwords in URLs never appear in what Celeriac prints or logs (celeriac/urls.py): error
messages, CLI errors, the worker's startup line, ``beat list``, ``inspect conf``."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac import Celeriac
from celeriac.exceptions import ConfigurationError
from celeriac.settings import Settings
from celeriac.transports import transport_class
from celeriac.transports.amqp.urls import Address
from celeriac.transports.redis.connection import server_key
from celeriac.urls import MaskingFilter, mask_urls, redact
from celeriac.worker.remote_conf import masked_conf
from tests import redis_support

SECRET = "s3cret-pw"
E2E = Path(__file__).parent / "e2e"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("redis://:s3cret-pw@h:6379/0", "redis://:**@h:6379/0"),
        ("amqp://user:s3cret-pw@h:5672/vh", "amqp://user:**@h:5672/vh"),
        ("amqp://u:s3cret@pw@h//", "amqp://u:**@h//"),  # a raw '@' in the password
        ("a amqp://u:s3cret-pw@h1;amqp://v:s3cret-pw@h2 b", "a amqp://u:**@h1;amqp://v:**@h2 b"),
        ("at 'redis://u:s3cret-pw@h' now", "at 'redis://u:**@h' now"),
        ("sentinel://h:26379?password=s3cret-pw&x=1", "sentinel://h:26379?password=**&x=1"),
        ("redis://h:6379/0 user@example.com", "redis://h:6379/0 user@example.com"),
        ("sqlite:///tmp/a.db", "sqlite:///tmp/a.db"),
    ],
)
def test_mask_urls(text: str, masked: str) -> None:
    assert mask_urls(text) == masked
    assert "s3cret" not in masked


def test_redact_one_url() -> None:
    assert redact("redis://:s3cret-pw@h/0") == "redis://:**@h/0"
    assert redact(None) == ""


@pytest.mark.parametrize(
    "make_error",
    [
        lambda: transport_class(f"foo://u:{SECRET}@h/"),
        lambda: server_key(f"redis://:{SECRET}@h:notaport/0"),
        lambda: Address.parse(f"http://u:{SECRET}@h/"),
    ],
    ids=["unknown-scheme", "bad-redis-port", "not-amqp"],
)
def test_configuration_errors_mask_the_password(make_error) -> None:
    with pytest.raises(ConfigurationError) as info:
        make_error()
    assert SECRET not in str(info.value)
    assert ":**@h" in str(info.value)


def test_app_repr_and_inspect_conf_mask_the_password() -> None:
    url = f"redis://:{SECRET}@127.0.0.1:1/0"
    app = Celeriac("r", broker_url=url)
    assert repr(app) == "<Celeriac r broker=redis://:**@127.0.0.1:1/0>"
    conf = Settings()
    conf.update(broker_url=url, result_backend=f"redis://u:{SECRET}@h/1")
    masked = masked_conf(conf)
    assert (masked["broker_url"], masked["result_backend"]) == (
        "redis://:**@127.0.0.1:1/0",
        "redis://u:**@h/1",
    )


def test_log_lines_are_masked(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("celeriac.test_secrets")
    record = log.makeRecord(
        log.name,
        logging.ERROR,
        __file__,
        1,
        "cannot reach %s",
        (f"amqp://guest:{SECRET}@h//",),
        None,
    )
    assert MaskingFilter().filter(record)
    assert record.getMessage() == "cannot reach amqp://guest:**@h//"


# -- real CLI processes ----------------------------------------------------------------------
def run_cli(url: str, *args: str, backend: str | None = None, timeout: float = 30) -> str:
    env = {
        **os.environ,
        "CELERIAC_BROKER_URL": url,
        "PYTHONPATH": f"{E2E}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    if backend:
        env["CELERIAC_RESULT_BACKEND"] = backend
    done = subprocess.run(
        [sys.executable, "-m", "celeriac", "-A", "secret_tasks", *args],
        env=env,
        capture_output=True,
        timeout=timeout,
    )
    return (done.stdout + done.stderr).decode()


UNREACHABLE = f"redis://:{SECRET}@127.0.0.1:1/0"
BAD_PORT = f"redis://:{SECRET}@127.0.0.1:notaport/0"
UNKNOWN = f"foo://u:{SECRET}@h/"


@pytest.mark.parametrize(
    ("url", "args", "expected"),
    [
        (UNREACHABLE, ["beat", "list"], "Error: Redis beat store"),
        (UNREACHABLE, ["call", "secret_tasks.add", "-a", "[1, 2]"], "Error: BrokerError"),
        (UNREACHABLE, ["inspect", "conf"], "Error: Redis remote control"),
        (BAD_PORT, ["beat", "list"], "Error: bad Redis URL 'redis://:**@127.0.0.1:notaport/0'"),
        (BAD_PORT, ["worker", "-P", "solo"], "Error: bad Redis URL 'redis://:**@"),
        (
            UNKNOWN,
            ["inspect", "conf"],
            "Error: no transport for URL scheme 'foo' in 'foo://u:**@h/'",
        ),
        (UNKNOWN, ["purge", "-f"], "Error: no transport for URL scheme 'foo'"),
    ],
)
def test_cli_errors_never_show_the_password(url: str, args: list[str], expected: str) -> None:
    out = run_cli(url, *args)
    assert expected in out, out
    assert SECRET not in out


def test_cli_result_with_an_unreachable_backend_masks_it() -> None:
    out = run_cli("memory://", "result", "abc", backend=UNREACHABLE)
    assert "Error:" in out, out
    assert SECRET not in out


@pytest.fixture
def secret_worker(tmp_path: Path) -> Iterator[tuple[str, str, subprocess.Popen[bytes], Path]]:
    """A real worker on the real Redis, its URL carrying a password (Redis's default user
    takes any password when it has none)."""
    prefix = redis_support.new_prefix()
    url = f"redis://default:{SECRET}@127.0.0.1:6379/0?global_keyprefix={prefix}"
    name = f"secret-{uuid.uuid4().hex[:8]}@test"
    log = tmp_path / "worker.log"
    env = {
        **os.environ,
        "CELERIAC_BROKER_URL": url,
        "PYTHONPATH": f"{E2E}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celeriac",
                "-A",
                "secret_tasks",
                "worker",
                "-P",
                "solo",
                "-n",
                name,
                "-Q",
                f"q-{uuid.uuid4().hex[:8]}",
                "-l",
                "info",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while b" ready:" not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield url, name, proc, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
        redis_support.drop(prefix, db=0)  # this URL names DB 0, not the tests' usual one


@pytest.mark.redis
def test_worker_startup_line_and_inspect_conf_mask_the_password(secret_worker) -> None:
    url, name, proc, log = secret_worker
    conf = run_cli(url, "inspect", "conf", "true", "-d", name, "-t", "5", "--json")
    assert '"broker_url": "redis://default:**@127.0.0.1:6379/0?global_keyprefix=' in conf, conf
    assert SECRET not in conf
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    text = log.read_text()
    assert f"{name} ready:" in text
    assert "broker=redis://default:**@127.0.0.1:6379/0" in text
    assert SECRET not in text
