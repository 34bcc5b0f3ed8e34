"""The py-amqp publisher without a server: connection settings from Celeriac's AMQP URLs, the
pool, and what is sent again after a failure (on a scripted fake connection; the publishing
itself is tested against RabbitMQ in test_broker.py)."""

from __future__ import annotations

import math
import socket
import ssl
import struct
import time
import types
from typing import Any

import pytest

from celeriac.exceptions import BrokerError
from celeriac.transports.amqp.options import AMQPOptions
from celeriac.transports.amqp.publisher import (
    Nacked,
    Outgoing,
    Publisher,
    Unconfirmed,
    Unroutable,
)
from celeriac.transports.amqp.urls import connect_params, idle_limit


def test_kombu_style_urls_map_to_py_amqp_arguments() -> None:
    url = "amqp://u%40x:p%2Fw@rabbit:5673/%2Fprod"
    p = connect_params(url, AMQPOptions(heartbeat=20), heartbeat=False)
    assert p["host"] == "rabbit:5673"
    assert (p["userid"], p["password"]) == ("u@x", "p/w")
    assert p["virtual_host"] == "/prod"
    # no heartbeats (nothing answers them between calls): replaced after half the interval idle
    assert p["heartbeat"] == 0 and p["connect_timeout"] == 10.0 and p["login_method"] == "PLAIN"
    assert connect_params(url, AMQPOptions(heartbeat=20))["heartbeat"] == 20  # the link's
    assert connect_params("amqp://h/?connect_timeout=3")["connect_timeout"] == 3.0
    assert "ssl" not in p
    for url in ("amqp://localhost", "amqp://localhost/", "amqp://localhost//"):
        q = connect_params(url)
        assert (q["host"], q["virtual_host"], q["userid"]) == ("localhost:5672", "/", "guest")
    assert idle_limit("amqp://h/", AMQPOptions(heartbeat=20)) == 10.0
    assert idle_limit("amqp://h/?heartbeat=30", AMQPOptions(heartbeat=20)) == 15.0
    assert idle_limit("amqp://h/?heartbeat=0") == math.inf
    assert idle_limit("amqp://h/") == 30.0


def test_amqps_urls_carry_their_tls_files() -> None:
    p = connect_params("amqps://h/v?cafile=/ca.pem&certfile=/c.pem&keyfile=/k.pem")
    assert p["host"] == "h:5671"
    assert p["ssl"] == {
        "server_hostname": "h",
        "cert_reqs": ssl.CERT_REQUIRED,
        "ca_certs": "/ca.pem",
        "certfile": "/c.pem",
        "keyfile": "/k.pem",
    }
    # no host name either: py-amqp would check it, and refuse CERT_NONE with the check on
    assert connect_params("amqps://h/?no_verify_ssl=1")["ssl"] == {"cert_reqs": ssl.CERT_NONE}


class _FakeChannel:
    channel_id = 1

    def __init__(self) -> None:
        from collections import defaultdict

        self.events: Any = defaultdict(set)
        self.sent: list[bytes] = []
        self.confirming = False

    def confirm_select(self) -> None:
        self.confirming = True

    def send_method(self, sig: Any, argsig: str, args: Any, content: Any) -> None:
        self.sent.append(content.body)


def _frame(sig: tuple[int, int], args: bytes) -> bytes:
    payload = struct.pack(">HH", *sig) + args
    return struct.pack(">BHI", 1, 1, len(payload)) + payload + b"\xce"


_CODES = {"no exchange": 404, "too large": 406}


