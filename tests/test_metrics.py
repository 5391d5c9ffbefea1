"""Unit tests of chloed.metrics: what /status, /metrics and the status page
count, on a MemoryReactorClock with recording sinks and a fake app."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock

from chloed import __version__, tokens
from chloed.backends.memory import Broker
from chloed.config import Config
from chloed.lograte import KINDS
from chloed.metrics import STATUS_CHANNEL, Histogram, Metrics, process_stats
from chloed.relay import BACKOFF_CAP
from chloed.service import make_service
from tests.fakes import FakeApp, RecordingSink, RecordingSubscriber

SECRET = "the-shared-secret-of-at-least-32-bytes"
URL = "http://app.example/chloe"


class Server:
    """``make_service`` on a MemoryReactorClock, relaying to a FakeApp over StubTreq."""

    def __init__(self, *answers: Any, app: bool = True, default: int = 200, **options: Any) -> None:
        options.setdefault("secret", (SECRET,))
        options.setdefault("listen", ("tcp:0:interface=127.0.0.1",))
        if app:
            options.setdefault("application_server_url", URL)
        self.reactor = MemoryReactorClock()
        self.app = FakeApp(*answers, default=default)
        self.stub = StubTreq(self.app)
        self.service = make_service(Config(**options), self.reactor, http=self.stub)
        self.hub = self.service.hub
        self.metrics = self.service.metrics

    def connect(self, transport: str = "websocket") -> tuple[Any, RecordingSink]:
        sink = RecordingSink()
        return self.hub.open_session(transport, sink), sink

    def send(self, session: Any, frame: dict[str, Any]) -> None:
        self.hub.receive(session, json.dumps(frame))
        self.stub.flush()

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of ``/metrics``, by name and sorted labels."""
        text = self.metrics.exposition().decode("utf-8")
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


def test_histogram_counts_into_buckets():
    """Observations land in the first bucket whose bound holds them; the
    cumulative counts and quantile bounds are what Prometheus would say."""
    h = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 2.0):
        h.observe(value)
    assert h.cumulative() == [("0.1", 2.0), ("1.0", 3.0), ("+Inf", 4.0)]
    assert h.count == 4 and h.sum == pytest.approx(2.65)
    assert h.quantile(0.5) == 0.1
    assert h.quantile(0.75) == 1.0
    assert h.quantile(0.99) == 1.0  # beyond the last bound: the last bound
    assert Histogram((1.0,)).summary() == {"count": 0, "sum": 0.0, "p50": None, "p99": None}


def test_broker_counts_once_per_publish_and_times_the_fan_out():
    """published counts messages (one per channel), delivered counts the
    sessions reached, and the fan-out is timed once per publish."""
    broker = Broker(MemoryReactorClock(), 10, 60)
    timings: list[float] = []
    broker.observe_fanout = timings.append
    a, b, c = RecordingSubscriber("a"), RecordingSubscriber("b"), RecordingSubscriber("c")
    broker.add_session(a)
    broker.add_session(b)
    broker.add_session(c)
    broker.subscribe("one", a)
    broker.subscribe("one", b)
    broker.subscribe("two", c)
    broker.publish(["one", "two", "nobody"], b'"x"')
    assert (broker.published, broker.delivered, len(timings)) == (3, 3, 1)
    broker.broadcast(b'"y"', exclude="a")
    assert (broker.published, broker.delivered, len(timings)) == (4, 5, 2)
    broker.to_session("c", b'"z"')
    assert (broker.published, broker.delivered, len(timings)) == (5, 6, 3)
    assert broker.to_session("gone", b'"z"') is None
    assert (broker.published, len(timings)) == (5, 3)
    assert all(t >= 0 for t in timings)


def test_status_counts_what_the_server_holds():
    """/status counts connections per transport, sessions, channels,
    subscriptions and messages, after real frames and publishes."""
    server = Server()
    one, _ = server.connect("websocket")
    two, _ = server.connect("sse")
    server.connect("websocket")
    server.send(one, {"type": "subscribe", "channel": "news"})
    server.send(two, {"type": "subscribe", "channel": "news"})
    server.send(two, {"type": "subscribe", "channel": "sport"})
    server.send(one, {"type": "send", "data": "hi", "ref": "r1"})
    server.hub.broker.publish(["news"], b'"hello"')

    status = server.metrics.status()
    assert status["version"] == __version__
    assert status["connections"] == {"websocket": 2, "sse": 1, "longpoll": 0, "jsonp": 0}
    assert (status["sessions"], status["channels"], status["subscriptions"]) == (3, 2, 3)
    assert status["messages"] == {"published": 1, "delivered": 2, "from_browsers": 1, "frames_received": 4}
    assert status["fanout_seconds"]["count"] == 1
    assert status["backend"] == {"kind": "memory", "state": "up"}
    assert status["draining"] is False
    assert status["top_channels"]["top"] == [{"name": "news", "subscribers": 2}, {"name": "sport", "subscribers": 1}]
    assert status["relay"]["delivered"] == 1
    assert status["relay"]["latency_seconds"]["count"] == 1
    assert set(status["process"]) == {"rss_bytes", "open_fds"}


