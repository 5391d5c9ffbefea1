"""The HTTP connection itself, guarded against slow and oversized requests.

``twisted.web``'s idle timeout restarts with every byte received, so a client
that trickles a header a byte every few seconds would hold its connection
(and a file descriptor) for ever; a few thousand such clients starve
everyone else. And ``twisted.web`` reads a whole request body (to memory or
a temporary file) before any resource sees it, so the body limit has to be
enforced while it arrives, not after.

:class:`GuardedHTTPChannel` starts a clock at a request's first byte and
answers ``408`` if the request (head and body) is not in when it runs out,
and answers ``413`` as soon as a declared or received body passes the
largest any endpoint takes. Either way the connection closes. Once a
request is whole, what follows (an SSE stream, a held poll, a WebSocket) is
not timed by it.

It also answers ``400`` and closes when a request frames its body twice
(two ``Transfer-Encoding`` lines, ``Transfer-Encoding`` with
``Content-Length``, two ``Content-Length`` lines; RFC 9112 section 6.3).
``twisted.web`` refuses most such requests, but takes ``chunked`` followed
by ``identity`` as chunked, and ``identity`` with a ``Content-Length`` as
the length: a proxy in front that reads the other header sees a different
end of the body, and a request hidden after it would be served.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import tcp
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from chloed.lograte import HTTP_REFUSED
from chloed.transports._lean import STARTS, LeanSend
from chloed.transports._turn import send_now

log = Logger()

REQUEST_DEADLINE = 30.0
# Chunked bodies are counted with their chunk framing: allow for it.
CHUNK_SLACK = 1024


def _response(status: bytes, code: str, message: str) -> bytes:
    body = json.dumps({"error": code, "message": message}).encode()
    return (
        b"HTTP/1.1 " + status + b"\r\n"
        b"Content-Type: application/json\r\n"
        b"Connection: close\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body


TOO_SLOW = _response(b"408 Request Timeout", "request_timeout", "the request did not arrive in time")
TOO_LARGE = _response(b"413 Request Entity Too Large", "too_large", "the request body is too large")
AMBIGUOUS_LENGTH = _response(
    b"400 Bad Request", "bad_request", "the request gives its body length more than once"
)
_FRAMING_HEADERS = (b"transfer-encoding", b"content-length")


class GuardedHTTPChannel(HTTPChannel):
    """An ``HTTPChannel`` whose requests must arrive within
    ``factory.request_deadline`` seconds, with bodies of at most
    ``factory.max_body_bytes`` (no limit when the factory has none)."""

    _deadline: Any = None
    _receiving = True
    _refused = False
    _body_seen = 0
    _lean: LeanSend | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._receiving = False
        transport = self.transport
        if type(transport) is tcp.Server:
            # Twisted sets these on a transport at its first buffered write,
            # so in a burst of connections they come too late for CPython's
            # shared-key instance dicts, and every transport's dict is made
            # a dict of its own: about 530 bytes more a connection
            # (bench/conn_bytes.py). Set now, every transport has them alike.
            transport.dataBuffer = b""
            transport.offset = 0

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        lean = self._lean
        if lean is not None and lean.waiting is not None:
            lean.hold(data)
            return
        if not self._receiving and data[:10] in STARTS and self._idle():
            # See chloed.transports._lean: the app's publishes, whole in the
            # buffer, answered without twisted.web's Request.
            if lean is None:
                lean = self._lean = self._lean_send()
            if lean is not None:
                self.resetTimeout()
                data = lean.serve(data)
                if lean.waiting is not None:
                    self._pause_reading()
                if not data:
                    return
        if not self._receiving:
            self._receiving = True
            seconds = getattr(self.factory, "request_deadline", REQUEST_DEADLINE)
            self._deadline = self.callLater(seconds, self._too_slow)
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._refused:  # the rest of a buffer that held a refused header
            return
        super().lineReceived(line)

    def headerReceived(self, line: bytes) -> bool:
        """Refuse a second header that frames the body, before
        ``twisted.web`` picks one of the two."""
        name = line.split(b":", 1)[0].lower()
        if name in _FRAMING_HEADERS:
            headers = self.requests[-1].requestHeaders
            if any(headers.hasHeader(framing) for framing in _FRAMING_HEADERS):
                self._refuse(AMBIGUOUS_LENGTH, "sent {header} after another body length header",
                             header=name.decode("latin-1"))
                return False
        return bool(super().headerReceived(line))

    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()
        self._body_seen = 0
        limit = getattr(self.factory, "max_body_bytes", None)
        if limit is not None and self.length is not None and self.length > limit:
            self._refuse(TOO_LARGE, "declared a body of {size} bytes", size=self.length)

    def rawDataReceived(self, data: bytes) -> None:
        self._body_seen += len(data)
        limit = getattr(self.factory, "max_body_bytes", None)
        if limit is not None and self._body_seen > limit + CHUNK_SLACK:
            self._refuse(TOO_LARGE, "sent a body of over {size} bytes", size=self._body_seen)
            return
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        self._stop_deadline()
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)
        # The next request on this connection starts its own clock.
        self._receiving = False

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_deadline()
        if self._lean is not None:
            self._lean.lost()
        super().connectionLost(reason)

    # -- the lean path of POST /send ---------------------------------------

    def _idle(self) -> bool:
        """Whether twisted.web is between requests, holding no byte of one."""
        return (
            not self.requests and not self._handlingRequest and bool(self.line_mode)
            and not self._buffer and bool(self.persistent)
        )

    def _lean_send(self) -> LeanSend | None:
        render = getattr(self.factory, "send_render", None)
        transport = self.transport
        if render is None or transport is None:
            return None
        return LeanSend(render, self._write_now, transport.getPeer(),
                        getattr(self.factory, "max_body_bytes", None), self._resume_reading,
                        getattr(self.factory, "pusher_render", None))

    def _write_now(self, data: bytes) -> None:
        """An answer of the lean path, handed to the kernel at once when it
        can be (see chloed.transports._turn.send_now)."""
        transport = self.transport
        assert transport is not None
        if type(transport) is tcp.Server:
            data = send_now(transport, transport.socket, data)
            if not data:
                return
        transport.write(data)

    def _pause_reading(self) -> None:
        assert self.transport is not None
        self.transport.pauseProducing()  # type: ignore[attr-defined]  # a TCP transport is its own producer

    def _resume_reading(self, held: bytes) -> None:
        """An answer the backend kept waiting is written: read again, from
        what arrived meanwhile."""
        transport = self.transport
        if transport is None or self._refused:
            return
        transport.resumeProducing()  # type: ignore[attr-defined]
        if held:
            self.dataReceived(held)

    def _stop_deadline(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _too_slow(self) -> None:
        self._deadline = None
        self._refuse(
            TOO_SLOW, "request not received within {seconds} s",
            seconds=getattr(self.factory, "request_deadline", REQUEST_DEADLINE),
        )

    def _refuse(self, response: bytes, why: str, **fields: Any) -> None:
        """Answer ``response`` and close, ignoring whatever else arrives."""
        if self._refused:
            return
        self._refused = True
        self._stop_deadline()
        transport = self.transport
        # Only received bytes, or the deadline they start, which a lost
        # connection stops, get here.
        assert transport is not None
        peer = transport.getPeer()
        host = getattr(peer, "host", peer)
        errors = getattr(self.factory, "client_errors", None)
        if errors is not None:
            # Counted each, logged at most once a minute per client.
            errors.report(str(host), HTTP_REFUSED, why.format(**fields) + "; closed")
        else:
            log.info("client {host} " + why + "; closed", host=host, **fields)
        transport.write(response)
        transport.loseConnection()