class _FakeConnection:
    """py-amqp's Connection as the publisher uses it, following a script per connection:
    "refuse" (it does not open), or what RabbitMQ sends once it is open, as real frames on one
    end of a socket pair: ("ack" | "nack", tag, multiple), "cut" (the connection is lost), or
    a channel error ("no exchange": 404, "too large": 406)."""

    scripts: list[Any] = []
    opened: list[_FakeConnection] = []

    def __init__(self, **_: Any) -> None:
        self.script = list(_FakeConnection.scripts.pop(0))
        self.ch = _FakeChannel()
        self.sock, self._peer = socket.socketpair()
        self.transport = types.SimpleNamespace(sock=self.sock, write=self._write)
        self.frame_max = 131072
        self.connected = False
        _FakeConnection.opened.append(self)

    def connect(self) -> None:
        if self.script == ["refuse"]:
            raise ConnectionRefusedError("refused")
        self.connected = True
        for step in self.script:
            if step == "cut":
                self._peer.shutdown(socket.SHUT_WR)
                break
            if step in _CODES:  # (not channel.close's real arguments: a marker for the fake)
                self._peer.sendall(_frame((20, 40), struct.pack(">H", _CODES[step])))
                continue
            kind, tag, multiple = step
            sig = (60, 80) if kind == "ack" else (60, 120)
            self._peer.sendall(_frame(sig, struct.pack(">QB", tag, int(multiple))))

    def channel(self) -> _FakeChannel:
        return self.ch

    def _write(self, data: bytes) -> None:  # one message's frames: keep its body
        body, pos = b"", 0
        while pos < len(data):
            kind, _, size = struct.unpack_from(">BHI", data, pos)
            if kind == 3:
                body += data[pos + 7 : pos + 7 + size]
            pos += size + 8
        self.ch.sent.append(body)

    def on_inbound_frame(self, frame: tuple[int, int, bytes]) -> None:
        import amqp.exceptions

        _, _, payload = frame
        sig = struct.unpack_from(">HH", payload)
        if sig == (20, 40):
            [code] = struct.unpack_from(">H", payload, 4)
            error = amqp.exceptions.error_for_code(code, "closed", None, Exception)
            raise error
        tag, bits = struct.unpack_from(">QB", payload, 4)
        assert sig == (60, 120)  # acks are read by the publisher itself
        for callback in list(self.ch.events["basic_nack"]):
            callback(tag, bool(bits & 1))

    def collect(self) -> None:
        self.connected = False
        self.sock.close()
        self._peer.close()


@pytest.fixture
def fake_amqp(monkeypatch: pytest.MonkeyPatch) -> type[_FakeConnection]:
    import amqp

    monkeypatch.setattr(amqp, "Connection", _FakeConnection)
    _FakeConnection.scripts, _FakeConnection.opened = [], []
    return _FakeConnection


def _items(*names: str) -> list[Outgoing]:
    return [Outgoing(n.encode(), "", "q", {"correlation_id": n}) for n in names]


def test_a_connection_that_will_not_open_sends_everything_on_the_next(fake_amqp: Any) -> None:
    fake_amqp.scripts = [["refuse"], [("ack", 2, True)]]
    publisher = Publisher("amqp://h/")
    assert publisher.send(_items("m0", "m1"), time.monotonic() + 5) == []
    refused, second = fake_amqp.opened
    assert (refused.ch.sent, second.ch.sent) == ([], [b"m0", b"m1"])
    assert second.ch.confirming


def test_a_cut_sends_again_exactly_what_was_not_confirmed(fake_amqp: Any) -> None:
    fake_amqp.scripts = [[("ack", 2, True), "cut"], [("ack", 1, False)]]
    publisher = Publisher("amqp://h/")
    publisher.send(_items("m0", "m1", "m2"), time.monotonic() + 5)
    first, second = fake_amqp.opened
    assert (first.ch.sent, second.ch.sent) == ([b"m0", b"m1", b"m2"], [b"m2"])


def test_a_nack_before_a_cut_still_raises(fake_amqp: Any) -> None:
    fake_amqp.scripts = [[("nack", 1, False), "cut"], [("ack", 1, False)]]
    publisher = Publisher("amqp://h/")
    with pytest.raises(Nacked, match="refused 1"):
        publisher.send(_items("m0", "m1"), time.monotonic() + 5)
    assert fake_amqp.opened[1].ch.sent == [b"m1"]  # the unconfirmed one went again


