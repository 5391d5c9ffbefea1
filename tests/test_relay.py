"""Unit tests of chloed.relay: the relay to the app, over StubTreq and a Clock."""

from __future__ import annotations

import hashlib
import hmac
import json
from email.utils import formatdate

import pytest
import treq
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from chloed import relay
from chloed.errors import RelayRejected, RelayUnavailable
from chloed.relay import Relay
from tests.fakes import HOLD, FakeApp

URL = "http://app.example/chloe"
SECRET = "app-and-chloe-share-this-secret"


class Harness:
    """A Relay to a FakeApp over StubTreq, driven by a Clock.

    Backoff jitter is fixed at 0, so a retry after attempt ``n`` waits
    exactly ``0.25 * 2**n`` seconds.
    """

    def __init__(
        self, *answers, default=200, retries=5, queue=100, timeout=10.0, secrets=(SECRET,), start=0.0,
        rng=lambda: 0.0, http=None, observe=None,
    ):
        self.app = FakeApp(*answers)
        self.app.default = default
        self.clock = Clock()
        self.clock.advance(start)
        self.stub = StubTreq(self.app)
        self.http = http(self.stub) if http is not None else self.stub
        self.relay = Relay(self.http, URL, secrets, self.clock, timeout, retries, queue, rng=rng, observe=observe)

    def submit(self, body=b'{"n":1}', lane="lane", delivery=None) -> list:
        """Submit; the returned list receives the result (None or a Failure)."""
        results: list = []
        self.relay.submit(lane, body, delivery).addBoth(results.append)
        self.stub.flush()
        return results

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.stub.flush()


def failed_with(results: list, kind: type) -> Exception:
    assert len(results) == 1, results
    assert isinstance(results[0], Failure), results
    assert results[0].check(kind), results[0]
    return results[0].value


# -- signing and headers ---------------------------------------------------


def test_sign_is_hmac_sha256_of_timestamp_dot_body():
    """The signature is sha256= and the hex HMAC-SHA256 of "timestamp.body" under the secret."""
    expected = hmac.new(b"k", b"1732320000.{\"a\":1}", hashlib.sha256).hexdigest()
    assert relay.sign("k", 1732320000, b'{"a":1}') == "sha256=" + expected


def test_post_is_signed_json():
    """The app gets a JSON POST whose signature header matches sign() over its timestamp and body."""
    h = Harness(start=1732320000.7)
    h.submit(b'{"type":"message","data":1}')
    [request] = h.app.requests
    assert request.request.method == b"POST"
    assert request.request.uri == b"/chloe"
    assert request.body == b'{"type":"message","data":1}'
    assert request.header(b"content-type") == b"application/json"
    assert request.header(b"x-chloe-timestamp") == b"1732320000"
    assert request.header(b"x-chloe-signature").decode() == relay.sign(SECRET, 1732320000, request.body)


def test_first_secret_signs():
    """With several secrets, the first one signs."""
    h = Harness(secrets=("new", "old"))
    h.submit()
    [request] = h.app.requests
    assert request.header(b"x-chloe-signature").decode() == relay.sign("new", 0, request.body)


def test_no_secret_no_signature():
    """Without a secret the POST is sent unsigned."""
    h = Harness(secrets=())
    h.submit()
    assert h.app.requests[0].header(b"x-chloe-signature") is None


def test_delivery_header_given():
    """The delivery id the caller gives is the X-Chloe-Delivery header."""
    h = Harness()
    h.submit(delivery="d-123")
    assert h.app.requests[0].header(b"x-chloe-delivery") == b"d-123"


def test_delivery_header_random_when_not_given():
    """Without a delivery id each message gets its own random one."""
    h = Harness()
    h.submit()
    h.submit()
    ids = [r.header(b"x-chloe-delivery") for r in h.app.requests]
    assert len(set(ids)) == 2 and all(len(i) >= 32 for i in ids)


