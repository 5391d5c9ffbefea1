"""Request smuggling against a real chloed, on raw sockets: a request that
gives its body length twice gets one JSON 400 and the connection closes, so
a request hidden after its body is never answered; requests that give it
once (chunked, or Content-Length) are served as before."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.servers import Chloed
from tests.site_harness import raw_answers

HIDDEN = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
TIMEOUT = 10.0


def exchange(chloed: Chloed, data: bytes) -> tuple[bytes, bool]:
    """Write ``data`` on a fresh connection and read until chloed closes it
    (or ``TIMEOUT``); what came back, and whether it closed."""
    with socket.create_connection(("127.0.0.1", chloed.port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        received = b""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                return received, True
            if not chunk:
                return received, True
            received += chunk
        return received, False


def statuses(answer: bytes) -> list[bytes]:
    return [line for line, _, _ in raw_answers(answer)]


@pytest.mark.parametrize(
    "framing",
    [
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        b"Transfer-Encoding: identity\r\nContent-Length: 5\r\n",
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"Content-Length: 5\r\nContent-Length: 0\r\n",
    ],
    ids=["chunked-then-identity", "identity-and-length", "length-and-chunked", "two-lengths"],
)
def test_a_body_length_given_twice_gets_one_400_and_a_close(chloed, framing):
    """One JSON 400, Connection: close, then the connection closes: the
    GET /health hidden after the body gets no answer. Logged once, with the
    client's address."""
    request = b"POST /send HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n0\r\n\r\n" + HIDDEN
    answer, closed = exchange(chloed, request)
    assert closed, answer
    assert statuses(answer) == [b"HTTP/1.1 400 Bad Request"], answer
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"\r\nConnection: close\r\n" in head
    assert json.loads(body)["error"] == "bad_request"
    assert chloed.log().count("client 127.0.0.1: http_refused: sent ") == 1


@pytest.mark.parametrize(
    "framing,body",
    [
        (b"Transfer-Encoding: chunked\r\n", b"%x\r\n%s\r\n0\r\n\r\n"),
        (b"Content-Length: %d\r\n", b"%s"),
    ],
    ids=["chunked", "content-length"],
)
def test_a_body_length_given_once_is_served_and_the_connection_kept(chloed, framing, body):
    """A /send with a chunked body, or with a Content-Length, is answered,
    and so is the next request on the same connection."""
    payload = json.dumps({"channel": "news", "data": "hi"}).encode()
    if b"%x" in body:
        encoded = body % (len(payload), payload)
        head = framing
    else:
        encoded = body % payload
        head = framing % len(payload)
    request = (
        b"POST /send HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + chloed.secret.encode() + b"\r\n" + head + b"\r\n" + encoded
        + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    answer, closed = exchange(chloed, request)
    assert closed
    assert [s.split(b" ")[1] for s in statuses(answer)] == [b"202", b"200"], answer
    assert "client 127.0.0.1: http_refused: sent " not in chloed.log()
