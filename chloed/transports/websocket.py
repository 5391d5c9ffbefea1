"""WebSocket at ``/ws``, through Autobahn inside the one ``twisted.web`` site.

The wire protocol: after the upgrade Chloe sends ``connected``; from then on
every text message either way is one JSON frame of SPEC section 2. Binary
messages are refused with ``bad_frame``. Keep-alive is WebSocket ping/pong
every ``heartbeat`` seconds; a peer that sends nothing (no pong, no frame)
within as long after a ping is dropped. A frame over ``max_message_bytes``
gets ``too_large`` and the connection stays; one over four times that is
protocol abuse and closes it.

A peer that breaks RFC 6455 gets a close frame saying how before the TCP
connection goes (Autobahn's ``failByDrop`` off): 1002 for a protocol error
(reserved opcode or bits, an unmasked frame, a bad close frame), 1007 for
invalid UTF-8 in a text message, 1009 for a message over four times
``max_message_bytes``. The browser's ``CloseEvent`` then tells "too large"
from a network cut. The TCP connection is closed behind the close frame
(RFC 6455, 7.1.7), not after the peer's answer: one that does not read is
aborted ``CLOSE_TIMEOUT`` seconds later; after a 1002, whose framing cannot
be trusted, nothing more is read. These failures, and upgrades refused
with a 4xx, are counted and logged through :class:`chloed.lograte.ClientErrors`
(one line per client address per minute), not by Autobahn per connection.

Outgoing frames are written to the TCP transport as ready-made WebSocket
frames, built once per message for every subscriber (Autobahn's
``PreparedMessage``), not through ``sendMessage`` per subscriber. The
connection registers as the transport's producer, so it knows when the
kernel stops taking data: what it writes after that counts against
``outbound_buffer_bytes``, past which the reader is a ``slow_consumer``.

On a plain TCP connection whose transport holds nothing unsent, a frame is
handed straight to the socket (:func:`send_now`): ``transport.write`` would
buffer it, register the socket with epoll, and write and unregister it on
the next reactor turn, two ``epoll_ctl`` calls and a reactor dispatch per
subscriber per message, which was the largest cost of fan-out after the
``send`` itself (see bench/RESULTS.md). Whatever the kernel does not take
goes to the transport as before, so order and back-pressure are unchanged.
A connection's frames after the first of a reactor turn are held and
written together when the turn ends (:mod:`chloed.transports._turn`): one
``send`` per subscriber for all the messages published in that turn.

Memory: most connections are idle, so what one holds between messages is
what tens of thousands cost: 4.1 KB of RSS an idle WebSocket at 19k
(``loadgen --idle``), from 10.6 KB; bench/conn_bytes.py says which
objects they are. Autobahn sets 67 attributes on every connection and
copies 29 options onto it from the factory, which made an instance dict
of 3.3 KB; :class:`ChloeWebSocket` keeps the attributes in slots and
reads the options from its factory. It lets go of what the
upgrade left (the request's bytes and headers, the answer's bytes: 1.8
KB) once open, and of a frame's unmasker and the UTF-8 validator's
answer once the frame is done; its send queue, which Chloe's frames
bypass, is an empty list rather than a deque. One :class:`Heartbeat`
pings all the connections of the resource, instead of Autobahn's
auto-ping timer per connection (a batched call, a closure and a bound
method, made again after every ping and pong).
"""

from __future__ import annotations

import socket
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import PreparedMessage
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from txaio.tx import make_logger

from chloed import frames, lograte
from chloed.frames import Encoded
from chloed.hub import Hub
from chloed.lograte import ClientErrors
from chloed.session import Session
from chloed.transports._flow import OutboundFlow
from chloed.transports._turn import HOLD_BYTES, Turn, send_now
from chloed.http import method_not_allowed
from chloed.transports._http import origin_allowed

# Autobahn lets an application close only with 1000 or 3000-4999; the
# error frame written just before says why.
CLOSE_NORMAL = 1000
#: Seconds Autobahn waits for the answer to a close frame (rounded down to
#: a whole second of the clock: 1 to 2 s), and for it to leave after one.
CLOSE_TIMEOUT = 2

#: What a failed connection's close code says the peer got wrong.
FAILURE_KINDS = {
    1002: lograte.WS_PROTOCOL_ERROR,
    1007: lograte.WS_INVALID_PAYLOAD,
    1009: lograte.WS_TOO_LARGE,
}


