"""WebSocket protocol failures against a real chloed, from a hand-made
client: the server says why in a close frame (1002, 1007, 1009) before it
closes TCP, closes it soon even when the client never answers, logs one
line per client however many connections fail, and counts every one."""

from __future__ import annotations

import json
import os
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.rawws import OP_CLOSE, OP_CONTINUATION, OP_TEXT, RawWebSocket, frame, upgrade_request
from tests.servers import Chloed
from tests.test_integration import Browser

#: Four times the default max_message_bytes: Autobahn refuses messages over it.
LIMIT = 4 * 65536


@pytest.fixture(scope="module")
def server():
    """One chloed for the module's close-code cases (each its own connection)."""
    chloed = Chloed()
    yield chloed
    chloed.stop()


def client_errors(server: Chloed) -> dict[str, float]:
    """``chloe_client_errors_total`` by kind, from /metrics."""
    status, _, body = server.request("GET", "/metrics")
    assert status == 200
    return {
        sample.labels["kind"]: sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == "chloe_client_errors_total"
    }


def log_since(server: Chloed, offset: int) -> list[str]:
    with open(server.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace").splitlines()


CASES = {
    "invalid UTF-8 in a text message": (frame(OP_TEXT, b'{"type": "ping", "x": "\xff\xfe"}'), 1007),
    "a reserved data opcode (0x3)": (frame(0x3, b'{"type": "ping"}'), 1002),
    "a reserved control opcode (0xB)": (frame(0xB), 1002),
    "RSV1 set without an extension": (frame(OP_TEXT, b'{"type": "ping"}', rsv=4), 1002),
    "an unmasked client frame": (frame(OP_TEXT, b'{"type": "ping"}', masked=False), 1002),
    "a close frame with a 1-byte payload": (frame(OP_CLOSE, b"\x03"), 1002),
    "a frame announcing more than four times max_message_bytes": (
        frame(OP_TEXT, b"x" * 100, length=LIMIT + 1), 1009),
    "a fragmented message growing past it": (
        frame(OP_TEXT, b"x" * 60000, fin=False)
        + b"".join(frame(OP_CONTINUATION, b"x" * 60000, fin=False) for _ in range(4)),
        1009),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_protocol_error_gets_its_close_code_before_eof(server, name):
    """The browser's CloseEvent can tell why: after the connected frame the
    server writes nothing but a close frame with the right code (the bad
    frame is not acted on), then closes TCP within the close handshake
    timeout although this client never answers."""
    data, code = CASES[name]
    ws = RawWebSocket(server.port)
    ws.send(data)
    # (read_until_eof fails past the socket's timeout; how soon chloed gives
    # up on a silent client is pinned on a Clock in test_websocket_failures)
    frames, _ = ws.read_until_eof()
    assert [f.opcode for f in frames] == [OP_TEXT, OP_CLOSE], frames
    assert json.loads(frames[0].payload)["type"] == "connected"
    assert frames[1].close_code == code


@pytest.mark.parametrize("data, code", [
    (frame(OP_TEXT, b'"\xc3\x28"'), 1007),
    (frame(OP_TEXT, b"x" * 100, length=LIMIT + 1) + b"x" * (LIMIT - 99), 1009),
], ids=["text not UTF-8", "message too large"])  # fixed ids: the frames' masks are random
def test_a_client_answering_the_close_is_let_go_at_once(server, data, code):
    """After 1007 or 1009 (the framing still sound) a client that answers
    the close frame, as a browser does, gets the close code and then the
    end of the connection (that its answer ends it at once, not the
    timeout, is pinned on a Clock in test_websocket_failures)."""
    ws = RawWebSocket(server.port)
    ws.send(data)
    frames, _ = ws.read_until_eof(answer_close=True)
    assert frames[-1].opcode == OP_CLOSE and frames[-1].close_code == code


def test_a_message_between_the_limit_and_four_times_it_still_gets_too_large(server):
    """Under Autobahn's limit Chloe answers too_large and the connection
    stays, as before."""
    browser = Browser(server)
    try:
        answer = browser.ask(json.dumps({"type": "send", "data": "x" * 70000}))
        assert answer["code"] == "too_large"
        assert browser.ask({"type": "ping"}) == {"type": "pong"}
    finally:
        browser.close()


def test_fifty_failures_from_one_client_log_one_line_and_are_all_counted(chloed_factory):
    """50 broken WebSockets from one address add one log line, not 100;
    /metrics counts all 50; a well-behaved browser is served throughout."""
    server = chloed_factory()
    browser = Browser(server)
    try:
        assert browser.ask({"type": "ping"}) == {"type": "pong"}
        before = os.path.getsize(server.log_path)
        # All at once: a 1002 is ended by the close handshake timeout.
        broken = [RawWebSocket(server.port) for _ in range(50)]
        for n, ws in enumerate(broken):
            ws.send(frame(OP_TEXT, b'"\xc3\x28"') if n % 2 else frame(OP_TEXT, b"{}", rsv=2))
        assert browser.ask({"type": "ping"}) == {"type": "pong"}
        for n, ws in enumerate(broken):
            frames, _ = ws.read_until_eof(answer_close=True)
            assert frames[-1].close_code == (1007 if n % 2 else 1002)
        assert browser.ask({"type": "ping"}) == {"type": "pong"}
        counted = client_errors(server)
        assert counted["websocket_protocol_error"] == 25
        assert counted["websocket_invalid_payload"] == 25
        lines = log_since(server, before)
        assert len(lines) == 1, lines
        assert "[chloed.lograte#info] client 127.0.0.1: websocket_" in lines[0]
    finally:
        browser.close()


def test_upgrades_from_a_refused_origin_are_counted_and_logged_once(chloed_factory, tmp_path):
    """Refused upgrades (403, origin not allowed) are client errors too:
    each counted, one line for them all."""
    conf = tmp_path / "chloe.toml"
    conf.write_text('allowed_origins = ["https://app.example"]\n')
    server = chloed_factory(config=str(conf))
    before = os.path.getsize(server.log_path)
    for _ in range(10):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(upgrade_request(origin="https://evil.example"))
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 403")
    assert client_errors(server)["websocket_handshake"] == 10
    lines = log_since(server, before)
    assert len(lines) == 1 and "client 127.0.0.1: websocket_handshake: origin not allowed" in lines[0], lines