def test_uptime_follows_the_reactor_clock():
    """Uptime is the reactor's time since make_service, not the wall clock."""
    server = Server()
    server.reactor.advance(90.5)
    assert server.metrics.status()["uptime"] == 90.5
    assert server.samples()[("chloe_uptime_seconds", ())] == 90.5


def test_relay_outcomes_are_counted():
    """Retries, failures, rejections and queue depth of the relay reach
    /status and /metrics."""
    # a: 500 then 200 (a retry); b: 403 (rejected); c: 500 twice (failed).
    server = Server(500, 200, 403, default=500, upstream_retries=1, upstream_queue=5)
    session, sink = server.connect()
    for ref in ("a", "b", "c"):
        server.send(session, {"type": "send", "data": ref, "ref": ref})
        for _ in range(3):
            server.stub.flush()
            server.reactor.advance(BACKOFF_CAP)  # past any backoff
    assert server.hub.relay.queued == 0
    relay = server.metrics.status()["relay"]
    assert relay["delivered"] == 1 and relay["retries"] == 2 and relay["rejections"] == 1
    assert relay["failures"] == 1 and relay["queued"] == 0 and relay["queue_size"] == 5
    samples = server.samples()
    assert samples[("chloe_relay_retries_total", ())] == 2
    assert samples[("chloe_relay_rejections_total", ())] == 1
    assert samples[("chloe_relay_failures_total", ())] == 1
    assert samples[("chloe_relay_delivered_total", ())] == 1
    assert samples[("chloe_relay_latency_seconds_count", ())] == 1
    assert samples[("chloe_relay_queued", ())] == 0


def test_metrics_exposition_carries_every_counter():
    """/metrics, parsed back as Prometheus would, holds Chloe's counters,
    its histograms and the process collector's memory and descriptors."""
    server = Server()
    browser, _ = server.connect("websocket")
    server.send(browser, {"type": "subscribe", "channel": "news"})
    server.hub.broker.publish(["news", "other"], b"1")
    server.hub.slow_consumers += 1  # what the hub counts when it drops one
    server.hub.rate_limited += 2
    samples = server.samples()
    assert samples[("chloe_info", (("version", __version__),))] == 1
    assert samples[("chloe_connections", (("transport", "websocket"),))] == 1
    assert samples[("chloe_connections", (("transport", "jsonp"),))] == 0
    assert samples[("chloe_sessions", ())] == 1
    assert samples[("chloe_channels", ())] == 2
    assert samples[("chloe_subscriptions", ())] == 1
    assert samples[("chloe_messages_published_total", ())] == 2
    assert samples[("chloe_messages_delivered_total", ())] == 1
    assert samples[("chloe_browser_messages_total", ())] == 0
    assert samples[("chloe_frames_received_total", ())] == 1
    assert samples[("chloe_slow_consumers_total", ())] == 1
    assert samples[("chloe_rate_limited_total", ())] == 2
    assert samples[("chloe_fanout_seconds_count", ())] == 1
    assert samples[("chloe_fanout_seconds_bucket", (("le", "+Inf"),))] == 1
    assert samples[("chloe_backend_up", (("backend", "memory"), ("state", "up")))] == 1
    assert samples[("chloe_draining", ())] == 0
    assert samples[("process_resident_memory_bytes", ())] > 0
    assert samples[("process_open_fds", ())] > 0


