"""A real chloed on a real ``redis-server`` through a proxy that makes its
pub/sub connection half-dead (:mod:`tests.tcp_proxy`): the node notices by
its probes, says so on ``/health``, heals by itself, and its browsers lose
nothing (issue 20, liveness)."""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.redis_server import RedisServer, redis_server  # noqa: F401 (fixture)
from tests.servers import Chloed
from tests.tcp_proxy import TcpProxy
from tests.test_multinode import Browser, health, wait_until


@pytest.fixture
def proxied(redis_server: RedisServer, tmp_path: Any) -> Iterator[tuple[Chloed, TcpProxy]]:  # noqa: F811
    """A chloed whose backend is the test's Redis through a proxy."""
    proxy = TcpProxy(redis_server.port).start()
    conf = tmp_path / "chloe.toml"
    conf.write_text(f'backend = "redis://127.0.0.1:{proxy.port}/0"\nhistory_size = 1000\n')
    node = Chloed(config=str(conf))
    try:
        yield node, proxy
    finally:
        node.stop()
        proxy.stop()


def metric(node: Chloed, name: str) -> float | None:
    """One sample of ``/metrics`` (None when absent)."""
    status, _, body = node.request("GET", "/metrics")
    assert status == 200
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return None


def backend_status(node: Chloed) -> dict[str, Any]:
    status, _, body = node.request("GET", "/status")
    assert status == 200
    backend: dict[str, Any] = json.loads(body)["backend"]
    return backend


def test_a_half_dead_pubsub_connection_is_healed_and_nothing_is_lost(proxied):
    """Redis's bytes stop reaching the node on its pub/sub connection while
    the socket stays open. ``/send`` still answers 202 (commands go through);
    the node misses a probe and ``/health`` answers 503 degraded; it tears
    that connection down, subscribes again, and is healthy again by itself.
    The browser gets the message published while it was half-dead once, in
    order with those after."""
    node, proxy = proxied
    browser = Browser(node)
    try:
        browser.subscribe("live")
        status, answer = node.send(data=1, channel="live")
        assert status == 202, answer
        assert browser.message()["data"] == 1
        wait_until(lambda: (metric(node, "chloe_redis_probes_total") or 0) >= 1
                   and metric(node, "chloe_redis_probe_seconds") is not None)
        assert metric(node, "chloe_redis_probe_failures_total") == 0

        assert proxy.freeze_pubsub() == 1
        status, answer = node.send(data=2, channel="live")
        assert status == 202, answer
        during = answer["ids"]["live"]

        def degraded() -> bool:
            code, body = health(node)
            return code == 503 and body["status"] == "degraded"

        wait_until(degraded)
        assert (metric(node, "chloe_redis_probe_failures_total") or 0) >= 1
        wait_until(lambda: (metric(node, "chloe_redis_heals_total") or 0) >= 1 and health(node)[0] == 200)
        assert len(proxy.pubsub_connections(open_only=False)) >= 2  # a new one replaced the frozen one
        backend = backend_status(node)
        assert backend["kind"] == "redis" and backend["state"] == "up"
        assert backend["probe_failures"] >= 1 and backend["heals"] >= 1 and backend["probes"] >= 2
        assert isinstance(backend["probe_seconds"], float)

        status, answer = node.send(data=3, channel="live")
        assert status == 202, answer
        after = answer["ids"]["live"]
        got = [browser.message() for _ in range(2)]
        assert [(m["data"], m["id"]) for m in got] == [(2, during), (3, after)]
        browser.send({"type": "ping"})
        assert browser.recv() == {"type": "pong"}  # and nothing repeated before it
    finally:
        browser.close()