#: Sets in the heartbeat wheel (:class:`Heartbeat`): one is visited every
#: ``heartbeat / HEARTBEAT_SLOTS`` seconds, so the pings of many connections
#: are spread over the interval.
HEARTBEAT_SLOTS = 10

#: What Autobahn (and Twisted's ``Protocol`` under it) keeps per connection,
#: by who sets it: slots of :class:`ChloeWebSocket`, not an instance dict.
#: A name missing here still works, from the instance dict, at a cost that
#: tests/test_ws_memory.py catches.
_AUTOBAHN_STATE = (
    # Protocol, Autobahn's Twisted adapter
    "factory", "connected", "transport", "peer",
    # WebSocketProtocol.__init__
    "is_closed", "is_open", "_valid_events", "_results", "_transport_details",
    # WebSocketProtocol._connectionMade
    "_perMessageCompress", "trackedTimings", "trafficStats", "state", "send_state", "data",
    "send_queue", "triggered", "utf8validator", "wasMaxFramePayloadSizeExceeded",
    "wasMaxMessagePayloadSizeExceeded", "closedByMe", "failedByMe", "droppedByMe", "wasClean",
    "wasNotCleanReason", "wasServerConnectionDropTimeout", "wasOpenHandshakeTimeout",
    "wasCloseHandshakeTimeout", "wasServingFlashSocketPolicyFile", "localCloseCode",
    "localCloseReason", "remoteCloseCode", "remoteCloseReason", "openHandshakeTimeoutCall",
    "closeHandshakeTimeoutCall", "autoPingTimeoutCall", "autoPingPending", "autoPingPendingCall",
    "autoPingPendingSeq", "autoPingPendingSent",
    # WebSocketServerProtocol.processHandshake
    "http_request_data", "http_status_line", "http_headers", "http_request_uri",
    "http_request_path", "http_request_params", "http_request_host", "websocket_version",
    "websocket_protocols", "websocket_origin", "websocket_extensions", "_wskey",
    "websocket_protocol_in_use", "websocket_extensions_in_use", "http_response_data",
    "inside_message", "current_frame",
    # each frame and message received
    "current_frame_masker", "control_frame_data", "_isMessageCompressed",
    "utf8validateIncomingCurrentMessage", "utf8validateLast", "message_is_binary",
    "message_data", "message_data_total_length", "frame_length", "frame_data",
)

#: What the upgrade leaves that a server connection reads only during the
#: upgrade (the request's bytes, line, headers and parts, the answer's
#: bytes, the transport's details, the extensions offered and taken): let
#: go of once the connection is open.
_UPGRADE_LEFTOVERS = (
    "http_request_data", "http_status_line", "http_headers", "http_request_uri",
    "http_request_path", "http_request_params", "http_request_host", "websocket_protocols",
    "websocket_origin", "websocket_extensions", "websocket_extensions_in_use", "_wskey",
    "http_response_data", "_transport_details",
)


def ws_framing(frame: Encoded) -> bytes:
    """A server-to-client text frame around the frame's JSON."""
    return PreparedMessage(frame.payload, False, False, True).payloadHybi


class _FactoryOption:
    """One of Autobahn's protocol options (``CONFIG_ATTRS``: frame limits,
    timeouts, ...), read from the connection's factory. Autobahn copies
    each option onto every connection it makes, unless the connection has
    it already: as a class attribute it has, so the values stay on the
    factory alone. (Not a data descriptor: Autobahn may still set one on a
    connection, as for any attribute not in the slots.)"""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, connection: Any, owner: Any = None) -> Any:
        if connection is None:
            return self
        return getattr(connection.factory, self.name)