def test_delivery_constant_across_retries_and_resigned():
    """Every retry of a message carries the same X-Chloe-Delivery, with a fresh timestamp and signature."""
    h = Harness(503, 500, 200)
    results = h.submit()
    h.advance(0.25)
    h.advance(0.5)
    assert results == [None]
    assert len(h.app.requests) == 3
    assert len({r.header(b"x-chloe-delivery") for r in h.app.requests}) == 1
    assert [r.header(b"x-chloe-timestamp") for r in h.app.requests] == [b"0", b"0", b"0"]
    for r in h.app.requests:
        ts = int(r.header(b"x-chloe-timestamp"))
        assert r.header(b"x-chloe-signature").decode() == relay.sign(SECRET, ts, r.body)


def test_retry_timestamp_is_the_retry_time():
    """A retry is stamped with the time it is sent, not the time of the first attempt."""
    h = Harness((503, {b"Retry-After": b"5"}), 200, start=100)
    h.submit()
    h.advance(5)
    assert [r.header(b"x-chloe-timestamp") for r in h.app.requests] == [b"100", b"105"]


def test_delivery_id_derived_from_long_ref():
    """A long string ref (as chloe.js makes) gives the same delivery id every time it is sent."""
    ref = "x" * 22
    assert relay.delivery_id(ref) == relay.delivery_id(ref)
    assert relay.delivery_id(ref) != relay.delivery_id("y" * 22)
    assert len(relay.delivery_id(ref)) == 32


@pytest.mark.parametrize("ref", [None, 1, "short", "x" * 21])
def test_delivery_id_random_for_short_refs(ref):
    """Short or missing refs, not unique across browsers, get a random delivery id."""
    assert relay.delivery_id(ref) != relay.delivery_id(ref)


def test_event_body():
    """A relayed event is the SPEC's JSON object with data spliced in unparsed."""
    body = relay.event_body("message", "S", "room", b'{"x":[1]}', "r1", {"id": 7})
    assert json.loads(body) == {
        "type": "message", "session": "S", "channel": "room", "ref": "r1", "user": {"id": 7}, "data": {"x": [1]},
    }
    assert json.loads(relay.event_body("connect", "S")) == {
        "type": "connect", "session": "S", "channel": None, "ref": None, "user": None,
    }


# -- outcomes --------------------------------------------------------------


@pytest.mark.parametrize("code", [200, 201, 202, 204, 299])
def test_2xx_delivers(code):
    """A 2xx answer delivers the message: the result fires."""
    h = Harness(code)
    assert h.submit() == [None]
    assert h.relay.stats.delivered == 1
    assert h.relay.queued == 0


@pytest.mark.parametrize("code", [400, 401, 403, 404, 410, 413, 422, 499])
def test_4xx_rejected_without_retry(code):
    """A 4xx other than 408 and 429 is refused at once and never retried."""
    h = Harness(code)
    results = h.submit()
    assert failed_with(results, RelayRejected).status == code
    h.advance(120)
    assert len(h.app.requests) == 1
    assert h.relay.stats.rejections == 1
    assert h.relay.stats.retries == 0


@pytest.mark.parametrize("code", [500, 502, 503, 504, 408, 429])
def test_transient_answers_retried_with_backoff(code):
    """5xx, 408 and 429 are retried after a growing backoff, and the message then gets through."""
    h = Harness(code, code, code, 200)
    results = h.submit()
    assert results == [] and len(h.app.requests) == 1
    for wait in (0.25, 0.5, 1.0):
        h.advance(wait - 0.01)
        assert results == []
        count = len(h.app.requests)
        h.advance(0.01)
        assert len(h.app.requests) == count + 1
    assert results == [None]
    assert h.relay.stats.retries == 3