def test_client_errors_are_reported_by_kind_from_zero():
    """What clients get wrong shows in /status as client_errors and in
    /metrics as chloe_client_errors_total{kind}, every kind there from the
    start (so a rate() has a first sample)."""
    server = Server(app=False)
    assert server.metrics.status()["client_errors"] == {kind: 0 for kind in KINDS}
    assert server.samples()[("chloe_client_errors_total", (("kind", "websocket_too_large"),))] == 0
    errors = server.metrics.client_errors
    for _ in range(3):
        errors.report("192.0.2.7", "websocket_too_large", "received WebSocket message size 300000 exceeds...")
    errors.report("192.0.2.8", "websocket_protocol_error", "data frame using reserved opcode 3")
    status = server.metrics.status()["client_errors"]
    assert status["websocket_too_large"] == 3 and status["websocket_protocol_error"] == 1
    assert server.metrics.status(public=True)["client_errors"] == status
    samples = server.samples()
    assert samples[("chloe_client_errors_total", (("kind", "websocket_too_large"),))] == 3
    assert samples[("chloe_client_errors_total", (("kind", "websocket_protocol_error"),))] == 1
    assert samples[("chloe_client_errors_total", (("kind", "websocket_handshake"),))] == 0


def test_no_relay_metrics_without_an_application():
    """Without application_server_url, /status says relay null and /metrics
    has no relay series."""
    server = Server(app=False)
    assert server.metrics.status()["relay"] is None
    assert not [name for name, _ in server.samples() if name.startswith("chloe_relay")]


def test_backend_state_is_reported():
    """A backend that says it is down shows in /status and as chloe_backend_up 0."""
    server = Server()
    server.hub.broker.backend_state = "down"
    assert server.metrics.status()["backend"] == {"kind": "memory", "state": "down"}
    assert server.samples()[("chloe_backend_up", (("backend", "memory"), ("state", "down")))] == 0


def test_public_status_names_only_public_channels():
    """The public snapshot counts private- and presence- channels without
    naming them, and says nothing of the process."""
    server = Server()
    for name in ("lobby", "private-payroll", "presence-room-7"):
        server.hub.broker.subscribe(name, RecordingSubscriber(name))
    public = server.metrics.status(public=True)
    assert public["top_channels"] == {
        "top": [{"name": "lobby", "subscribers": 1}],
        "hidden": {"channels": 2, "subscribers": 2},
    }
    assert "process" not in public
    assert "payroll" not in json.dumps(public)
    assert len(server.metrics.status()["top_channels"]["top"]) == 3


def test_status_feed_publishes_only_while_someone_listens():
    """Once a second the server publishes the public snapshot to
    chloe.status, only while it has subscribers; it is kept in no history
    and counted as no message."""
    server = Server()
    server.service.startService()
    try:
        server.reactor.advance(3)
        assert STATUS_CHANNEL not in server.hub.broker.channels
        watcher, sink = server.connect()
        # The token the status page hands its browser (tests/test_ops.py).
        token = tokens.feed_token(STATUS_CHANNEL, server.hub.config.secret)
        server.send(watcher, {"type": "subscribe", "channel": STATUS_CHANNEL, "token": token})
        del sink.frames[:]
        server.reactor.advance(1)
        server.reactor.advance(1)
        snapshots = sink.of_type("message")
        assert len(snapshots) == 2
        assert snapshots[0]["channel"] == STATUS_CHANNEL and snapshots[0]["id"] is None
        assert snapshots[1]["data"]["uptime"] - snapshots[0]["data"]["uptime"] == 1
        assert "process" not in snapshots[0]["data"]
        channel = server.hub.broker.channels[STATUS_CHANNEL]
        assert not channel.history and channel.last_id is None
        assert server.hub.broker.published == 0
        server.send(watcher, {"type": "unsubscribe", "channel": STATUS_CHANNEL})
        del sink.frames[:]
        server.reactor.advance(5)
        assert sink.of_type("message") == []
    finally:
        server.service.stopService()


def test_process_stats_read_proc(tmp_path):
    """RSS is the resident pages of statm times the page size; descriptors
    are the entries of fd; without such files there is nothing to say."""
    import os

    (tmp_path / "statm").write_text("5000 1200 300 10 0 900 0\n")
    (tmp_path / "fd").mkdir()
    for n in range(3):
        (tmp_path / "fd" / str(n)).write_text("")
    assert process_stats(str(tmp_path)) == {"rss_bytes": 1200 * os.sysconf("SC_PAGE_SIZE"), "open_fds": 3}
    assert process_stats(str(tmp_path / "missing")) is None


def test_metrics_of_two_servers_never_mix():
    """Each server has a registry of its own: two in one process (tests,
    embedding) report their own numbers."""
    first, second = Server(), Server()
    first.hub.broker.publish(["a"], b"1")
    assert first.samples()[("chloe_messages_published_total", ())] == 1
    assert second.samples()[("chloe_messages_published_total", ())] == 0
    assert Metrics(MemoryReactorClock()).registry is not first.metrics.registry
