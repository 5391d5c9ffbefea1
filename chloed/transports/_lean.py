"""``POST /send`` (and a Pusher app's ``POST /apps/{id}/events`` and
``/batch_events``) answered straight from the connection's buffer.

``twisted.web`` builds a ``Request``, two header objects, a deferred
``notifyFinish`` and a timer for every request, and parses it a line at a
time in Python: most of the CPU a publish costs (bench/profiles). The app's
publishes are many small requests on a few keep-alive connections, so when
one arrives whole, at the start of the buffer of an idle connection, its
head is parsed by ``httptools`` (llhttp, the parser of Node.js) and it goes
to the ``/send`` resource as a :class:`LeanRequest`, answered with the
same status, headers and JSON as through ``twisted.web``. The Pusher API's
publishes take the same path to :class:`chloed.pusher.api.PusherApi`:
several pipelined publishes are then served in one reactor turn, and their
frames reach each subscriber in one write, as ``/send``'s do.

Everything else goes to ``twisted.web`` as before, from the first byte this
module did not answer: other paths and methods, a request not whole in the
buffer, a chunked or ``Expect`` body, ``Connection: close``, HTTP/1.0, a
body over the site's limit, anything ``httptools`` will not parse. So the
guard's deadline, limits and refusals still apply to them, and keep-alive
and pipelining work across both paths: answers go out in request order,
and while the backend keeps an answer waiting (Redis), the connection
reads nothing more.
"""

from __future__ import annotations

import io
import time
from typing import Any, Callable

import httptools
from twisted.web.http import RESPONSES, datetimeToString, parse_qs
from twisted.web.server import NOT_DONE_YET

#: What a request this module may answer starts with (its first 10 bytes).
STARTS = (b"POST /send", b"POST /apps")
_PUSHER_ENDS = (b"/events", b"/batch_events")
_HEAD_END = b"\r\n\r\n"
#: As twisted.web's own bound on a request's line and headers.
MAX_HEAD_BYTES = 16384
#: Headers whose presence leaves the request to twisted.web.
_DECLINED = frozenset((b"transfer-encoding", b"expect", b"upgrade"))

#: Header names as twisted.web writes them.
_NAMES = {b"content-type": b"Content-Type", b"www-authenticate": b"WWW-Authenticate"}

_date: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """The ``Date`` header's value, made once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, datetimeToString(now))
    return _date[1]


class _Head:
    """httptools' callbacks for one request head."""

    __slots__ = ("url", "headers", "declined", "done")

    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.declined = False
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in self.headers or name in _DECLINED:
            self.declined = True  # twisted.web's way for repeats (and the guard's refusals)
        self.headers[name] = value

    def on_headers_complete(self) -> None:
        self.done = True


class LeanRequest:
    """What the ``/send`` resource reads of a request and writes to it,
    for one parsed here; its answer is written by the channel, in order."""

    __slots__ = (
        "method", "uri", "path", "postpath", "args", "content", "_headers", "_peer",
        "code", "_out", "finished", "_disconnected", "_answer",
    )

    def __init__(self, path: bytes, query: bytes | None, headers: dict[bytes, bytes], body: bytes,
                 peer: Any, answer: Callable[["LeanRequest", bytes], None], postpath: list[bytes] | None = None) -> None:
        self.method = b"POST"
        self.uri = path + b"?" + query if query else path
        self.path = path
        self.postpath: list[bytes] = postpath or []
        args = parse_qs(query, 1) if query else {}
        media = headers.get(b"content-type", b"").partition(b";")[0].strip().lower()
        if media == b"application/x-www-form-urlencoded" and body:
            args.update(parse_qs(body, 1))
        self.args = args
        self.content = io.BytesIO(body)
        self._headers = headers
        self._peer = peer
        self.code = 200
        self._out: list[bytes] = []
        self.finished = False
        self._disconnected = False
        self._answer = answer

    def getHeader(self, name: bytes) -> bytes | None:
        return self._headers.get(name.lower())

    def getClientAddress(self) -> Any:
        return self._peer

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def setHeader(self, name: bytes, value: bytes) -> None:
        self._out.append((_NAMES.get(name) or name.title()) + b": " + value + b"\r\n")

    def response(self, body: bytes) -> bytes:
        """The whole HTTP answer with ``body``."""
        return b"".join((
            b"HTTP/1.1 %d %s\r\n" % (self.code, RESPONSES.get(self.code, b"Unknown Status")),
            *self._out,
            b"Date: %s\r\nContent-Length: %d\r\n\r\n" % (http_date(), len(body)),
            body,
        ))

    # The part of IRequest an answer given later uses.

    def write(self, body: bytes) -> None:
        self._out = [h for h in self._out if not h.lower().startswith(b"content-length:")]
        self._answer(self, body)

    def finish(self) -> None:
        self.finished = True


