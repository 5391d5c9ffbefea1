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
"""

from __future__ import annotations

import json
from typing import Any

from twisted.logger import Logger
from twisted.web.http import HTTPChannel

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


class GuardedHTTPChannel(HTTPChannel):
    """An ``HTTPChannel`` whose requests must arrive within
    ``factory.request_deadline`` seconds, with bodies of at most
    ``factory.max_body_bytes`` (no limit when the factory has none)."""

    _deadline: Any = None
    _receiving = True
    _refused = False
    _body_seen = 0

    def connectionMade(self) -> None:
        super().connectionMade()
        self._receiving = False

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._receiving:
            self._receiving = True
            seconds = getattr(self.factory, "request_deadline", REQUEST_DEADLINE)
            self._deadline = self.callLater(seconds, self._too_slow)
        super().dataReceived(data)

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

    def connectionLost(self, reason: Any) -> None:
        self._stop_deadline()
        super().connectionLost(reason)

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
        peer = self.transport.getPeer()
        log.info("client {host} " + why + "; closed", host=getattr(peer, "host", peer), **fields)
        self.transport.write(response)
        self.transport.loseConnection()
