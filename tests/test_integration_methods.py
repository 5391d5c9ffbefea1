"""Methods against a real chloed: ``HEAD`` of a streaming or polling
endpoint is a 405 that opens no session (a send is not counted as
delivered to it), and ``/`` and ``/chloe.js`` refuse other methods with
the same JSON 405 as every other route."""

from __future__ import annotations

import json
import socket

import pytest

from tests.servers import Chloed

HEADED = ["/sse?channel=news", "/poll?channel=news", "/jsonp?channel=news&callback=cb",
          "/jsonp/send?callback=cb&session=x&frames=%5B%5D", "/ws", "/session/x"]


def head_on_open_socket(chloed: Chloed, path: str) -> tuple[socket.socket, bytes]:
    """A HEAD whose connection is left open (as an SSE client's would be);
    the socket and the answer's head."""
    sock = socket.create_connection(("127.0.0.1", chloed.port), timeout=10)
    sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return sock, head


@pytest.mark.parametrize("path", HEADED)
def test_head_is_405_and_a_send_reaches_nobody(chloed, path):
    """HEAD answers 405 with Allow while its connection stays open; chloed
    counts no session, and a send to the channel is delivered to none."""
    sock, head = head_on_open_socket(chloed, path)
    try:
        assert head.startswith(b"HTTP/1.1 405 "), head
        assert b"\r\nAllow: " in head and b"\r\nContent-Type: application/json\r\n" in head
        status, _, body = chloed.request("GET", "/status")
        assert status == 200 and json.loads(body)["sessions"] == 0
        status, receipt = chloed.send(data="hi", channel="news")
        assert status == 202 and receipt["delivered"] == 0
    finally:
        sock.close()


@pytest.mark.parametrize("path", ["/", "/chloe.js"])
@pytest.mark.parametrize("method", ["PUT", "DELETE", "OPTIONS", "TRACE"])
def test_page_and_script_refuse_other_methods_with_json_405(chloed, path, method):
    """Not twisted.web's 501 page: the JSON 405 with Allow: GET, HEAD."""
    status, headers, body = chloed.request(method, path, auth=False)
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"
    assert json.loads(body)["error"] == "method_not_allowed"


@pytest.mark.parametrize("path", ["/", "/chloe.js"])
def test_page_and_script_still_answer_head(chloed, path):
    """HEAD stays allowed where there is no session to open."""
    status, _, body = chloed.request("HEAD", path, auth=False)
    assert (status, body) == (200, b"")
