"""Which methods each route of the one port takes, through StubTreq against
the real resource tree: ``HEAD`` of a streaming or polling endpoint is a
JSON 405 that opens no session; ``/`` and ``/chloe.js`` answer other
methods with the same JSON 405 as every other route, not twisted.web's 501."""

from __future__ import annotations

import json
from typing import Any

import pytest
from treq.testing import StubTreq

from tests.test_metrics import Server
from tests.test_ops import _result

BROWSER_ENDPOINTS = [
    ("/sse?channel=news", b"GET, OPTIONS"),
    ("/poll?channel=news", b"GET, OPTIONS"),
    ("/jsonp?channel=news&callback=cb", b"GET, OPTIONS"),
    ("/jsonp/send?callback=cb&session=x&frames=%5B%5D", b"GET"),
    ("/session/x", b"OPTIONS, POST"),
    ("/ws", b"GET"),
]


def call(server: Server, method: str, path: str) -> tuple[int, Any, bytes]:
    """One request to the server's Site; its status, headers and body."""
    client = StubTreq(server.service.site.resource)
    answer = client.request(method, "http://chloe.test" + path)
    client.flush()
    response = _result(answer)
    body = _result(client.content(response))
    return response.code, response.headers, body


@pytest.mark.parametrize("path,allow", BROWSER_ENDPOINTS)
def test_head_of_a_browser_endpoint_is_405_and_opens_no_session(path, allow):
    """HEAD /sse (or a poll, or the WebSocket) does not subscribe and hold a
    session that a send would count as delivered: it is a 405 naming the
    methods the endpoint takes, with no body, as HEAD requires."""
    server = Server()
    status, headers, body = call(server, "HEAD", path)
    assert status == 405
    assert headers.getRawHeaders(b"allow") == [allow]
    assert headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert body == b""
    assert server.hub.broker.sessions == {}
    assert server.metrics.status()["sessions"] == 0


def test_get_of_the_same_endpoints_still_opens_a_session():
    """The control: GET /poll opens the session HEAD did not."""
    server = Server()
    status, _, body = call(server, "GET", "/poll?channel=news")
    assert status == 200 and "session" in json.loads(body)
    assert len(server.hub.broker.sessions) == 1


@pytest.mark.parametrize("path", ["/", "/chloe.js"])
@pytest.mark.parametrize("method", ["PUT", "DELETE", "OPTIONS", "TRACE", "PATCH", "POST", "BREW"])
def test_other_methods_of_the_page_and_the_script_are_a_json_405(path, method):
    """The status page and chloe.js take GET and HEAD; any other method gets
    the JSON 405 with Allow that every other route gives, not a 501 page."""
    status, headers, body = call(Server(), method, path)
    assert status == 405
    assert headers.getRawHeaders(b"allow") == [b"GET, HEAD"]
    assert headers.getRawHeaders(b"content-type") == [b"application/json"]
    answer = json.loads(body)
    assert answer["error"] == "method_not_allowed" and method in answer["message"]


@pytest.mark.parametrize("path,content_type", [("/", b"text/html"), ("/chloe.js", b"application/javascript")])
def test_the_page_and_the_script_still_answer_get_and_head(path, content_type):
    """GET serves them; HEAD gives the same status and type with no body."""
    server = Server()
    status, headers, body = call(server, "GET", path)
    assert status == 200 and headers.getRawHeaders(b"content-type")[0].startswith(content_type) and body
    status, headers, body = call(server, "HEAD", path)
    assert status == 200 and headers.getRawHeaders(b"content-type")[0].startswith(content_type)
    assert body == b""
