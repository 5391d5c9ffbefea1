"""``POST /session/<id>``: browser frames of SSE and long-poll sessions.

The body is one JSON frame or a JSON array of frames (at most four times
``max_message_bytes``; each frame is still held to ``max_message_bytes``),
handled in order exactly as if they had come over a WebSocket. The answer
is ``204`` with no body: what the frames get back (``ack``, ``subscribed``,
``error``…) arrives on the session's stream or next poll. ``404
{"error": "unknown_session"}`` tells the client its session is gone.
``text/plain`` bodies are accepted, so a browser needs no CORS preflight.
With several nodes, frames for a session another node holds are handed to
it through Redis (``204`` once it took them).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.web.iweb import IRequest

from chloed import frames
from chloed.errors import ProtocolError
from chloed.http import error
from chloed.hub import Hub
from chloed.transports._http import BrowserResource, browser_headers, preflight
from chloed.transports._reply import BrowserReply, batch_limit, forward_frames


class SessionPostResource(BrowserResource):
    """``/session/<id>``: the session id is the one path segment below."""

    isLeaf = True

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self.hub = hub

    def render_OPTIONS(self, request: Any) -> bytes:
        return preflight(request, self.hub.config.allowed_origins)

    def render_POST(self, request: Any) -> Any:
        hub = self.hub
        if not browser_headers(request, hub.config.allowed_origins):
            return error(request, 403, "forbidden_origin", "this origin is not allowed")
        if len(request.postpath) != 1:
            return error(request, 404, "not_found", "POST /session/<session id>")
        session_id = request.postpath[0].decode("latin-1")
        session = hub.find(session_id)
        limit = batch_limit(hub)
        if session is None:
            # With several nodes, the session may live on another one.
            reply = BrowserReply(request, _json(request))
            if forward_frames(hub, session_id, request.content.read(limit + 1), reply, taken=(204, b"")):
                return reply.rendered()
        if session is None or session.transport not in ("sse", "longpoll"):
            return error(request, 404, "unknown_session", "no such session: start a new one")
        body = request.content.read(limit + 1)
        try:
            hub.receive_batch(session, body, limit)
        except ProtocolError as exc:
            status = 413 if exc.code == frames.TOO_LARGE else 400
            return error(request, status, exc.code, exc.message)
        request.setResponseCode(204)
        return b""


def _json(request: IRequest) -> Callable[[int, bytes], bytes]:
    """How a forwarded POST is answered: JSON with its status, or a 204
    with no body."""

    def render(status: int, body: bytes) -> bytes:
        request.setResponseCode(status)
        if body:
            request.setHeader(b"content-type", b"application/json")
        return body

    return render
