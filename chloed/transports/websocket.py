"""WebSocket at ``/ws``, through Autobahn inside the one ``twisted.web`` site.

The wire protocol: after the upgrade Chloe sends ``connected``; from then on
every text message either way is one JSON frame of SPEC section 2. Binary
messages are refused with ``bad_frame``. Keep-alive is WebSocket ping/pong
every ``heartbeat`` seconds; a peer that does not answer within as long is
dropped. A frame over ``max_message_bytes`` gets ``too_large`` and the
connection stays; one over four times that is protocol abuse and closes it.

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
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import PreparedMessage
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import tcp
from twisted.logger import Logger

from chloed import frames
from chloed.frames import Encoded
from chloed.hub import Hub
from chloed.session import Session
from chloed.transports._flow import OutboundFlow
from chloed.transports._http import origin_allowed

# Autobahn lets an application close only with 1000 or 3000-4999; the
# error frame written just before says why.
CLOSE_NORMAL = 1000


def ws_framing(frame: Encoded) -> bytes:
    """A server-to-client text frame around the frame's JSON."""
    return PreparedMessage(frame.payload, False, False, True).payloadHybi


def send_now(transport: Any, sock: Any, data: bytes) -> bytes:
    """Send ``data`` on ``sock`` now if ``transport`` has nothing unsent
    (else the bytes would overtake it); returns what is left to write
    through the transport (empty when the kernel took it all).

    Errors are left for the transport to find on its own write, so a broken
    connection ends the usual way.
    """
    if (
        transport._tempDataLen
        or transport.offset != len(transport.dataBuffer)
        or transport.disconnecting
        or not transport.connected
    ):
        return data
    try:
        sent = sock.send(data)
    except OSError:
        return data
    return data[sent:] if sent < len(data) else b""


class ChloeWebSocket(WebSocketServerProtocol):
    """One browser over WebSocket: a sink of its session."""

    _log = Logger()
    session: Session | None = None
    flow: OutboundFlow | None = None
    # The socket, when the transport is plain TCP (not TLS): see send_now.
    _sock: Any = None

    def onConnect(self, request: Any) -> None:
        hub: Hub = self.factory.hub
        if not origin_allowed(request.headers.get("origin"), hub.config.allowed_origins):
            raise ConnectionDeny(403, "origin not allowed")
        if not hub.accepting():
            raise ConnectionDeny(503, "too many connections" if not hub.draining else "shutting down")
        return None

    def onOpen(self) -> None:
        transport = self.transport
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()
        self.flow = OutboundFlow(self.factory.hub.config.outbound_buffer_bytes)
        transport.registerProducer(self.flow, True)
        if type(transport) is tcp.Server:
            self._sock = transport.socket
        self.session = self.factory.hub.open_session("websocket", self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self.session
        if session is None:
            return
        if isBinary:
            session.deliver(frames.error(frames.BAD_FRAME, "frames are JSON text messages"))
            return
        self.factory.hub.receive(session, payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        session, self.session = self.session, None
        if session is not None:
            self.factory.hub.connection_lost(session)

    # -- Sink -------------------------------------------------------------

    def write(self, frame: Encoded) -> None:
        if self.state != self.STATE_OPEN:
            return
        data = frame.framed(ws_framing)
        flow = self.flow
        if not flow.admit(len(data)):  # type: ignore[union-attr]
            session = self.session
            if session is not None:
                self.factory.hub.slow(session)
            return
        if self._sock is not None and not flow.paused:  # type: ignore[union-attr]
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
        stalled = self.flow is not None and self.flow.paused
        if last is not None and not stalled:
            self.transport.write(last.framed(ws_framing))
        if stalled:
            self.dropConnection(abort=True)
        else:
            self.sendClose(CLOSE_NORMAL)


def websocket_resource(hub: Hub, url: str = "ws://localhost/ws") -> WebSocketResource:
    """The ``/ws`` resource, bound to ``hub``."""
    factory = WebSocketServerFactory(url)
    factory.protocol = ChloeWebSocket
    factory.hub = hub
    heartbeat = hub.config.heartbeat
    factory.setProtocolOptions(
        autoPingInterval=heartbeat,
        autoPingTimeout=heartbeat,
        maxMessagePayloadSize=hub.config.max_message_bytes * 4,
        maxFramePayloadSize=hub.config.max_message_bytes * 4,
        perMessageCompressionAccept=lambda offers: None,
        allowedOrigins=["*"],
        openHandshakeTimeout=10,
        closeHandshakeTimeout=1,
    )
    return WebSocketResource(factory)
