"""What a new user meets first, without worker processes: kombu's JSON markers, an argument
that cannot be encoded, help for every CLI option, ``-c``, the package's claims, ``beat list``
for an entry with an unknown task, and an unreachable RabbitMQ."""

from __future__ import annotations

import datetime as dt
import decimal
import importlib
import json
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import click
import pytest
import tomllib
from click.testing import CliRunner
from kombu.utils import json as kombu_json

from celeriac import Celeriac
from celeriac.cli.main import _concurrency, cli
from celeriac.exceptions import EncodeError
from celeriac.protocol.serializers import JSON
from celeriac.transports import TRANSPORTS

ROOT = Path(__file__).resolve().parents[1]

VALUES = {
    "datetime": dt.datetime(2026, 3, 29, 1, 30, 15, 250000, tzinfo=dt.timezone.utc),
    "naive": dt.datetime(2026, 3, 29, 1, 30),
    "date": dt.date(2026, 3, 29),
    "time": dt.time(1, 30, 15),
    "decimal": decimal.Decimal("12.3400"),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "bytes": b"raw",
    "base64": b"\xff\xfe",
}


@pytest.mark.parametrize("name", list(VALUES))
def test_json_encodes_as_kombu_does_and_both_decode_it(name: str) -> None:
    value = VALUES[name]
    ours = JSON.dumps([value])
    assert json.loads(ours) == json.loads(kombu_json.dumps([value]))
    assert kombu_json.loads(ours) == [value]
    assert JSON.loads(kombu_json.dumps([value]).encode()) == [value]
    assert JSON.loads(ours) == [value]


def test_json_leaves_other_dicts_alone() -> None:
    doc = [{"__type__": "mine", "__value__": 1}, {"__type__": "uuid"}, {"a": 1}]
    assert JSON.loads(JSON.dumps(doc)) == doc


def test_an_argument_that_cannot_be_encoded_names_task_and_argument() -> None:
    app = Celeriac("proj", broker_url="memory://")

    @app.task
    def send(to: str, payload: object = None) -> None: ...

    with pytest.raises(EncodeError) as info:
        send.delay("x", payload=object())
    assert str(info.value) == (
        f"cannot send {send.name}: keyword argument 'payload' (object) cannot be encoded with "
        "the json serializer: Object of type object is not JSON serializable"
    )
    assert isinstance(info.value, TypeError)  # as the serializer's own error was
    with pytest.raises(EncodeError, match=r"argument 0 \(socket\)"), socket.socket() as sock:
        send.delay(sock)  # type: ignore[arg-type]
    app.close()


def _options(cmd: click.Command, path: str) -> list[tuple[str, click.Option]]:
    found = [(path, p) for p in cmd.params if isinstance(p, click.Option)]
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            found += _options(sub, f"{path} {name}")
    return found


def test_every_cli_option_has_help() -> None:
    missing = [f"{path} {'/'.join(o.opts)}" for path, o in _options(cli, "celeriac") if not o.help]
    assert missing == []


def test_concurrency_zero_is_the_default_and_negative_an_error() -> None:
    assert _concurrency(None, None, 0) is None  # type: ignore[arg-type]  # CPU count
    assert _concurrency(None, None, 3) == 3  # type: ignore[arg-type]
    with pytest.raises(click.BadParameter, match="must be 0 \\(the CPU count\\) or more"):
        _concurrency(None, None, -1)  # type: ignore[arg-type]


def test_package_claims_only_what_exists() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # The summary names only brokers that exist.
    assert ("PostgreSQL" in project["description"]) == ("postgresql" in TRANSPORTS)
    # Each extra installs what one part of ours needs, and that part exists.
    parts = {
        "msgpack": "celeriac.protocol.serializers",
        "redis": "celeriac.transports.redis",
        "amqp": "celeriac.transports.amqp",
        "memcached": "celeriac.transports.memcached",
        "postgres": "celeriac.transports.postgres",
        "dashboard": "celeriac.dashboard",
        "metrics": "celeriac.metrics",
        "tracing": "celeriac.tracing",
        "fast": "celeriac.protocol.fastjson",
    }
    assert set(project["optional-dependencies"]) == {*parts, "dev"}
    for module in parts.values():
        importlib.import_module(module)
    assert {"sqlite", "redis", "amqp", "memcached", "postgresql"} <= set(TRANSPORTS)


def test_beat_list_shows_an_unknown_task_as_beat_refuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"beatproj_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "from celeriac import Celeriac\n"
        f"app = Celeriac('{module}', broker_url='sqlite:///{tmp_path}/b.db')\n"
        "@app.task\ndef add(x, y): return x + y\n"
        "app.conf.beat_schedule = {\n"
        f"    'good': {{'task': '{module}.add', 'schedule': 30.0, 'args': (1, 2)}},\n"
        f"    'typo': {{'task': '{module}.ad', 'schedule': 30.0}},\n"
        "}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    runner = CliRunner()
    listed = runner.invoke(cli, ["-A", module, "beat", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    states = {e["name"]: (e["state"], e["problem"]) for e in json.loads(listed.output)["entries"]}
    problem = (
        f"beat entry 'typo': no task named '{module}.ad'; did you mean '{module}.add'? (import "
        "the task's module, or give the entry 'unregistered': True when the task lives elsewhere)"
    )
    assert states == {"good": ("active", None), "typo": ("unknown task", problem)}
    table = runner.invoke(cli, ["-A", module, "beat", "list"], env={"COLUMNS": "250"})
    assert "unknown task" in table.output
    started = runner.invoke(cli, ["-A", module, "beat"])
    assert (started.exit_code, started.output.strip()) == (1, f"Error: {problem}")
    sys.modules.pop(module, None)


def test_unreachable_amqp_is_one_clear_error_and_nothing_else() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = (
        "from celeriac import Celeriac\n"
        "from celeriac.exceptions import BrokerError\n"
        f"app = Celeriac('p', broker_url='amqp://guest:secret@127.0.0.1:{port}//',\n"
        "               broker_transport_options={'publish_timeout': 2})\n"
        "try:\n"
        "    app.send_task('p.add', (1, 2))\n"
        "except BrokerError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert done.stderr == ""
    assert done.stdout == (
        f"AMQP: cannot connect to amqp://guest:**@127.0.0.1:{port}// ([Errno 111] Connection "
        "refused); gave up on declaring for a publish after 2.0s\n"
    )
