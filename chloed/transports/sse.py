"""Server-Sent Events at ``GET /sse?channel=A&channel=B``.

The wire protocol: a ``text/event-stream`` with one event per frame of SPEC
section 2, ``event:`` the frame's type and ``data:`` its JSON; the first
event is ``connected``. Every ``message`` event also has ``id:``, the
message id. Message ids are ordered across channels, so the last one a
browser saw is a cursor over every channel of the stream: when the browser's
EventSource reconnects by itself it sends it back as ``Last-Event-ID`` and
the new stream replays, merged in publish order, whatever each channel
retained after it (``since=`` in the query does the same for a first
connect). A comment line every ``heartbeat`` seconds keeps proxies from
timing the stream out and finds dead peers.

The browser sends its frames with ``POST /session/<id>`` (see
:mod:`chloed.transports.inbound`). The session ends with the stream.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET

from chloed import frames
from chloed.frames import Encoded
from chloed.http import error
from chloed.hub import Hub
from chloed.session import Session
from chloed.transports._flow import OutboundFlow
from chloed.transports._http import BrowserResource, arg, args, browser_headers, preflight, session_options

log = Logger()

HEARTBEAT = b":\n\n"


def sse_framing(frame: Encoded) -> bytes:
    """One event: ``event:``, ``id:`` for messages, ``data:`` (one line:
    Chloe's JSON never holds a raw newline)."""
    head = b"event: " + frame.kind.encode("ascii") + b"\n"
    if frame.id is not None:
        head += b"id: " + frame.id.encode("ascii") + b"\n"
    return head + b"data: " + frame.payload + b"\n\n"


class SSEStream:
    """One open event stream: the sink of its session."""

    __slots__ = ("hub", "request", "session", "flow", "gone")

    def __init__(self, hub: Hub, request: Any) -> None:
        self.hub = hub
        self.request = request
        self.session: Session | None = None
        self.flow = OutboundFlow(hub.config.outbound_buffer_bytes)
        self.gone = False
        request.registerProducer(self.flow, True)

    def write(self, frame: Encoded) -> None:
        if self.gone:
            return
        data = frame.framed(sse_framing)
        if not self.flow.admit(len(data)):
            if self.session is not None:
                self.hub.slow(self.session)
            return
        self.request.write(data)

    def heartbeat(self) -> None:
        if not self.gone and not self.flow.paused:
            self.request.write(HEARTBEAT)

    def close(self, last: Encoded | None) -> None:
        if self.gone:
            return
        stalled = self.flow.paused
        if last is not None and not stalled:
            self.request.write(last.framed(sse_framing))
        self.gone = True
        self.request.unregisterProducer()
        if stalled:
            self.request.channel.transport.abortConnection()
        else:
            self.request.finish()

    def lost(self) -> None:
        """The browser went away (or we finished): end the session."""
        self.gone = True
        session, self.session = self.session, None
        if session is not None:
            self.hub.connection_lost(session)


class SSEResource(BrowserResource):
    """``GET /sse``: opens a session streaming to the browser."""

    isLeaf = True

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self.hub = hub
        self.streams: set[SSEStream] = set()
        self._ticker: LoopingCall | None = None

    def render_OPTIONS(self, request: Any) -> bytes:
        return preflight(request, self.hub.config.allowed_origins)

    def render_GET(self, request: Any) -> Any:
        hub = self.hub
        if not browser_headers(request, hub.config.allowed_origins):
            return error(request, 403, "forbidden_origin", "this origin is not allowed")
        if not hub.accepting():
            return error(request, 503, "unavailable", "this server takes no more connections now")
        options = session_options(request, hub.config.max_connections_per_ip)
        if hub.ip_full(options["ip"]):
            return error(request, 429, frames.TOO_MANY_CONNECTIONS, "too many connections from this address")
        channels = args(request, b"channel")
        if channels is None:
            return error(request, 400, "bad_request", "channel names are UTF-8")
        last_event = request.getHeader(b"last-event-id")
        since = last_event.decode("latin-1") if last_event else arg(request, b"since")
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"x-accel-buffering", b"no")
        stream = SSEStream(hub, request)
        request.write(b"retry: 1000\n\n")
        session = stream.session = hub.open_session("sse", stream, resume=arg(request, b"resume"), **options)
        if channels:
            hub.subscribe_all(session, channels, since or None, arg(request, b"token"))
        self.streams.add(stream)
        self._tick_while_open()

        def finished(_: Any) -> None:
            self.streams.discard(stream)
            stream.lost()

        request.notifyFinish().addBoth(finished)
        return NOT_DONE_YET

    def _tick_while_open(self) -> None:
        if self._ticker is None or not self._ticker.running:
            self._ticker = LoopingCall(self._beat)
            self._ticker.clock = self.hub.clock
            self._ticker.start(self.hub.config.heartbeat, now=False).addErrback(
                lambda f: log.failure("SSE heartbeat stopped", f)
            )

    def _beat(self) -> None:
        if not self.streams and self._ticker is not None:
            self._ticker.stop()
            return
        for stream in tuple(self.streams):
            stream.heartbeat()
