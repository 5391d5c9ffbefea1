"""Long-poll (``/poll``) and JSONP (``/jsonp``): sessions read by cursor.

The wire protocol (the README documents it for client writers):

- ``GET /poll`` opens a session and answers at once
  ``{"session": S, "cursor": N, "frames": [{"type": "connected", …}, …]}``.
  ``channel=`` (repeatable), ``since=`` and ``token=`` subscribe at once, as
  for SSE.
- ``GET /poll?session=S&cursor=N`` says "I have every frame up to N": those
  are dropped, and the answer is ``{"cursor": M, "frames": [...]}`` with the
  frames after N, as soon as there are any, or after ``longpoll_timeout``
  with none. Asking again with the same cursor gets the same frames again,
  so a response lost on the way costs nothing: nothing published between
  two polls is lost either, it waits in the session (up to
  ``outbound_buffer_bytes``). One poll per session at a time: a newer poll
  answers the older one at once, empty.
- A session with no poll open for ``session_grace`` seconds ends; polling it
  then answers ``404 {"error": "unknown_session"}``, and the client starts a
  new session and resumes its channels with ``since``.
- Browser frames go by ``POST /session/S`` (see :mod:`chloed.transports.inbound`).
- With several nodes (``backend = "redis://…"``) a poll reaching a node that
  does not hold the session is answered by the node that does, through
  Redis: the browser needs no sticky session.

JSONP is the same over ``<script>`` tags: ``GET /jsonp?callback=NAME[&session=S&cursor=N]``
answers ``NAME(<the same JSON>);`` always with status 200 (a script tag
cannot read a status: errors come as ``NAME({"error": …});``), as
``application/javascript`` with ``nosniff``. Frames go by
``GET /jsonp/send?callback=NAME&session=S&frames=<JSON array>``. A callback
name that is not a plain JavaScript identifier path answers 400.
"""

from __future__ import annotations

from typing import Any, Callable, Collection

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from chloed import frames
from chloed.errors import ProtocolError
from chloed.backends.base import Reply
from chloed.hub import Hub
from chloed.session import Session
from chloed.transports._http import (
    BrowserResource, arg, args, browser_headers, preflight, session_options, valid_callback,
)
from chloed.transports._reply import (
    BACKEND_UNAVAILABLE,
    UNKNOWN_SESSION,
    BrowserReply,
    batch_limit,
    forward_frames,
)

log = Logger()


def frames_body(session: Session, with_session: bool) -> bytes:
    """The JSON answer of a poll, from the shared frame bytes."""
    cursor, pending = session.take()
    head = b'{"session":' + frames.dumps(session.id) + b"," if with_session else b"{"
    return head + b'"cursor":%d,"frames":[' % cursor + b",".join(f.payload for f in pending) + b"]}"


class _Answer:
    """How one transport writes an answer: plain JSON or a JSONP call."""

    def __init__(self, request: Any, callback: str | None) -> None:
        self.request = request
        self.callback = callback

    def body(self, status: int, body: bytes) -> bytes:
        request = self.request
        if self.callback is None:
            request.setResponseCode(status)
            request.setHeader(b"content-type", b"application/json")
            return body
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/javascript; charset=utf-8")
        request.setHeader(b"x-content-type-options", b"nosniff")
        # U+2028 and U+2029 are valid in JSON but end a line in JavaScript
        # before ES2019: escaped, the script parses in every browser.
        body = body.replace(b"\xe2\x80\xa8", b"\\u2028").replace(b"\xe2\x80\xa9", b"\\u2029")
        return self.callback.encode("ascii") + b"(" + body + b");"

    def error(self, status: int, code: str, message: str) -> bytes:
        return self.body(status, frames.dumps({"error": code, "message": message}))


def _jsonp_callback(request: Any) -> tuple[str | None, bytes | None]:
    """The validated callback, or the 400 body that refuses it."""
    callback = arg(request, b"callback")
    if callback is None or not valid_callback(callback):
        request.setResponseCode(400)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return None, b"callback must be a JavaScript identifier (dots allowed between identifiers)\n"
    return callback, None


