"""The operator's endpoints over HTTP, in memory: /status, /metrics,
/openapi.json and the status page, through StubTreq against the real
resource tree."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.web.test.requesthelper import DummyRequest

from chloed import __version__
from chloed.errors import RequestError
from chloed.ops import Ops, openapi_document
from tests.fakes import RecordingSubscriber
from tests.test_metrics import SECRET, Server

BEARER = {"Authorization": "Bearer " + SECRET}


def get(server: Server, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    """GET ``path`` of the server's Site from 127.0.0.1 (StubTreq's address)."""
    client = StubTreq(server.service.site.resource)
    answer = client.get("http://chloe.test" + path, headers=headers or {})
    client.flush()
    response = _result(answer)
    body = _result(client.content(response))
    return response.code, response.headers, body


def _result(d: Any) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "no answer"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def remote(path: str, authorization: bytes | None = None) -> DummyRequest:
    request = DummyRequest([path.strip("/").encode()])
    request.client = IPv4Address("TCP", "10.0.0.7", 5000)
    if authorization is not None:
        request.requestHeaders.setRawHeaders(b"authorization", [authorization])
    return request


@pytest.mark.parametrize("path", ["/status", "/metrics"])
def test_remote_clients_need_the_secret(path):
    """With a secret configured, a client on another machine gets /status
    and /metrics with the bearer secret only: 401 otherwise, like /channels."""
    server = Server()
    ops = Ops(server.hub, server.metrics)
    ops._authorize(remote(path, b"Bearer " + SECRET.encode()))
    for header in (None, b"Bearer nope"):
        request = remote(path, header)
        with pytest.raises(RequestError) as raised:
            ops._authorize(request)
        assert raised.value.status == 401
        assert request.responseHeaders.getRawHeaders(b"www-authenticate") == [b'Bearer realm="chloe"']


@pytest.mark.parametrize("secret", [(SECRET,), ()])
@pytest.mark.parametrize("path", ["/status", "/metrics"])
def test_loopback_clients_need_no_secret(path, secret):
    """A client on this machine (a local Prometheus) reads /status and
    /metrics without the secret, configured or not (SPEC section 6)."""
    server = Server(secret=secret)
    assert get(server, path)[0] == 200


@pytest.mark.parametrize("path", ["/status", "/metrics"])
def test_no_secret_means_loopback_only(path):
    """With no secret, clients on other machines get 403."""
    server = Server(secret=())
    with pytest.raises(RequestError) as raised:
        Ops(server.hub, server.metrics)._authorize(remote(path))
    assert raised.value.status == 403


def test_status_is_json():
    """GET /status with the secret is the JSON snapshot, never cached."""
    server = Server()
    server.hub.broker.publish(["news"], b"1")
    code, headers, body = get(server, "/status", BEARER)
    assert code == 200
    assert headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert headers.getRawHeaders(b"cache-control") == [b"no-store"]
    status = json.loads(body)
    assert status["version"] == __version__
    assert status["messages"]["published"] == 1
    assert status["top_channels"]["top"] == [{"name": "news", "subscribers": 0}]


def test_metrics_is_prometheus_text():
    """GET /metrics is the text exposition format, parseable by Prometheus."""
    server = Server()
    server.hub.broker.publish(["news"], b"1")
    code, headers, body = get(server, "/metrics", BEARER)
    assert code == 200
    assert headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["chloe_messages_published"].samples[0].value == 1
    assert families["chloe_fanout_seconds"].type == "histogram"


def test_openapi_document_is_served():
    """GET /openapi.json needs no secret and is the packaged OpenAPI 3.1
    document, naming every endpoint of the app's API and the relay webhook."""
    server = Server()
    code, headers, body = get(server, "/openapi.json")
    assert code == 200 and body == openapi_document()
    assert headers.getRawHeaders(b"content-type") == [b"application/json"]
    doc = json.loads(body)
    assert doc["openapi"].startswith("3.1")
    assert doc["info"]["version"] == __version__
    assert set(doc["paths"]) == {
        "/send", "/channels", "/channels/{name}", "/health", "/status", "/metrics", "/openapi.json",
        "/sessions", "/channels/{name}/presence", "/relay/dead", "/relay/dead/replay", "/relay/dead/{id}",
        "/channels/{name}/history", "/users/{id}", "/disconnect", "/subscribe", "/unsubscribe", "/revoke",
    }
    assert set(doc["paths"]["/send"]["post"]["responses"]) == {"202", "400", "401", "403", "404", "413", "503"}
    assert set(doc["paths"]["/send"]["post"]["requestBody"]["content"]) == {
        "application/json", "application/x-www-form-urlencoded",
    }
    assert "relay" in doc["webhooks"]


def test_unknown_paths_under_ops_are_404_and_other_paths_still_reach_the_api():
    """/status/anything is 404; /health, the app's API, still answers."""
    server = Server()
    assert get(server, "/status/more", BEARER)[0] == 404
    code, _, body = get(server, "/health")
    assert code == 200 and json.loads(body)["status"] == "ok"


def test_status_page_shows_counters_and_hides_private_channel_names():
    """GET / is public: it says Chloe is up with its version and counters,
    embeds the public snapshot for its script, names public channels only,
    and loads nothing but /chloe.js."""
    server = Server()
    for name in ("lobby", "private-payroll", "presence-room-7"):
        server.hub.broker.subscribe(name, RecordingSubscriber(name))
    server.connect()
    code, headers, body = get(server, "/")
    assert code == 200
    assert headers.getRawHeaders(b"content-type") == [b"text/html; charset=utf-8"]
    page = body.decode("utf-8")
    assert "Chloe is up" in page and __version__ in page
    assert '<div class="num" id="sessions">1</div>' in page
    assert '<div class="num" id="channels">3</div>' in page
    snapshot = json.loads(re.search(r'<script type="application/json" id="snapshot">(.*?)</script>', page).group(1))
    assert snapshot["top_channels"]["top"] == [{"name": "lobby", "subscribers": 1}]
    assert snapshot["top_channels"]["hidden"] == {"channels": 2, "subscribers": 2}
    assert "payroll" not in page and "room-7" not in page
    assert re.findall(r'<script src="([^"]+)"', page) == ["chloe.js"]
    assert not re.search(r'(href|src)="(https?:)?//', page)
    assert "chloe.status" in page
