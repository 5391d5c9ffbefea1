"""Keep-alive on every transport, and dead peers found and freed."""

from __future__ import annotations

import base64
import json
import os
import socket
import time

from tests.test_integration_http_transports import SSEReader


def heartbeat_conf(tmp_path, seconds: float) -> str:
    conf = tmp_path / "chloe.toml"
    conf.write_text(f"heartbeat = {seconds}\nlongpoll_timeout = {seconds}\n")
    return str(conf)


def masked_text(payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


def test_websocket_peer_that_stops_answering_is_dropped(chloed_factory, tmp_path):
    """A WebSocket peer that never answers pings is disconnected and its subscriptions freed."""
    server = chloed_factory(config=heartbeat_conf(tmp_path, 0.3))
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    sock.sendall(masked_text(b'{"type":"subscribe","channel":"beat"}'))
    deadline = time.monotonic() + 10
    received = b""
    pinged = False
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)  # never answering the pings in it
        except ConnectionResetError:
            break  # dropped with a reset
        if not chunk:
            break
        received += chunk
        pinged = pinged or b"\x89" in chunk
    assert pinged, "the server never pinged"
    assert time.monotonic() < deadline, "the silent peer was not dropped"
    sock.close()
    status, _, body = server.request("GET", "/channels/beat")
    assert json.loads(body)["subscribers"] == 0


def test_sse_sends_comment_heartbeats(chloed_factory, tmp_path):
    """An idle SSE stream gets a comment line every heartbeat seconds."""
    server = chloed_factory(config=heartbeat_conf(tmp_path, 0.2))
    reader = SSEReader(server, "/sse")
    try:
        assert reader.event()["event"] == "connected"
        lines = [reader.response.fp.readline() for _ in range(4)]
        assert b":\n" in lines
    finally:
        reader.close()


def test_longpoll_returns_empty_after_the_timeout(chloed_factory, tmp_path):
    """A poll with nothing to say returns after longpoll_timeout, empty, cursor unchanged."""
    server = chloed_factory(config=heartbeat_conf(tmp_path, 0.2))
    _, _, body = server.request("GET", "/poll", auth=False)
    opened = json.loads(body)
    status, _, body = server.request("GET", f"/poll?session={opened['session']}&cursor={opened['cursor']}", auth=False)
    assert status == 200 and json.loads(body) == {"cursor": opened["cursor"], "frames": []}