def test_backoff_jitter_and_cap():
    """The backoff is between half and all of 0.5 * 2**attempt seconds, never above 30 s."""
    low = Relay(None, URL, (), Clock(), 1, 1, 1, rng=lambda: 0.0)
    high = Relay(None, URL, (), Clock(), 1, 1, 1, rng=lambda: 0.999999)
    assert [low._backoff(n, None) for n in range(8)] == [0.25, 0.5, 1, 2, 4, 8, 15, 15]
    assert [round(high._backoff(n, None), 3) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


def test_connection_error_retried():
    """A connection error counts as transient and is retried."""

    class Flaky:
        def __init__(self, inner):
            self.inner = inner
            self.calls = 0

        def post(self, *args, **kwargs):
            self.calls += 1
            if self.calls == 1:
                return defer.fail(ConnectionRefusedError("app down"))
            return self.inner.post(*args, **kwargs)

    h = Harness(http=Flaky)
    results = h.submit()
    assert results == [] and h.app.requests == []
    h.advance(0.25)
    assert results == [None]
    assert h.http.calls == 2 and len(h.app.requests) == 1


def test_retry_after_seconds_honoured():
    """Retry-After in seconds delays the retry that long, however short the backoff."""
    h = Harness((503, {b"Retry-After": b"7"}), 200)
    results = h.submit()
    h.advance(6.99)
    assert len(h.app.requests) == 1
    h.advance(0.01)
    assert len(h.app.requests) == 2
    assert results == [None]


def test_retry_after_http_date_honoured():
    """Retry-After as an HTTP date delays the retry until that time."""
    now = 1732320000.0
    h = Harness((429, {b"Retry-After": formatdate(now + 12, usegmt=True).encode()}), 200, start=now)
    h.submit()
    h.advance(11.9)
    assert len(h.app.requests) == 1
    h.advance(0.1)
    assert len(h.app.requests) == 2


def test_retry_after_capped():
    """A Retry-After longer than a minute waits a minute."""
    h = Harness((503, {b"Retry-After": b"3600"}), 200)
    results = h.submit()
    h.advance(59.9)
    assert len(h.app.requests) == 1
    h.advance(0.1)
    assert results == [None]


def test_retry_after_shorter_than_backoff_keeps_backoff():
    """A Retry-After shorter than the backoff does not shorten it."""
    h = Harness((503, {b"Retry-After": b"0"}), 200)
    h.submit()
    h.advance(0.24)
    assert len(h.app.requests) == 1
    h.advance(0.01)
    assert len(h.app.requests) == 2


def test_garbage_retry_after_ignored():
    """A Retry-After that is neither seconds nor a date is ignored: the usual backoff applies."""
    h = Harness((503, {b"Retry-After": b"soon"}), 200)
    results = h.submit()
    h.advance(0.25)
    assert results == [None]


def test_retry_after_with_superscript_digit_ignored():
    """A Retry-After of a superscript digit is garbage: ignored, and the message retried."""
    h = Harness((503, {b"Retry-After": b"\xb2"}), 200)
    results = h.submit()
    h.advance(0.25)
    assert results == [None]


def test_gives_up_after_retries():
    """After upstream_retries retries the message fails with RelayUnavailable."""
    h = Harness(default=503, retries=2)
    results = h.submit()
    h.advance(0.25)
    assert results == []
    h.advance(0.5)
    assert "503" in str(failed_with(results, RelayUnavailable))
    assert len(h.app.requests) == 3
    h.advance(100)
    assert len(h.app.requests) == 3
    assert (h.relay.stats.retries, h.relay.stats.failures) == (2, 1)
    assert h.relay.queued == 0


def test_no_retries_fails_at_once():
    """With upstream_retries 0 a transient failure is final."""
    h = Harness(500, retries=0)
    failed_with(h.submit(), RelayUnavailable)
    assert len(h.app.requests) == 1


def test_timeout_is_transient():
    """An app that never answers within upstream_timeout is retried like a 5xx."""
    h = Harness(HOLD, 200, timeout=10)
    results = h.submit()
    h.advance(9.9)
    assert results == [] and len(h.app.requests) == 1
    h.advance(0.1)
    assert results == [] and h.relay.in_flight == 0
    h.advance(0.25)
    assert len(h.app.requests) == 2
    assert results == [None]


def test_timeouts_until_giving_up():
    """An app that never answers makes the message fail after the retries."""
    h = Harness(default=HOLD, retries=1, timeout=2)
    results = h.submit()
    h.advance(2)
    h.advance(0.25)
    assert results == [] and len(h.app.requests) == 2
    h.advance(2)
    failed_with(results, RelayUnavailable)
    assert h.relay.stats.failures == 1


def test_timeout_reason_names_the_timeout():
    """A message given up after timeouts says the app did not answer in time."""
    h = Harness(default=HOLD, retries=0, timeout=2)
    results = h.submit()
    h.advance(2)
    assert "no answer within 2" in str(failed_with(results, RelayUnavailable))


# -- queue and order -------------------------------------------------------


def test_queue_full_fails_at_once():
    """When upstream_queue messages are waiting or in flight, a new one fails at once."""
    h = Harness(HOLD, HOLD, queue=2)
    first, second = h.submit(lane="a"), h.submit(lane="b")
    third = h.submit(lane="c")
    assert first == second == []
    failed_with(third, RelayUnavailable)
    assert len(h.app.requests) == 2
    assert (h.relay.stats.overflows, h.relay.stats.failures) == (1, 1)
    assert h.relay.queued == 2


def test_queue_has_room_again_after_delivery():
    """Once a message is delivered its place in the queue is free again."""
    h = Harness(queue=1)
    assert h.submit() == [None]
    assert h.submit() == [None]


def test_lane_order_kept_while_first_retries():
    """A lane's second message waits while its first is being retried, then follows it."""
    h = Harness(503, 503)
    first = h.submit(b'"1"', lane="alice")
    second = h.submit(b'"2"', lane="alice")
    assert h.app.bodies == [b'"1"']
    h.advance(0.25)
    assert h.app.bodies == [b'"1"', b'"1"']
    assert first == second == []
    h.advance(0.5)
    assert h.app.bodies == [b'"1"', b'"1"', b'"1"', b'"2"']
    assert first == second == [None]


def test_lane_order_kept_after_first_gives_up():
    """A lane's next message is sent after the one before it fails for good."""
    h = Harness(503, 200, retries=0)
    first = h.submit(b'"1"', lane="a")
    assert failed_with(first, RelayUnavailable)
    assert h.submit(b'"2"', lane="a") == [None]
    assert h.app.bodies == [b'"1"', b'"2"']


def test_many_messages_of_one_lane_in_order():
    """Messages of one lane reach the app one at a time in the order sent."""
    h = Harness(HOLD, HOLD)
    results = [h.submit(json.dumps(i).encode(), lane="a") for i in range(5)]
    assert h.app.bodies == [b"0"]
    for i in range(2):
        held = h.app.requests[i].request
        held.setResponseCode(200)
        held.finish()
        h.stub.flush()
    assert h.app.bodies == [b"0", b"1", b"2", b"3", b"4"]
    assert all(r == [None] for r in results)


def test_other_lanes_not_held_up():
    """A lane whose message is retrying does not delay other lanes."""
    h = Harness(503)
    stuck = h.submit(b'"a"', lane="alice")
    other = h.submit(b'"b"', lane="bob")
    assert other == [None] and stuck == []
    assert h.app.bodies == [b'"a"', b'"b"']


def test_lanes_in_flight_are_bounded():
    """At most 64 lanes are in flight; the next waits for one to finish."""
    limit = relay.MAX_LANES_IN_FLIGHT
    h = Harness(*[HOLD] * limit, queue=1000)
    for i in range(limit + 1):
        h.submit(json.dumps(i).encode(), lane=f"l{i}")
    assert len(h.app.requests) == limit
    assert h.relay.running == limit
    held = h.app.requests[0].request
    held.setResponseCode(200)
    held.finish()
    h.stub.flush()
    assert h.app.bodies[-1] == str(limit).encode()


def test_when_idle_fires_after_queue_drains():
    """when_idle fires once every queued message is delivered or failed, not before."""
    h = Harness(503, 400)
    h.submit(lane="a")
    h.submit(lane="a")
    idle: list = []
    h.relay.when_idle().addCallback(idle.append)
    assert idle == []
    h.advance(0.25)
    assert idle == [None]
    assert h.relay.queued == 0


def test_when_idle_waits_for_every_lane():
    """when_idle waits for the slowest lane."""
    h = Harness(200, 503)
    h.submit(lane="a")
    h.submit(lane="b")
    idle: list = []
    h.relay.when_idle().addCallback(idle.append)
    assert idle == []
    h.advance(0.25)
    assert idle == [None]


def test_when_idle_at_once_when_nothing_queued():
    """when_idle fires at once when nothing is queued."""
    h = Harness()
    idle: list = []
    h.relay.when_idle().addCallback(idle.append)
    assert idle == [None]


def test_observe_gets_latency():
    """The observer hears how long each delivered POST took."""
    seen: list = []
    h = Harness(HOLD, observe=seen.append)
    h.submit()
    h.advance(1.5)
    held = h.app.requests[0].request
    held.setResponseCode(200)
    held.finish()
    h.stub.flush()
    assert seen == [1.5]
    assert list(h.relay.stats.latency) == [1.5]


# -- the HTTP client ------------------------------------------------------------


class Wire:
    """An AppClient on a memory reactor, each connection it opens joined
    to a twisted.web server for ``app`` by iosim."""

    def __init__(self, app):
        from twisted.internet.testing import MemoryReactorClock
        from twisted.web.client import HTTPConnectionPool

        self.reactor = MemoryReactorClock()
        self.pool = HTTPConnectionPool(self.reactor, persistent=True)
        self.client = relay.AppClient(self.reactor, self.pool)
        self.app = app
        self.pumps: list = []

    def post(self, url, data, headers) -> list:
        """POST; the returned list receives the response, or a Failure."""
        from twisted.internet.address import IPv4Address
        from twisted.test import iosim
        from twisted.web.server import Site

        got: list = []
        self.client.post(url, data=data, headers=headers).addBoth(got.append)
        self.reactor.advance(0)  # HostnameEndpoint's first connection attempt
        while len(self.reactor.tcpClients) > len(self.pumps):
            host, port, factory, _, _ = self.reactor.tcpClients[len(self.pumps)]
            client = factory.buildProtocol(IPv4Address("TCP", host, port))
            server = Site(self.app, reactor=self.reactor).buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
            self.pumps.append(iosim.connect(
                server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client), greet=True,
            ))
        for pump in self.pumps:
            pump.flush()
        return got


