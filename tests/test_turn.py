"""Writes coalesced per reactor turn (chloed.transports._turn): a
connection's first frame of a turn goes out at once, the rest of that turn
in one write when it ends; order and back-pressure are kept."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet.task import Clock

from chloed import frames
from chloed.transports._flow import OutboundFlow
from chloed.transports._turn import HOLD_BYTES, Turn
from chloed.transports.websocket import ChloeWebSocket, ws_framing


class FakeSocket:
    """Takes every byte; records each send call."""

    def __init__(self) -> None:
        self.sends: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sends.append(bytes(data))
        return len(data)


class FakeTransport:
    """What send_now reads of a TCP transport, and its writes."""

    _tempDataLen = 0
    offset = 0
    dataBuffer = b""
    disconnecting = False
    connected = True

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)


def connection(clock: Clock, turn: Turn) -> ChloeWebSocket:
    ws = ChloeWebSocket()
    ws.state = ws.STATE_OPEN
    ws.flow = OutboundFlow(1 << 20)
    ws._sock = FakeSocket()  # type: ignore[assignment]
    ws.transport = FakeTransport()
    ws.factory = SimpleNamespace(turn=turn, hub=None)
    return ws


def message(n: int) -> frames.Encoded:
    return frames.message("news", f"1-{n}", b"%d" % n)


def wire(n: int) -> bytes:
    return message(n).framed(ws_framing)


def test_a_frame_alone_in_its_turn_goes_at_once():
    clock = Clock()
    ws = connection(clock, Turn(clock))
    ws.write(message(1))
    assert ws._sock.sends == [wire(1)]


def test_the_rest_of_a_turn_goes_in_one_write_when_it_ends():
    clock = Clock()
    ws = connection(clock, Turn(clock))
    for n in range(1, 5):
        ws.write(message(n))
    assert ws._sock.sends == [wire(1)]
    clock.advance(0)
    assert ws._sock.sends == [wire(1), wire(2) + wire(3) + wire(4)]
    # The next turn starts afresh: its first frame goes at once.
    ws.write(message(5))
    assert ws._sock.sends[-1] == wire(5)


def test_connections_of_one_turn_each_hold_their_own():
    clock = Clock()
    turn = Turn(clock)
    a, b = connection(clock, turn), connection(clock, turn)
    for n in (1, 2):
        a.write(message(n))
        b.write(message(n))
    clock.advance(0)
    assert a._sock.sends == b._sock.sends == [wire(1), wire(2)]


def test_a_connection_holding_hold_bytes_writes_without_waiting():
    clock = Clock()
    ws = connection(clock, Turn(clock))
    big = frames.message("news", "1-1", b'"' + b"x" * (HOLD_BYTES // 4) + b'"')
    for _ in range(6):
        ws.write(big)
    # The first at once, then four held reach HOLD_BYTES and go together.
    assert len(ws._sock.sends) == 2 and ws._held is not None
    clock.advance(0)
    assert b"".join(ws._sock.sends) == big.framed(ws_framing) * 6


def test_held_frames_go_before_a_close():
    clock = Clock()
    ws = connection(clock, Turn(clock))
    ws.write(message(1))
    ws.write(message(2))
    ws.sendClose = lambda code=None, reason=None: ws.transport.write(b"<close>")  # type: ignore[method-assign]
    ws.close(None)
    assert ws._sock.sends == [wire(1), wire(2)]
    assert ws.transport.writes == [b"<close>"]


def test_while_the_kernel_takes_nothing_frames_keep_their_order():
    """Held frames of a paused connection go through the transport, after
    what it already holds."""
    clock = Clock()
    ws = connection(clock, Turn(clock))
    ws.write(message(1))
    ws.write(message(2))
    ws.flow.pauseProducing()
    ws.write(message(3))
    clock.advance(0)
    assert ws._sock.sends == [wire(1)]
    assert ws.transport.writes == [wire(2) + wire(3)]


def test_a_gathered_batch_reaches_each_socket_in_one_write():
    """Between gather and release even a connection's first frame is held;
    release writes each connection's frames in one send, at once; frames
    later in the same turn wait for its end."""
    clock = Clock()
    turn = Turn(clock)
    a, b = connection(clock, turn), connection(clock, turn)
    turn.gather()
    for n in (1, 2, 3):
        a.write(message(n))
        b.write(message(n))
    assert a._sock.sends == b._sock.sends == []
    turn.release()
    assert a._sock.sends == b._sock.sends == [wire(1) + wire(2) + wire(3)]
    a.write(message(4))
    assert a._sock.sends == [wire(1) + wire(2) + wire(3)]
    clock.advance(0)
    assert a._sock.sends == [wire(1) + wire(2) + wire(3), wire(4)]
    # The next turn starts afresh.
    a.write(message(5))
    assert a._sock.sends[-1] == wire(5)