class _SendQueue(list[Any]):
    """Autobahn's send queue (it calls ``append``, ``len`` and ``popleft``)
    as a list: 56 bytes while empty where a deque is 760, and it is empty
    but while Autobahn writes a close frame behind queued bytes: Chloe's
    frames do not go through it."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


class ChloeWebSocket(WebSocketServerProtocol):
    """One browser over WebSocket: a sink of its session.

    All its state, Autobahn's included, is in slots (see the module's
    paragraph on memory): an attribute set that is not one lands in an
    instance dict, which every connection then pays for.
    """

    __slots__ = _AUTOBAHN_STATE + (
        "session", "flow", "_sock", "_close_guard", "_held", "_held_bytes", "_turn_seen",
        "_beat_slot", "_heard",
    )

    #: What a frame becomes on this connection's wire: a function of the
    #: frame, its result cached on the frame for every connection with the
    #: same framing. Fewer than 2 bytes is no frame but a sign to
    #: :meth:`unframed`.
    framing = staticmethod(ws_framing)

    _log = Logger()
    # Autobahn's own lines are per connection and the peer's to trigger
    # (a warning for each failed connection, each unsolicited pong, each
    # refused upgrade): only its errors, which are bugs, stay. What the
    # peer got wrong is reported through ClientErrors instead. (This is
    # txaio.make_logger, which txaio only sets at run time.)
    log = make_logger(level="error")
    # A TCP or TLS connection, set before Autobahn calls anything here: an
    # ITCPTransport, IConsumer and IPushProducer at once, which no one
    # Twisted interface names (Protocol declares ITransport | None).
    transport: Any
    session: Session | None
    flow: OutboundFlow | None
    # The socket, when the transport is plain TCP (not TLS): see send_now.
    _sock: socket.socket | None
    # Aborts a failed connection whose close frame could not be written: see _fail_connection.
    _close_guard: IDelayedCall | None
    # Frames after the first of a reactor turn, and the turn of that first
    # one (see chloed.transports._turn).
    _held: list[bytes] | None
    _held_bytes: int
    _turn_seen: int
    # The connection's set in the heartbeat wheel (-1: not in it), and
    # whether a frame came since the last ping (see Heartbeat).
    _beat_slot: int
    _heard: bool

    def __init__(self) -> None:
        # The slots hide the class-level defaults of Protocol and Autobahn's adapter.
        self.factory = None
        self.connected = 0
        self.transport = None
        self.peer = None
        self.session = None
        self.flow = None
        self._sock = None
        self._close_guard = None
        self._held = None
        self._held_bytes = 0
        self._turn_seen = -1
        self._beat_slot = -1
        self._heard = True
        super().__init__()

    def _connectionMade(self) -> None:
        super()._connectionMade()
        # Autobahn declares a deque; it uses only what a _SendQueue has.
        self.send_queue = _SendQueue()  # type: ignore[assignment]

    def onConnect(self, request: Any) -> None:
        hub: Hub = self.factory.hub
        if not origin_allowed(request.headers.get("origin"), hub.config.allowed_origins):
            raise ConnectionDeny(403, "origin not allowed")
        if not hub.accepting():
            raise ConnectionDeny(503, "too many connections" if not hub.draining else "shutting down")
        if hub.config.max_connections_per_ip and hub.ip_full(self._peer_host()):
            raise ConnectionDeny(429, "too many connections from this address")
        return None

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        """Refuse the upgrade; a 4xx is the client's mistake, counted."""
        if code < 500:
            self.factory.client_errors.report(self._peer_host(), lograte.WS_HANDSHAKE, reason)
        super().failHandshake(reason, code, responseHeaders)

    def _fail_connection(self, code: int = 1001, reason: str = "going away") -> None:
        """Where Autobahn fails an open connection on the peer's protocol
        error, invalid payload or oversized message: counted once per
        connection, then, as RFC 6455 (7.1.7) has it, the close frame that
        says why and the TCP connection closed behind it, once it is
        written: a peer that broke the protocol is not waited for (its
        answer may never come; a browser has the code either way). Should
        the close frame not leave within ``CLOSE_TIMEOUT`` (a peer that does
        not read), the connection is aborted.

        After a 1002 nothing more is read: the framing is not to be trusted
        any more (Autobahn would go on with the bad frame as announced,
        buffering a "control frame" of any length).
        """
        first = self.state == self.STATE_OPEN and not self.failedByMe
        if first:
            kind = FAILURE_KINDS.get(code, lograte.WS_PROTOCOL_ERROR)
            self.factory.client_errors.report(self._peer_host(), kind, reason)
        super()._fail_connection(code, reason)
        if first:
            if code == self.CLOSE_STATUS_CODE_PROTOCOL_ERROR:
                self.transport.pauseProducing()
            transport = self.transport
            self._close_guard = self.factory.hub.clock.callLater(CLOSE_TIMEOUT, transport.abortConnection)
            self.dropConnection(abort=False)

    def _peer_host(self) -> str:
        peer = self.transport.getPeer()
        return str(getattr(peer, "host", None) or peer)

    def onOpen(self) -> None:
        transport = self.transport
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()
        self.flow = OutboundFlow(self.factory.hub.config.outbound_buffer_bytes)
        transport.registerProducer(self.flow, True)
        if type(transport) is tcp.Server:
            self._sock = transport.socket
        resume = (self.http_request_params or {}).get("resume")
        origin = (self.http_headers or {}).get("origin")
        for name in _UPGRADE_LEFTOVERS:
            setattr(self, name, None)
        self.session = self.open_session(resume[0] if resume else None, origin)
        self.factory.heartbeat.add(self)

    def open_session(self, resume: str | None = None, origin: str | None = None) -> Session:
        """The hub's session of this connection (its ``connected`` is
        written); ``resume``: the ``?resume=`` of its URL, ``origin`` its page's."""
        hub = self.factory.hub
        ip = self._peer_host() if hub.config.max_connections_per_ip else None
        return hub.open_session("websocket", self, resume=resume, ip=ip, origin=origin)

    def onFrameEnd(self) -> bool | None:
        """A frame has come in whole: the peer is alive (see
        :class:`Heartbeat`). What Autobahn keeps of a finished frame (its
        unmasker) and of a finished message (the UTF-8 validator's last
        answer) is let go of: an idle connection would hold them until its
        next frame."""
        result = super().onFrameEnd()
        self._heard = True
        if self.current_frame is None:
            self.current_frame_masker = None
            if not self.inside_message:
                self.utf8validateLast = None
        return result

    def beat(self) -> None:
        """The heartbeat's visit: ping a peer heard from since the last
        ping; drop one that was not, as Autobahn's auto-ping does."""
        if self.state != self.STATE_OPEN:
            return
        if self._heard:
            self._heard = False
            self.sendPing()
        else:
            self.onAutoPingTimeout()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self.session
        if session is None:
            return
        if isBinary:
            session.deliver(frames.error(frames.BAD_FRAME, "frames are JSON text messages"))
            return
        self.factory.hub.receive(session, payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.heartbeat.remove(self)
        guard, self._close_guard = self._close_guard, None
        if guard is not None and guard.active():
            guard.cancel()
        self._held = None
        session, self.session = self.session, None
        if session is not None:
            self.session_lost(session)

    def session_lost(self, session: Session) -> None:
        """The connection went: its session ends."""
        self.factory.hub.connection_lost(session)

    # -- Sink -------------------------------------------------------------

    def write(self, frame: Encoded) -> None:
        if self.state != self.STATE_OPEN:
            return
        data = frame.framed(self.framing)
        if len(data) < 2:
            # No WebSocket frame is shorter: a sign from the framing.
            self.unframed(data)
            return
        flow = self.flow
        assert flow is not None  # set in onOpen, before the hub has this sink
        if not flow.admit(len(data)):
            session = self.session
            if session is not None:
                self.factory.hub.slow(session)
            return
        held = self._held
        if held is not None:
            # Not the first frame of this turn (see chloed.transports._turn).
            held.append(data)
            self._held_bytes += len(data)
            if self._held_bytes >= HOLD_BYTES:
                self.flush_held()
            return
        if self._sock is not None and not flow.paused:
            turn = self.factory.turn
            if self._turn_seen == turn.number or turn.gathering:
                self._turn_seen = turn.wrote()
                self._held = [data]
                self._held_bytes = len(data)
                turn.hold(self)
                return
            self._turn_seen = turn.wrote()
            data = send_now(self.transport, self._sock, data)
            if not data:
                return
        self.transport.write(data)

    def flush_held(self) -> None:
        """Write the frames held since the first of this turn, in one go."""
        held, self._held = self._held, None
        if not held or self.state != self.STATE_OPEN:
            return
        data = b"".join(held)
        flow = self.flow
        if self._sock is not None and flow is not None and not flow.paused:
            data = send_now(self.transport, self._sock, data)
            if not data:
                return
        self.transport.write(data)

    def close(self, last: Encoded | None) -> None:
        """Write ``last`` and close; a slow consumer is not waited for.
        The hub has ended the session already."""
        self.session = None
        if self.state != self.STATE_OPEN:
            return
        self.flush_held()
        stalled = self.flow is not None and self.flow.paused
        if last is not None and not stalled:
            data = last.framed(self.framing)
            if len(data) >= 2:
                self.transport.write(data)
        if stalled:
            self.dropConnection(abort=True)
        else:
            self.sendClose(self.close_code(last))

    def close_code(self, last: Encoded | None) -> int:
        """The close code after ``last``."""
        return CLOSE_NORMAL

    def unframed(self, sign: bytes) -> None:
        """What the framing gave instead of a frame (see :attr:`framing`);
        Chloe's own never does."""


for _option in WebSocketServerProtocol.CONFIG_ATTRS:
    setattr(ChloeWebSocket, _option, _FactoryOption(_option))
del _option


class Heartbeat:
    """WebSocket keep-alive for all the connections of a resource, on one
    timer.

    Each connection is in one of ``slots`` sets, and every ``interval /
    slots`` seconds the next set is visited (:meth:`ChloeWebSocket.beat`):
    a connection that has sent no frame since its last ping is dropped,
    any other is pinged. A connection joins the set visited last, so its
    first ping comes about ``interval`` seconds after it opened, and a
    peer gone silent is dropped ``interval`` seconds after the ping it did
    not answer: Autobahn's ``autoPingInterval`` and ``autoPingTimeout``
    both ``interval``, without their two timers per connection. The timer
    runs while the wheel holds a connection.

    :param clock: the reactor's time.
    :param interval: ``heartbeat``, in seconds.
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime, interval: float, slots: int = HEARTBEAT_SLOTS) -> None:
        self._clock = clock
        self._step = interval / slots
        self._slots: list[set[ChloeWebSocket]] = [set() for _ in range(slots)]
        self._hand = 0
        self._call: IDelayedCall | None = None
        self.size = 0

    def add(self, connection: ChloeWebSocket) -> None:
        slot = (self._hand - 1) % len(self._slots)
        self._slots[slot].add(connection)
        connection._beat_slot = slot
        self.size += 1
        if self._call is None:
            self._call = self._clock.callLater(self._step, self._tick)

    def remove(self, connection: ChloeWebSocket) -> None:
        slot, connection._beat_slot = connection._beat_slot, -1
        if slot < 0:
            return
        self._slots[slot].discard(connection)
        self.size -= 1
        if not self.size and self._call is not None:
            self._call.cancel()
            self._call = None

    def _tick(self) -> None:
        self._call = None
        due = list(self._slots[self._hand])
        self._hand = (self._hand + 1) % len(self._slots)
        for connection in due:
            try:
                connection.beat()
            except Exception:
                self._log.failure("heartbeat of {connection} failed", connection=connection)
        if self.size:
            self._call = self._clock.callLater(self._step, self._tick)


class _ChloeFactory(WebSocketServerFactory):
    """Autobahn's factory with what :class:`ChloeWebSocket` reads from it."""

    hub: Hub
    client_errors: ClientErrors
    turn: Turn
    heartbeat: Heartbeat


class _WebSocketResource(WebSocketResource):
    """``/ws``: ``HEAD`` gets the JSON 405 of every other browser endpoint,
    with ``Allow``, on a connection that stays usable, before Autobahn
    takes the connection over (and answers a bare 405 and closes, as it
    does for the other methods that are not an upgrade)."""

    def render(self, request: Any) -> Any:
        if request.method == b"HEAD":
            return method_not_allowed(request, [b"GET"])
        return super().render(request)


def websocket_factory(hub: Hub, url: str = "ws://localhost/ws",
                      client_errors: ClientErrors | None = None, turn: Turn | None = None) -> _ChloeFactory:
    """The factory of :class:`ChloeWebSocket` connections bound to ``hub``
    (see :func:`websocket_resource`)."""
    factory = _ChloeFactory(url)
    factory.protocol = ChloeWebSocket
    factory.hub = hub
    factory.turn = turn if turn is not None else Turn(hub.clock)
    factory.client_errors = client_errors if client_errors is not None else hub.client_errors
    factory.heartbeat = Heartbeat(hub.clock, hub.config.heartbeat)
    factory.setProtocolOptions(
        # Pings come from factory.heartbeat, not from timers of each connection.
        autoPingInterval=0,
        autoPingTimeout=0,
        maxMessagePayloadSize=hub.config.max_message_bytes * 4,
        maxFramePayloadSize=hub.config.max_message_bytes * 4,
        perMessageCompressionAccept=lambda offers: None,
        allowedOrigins=["*"],
        openHandshakeTimeout=10,
        # A close frame with the reason, then TCP closed when the peer
        # answers it, or 1 to 2 s later if it does not (Autobahn rounds its
        # timers to whole seconds: 1 could be at once, before the frame
        # left).
        failByDrop=False,
        closeHandshakeTimeout=CLOSE_TIMEOUT,
    )
    return factory


def websocket_resource(hub: Hub, url: str = "ws://localhost/ws",
                       client_errors: ClientErrors | None = None, turn: Turn | None = None) -> WebSocketResource:
    """The ``/ws`` resource, bound to ``hub``.

    :param client_errors: where failed connections are counted and logged;
        the hub's when None.
    :param turn: the reactor turn its writes are coalesced in, shared with
        ``/send`` (which gathers a batch's); one of its own when None.
    """
    return _WebSocketResource(websocket_factory(hub, url, client_errors, turn))