def test_app_client_sends_a_well_formed_post():
    """The relay's HTTP client sends the POST a web server expects: path and query, Host, the headers, the body."""
    wire = Wire(FakeApp(201))
    [response] = wire.post(
        "http://127.0.0.1:8080/chloe/in?x=1", b'{"a":1}',
        {b"Content-Type": [b"application/json"], b"X-Chloe-Delivery": [b"d-1"]},
    )
    assert response.code == 201
    [request] = wire.app.requests
    assert request.request.method == b"POST"
    assert request.request.uri == b"/chloe/in?x=1"
    assert request.header(b"host") == b"127.0.0.1:8080"
    assert request.header(b"content-type") == b"application/json"
    assert request.header(b"x-chloe-delivery") == b"d-1"
    assert request.header(b"content-length") == b"7"
    assert request.body == b'{"a":1}'
    assert wire.reactor.tcpClients[0][:2] == ("127.0.0.1", 8080)


def test_app_client_reuses_its_connection():
    """A second POST, once the first was answered and read, goes over the same connection."""
    wire = Wire(FakeApp())
    for n in range(3):
        [response] = wire.post("http://127.0.0.1/chloe", b"%d" % n, {})
        assert response.code == 200
        body: list = []
        treq.content(response).addCallback(body.append)
        for pump in wire.pumps:
            pump.flush()
        assert body == [b"{}"]
    assert len(wire.reactor.tcpClients) == 1
    assert wire.app.bodies == [b"0", b"1", b"2"]
    assert wire.app.requests[0].header(b"host") == b"127.0.0.1"


def test_app_client_refuses_a_line_break_in_a_header():
    """A header value with a line break is refused, not written (it would split the request)."""
    wire = Wire(FakeApp())
    [failure] = wire.post("http://127.0.0.1/chloe", b"{}", {b"X-Chloe-Delivery": [b"a\r\nEvil: 1"]})
    assert failure.check(ValueError)
    assert wire.app.requests == [] and wire.reactor.tcpClients == []
