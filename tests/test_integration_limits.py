"""Every limit of SPEC section 1 against a real chloed, on every transport:
max_connections, rate_limit, max_message_bytes on bodies, and
outbound_buffer_bytes (a reader that stops reading is cut off while the
others keep getting every message)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import time

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.servers import Chloed
from tests.test_integration import TIMEOUT, Browser
from tests.test_integration_http_transports import SSEReader, poll, post_frames


def conf(tmp_path, **options) -> str:
    path = tmp_path / "chloe.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in options.items()))
    return str(path)


def test_max_connections_on_every_transport(chloed_factory, tmp_path):
    """At max_connections, new browsers get 503 on WebSocket, SSE and
    long-poll; once one leaves, a new one gets in."""
    server = chloed_factory(config=conf(tmp_path, max_connections=2))
    first, second = Browser(server), Browser(server)
    try:
        with pytest.raises(InvalidStatus) as refused:
            connect(server.ws_url, open_timeout=TIMEOUT)
        assert refused.value.response.status_code == 503
        sse = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
        sse.request("GET", "/sse?channel=a")
        answer = sse.getresponse()
        assert answer.status == 503 and json.loads(answer.read())["error"] == "unavailable"
        sse.close()
        status, body = poll(server, "channel=a")
        assert status == 503 and body["error"] == "unavailable"
        # A script tag sees no status: JSONP answers 200 with the error inside.
        status, _, body = server.request("GET", "/jsonp?callback=cb&channel=a", auth=False)
        assert status == 200 and json.loads(body[3:-2])["error"] == "unavailable"
    finally:
        first.close()
    # The server sees the close a moment later: retry until it has.
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            third = Browser(server)
            break
        except InvalidStatus:
            assert time.monotonic() < deadline, "a place never freed up"
    third.close()
    second.close()


def test_rate_limit_on_websocket_and_on_session_posts(chloed_factory, tmp_path):
    """A session sending faster than rate_limit gets rate_limited for the
    excess, on a WebSocket and through POST /session; others are unaffected."""
    server = chloed_factory(config=conf(tmp_path, rate_limit=2, max_subscriptions=1))
    flood, calm = Browser(server), Browser(server)
    try:
        burst = 11  # max(2 * rate_limit, max_subscriptions + 10)
        for n in range(burst + 5):
            flood.send({"type": "ping"})
        answers = [flood.recv() for _ in range(burst + 5)]
        assert answers[:burst] == [{"type": "pong"}] * burst
        assert {a.get("code") for a in answers[burst:]} == {"rate_limited"}
        assert calm.ask({"type": "ping"}) == {"type": "pong"}
    finally:
        flood.close()
        calm.close()

    stream = SSEReader(server, "/sse")
    try:
        session = stream.event()["data"]["session"]
        assert post_frames(server, session, [{"type": "ping"}] * (burst + 3)) == 204
        answers = [stream.event()["data"] for _ in range(burst + 3)]
        assert [a["type"] for a in answers[:burst]] == ["pong"] * burst
        assert {a.get("code") for a in answers[burst:]} == {"rate_limited"}
    finally:
        stream.close()
    assert "Traceback" not in server.log()


def test_bodies_over_the_limit(chloed_factory, tmp_path):
    """POST /session and /send bodies over the limit are 413 too_large; a
    declared huge body is refused before it is sent."""
    server = chloed_factory(config=conf(tmp_path, max_message_bytes=1024))
    stream = SSEReader(server, "/sse")
    try:
        session = stream.event()["data"]["session"]
        big = [{"type": "send", "data": "x" * 1000}] * 10
        assert post_frames(server, session, big) == 413
        status, _, body = server.request("POST", "/send", b"data=" + b"x" * 2000,
                                         {"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 413 and json.loads(body)["error"] == "too_large"
    finally:
        stream.close()
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as raw:
        raw.sendall(b"POST /send HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        head = raw.recv(4096)
        assert head.startswith(b"HTTP/1.1 413 ")


class StalledReader:
    """A WebSocket client that subscribes and then never reads again."""

    def __init__(self, server: Chloed, channel: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(("127.0.0.1", server.port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101")
        self.send_text(json.dumps({"type": "subscribe", "channel": channel}).encode())

    def send_text(self, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert len(payload) < 126
        self.sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    def drained_to_close(self) -> bool:
        """Read whatever is left; True when the server closed the connection."""
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        return True


def test_slow_consumer_is_cut_off_and_the_others_get_everything(chloed_factory, tmp_path):
    """A subscriber that stops reading is disconnected (slow_consumer) once
    outbound_buffer_bytes wait for it; a reading subscriber gets every one
    of the messages, in order."""
    server = chloed_factory(config=conf(tmp_path, outbound_buffer_bytes=65536, rate_limit=0))
    stalled = StalledReader(server, "firehose")
    reader = Browser(server)
    reader.subscribe("firehose")
    # The stalled one's subscribe is in: the channel has two subscribers.
    deadline = time.monotonic() + TIMEOUT
    while json.loads(server.request("GET", "/channels/firehose")[2])["subscribers"] < 2:
        assert time.monotonic() < deadline
    count, payload = 600, "y" * 16000
    received = []
    for n in range(count):
        status, _ = server.send(channel="firehose", data={"n": n, "pad": payload})
        assert status == 202
        received.append(reader.recv()["data"]["n"])
    assert received == list(range(count))
    assert stalled.drained_to_close()
    assert json.loads(server.request("GET", "/channels/firehose")[2])["subscribers"] == 1
    assert "more than 65536 bytes waiting" in server.log()
    reader.close()
