"""A whole chloed Site on a StringTransport, for tests of what ``/send``
answers on the wire: no socket, no reactor run, no sleep."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from chloed.config import Config
from chloed.service import make_service

SECRET = "harness-secret"


def send_request(body: bytes, ctype: bytes = b"application/x-www-form-urlencoded", *,
                 path: bytes = b"/send", auth: bool = True, extra: bytes = b"") -> bytes:
    """A whole ``POST`` with a Content-Length."""
    head = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n"
    if auth:
        head += b"Authorization: Bearer " + SECRET.encode() + b"\r\n"
    if ctype:
        head += b"Content-Type: " + ctype + b"\r\n"
    return head + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body


def answers(wire: bytes) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Each HTTP answer in ``wire``: status, headers (lower-case), body."""
    return [(int(line.split(b" ")[1]), headers, body) for line, headers, body in raw_answers(wire)]


def raw_answers(wire: bytes) -> list[tuple[bytes, dict[bytes, bytes], bytes]]:
    """Each HTTP answer in ``wire``, one after the other by its
    Content-Length or chunks (a body need not end a line): status line,
    headers (lower-case names), body."""
    found = []
    while wire.startswith(b"HTTP/1.1 "):
        head, _, wire = wire.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b": ")
            headers[name.lower()] = value
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = b""
            while True:
                size, _, wire = wire.partition(b"\r\n")
                n = int(size, 16)
                body, wire = body + wire[:n], wire[n + 2:]
                if n == 0:
                    break
        else:
            n = int(headers.get(b"content-length", b"0"))
            body, wire = wire[:n], wire[n:]
        found.append((lines[0], headers, body))
    assert wire == b"", wire
    return found


class SiteHarness:
    """One chloed (``make_service``) and one client connection to its Site."""

    def __init__(self, **options: Any) -> None:
        self.reactor = MemoryReactorClock()
        options.setdefault("secret", (SECRET,))
        self.service = make_service(Config(**options), self.reactor, open_files=lambda n: n)
        self.hub = self.service.hub
        self.connect()

    def connect(self) -> None:
        peer = IPv4Address("TCP", "10.0.0.7", 40000)
        self.protocol = self.service.site.buildProtocol(peer)
        self.transport = StringTransport(peerAddress=peer)
        self.protocol.makeConnection(self.transport)

    def feed(self, data: bytes) -> list[tuple[int, dict[bytes, bytes], bytes]]:
        """Write ``data`` to the server; what it answered since last time."""
        self.protocol.dataReceived(data)
        return self.take()

    def take(self) -> list[tuple[int, dict[bytes, bytes], bytes]]:
        wire = self.transport.value()
        self.transport.clear()
        return answers(wire)


def body_json(answer: tuple[int, dict[bytes, bytes], bytes]) -> Any:
    return json.loads(answer[2])