def _begin(request: Any, hub: Hub, jsonp: bool) -> tuple[_Answer | None, bytes | None]:
    """Check the callback (JSONP) and the origin: the answer writer, or the
    body that refuses the request."""
    callback = None
    if jsonp:
        callback, refusal = _jsonp_callback(request)
        if refusal is not None:
            return None, refusal
    answer = _Answer(request, callback)
    if not browser_headers(request, hub.config.allowed_origins):
        return None, answer.error(403, "forbidden_origin", "this origin is not allowed")
    return answer, None


def _session(hub: Hub, request: Any, transport: str) -> Session | None:
    session = hub.find(arg(request, b"session") or "")
    return session if session is not None and session.transport == transport else None


class _HeldPoll:
    """A poll waiting for frames or for its timeout, then answered once
    through ``reply(status, JSON body)``: a browser's request here, or a
    poll another node took for one of this node's sessions."""

    def __init__(self, hub: Hub, session: Session, reply: Reply) -> None:
        self.hub = hub
        self.session = session
        self.reply = reply
        self.done = False
        self.timer: IDelayedCall = hub.clock.callLater(hub.config.longpoll_timeout, self.respond)
        self.soon: IDelayedCall | None = None
        hub.poll_started(session)
        session.waiter = self.wake

    def wake(self) -> None:
        """Frames arrived: answer at the end of this reactor turn, so a burst
        (one publish to several channels) goes in one answer. A session that
        ended (``shutting_down``, ``slow_consumer``) is answered now: when the
        server stops, the connection may not live to the next turn."""
        if self.done:
            return
        if self.session.closed:
            self.respond()
        elif self.soon is None:
            self.soon = self.hub.clock.callLater(0, self.respond)

    def _end(self) -> None:
        self.done = True
        if self.timer.active():
            self.timer.cancel()
        if self.soon is not None and self.soon.active():
            self.soon.cancel()
        if self.session.waiter == self.wake:
            self.session.waiter = None
        self.hub.poll_ended(self.session)

    def respond(self) -> None:
        if self.done:
            return
        self._end()
        self.reply(200, frames_body(self.session, with_session=False))

    def cancel(self) -> None:
        """The browser went away before the answer: hold no more."""
        if not self.done:
            self._end()


POLLING = ("longpoll", "jsonp")
"""The transports whose sessions are read by polls."""

BAD_CURSOR = frames.dumps({"error": "bad_request", "message": "cursor must be the cursor of an earlier answer"})
OK = b'{"ok":true}'
"""What ``/jsonp/send`` answers frames it (or the node holding the session) took."""


def answer_poll(
    hub: Hub,
    session_id: str,
    cursor: int | None,
    transports: Collection[str],
    reply: Reply,
    elsewhere: Callable[[], None] | None = None,
) -> _HeldPoll | None:
    """Answer a poll of ``session_id`` after ``cursor``, through
    ``reply(status, JSON body)``: a browser's poll here, or one another node
    handed over. Every poll takes this one way.

    Frames pending after the cursor are answered at once; with none, the
    poll is held (a newer poll answers the older one empty). A session
    that ended with no poll open answers its last words, once.

    :param transports: the transports whose sessions this poll may read
        (and whose last words it may hear), in that order.
    :param elsewhere: what to do with a session that is not here and has
        no last words here (ask another node); by default, 404.
    :return: the held poll, for a caller to cancel when its asker goes
        away; None once answered (or passed ``elsewhere``).
    """
    session = hub.find(session_id)
    if session is None or session.transport not in transports:
        for transport in transports:
            ended = hub.last_words(session_id, transport)
            if ended is not None:
                reply(200, frames_body(ended, with_session=False))
                return None
        if elsewhere is None:
            reply(404, UNKNOWN_SESSION)
        else:
            elsewhere()
        return None
    if cursor is None or cursor > session.seq:
        reply(400, BAD_CURSOR)
        return None
    session.acknowledge(cursor)
    if session.pending:
        reply(200, frames_body(session, with_session=False))
        return None
    if session.waiter is not None:
        # A newer poll replaces the older one, which answers empty now.
        waiter, session.waiter = session.waiter, None
        waiter()
    return _HeldPoll(hub, session, reply)


def remote_poll(hub: Hub, session_id: str, cursor: int, reply: Reply) -> None:
    """Answer, through ``reply(status, JSON body)``, a poll of one of this
    node's sessions that reached another node: of either polling
    transport, since the browser's node cannot know which it is."""
    answer_poll(hub, session_id, cursor, POLLING, reply)


