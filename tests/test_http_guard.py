"""The guarded HTTP channel: a request that trickles in is answered 408 and
closed at the deadline (a whole request, and what it streams after, is not
timed); a body over the limit is answered 413 while it arrives; a body
whose length is given twice is answered 400."""

from __future__ import annotations

import json

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, LogLevel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.static import Data

from chloed.transports import _guard
from chloed.web import ChloeSite


class Streaming(Resource):
    """Answers with headers, then holds the response open (like SSE)."""

    isLeaf = True

    def render_GET(self, request):
        request.write(b"event: connected\n\n")
        return NOT_DONE_YET


def connect(deadline: float = 30.0, max_body: int | None = None):
    clock = Clock()
    root = Resource()
    root.putChild(b"hello", Data(b"hi", "text/plain"))
    root.putChild(b"stream", Streaming())
    site = ChloeSite(root, reactor=clock)
    site.request_deadline = deadline
    site.max_body_bytes = max_body
    channel = site.buildProtocol(IPv4Address("TCP", "10.0.0.1", 4000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", 4000))
    channel.makeConnection(transport)
    return clock, channel, transport


def test_trickled_headers_get_408_at_the_deadline():
    """A byte every few seconds resets the idle timeout but not the deadline."""
    clock, channel, transport = connect()
    for byte in b"GET /hello HTTP/1.1\r\nHost: x\r\n":
        channel.dataReceived(bytes([byte]))
        clock.advance(1.0)
        if clock.seconds() >= 29:
            break
    assert transport.value() == b"" and not transport.disconnecting
    clock.advance(1.5)
    assert transport.value().startswith(b"HTTP/1.1 408 ")
    assert b'"error": "request_timeout"' in transport.value()
    assert transport.disconnecting


def test_trickled_body_gets_408():
    """The deadline covers the body too."""
    clock, channel, transport = connect(deadline=10.0)
    channel.dataReceived(b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    channel.dataReceived(b"x" * 50)
    clock.advance(10.5)
    assert transport.value().startswith(b"HTTP/1.1 408 ")


def test_a_whole_request_is_not_timed_and_neither_is_its_stream():
    """Once the request is in, a held-open response outlives the deadline."""
    clock, channel, transport = connect(deadline=5.0)
    channel.dataReceived(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    clock.advance(50)
    assert b"event: connected" in transport.value()
    assert b"408" not in transport.value()
    assert not transport.disconnecting


def test_each_keepalive_request_starts_its_own_clock():
    """A connection kept alive between requests gets a fresh deadline per request."""
    clock, channel, transport = connect(deadline=5.0)
    channel.dataReceived(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"200 OK" in transport.value()
    transport.clear()
    clock.advance(4)
    channel.dataReceived(b"GET /hello HTTP/1.1\r\n")
    clock.advance(4)
    assert transport.value() == b""
    channel.dataReceived(b"Host: x\r\n\r\n")
    assert b"200 OK" in transport.value()
    clock.advance(6)
    assert b"408" not in transport.value()


def test_declared_body_over_the_limit_is_refused_before_it_arrives():
    """A Content-Length over the limit gets 413 at once, and the rest is ignored."""
    clock, channel, transport = connect(max_body=1000)
    channel.dataReceived(b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 413 ")
    assert b'"error": "too_large"' in transport.value()
    assert transport.disconnecting
    channel.dataReceived(b"x" * 100000)
    assert transport.value().count(b"HTTP/1.1") == 1


def test_chunked_body_over_the_limit_is_refused_as_it_arrives():
    """Without a Content-Length, the body is counted as it comes."""
    clock, channel, transport = connect(max_body=1000)
    channel.dataReceived(b"POST /hello HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for n in range(10):
        channel.dataReceived(b"3e8\r\n" + b"x" * 1000 + b"\r\n")
    assert transport.value().startswith(b"HTTP/1.1 413 ")


def test_body_within_the_limit_is_served():
    clock, channel, transport = connect(max_body=1000)
    channel.dataReceived(b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000)
    # Data takes only GET: the resource answered, not the guard.
    assert transport.value().startswith(b"HTTP/1.1 405 ")


SMUGGLED = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    "framing",
    [
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        b"transfer-encoding: chunked\r\nX-Other: 1\r\nTRANSFER-ENCODING: identity\r\n",
        b"Transfer-Encoding: identity\r\nContent-Length: 0\r\n",
        b"Content-Length: 0\r\nTransfer-Encoding: identity\r\n",
        b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
        b"Content-Length: 0\r\nContent-Length: 0\r\n",
        b"Content-Length: 0\r\nContent-Length: 5\r\n",
    ],
    ids=["chunked-identity", "identity-chunked", "chunked-twice", "apart-any-case", "identity-length",
         "length-identity", "length-chunked", "length-twice-equal", "length-twice-different"],
)
def test_a_body_framed_twice_gets_one_json_400_and_the_rest_is_not_served(monkeypatch, framing):
    """A request that states its body's length more than once (which a proxy
    and Chloe could read differently) is refused with a JSON 400 and the
    connection closes: a request hidden after its body is never served."""
    events = []
    monkeypatch.setattr(_guard, "log", Logger(observer=events.append))
    clock, channel, transport = connect()
    channel.dataReceived(b"POST /hello HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n0\r\n\r\n" + SMUGGLED)
    channel.dataReceived(SMUGGLED)
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert answer.count(b"HTTP/1.1") == 1
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"\r\nConnection: close\r\n" in head
    assert json.loads(body)["error"] == "bad_request"
    assert transport.disconnecting
    assert [e["log_level"] for e in events] == [LogLevel.info]
    assert events[0]["host"] == "10.0.0.1"


def test_a_framing_header_arriving_in_pieces_is_refused_too():
    """The second Transfer-Encoding split over several reads is still seen."""
    clock, channel, transport = connect()
    for piece in (b"POST /hello HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-",
                  b"Encoding: identity\r", b"\n\r\n0\r\n\r\n", SMUGGLED):
        channel.dataReceived(piece)
    assert transport.value().startswith(b"HTTP/1.1 400 ")
    assert transport.value().count(b"HTTP/1.1") == 1


def test_one_framing_header_per_request_on_a_kept_alive_connection_is_fine():
    """Each request on a connection may state its own length once: chunked,
    then Content-Length, then chunked again are all served."""
    clock, channel, transport = connect()
    channel.dataReceived(
        b"POST /hello HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n"
        b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab"
        b"POST /hello HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        + SMUGGLED
    )
    answer = transport.value()
    assert answer.count(b"HTTP/1.1 405 ") == 3  # Data takes only GET: the resource answered
    assert answer.count(b"HTTP/1.1 200 OK") == 1
    assert not transport.disconnecting