class LeanSend:
    """The lean path of one connection.

    :param render: the ``/send`` resource's ``render``.
    :param write: the connection's ``transport.write``.
    :param peer: the client's address.
    :param max_body: the largest body the site takes; a larger one goes to
        twisted.web, which refuses it.
    :param pusher: the Pusher API's ``render`` (``/apps/...``), when served.
    """

    __slots__ = ("_render", "_pusher", "_write", "_peer", "_max_body", "waiting", "_held", "_resume")

    def __init__(self, render: Callable[[Any], Any], write: Callable[[bytes], None], peer: Any,
                 max_body: int | None, resume: Callable[[bytes], None],
                 pusher: Callable[[Any], Any] | None = None) -> None:
        self._render = render
        self._pusher = pusher
        self._write = write
        self._peer = peer
        self._max_body = max_body
        #: An answer the backend has not given yet; nothing is read meanwhile.
        self.waiting: LeanRequest | None = None
        self._held: list[bytes] = []
        self._resume = resume

    def hold(self, data: bytes) -> None:
        """Keep bytes that came while an answer is awaited."""
        self._held.append(data)

    def serve(self, data: bytes) -> bytes:
        """Answer the whole ``POST /send`` (and Pusher publish) requests at
        the start of ``data``; return the bytes left for twisted.web (from
        the first request not answered here), or b"" when all were taken."""
        while data[:10] in STARTS and data[10:11] in (b" ", b"?", b"/"):
            end = data.find(_HEAD_END, 0, MAX_HEAD_BYTES)
            if end < 0:
                return data
            end += 4
            head = _Head()
            parser = httptools.HttpRequestParser(head)
            try:
                parser.feed_data(data[:end])
            except httptools.HttpParserError:
                return data
            if not head.done or head.declined or parser.get_http_version() != "1.1":
                return data
            headers = head.headers
            if b"close" in headers.get(b"connection", b"").lower():
                return data
            if b"multipart" in headers.get(b"content-type", b"").lower():
                return data  # twisted.web's multipart parser, and its refusals
            try:
                length = int(headers.get(b"content-length", b"0"))
            except ValueError:
                return data
            if length < 0 or (self._max_body is not None and length > self._max_body) or len(data) < end + length:
                return data
            path, _, query = head.url.partition(b"?")
            render, postpath = self._route(path)
            if render is None:
                return data
            body, data = data[end:end + length], data[end + length:]
            request = LeanRequest(path, query or None, headers, body, self._peer, self._answered, postpath)
            answer = render(request)
            if answer is NOT_DONE_YET:
                self.waiting = request
                if data:
                    self._held.append(data)
                return b""
            self._write(request.response(answer))
        return data

    def _route(self, path: bytes) -> tuple[Callable[[Any], Any] | None, list[bytes] | None]:
        """The render of ``path`` here, and its ``postpath``; None for a
        path left to twisted.web."""
        if path == b"/send":
            return self._render, None
        if self._pusher is not None and path.startswith(b"/apps/") and path.endswith(_PUSHER_ENDS):
            postpath = path[6:].split(b"/")
            if len(postpath) == 2:
                return self._pusher, postpath
        return None, None

    def _answered(self, request: LeanRequest, body: bytes) -> None:
        """The backend answered the request it kept waiting: write it and
        go on with what came meanwhile."""
        if request is not self.waiting:
            return
        self.waiting = None
        self._write(request.response(body))
        held, self._held = b"".join(self._held), []
        self._resume(held)

    def lost(self) -> None:
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting._disconnected = True
        self._held = []
