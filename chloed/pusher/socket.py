"""``/app/{key}``: the WebSocket of Pusher clients (pusher-js's URL,
``?protocol=7&client=js&version=...``).

A :class:`PusherWebSocket` is Chloe's WebSocket connection (its slots,
flow control, heartbeat and coalesced writes) with Pusher's frames
(:mod:`chloed.pusher.wire`) and Pusher's protocol
(:class:`chloed.pusher.protocol.PusherProtocol`). As Pusher does, the
upgrade of a socket that is refused (unknown key, no or unsupported
protocol, over quota or capacity) succeeds, and the socket is then told why
in ``pusher:error`` and closed with that code, which pusher-js reads to
decide whether to reconnect.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.websocket.types import ConnectionDeny
from twisted.web.resource import IResource, Resource

from chloed.frames import Encoded
from chloed.http import error
from chloed.hub import Hub
from chloed.pusher import wire
from chloed.pusher.apps import PusherApp
from chloed.pusher.protocol import MAX_CHANNEL_DATA, PusherProtocol
from chloed.session import Session
from chloed.transports._http import origin_allowed
from chloed.transports._turn import Turn
from chloed.transports.websocket import ChloeWebSocket, websocket_factory


class PusherWebSocket(ChloeWebSocket):
    """One Pusher client: a sink of its session, speaking protocol 7."""

    __slots__ = ("app", "_refusal")

    framing = staticmethod(wire.framing)

    app: PusherApp | None
    # Pusher's code and message for a socket refused at the upgrade.
    _refusal: tuple[int, str] | None

    def __init__(self) -> None:
        self.app = None
        self._refusal = None
        super().__init__()

    def onConnect(self, request: Any) -> None:
        hub: Hub = self.factory.hub
        if not origin_allowed(request.headers.get("origin"), hub.config.allowed_origins):
            raise ConnectionDeny(403, "origin not allowed")
        parts = request.path.split("/")
        key = parts[2] if len(parts) == 3 and parts[1] == "app" and parts[2] else None
        protocol = request.params.get("protocol", [None])[0]
        pusher: PusherProtocol = self.factory.pusher
        self._refusal = pusher.refusal(key, protocol)
        if self._refusal is None and key is not None:
            self.app = pusher.config.by_key(key)
        return None

    def onOpen(self) -> None:
        refusal = self._refusal
        if refusal is not None:
            for name in ("http_request_data", "http_headers", "http_response_data"):
                setattr(self, name, None)
            self.sendMessage(wire.error(*refusal).payload)
            self.sendClose(refusal[0], refusal[1])
            return
        super().onOpen()

    def open_session(self, resume: str | None = None, origin: str | None = None) -> Session:
        assert self.app is not None
        return self.factory.pusher.opened(self.app, self)

    def session_lost(self, session: Session) -> None:
        assert self.app is not None
        self.factory.pusher.closed(self.app, session)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self.session
        if session is None or self.app is None:
            return
        if isBinary:
            self.factory.pusher.refuse(session, None, "Frames are JSON text messages")
            return
        self.factory.pusher.receive(session, self.app, payload)

    def close(self, last: Encoded | None) -> None:
        """The hub ends the session (``slow_consumer``, draining): it leaves
        its channels the Pusher way first (see :meth:`PusherProtocol.ending`)."""
        session = self.session
        super().close(last)
        if session is not None and self.app is not None:
            self.factory.pusher.ending(self.app, session)

    def close_code(self, last: Encoded | None) -> int:
        return wire.close_code(last)

    def unframed(self, sign: bytes) -> None:
        if sign is wire.TERMINATED:
            self.terminate(wire.UNAUTHORIZED, "Connection terminated by the app")

    def onAutoPingTimeout(self) -> None:
        """Silent since the last ping (see :class:`Heartbeat`): Pusher's
        4201, then the connection goes when the close handshake times out."""
        self.terminate(wire.PONG_NOT_RECEIVED, "Pong reply not received")

    def terminate(self, code: int, reason: str) -> None:
        """Close with ``code``, after a ``pusher:error`` that says why; the
        session ends when the connection is gone (:meth:`session_lost`)."""
        if self.state != self.STATE_OPEN:
            return
        self.flush_held()
        self.transport.write(self.framing(wire.error(code, reason)))
        self.sendClose(code, reason)


class AppSockets(Resource):
    """``/app``: each ``/app/{key}`` is the one WebSocket resource (the key
    is read from the path at the upgrade); ``/app`` itself is a 404."""

    def __init__(self, sockets: IResource) -> None:
        super().__init__()
        self._sockets = sockets

    def getChild(self, path: bytes, request: Any) -> IResource:
        if not path:
            return self
        return self._sockets

    def render(self, request: Any) -> bytes:
        return error(request, 404, "not_found", "Pusher clients connect to /app/{key}")


def app_sockets(hub: Hub, pusher: PusherProtocol, turn: Turn | None = None) -> AppSockets:
    """The ``/app`` resource of ``pusher``'s apps on ``hub``."""
    # (Any: the factory of /ws, with the protocol of this module.)
    factory: Any = websocket_factory(hub, "ws://localhost/app", turn=turn)
    factory.protocol = PusherWebSocket
    factory.pusher = pusher
    # As /ws: a frame over four times what any app takes is abuse (1009).
    largest = max(app.max_message_bytes for app in pusher.config.apps) + MAX_CHANNEL_DATA + 512
    limit = 4 * max(hub.config.max_message_bytes, largest)
    factory.setProtocolOptions(maxMessagePayloadSize=limit, maxFramePayloadSize=limit)
    return AppSockets(WebSocketResource(factory))