def _poll_elsewhere(hub: Hub, session_id: str, cursor: int | None, reply: Reply) -> None:
    """A poll of a session another node may hold: ask it through the
    shared backend, or answer 404 when there is no other node to ask."""
    asked = hub.forward_poll(session_id, cursor) if cursor is not None else None
    if asked is None:
        reply(404, UNKNOWN_SESSION)
        return

    def answered(result: tuple[int, bytes] | None) -> None:
        if result is None:
            reply(404, UNKNOWN_SESSION)
        else:
            reply(*result)

    def failed(_: Any) -> None:
        reply(503, BACKEND_UNAVAILABLE)

    asked.addCallbacks(answered, failed)


class PollResource(BrowserResource):
    """``GET /poll`` and ``GET /jsonp`` (with ``/jsonp/send`` below it)."""

    def __init__(self, hub: Hub, jsonp: bool) -> None:
        super().__init__()
        self.hub = hub
        self.jsonp = jsonp
        self.transport = "jsonp" if jsonp else "longpoll"
        if jsonp:
            self.putChild(b"send", JsonpSendResource(hub))
        hub.serve_polls(lambda session_id, cursor, reply: remote_poll(hub, session_id, cursor, reply))

    def render_OPTIONS(self, request: Any) -> bytes:
        return preflight(request, self.hub.config.allowed_origins)

    def render_GET(self, request: Any) -> Any:
        answer, refusal = _begin(request, self.hub, self.jsonp)
        if answer is None:
            return refusal
        if b"session" not in request.args:
            return self._open(request, answer)
        hub = self.hub
        session_id = arg(request, b"session") or ""
        cursor = parse_cursor(arg(request, b"cursor"))
        reply = BrowserReply(request, answer.body)
        held = answer_poll(
            hub, session_id, cursor, (self.transport,), reply,
            elsewhere=lambda: _poll_elsewhere(hub, session_id, cursor, reply),
        )
        return reply.rendered(held.cancel if held is not None else None)

    def _open(self, request: Any, answer: _Answer) -> Any:
        hub = self.hub
        if not hub.accepting():
            return answer.error(503, "unavailable", "this server takes no more connections now")
        options = session_options(request, hub.config.max_connections_per_ip)
        if hub.ip_full(options["ip"]):
            return answer.error(429, frames.TOO_MANY_CONNECTIONS, "too many connections from this address")
        channels = args(request, b"channel")
        if channels is None:
            return answer.error(400, "bad_request", "channel names are UTF-8")
        session = hub.open_session(self.transport, **options)
        if channels:
            hub.subscribe_all(session, channels, arg(request, b"since"), arg(request, b"token"))
        counted = hub.counted(session)
        if counted is None:
            return answer.body(200, frames_body(session, with_session=True))
        # With several nodes: answered (``connected`` and all) once every
        # node's receipts count the session.
        reply = BrowserReply(request, answer.body)
        counted.addCallback(lambda _: reply(200, frames_body(session, with_session=True)))
        return reply.rendered()


class JsonpSendResource(BrowserResource):
    """``GET /jsonp/send``: browser frames of a JSONP session."""

    isLeaf = True

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self.hub = hub

    def render_GET(self, request: Any) -> Any:
        answer, refusal = _begin(request, self.hub, jsonp=True)
        if answer is None:
            return refusal
        session = _session(self.hub, request, "jsonp")
        body = (arg(request, b"frames") or "").encode("utf-8")
        if session is None:
            # With several nodes, the session may live on another one.
            reply = BrowserReply(request, answer.body)
            if forward_frames(self.hub, arg(request, b"session") or "", body, reply, taken=(200, OK)):
                return reply.rendered()
            return answer.body(404, UNKNOWN_SESSION)
        try:
            self.hub.receive_batch(session, body, batch_limit(self.hub))
        except ProtocolError as exc:
            return answer.error(413 if exc.code == frames.TOO_LARGE else 400, exc.code, exc.message)
        return answer.body(200, OK)


MAX_CURSOR_DIGITS = 20


def parse_cursor(text: str | None) -> int | None:
    """A poll's cursor: ASCII digits only (``str.isdigit`` also takes ``²``
    and ``٣``, which ``int`` refuses), and not so long that ``int`` would."""
    if not text or len(text) > MAX_CURSOR_DIGITS or not (text.isascii() and text.isdigit()):
        return None
    return int(text)
