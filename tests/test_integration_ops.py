"""/status and /metrics of a real chloed after real traffic: WebSocket
browsers, /send calls, a browser send relayed to a real app server."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from chloed import __version__, tokens
from tests.test_integration import browsers  # noqa: F401  (the fixture)


def status(chloed) -> dict:
    code, headers, body = chloed.request("GET", "/status")
    assert code == 200 and headers["Content-Type"] == "application/json"
    return json.loads(body)


def metrics(chloed) -> dict:
    code, headers, body = chloed.request("GET", "/metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain; version=")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode("utf-8"))
        for s in family.samples
    }


def test_status_and_metrics_count_real_traffic(chloed, app_server, browsers):
    """Two browsers on a channel, three publishes, one browser send that the
    app accepts: /status and /metrics say so, and agree."""
    a, b = browsers(chloed), browsers(chloed)
    a.subscribe("news")
    b.subscribe("news")
    for n in range(3):
        assert chloed.send(channel="news", data=n)[0] == 202
        assert a.recv()["data"] == n and b.recv()["data"] == n
    a.send({"type": "send", "data": "hi", "ref": "r1"})
    assert a.recv() == {"type": "ack", "ref": "r1"}
    assert app_server.next().event["data"] == "hi"

    s = status(chloed)
    assert s["version"] == __version__ and s["uptime"] > 0
    assert s["connections"]["websocket"] == 2
    assert (s["sessions"], s["channels"], s["subscriptions"]) == (2, 1, 2)
    assert s["messages"]["published"] == 3
    assert s["messages"]["delivered"] == 6
    assert s["messages"]["from_browsers"] == 1
    assert s["fanout_seconds"]["count"] == 3
    assert s["relay"]["delivered"] == 1 and s["relay"]["queued"] == 0
    assert s["relay"]["latency_seconds"]["count"] == 1
    assert s["backend"] == {"kind": "memory", "state": "up"}
    assert s["process"]["rss_bytes"] > 1_000_000 and s["process"]["open_fds"] > 5

    m = metrics(chloed)
    assert m[("chloe_connections", (("transport", "websocket"),))] == 2
    assert m[("chloe_messages_published_total", ())] == 3
    assert m[("chloe_messages_delivered_total", ())] == 6
    assert m[("chloe_browser_messages_total", ())] == 1
    assert m[("chloe_fanout_seconds_count", ())] == 3
    assert m[("chloe_relay_delivered_total", ())] == 1
    assert m[("chloe_relay_latency_seconds_count", ())] == 1
    assert m[("chloe_backend_up", (("backend", "memory"), ("state", "up")))] == 1
    assert m[("process_resident_memory_bytes", ())] > 1_000_000
    assert m[("process_open_fds", ())] > 5


def test_status_and_metrics_from_loopback_need_no_secret(chloed):
    """From this machine /status and /metrics answer without the secret (a
    local Prometheus needs no copy of it), while /channels wants it;
    /openapi.json and / are public."""
    for path in ("/status", "/metrics"):
        assert chloed.request("GET", path, auth=False)[0] == 200
    assert chloed.request("GET", "/channels", auth=False)[0] == 401
    assert chloed.request("GET", "/openapi.json", auth=False)[0] == 200
    assert chloed.request("GET", "/", auth=False)[0] == 200


def test_status_page_feed_over_a_real_websocket(chloed, browsers):
    """A browser subscribed to chloe.status gets the public snapshot about
    once a second, with the server's counters in it."""
    watcher = browsers(chloed)
    # The token the status page hands its browser.
    watcher.subscribe("chloe.status", token=tokens.feed_token("chloe.status", (chloed.secret,)))
    assert chloed.send(channel="news", data="x")[0] == 202
    first = watcher.recv()
    second = watcher.recv()
    assert first["type"] == second["type"] == "message"
    assert first["channel"] == "chloe.status" and first["id"] is None
    assert second["data"]["time"] > first["data"]["time"]
    assert second["data"]["messages"]["published"] == 1
    assert "process" not in second["data"]
