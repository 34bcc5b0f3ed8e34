"""One open publishing connection to RabbitMQ: its two channels, what is in flight on it, the
acks read straight from its socket, and a message's frames written in one go.

Used by :mod:`.publisher`, which decides who reads and writes when.
"""

from __future__ import annotations

import math
import select
import ssl
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import amqp
import amqp.exceptions
from amqp import spec

from celeriac.transports.amqp.frames import Unsupported, publish_frames

if TYPE_CHECKING:
    from celeriac.transports.amqp.publisher import Outgoing, _Call

#: ``basic.publish``'s argument signature (ticket, exchange, routing key, mandatory, immediate)
_PUBLISH_ARGS = "Bssbb"
#: frames as read (AMQP 0-9-1 §4.2.3): type, channel, size; then the payload and 0xCE
_FRAME_HEADER = struct.Struct(">BHI")
_FRAME_END = 0xCE
#: a ``basic.ack`` method frame's payload: class 60, method 80, then delivery tag and multiple
_ACK = struct.pack(">HH", *spec.Basic.Ack)
_ACK_ARGS = struct.Struct(">QB")
_RECV = 65536


class Line:
    """One open connection: a channel in confirm mode, and one without for unconfirmed sends."""

    def __init__(self, conn: amqp.Connection, confirming: amqp.Channel) -> None:
        self.conn = conn
        self.confirming = confirming
        self.plain: amqp.Channel | None = None
        self.sock = conn.transport.sock
        self.tls = isinstance(self.sock, ssl.SSLSocket)
        # Two: a poll object serves one thread at a time ("concurrent poll() invocation"), and
        # the reader waits outside the lock while a holder of the lock may look too.
        self._poll, self._reader_poll = select.poll(), select.poll()
        self._poll.register(self.sock, select.POLLIN)
        self._reader_poll.register(self.sock, select.POLLIN)
        self.tag = 0
        #: confirming channel's delivery tag -> (call, message), in tag order
        self.outstanding: dict[int, tuple[_Call, Outgoing]] = {}
        self.returned_tags: set[int] = set()
        self.last_use = time.monotonic()
        self.lost_routes = False  # an unconfirmed message came back: declare again
        self.error: BaseException | None = None  # why it was given up
        self._buf = bytearray()  # bytes read, not yet a whole frame
        self.on_ack: Callable[[int, bool], None] = lambda tag, multiple: None

    def readable(self, timeout: float, *, reader: bool = False) -> bool:
        """Bytes to read within ``timeout`` s (TLS may hold decrypted ones the socket hides);
        under the lock, or ``reader``: by the one reader, outside it."""
        if self.tls and self.sock.pending() > 0:
            return True
        poll = self._reader_poll if reader else self._poll
        return bool(poll.poll(max(0, math.ceil(timeout * 1000))))

    def read(self) -> None:
        """Read what has arrived (one ``recv``) and dispatch every whole frame in it.

        A ``basic.ack`` on the confirming channel goes straight to :attr:`on_ack`; any other
        frame to py-amqp's frame handler, in order. Read here rather than with py-amqp's
        ``read_frame`` (three ``recv`` and its method dispatch per frame): the acks are most of
        what this connection receives, and several come in one ``recv`` when callers share it.
        """
        data = self.sock.recv(_RECV)  # the socket's timeout bounds it (it was readable)
        if not data:
            raise ConnectionError("RabbitMQ closed the connection")
        buf = self._buf
        buf += data
        end, pos = len(buf), 0
        confirming = self.confirming.channel_id
        while end - pos > 7:
            kind, channel, size = _FRAME_HEADER.unpack_from(buf, pos)
            stop = pos + 7 + size
            if stop >= end:
                break  # the rest is on its way
            if buf[stop] != _FRAME_END:
                raise amqp.exceptions.UnexpectedFrame(f"bad frame end {buf[stop]:#x}")
            if kind == 1 and channel == confirming and buf[pos + 7 : pos + 11] == _ACK:
                tag, bits = _ACK_ARGS.unpack_from(buf, pos + 11)
                self.on_ack(tag, bool(bits & 1))
            else:
                self.conn.on_inbound_frame((kind, channel, bytes(buf[pos + 7 : stop])))
            pos = stop + 1
        del buf[:pos]


def write_publish(conn: amqp.Connection, channel: amqp.Channel, item: Outgoing) -> None:
    # Not ``basic_publish``: it reads the socket first for a ``connection.blocked`` and changes
    # the socket's timeout twice, once per message; here the socket is only read by the one
    # waiting for confirms. Frames encoded by :mod:`.frames`, or py-amqp when it cannot.
    try:
        frames = publish_frames(
            channel.channel_id,
            conn.frame_max,
            item.exchange,
            item.routing_key,
            item.mandatory,
            item.body,
            item.properties,
        )
    except Unsupported:
        pass
    else:
        conn.transport.write(frames)
        return
    channel.send_method(
        spec.Basic.Publish,
        _PUBLISH_ARGS,
        (0, item.exchange, item.routing_key, item.mandatory, False),
        amqp.Message(item.body, **item.properties),
    )
