"""What an idle WebSocket holds (issue 16: at most 9 KiB per idle
connection), and the one heartbeat that pings them all, on a
MemoryReactorClock and a StringTransport.

bench/conn_bytes.py measures the bytes; these tests keep the reasons for
them from coming back: no instance dict on a connection, nothing of the
upgrade kept after it, no timer per connection."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from chloed.config import Config
from chloed.service import make_service
from chloed.transports.websocket import (
    _UPGRADE_LEFTOVERS, HEARTBEAT_SLOTS, ChloeWebSocket, Heartbeat, websocket_resource,
)
from tests.fakes import captured_log
from tests.test_websocket_failures import Transport, clock  # noqa: F401 (clock: a fixture)
from tests.rawws import OP_PING, OP_PONG, OP_TEXT, frame, parse_frames, upgrade_request

PEER = IPv4Address("TCP", "192.0.2.7", 40000)
HEARTBEAT = 10.0
STEP = HEARTBEAT / HEARTBEAT_SLOTS


class Server:
    """A hub and its /ws factory, as make_service wires them."""

    def __init__(self, clock: MemoryReactorClock, **options: Any) -> None:
        options.setdefault("listen", ("tcp:0:interface=127.0.0.1",))
        options.setdefault("heartbeat", HEARTBEAT)
        self.hub = make_service(Config(**options), clock).hub
        self.factory = websocket_resource(self.hub)._factory
        self.clock = clock

    def open(self) -> tuple[Any, StringTransport]:
        """A connection past the upgrade, its ``connected`` frame read."""
        protocol = self.factory.buildProtocol(PEER)
        transport = Transport(peerAddress=PEER)
        protocol.makeConnection(transport)
        protocol.dataReceived(upgrade_request(origin="http://example.com"))
        head, _, rest = transport.value().partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        assert [f.opcode for f in parse_frames(rest)] == [OP_TEXT]
        transport.clear()
        return protocol, transport

    def steps(self, n: int) -> None:
        """``n`` ticks of the heartbeat, one at a time as a reactor runs them."""
        for _ in range(n):
            self.clock.advance(STEP)


def ask(protocol: Any, transport: StringTransport, message: dict) -> list[dict]:
    """Send a text frame; the JSON frames it is answered with."""
    transport.clear()
    protocol.dataReceived(frame(OP_TEXT, json.dumps(message).encode()))
    return [json.loads(f.payload) for f in parse_frames(transport.value()) if f.opcode == OP_TEXT]


def opcodes(transport: StringTransport) -> list[int]:
    return [f.opcode for f in parse_frames(transport.value())]


def test_an_open_connection_has_no_instance_dict(clock):
    """Everything Autobahn and Chloe keep on a connection that has been
    through the upgrade, a subscription, a ping and a pong sits in slots:
    an attribute in the instance dict instead costs every connection a
    dict (Autobahn's 98 attributes made one of 3.3 KB)."""
    server = Server(clock)
    protocol, transport = server.open()
    assert ask(protocol, transport, {"type": "subscribe", "channel": "news"})[0]["type"] == "subscribed"
    protocol.dataReceived(frame(OP_PING, b"hi"))
    server.steps(HEARTBEAT_SLOTS)
    protocol.dataReceived(frame(OP_PONG))
    assert OP_PING in opcodes(transport)
    assert vars(protocol) == {}


def test_protocol_options_are_read_from_the_factory(clock):
    """The frame limits and timeouts a connection goes by are its factory's
    (from the config), not copies of them on each connection."""
    server = Server(clock, max_message_bytes=1000)
    protocol, _ = server.open()
    assert protocol.maxMessagePayloadSize == server.factory.maxMessagePayloadSize == 4000
    assert protocol.closeHandshakeTimeout == server.factory.closeHandshakeTimeout
    assert "maxMessagePayloadSize" not in vars(protocol)


def test_what_the_upgrade_left_is_let_go_once_open(clock):
    """The upgrade's request bytes and headers, and the 101 answer, are
    not kept on an open connection (the origin check has read them
    already); the connection still answers."""
    server = Server(clock, allowed_origins=("http://example.com",))
    protocol, transport = server.open()
    assert all(getattr(protocol, name) is None for name in _UPGRADE_LEFTOVERS)
    assert ask(protocol, transport, {"type": "ping"}) == [{"type": "pong"}]


def test_a_finished_frame_leaves_no_unmasker_or_validator_answer(clock):
    """Between two frames a connection holds nothing of the last one: not
    its unmasker, nor the UTF-8 validator's answer for the last message;
    a message in two fragments is still validated and answered whole."""
    server = Server(clock)
    protocol, transport = server.open()
    assert ask(protocol, transport, {"type": "ping"}) == [{"type": "pong"}]
    assert protocol.current_frame_masker is None
    assert protocol.utf8validateLast is None
    text = json.dumps({"type": "ping"}).encode()
    transport.clear()
    protocol.dataReceived(frame(OP_TEXT, text[:5], fin=False))
    assert protocol.utf8validateLast is not None  # kept while the message goes on
    protocol.dataReceived(frame(0x0, text[5:]))
    assert [json.loads(f.payload) for f in parse_frames(transport.value())] == [{"type": "pong"}]
    assert protocol.current_frame_masker is None and protocol.utf8validateLast is None


def test_autobahn_keeps_no_timer_per_open_connection(clock):
    """A thousand open connections leave one timer, the heartbeat's (and
    the hub's own), not Autobahn's auto-ping timers for each."""
    server = Server(clock)
    before = len(clock.getDelayedCalls())
    connections = [server.open() for _ in range(1000)]
    assert len(clock.getDelayedCalls()) - before <= 1
    assert server.factory.heartbeat.size == len(connections)
    assert all(p.autoPingPendingCall is None and p.autoPingTimeoutCall is None for p, _ in connections)


def test_a_connection_is_first_pinged_one_heartbeat_after_it_opened(clock):
    """No ping before ``heartbeat`` seconds have passed; one then."""
    server = Server(clock)
    protocol, transport = server.open()
    server.steps(HEARTBEAT_SLOTS - 1)
    assert opcodes(transport) == []
    server.steps(1)
    assert opcodes(transport) == [OP_PING]


def test_a_peer_that_answers_pings_stays(clock):
    """A peer that answers every ping is pinged every heartbeat and kept."""
    server = Server(clock)
    protocol, transport = server.open()
    for _ in range(5):
        transport.clear()
        server.steps(HEARTBEAT_SLOTS)
        assert opcodes(transport) == [OP_PING]
        protocol.dataReceived(frame(OP_PONG))
    assert not transport.disconnecting


def test_a_peer_silent_after_a_ping_is_dropped_one_heartbeat_later(clock):
    """No pong (and no frame) within a heartbeat of the ping: the TCP
    connection is aborted, and the connection leaves the wheel once lost."""
    server = Server(clock)
    protocol, transport = server.open()
    server.steps(HEARTBEAT_SLOTS)
    assert opcodes(transport) == [OP_PING]
    server.steps(HEARTBEAT_SLOTS - 1)
    assert not transport.disconnecting
    server.steps(1)
    assert transport.disconnected
    protocol.connectionLost(Failure(ConnectionDone()))
    assert server.factory.heartbeat.size == 0


def test_any_frame_from_the_peer_counts_as_an_answer(clock):
    """A peer busy sending messages is alive even if its pong is late."""
    server = Server(clock)
    protocol, transport = server.open()
    server.steps(HEARTBEAT_SLOTS)
    assert ask(protocol, transport, {"type": "ping"}) == [{"type": "pong"}]
    transport.clear()
    server.steps(HEARTBEAT_SLOTS)
    assert not transport.disconnecting
    assert opcodes(transport) == [OP_PING]


def test_pings_are_spread_over_the_heartbeat(clock):
    """Connections opened a tick apart are pinged a tick apart, not all at once."""
    server = Server(clock)
    first = server.open()
    server.steps(1)
    second = server.open()
    server.steps(HEARTBEAT_SLOTS - 1)
    assert (opcodes(first[1]), opcodes(second[1])) == ([OP_PING], [])
    server.steps(1)
    assert opcodes(second[1]) == [OP_PING]


def test_the_heartbeat_timer_stops_with_the_last_connection(clock):
    """With no connection left the heartbeat leaves no timer behind; the next one starts it again."""
    server = Server(clock)
    before = set(clock.getDelayedCalls())
    protocol, _ = server.open()
    assert len(set(clock.getDelayedCalls()) - before) == 1
    protocol.connectionLost(Failure(ConnectionDone()))
    assert set(clock.getDelayedCalls()) - before == set()
    protocol, transport = server.open()
    server.steps(HEARTBEAT_SLOTS)
    assert opcodes(transport) == [OP_PING]


class FakeConnection:
    """What the wheel uses of a connection: its slot, and beat()."""

    def __init__(self, fail: bool = False) -> None:
        self._beat_slot = -1
        self.beats = 0
        self.fail = fail

    def beat(self) -> None:
        self.beats += 1
        if self.fail:
            raise RuntimeError("broken")


def test_one_failing_connection_does_not_stop_the_heartbeat_of_the_others():
    """A connection whose visit raises is logged; the others in its set
    and the later ticks still get theirs."""
    clock = Clock()
    wheel = Heartbeat(clock, HEARTBEAT, slots=2)
    broken, fine = FakeConnection(fail=True), FakeConnection()
    wheel.add(broken)  # type: ignore[arg-type]
    wheel.add(fine)  # type: ignore[arg-type]
    with captured_log() as events:
        for _ in range(4):
            clock.advance(HEARTBEAT / 2)
    assert (broken.beats, fine.beats) == (2, 2)
    assert sum(1 for e in events if e.get("log_failure") is not None) == 2


def test_a_connection_removed_twice_is_counted_once():
    """Leaving the wheel is idempotent (a lost connection after a failed one)."""
    clock = Clock()
    wheel = Heartbeat(clock, HEARTBEAT)
    connection = FakeConnection()
    wheel.add(connection)  # type: ignore[arg-type]
    wheel.remove(connection)  # type: ignore[arg-type]
    wheel.remove(connection)  # type: ignore[arg-type]
    assert wheel.size == 0 and clock.getDelayedCalls() == []


def test_a_connection_object_is_slotted():
    """The class itself: slots, and the factory's options as class attributes."""
    assert "__slots__" in vars(ChloeWebSocket)
    for option in ChloeWebSocket.CONFIG_ATTRS:
        assert option in vars(ChloeWebSocket)
