"""ChloeWebSocket when the peer breaks the protocol, on a MemoryReactorClock
(Autobahn's timers too, through txaio) and a StringTransport: the close
frame is written and not thrown away, the connection ends within the close
handshake timeout whatever the peer does, and each failure is counted once
and logged by Chloe only."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import txaio
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from chloed.config import Config
from chloed.service import make_service
from chloed.transports.websocket import CLOSE_TIMEOUT, websocket_resource
from tests.fakes import captured_log
from tests.rawws import OP_CLOSE, OP_TEXT, frame, parse_frames, upgrade_request

PEER = IPv4Address("TCP", "192.0.2.7", 40000)


class Transport(StringTransport):
    """A StringTransport that, like TCP's, lets go of no producer quietly
    (Autobahn unregisters one whether there is one or not)."""

    def unregisterProducer(self) -> None:
        self.producer = self.streaming = None


@pytest.fixture
def clock() -> Iterator[MemoryReactorClock]:
    """The reactor of the server, and of Autobahn's timers while the test runs."""
    clock, before = MemoryReactorClock(), txaio.config.loop
    txaio.config.loop = clock
    yield clock
    txaio.config.loop = before


class Server:
    """A hub and its /ws factory, as make_service wires them."""

    def __init__(self, clock: MemoryReactorClock, **options: Any) -> None:
        options.setdefault("listen", ("tcp:0:interface=127.0.0.1",))
        service = make_service(Config(**options), clock)
        self.hub, self.metrics = service.hub, service.metrics
        resource = websocket_resource(self.hub, client_errors=self.metrics.client_errors)
        self.factory = resource._factory

    def connect(self, origin: str | None = None) -> tuple[Any, StringTransport]:
        """A peer that has sent the upgrade request."""
        protocol = self.factory.buildProtocol(PEER)
        transport = Transport(peerAddress=PEER)
        protocol.makeConnection(transport)
        protocol.dataReceived(upgrade_request(origin=origin))
        return protocol, transport

    def open(self) -> tuple[Any, StringTransport]:
        protocol, transport = self.connect()
        head, _, rest = transport.value().partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        assert [f.opcode for f in parse_frames(rest)] == [OP_TEXT]  # connected
        transport.clear()
        return protocol, transport


def closes(transport: StringTransport) -> list[int | None]:
    return [f.close_code for f in parse_frames(transport.value()) if f.opcode == OP_CLOSE]


def test_a_bad_close_frame_gets_our_close_frame_sent_then_tcp_closed(clock):
    """A malformed close frame (1-byte payload) is both the error and the
    peer's answer: the connection is closed gracefully (an abort would throw
    our unsent 1002 away), and aborted CLOSE_TIMEOUT later if it is still
    there (a peer that does not read)."""
    server = Server(clock)
    protocol, transport = server.open()
    protocol.dataReceived(frame(OP_CLOSE, b"\x03"))
    assert closes(transport) == [1002]
    assert transport.disconnecting and not transport.disconnected
    clock.advance(CLOSE_TIMEOUT)
    assert transport.disconnected


def test_after_a_protocol_error_nothing_more_is_read(clock):
    """A control frame announcing a megabyte is a protocol error whose
    framing cannot be trusted: 1002, the socket is no longer read (Autobahn
    would buffer the "control frame" as announced), TCP closes behind the
    close frame, aborted CLOSE_TIMEOUT later if it could not be written."""
    server = Server(clock)
    protocol, transport = server.open()
    protocol.dataReceived(frame(0x9, b"x" * 10, length=1 << 20))
    assert closes(transport) == [1002]
    assert transport.producerState == "paused"
    clock.advance(CLOSE_TIMEOUT)
    assert transport.disconnected


def test_after_invalid_utf8_the_close_answer_is_still_read(clock):
    """After 1007 the framing is sound: the peer's close answer is read
    and the connection closes at once, without waiting for the timeout."""
    server = Server(clock)
    protocol, transport = server.open()
    protocol.dataReceived(frame(OP_TEXT, b'"\xc3\x28"'))
    assert closes(transport) == [1007]
    assert transport.producerState == "producing"
    protocol.dataReceived(frame(OP_CLOSE, b"\x03\xe8"))
    assert transport.disconnecting


def test_a_failure_closes_tcp_behind_the_close_frame_and_a_second_changes_nothing(clock):
    """Invalid UTF-8 fails the message twice (the bad byte, then the
    message ending off a character): one close frame, 1007, and the TCP
    connection closes behind it (RFC 6455 7.1.7: the peer's answer is not
    waited for); a peer that does not read is aborted CLOSE_TIMEOUT later."""
    server = Server(clock)
    protocol, transport = server.open()
    protocol.dataReceived(frame(OP_TEXT, b'"\xff'))
    assert closes(transport) == [1007]
    assert transport.disconnecting and not transport.disconnected
    clock.advance(CLOSE_TIMEOUT)
    assert transport.disconnected
    assert server.metrics.client_errors.counts["websocket_invalid_payload"] == 1


def test_failures_are_logged_by_chloe_once_per_client_not_by_autobahn(clock):
    """Five failed connections from one address: one line, from
    chloed.lograte, naming the address; nothing from Autobahn; five counted."""
    server = Server(clock)
    with captured_log() as events:
        for _ in range(5):
            protocol, transport = server.open()
            protocol.dataReceived(frame(0x3))
            assert closes(transport) == [1002]
            clock.advance(CLOSE_TIMEOUT)
            protocol.connectionLost(Failure(ConnectionDone()))
    logged = [e for e in events if e.get("log_namespace", "").startswith(("autobahn", "chloed"))]
    assert [(e["log_namespace"], e["host"], e["kind"]) for e in logged] == [
        ("chloed.lograte", "192.0.2.7", "websocket_protocol_error"),
    ]
    assert server.metrics.client_errors.counts["websocket_protocol_error"] == 5


def test_a_refused_origin_is_a_client_error_a_full_server_is_not(clock):
    """403 for an origin not allowed counts as websocket_handshake; 503
    while draining is the server's state, not the client's mistake."""
    server = Server(clock, allowed_origins=("https://app.example",))
    _, transport = server.connect(origin="https://evil.example")
    assert transport.value().startswith(b"HTTP/1.1 403")
    server.hub.draining = True
    _, transport = server.connect(origin="https://app.example")
    assert transport.value().startswith(b"HTTP/1.1 503")
    assert server.metrics.client_errors.counts["websocket_handshake"] == 1