def test_a_missing_exchange_leaves_what_was_confirmed_sent(fake_amqp: Any) -> None:
    fake_amqp.scripts = [[("ack", 1, False), "no exchange"]]
    publisher = Publisher("amqp://h/")
    items = _items("m0", "m1", "m2")
    with pytest.raises(Unroutable) as caught:
        publisher.send(items, time.monotonic() + 5)
    assert caught.value.items == items[1:]  # m0 was confirmed: not to be sent twice


def test_a_channel_error_goes_to_the_caller_whose_message_causes_it_alone(
    fake_amqp: Any,
) -> None:
    # The channel closed with messages of several callers in flight: each sends its own again
    # alone; the one refused again is the culprit, the others go through.
    fake_amqp.scripts = [["too large"], [("ack", 1, False)], ["too large"], ["too large"]]
    assert Publisher("amqp://h/").send(_items("innocent"), time.monotonic() + 5) == []
    with pytest.raises(BrokerError, match="refused the publish") as caught:
        Publisher("amqp://h/").send(_items("culprit"), time.monotonic() + 5)
    assert not isinstance(caught.value, (Nacked, Unconfirmed, Unroutable))
    assert [c.ch.sent for c in fake_amqp.opened] == [
        [b"innocent"],
        [b"innocent"],
        [b"culprit"],
        [b"culprit"],
    ]


def test_no_confirm_before_the_deadline_raises_unconfirmed(fake_amqp: Any) -> None:
    fake_amqp.scripts = [[]]  # RabbitMQ says nothing
    publisher = Publisher("amqp://h/")
    started = time.monotonic()
    with pytest.raises(Unconfirmed, match="1 publish"):
        publisher.send(_items("m0"), time.monotonic() + 0.3)
    assert 0.25 < time.monotonic() - started < 2
    assert not fake_amqp.opened[0].connected  # given up: silent, or dead without a word


def test_without_confirms_nothing_is_awaited(fake_amqp: Any) -> None:
    fake_amqp.scripts = [[]]
    publisher = Publisher("amqp://h/")
    assert publisher.send(_items("m0", "m1"), time.monotonic() + 5, confirm=False) == []
    [conn] = fake_amqp.opened
    assert conn.ch.sent == [b"m0", b"m1"] and publisher.in_flight == 0


def test_confirms_returns_and_a_loss_reach_exactly_the_calls_they_concern(
    fake_amqp: Any,
) -> None:
    from celeriac.transports.amqp.publisher import _Call

    fake_amqp.scripts = [[]]
    publisher = Publisher("amqp://h/")
    deadline = time.monotonic() + 5
    a, b, c = _Call(), _Call(), _Call()
    a_items, b_items, c_items = _items("a0", "a1"), _items("b0"), _items("c0")
    for call, items in ((a, a_items), (b, b_items), (c, c_items)):
        assert publisher._write(call, items, deadline)  # tags 1-2, 3, 4
    [conn] = fake_amqp.opened
    [ack], [nack] = conn.ch.events["basic_ack"], conn.ch.events["basic_nack"]
    [on_return] = conn.ch.events["basic_return"]
    on_return(None, "", "q", types.SimpleNamespace(properties={"correlation_id": "b0"}))
    nack(2, False)  # a1
    assert (a.left, a.nacked, b.left) == (1, 1, 1)
    ack(3, True)  # a0 and b0 at once
    assert (a.settled, a.nacked, a.returned) == (True, 1, [])
    assert (b.settled, b.nacked, b.returned) == (True, 0, b_items)
    assert (c.left, c.error) == (1, None)
    publisher._kill(publisher._line, ConnectionResetError("cut"))
    assert (c.error is not None, c.unconfirmed) == (True, c_items)
    assert a.error is None and b.error is None and b.unconfirmed == []
