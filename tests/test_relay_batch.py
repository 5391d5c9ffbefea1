"""Unit tests of the batched relay (``relay_batch`` > 1): several sessions'
messages in one POST, each with its own outcome. A Clock and a fake HTTP
client that records each POST and lets the test answer it."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers

from chloed import relay
from chloed.errors import RelayRejected, RelayUnavailable
from chloed.relay import BATCH_POSTS_IN_FLIGHT, Relay, event_body
from tests.fakes import captured_log
from tests.test_relay import failed_with

URL = "http://app.example/chloe"
SECRET = "app-and-chloe-share-this-secret"


class Response:
    """What the relay reads of a response: code, headers, body."""

    def __init__(self, code: int, body: bytes, headers: dict[bytes, bytes]) -> None:
        self.code = code
        self.headers = Headers({k: [v] for k, v in headers.items()})
        self.body = body
        self.length = len(body)

    def deliverBody(self, protocol: Any) -> None:
        protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


class Posted:
    """One POST the relay made; :meth:`answer` or :meth:`fail` it."""

    def __init__(self, url: str, body: bytes, headers: dict[bytes, list[bytes]]) -> None:
        self.url = url
        self.body = body
        self.headers = headers
        self.deferred: defer.Deferred[Any] = defer.Deferred()

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.get(name)
        return values[0] if values else None

    @property
    def items(self) -> list[dict[str, Any]]:
        return json.loads(self.body)

    @property
    def data(self) -> list[Any]:
        return [item["data"] for item in self.items]

    def answer(self, code: int = 200, body: Any = b"", headers: dict[bytes, bytes] | None = None) -> None:
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        self.deferred.callback(Response(code, body, headers or {}))

    def results(self, *statuses: Any) -> None:
        self.answer(200, {"results": list(statuses)})

    def fail(self, exc: Exception) -> None:
        self.deferred.errback(exc)


class FakeHTTP:
    """A treq-like client: records each POST, answers none by itself."""

    def __init__(self) -> None:
        self.posts: list[Posted] = []

    def post(self, url: str, data: bytes, headers: dict[bytes, list[bytes]], reactor: Any) -> defer.Deferred[Any]:
        posted = Posted(url, data, headers)
        self.posts.append(posted)
        return posted.deferred


class Harness:
    """A batched Relay over FakeHTTP and a Clock; jitter 0, so the retry
    after attempt ``n`` waits ``0.25 * 2**n`` seconds."""

    def __init__(self, batch=4, retries=5, queue=100, timeout=10.0, start=0.0, observe=None):
        self.clock = Clock()
        self.clock.advance(start)
        self.http = FakeHTTP()
        self.relay = Relay(
            self.http, URL, (SECRET,), self.clock, timeout, retries, queue,
            rng=lambda: 0.0, observe=observe, batch=batch,
        )

    def submit(self, data: Any, lane: str = "lane", delivery: str | None = None) -> list:
        """Submit a message event carrying ``data``; the returned list
        receives its result (None or a Failure)."""
        body = event_body("message", lane, None, json.dumps(data).encode(), None, None)
        results: list = []
        self.relay.submit(lane, body, delivery).addBoth(results.append)
        return results

    def turn(self, seconds: float = 0.0) -> None:
        """Let ``seconds`` pass and the reactor turn end (flushes run)."""
        self.clock.advance(seconds)
        self.clock.advance(0)

    @property
    def posts(self) -> list[Posted]:
        return self.http.posts


# -- what the app gets ---------------------------------------------------------


def test_messages_of_one_turn_share_a_post():
    """Messages of different sessions that arrive in one reactor turn go to the app in one POST, a JSON array."""
    h = Harness()
    h.submit("a", lane="alice")
    h.submit("b", lane="bob")
    h.submit("c", lane="carol")
    assert h.posts == []
    h.turn()
    [post] = h.posts
    assert post.data == ["a", "b", "c"]
    assert [item["session"] for item in post.items] == ["alice", "bob", "carol"]
    assert post.header(b"X-Chloe-Batch") == b"3"
    assert post.header(b"Content-Type") == b"application/json"
    assert post.header(b"User-Agent") == b"chloed"
    assert post.header(b"X-Chloe-Delivery") is None


def test_item_is_the_event_with_its_delivery_id():
    """Each item is the event the app would get alone, plus its delivery id."""
    h = Harness()
    h.submit({"x": [1]}, lane="S", delivery="d-1")
    h.submit(2, lane="T")
    h.turn()
    first, second = h.posts[0].items
    assert first == {
        "type": "message", "session": "S", "channel": None, "ref": None, "user": None,
        "data": {"x": [1]}, "delivery": "d-1",
    }
    assert len(second["delivery"]) == 32 and second["delivery"] != "d-1"


def test_a_message_alone_goes_at_the_end_of_its_turn():
    """A lone message does not wait for company: it leaves when its turn ends, alone in its POST."""
    h = Harness()
    results = h.submit("only")
    h.turn()
    [post] = h.posts
    assert post.data == ["only"] and post.header(b"X-Chloe-Batch") == b"1"
    post.answer(204)
    assert results == [None]


def test_at_most_batch_items_per_post():
    """A POST carries at most relay_batch items; the rest go in further POSTs of the same flush."""
    h = Harness(batch=4)
    for n in range(10):
        h.submit(n, lane=f"l{n}")
    h.turn()
    assert [post.data for post in h.posts] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_signature_covers_the_whole_body():
    """The signature is the HMAC of timestamp.body over the whole array, as for a single message."""
    h = Harness(start=1732320000.5)
    h.submit(1, lane="a")
    h.submit(2, lane="b")
    h.turn()
    [post] = h.posts
    assert post.header(b"X-Chloe-Timestamp") == b"1732320000"
    expected = hmac.new(SECRET.encode(), b"1732320000." + post.body, hashlib.sha256).hexdigest()
    assert post.header(b"X-Chloe-Signature") == b"sha256=" + expected.encode()
    assert post.header(b"X-Chloe-Signature").decode() == relay.sign(SECRET, 1732320000, post.body)


# -- order -----------------------------------------------------------------------


def test_a_sessions_next_message_waits_for_the_outcome_of_the_one_before():
    """A session's second message is in no POST until its first is answered, then in a later one."""
    h = Harness()
    first = h.submit(1, lane="alice")
    second = h.submit(2, lane="alice")
    other = h.submit("b", lane="bob")
    h.turn()
    assert [post.data for post in h.posts] == [[1, "b"]]
    h.turn(5)
    assert len(h.posts) == 1
    h.posts[0].answer(200)
    assert first == other == [None] and second == []
    h.turn()
    assert [post.data for post in h.posts] == [[1, "b"], [2]]
    h.posts[1].answer(200)
    assert second == [None]


def test_order_kept_while_the_head_is_retried():
    """While a session's head is retried (in later batches, with other company), its next message waits."""
    h = Harness()
    h.submit(1, lane="alice")
    second = h.submit(2, lane="alice")
    h.submit("b", lane="bob")
    h.turn()
    h.posts[0].results(503, 200)
    h.turn()
    assert len(h.posts) == 1  # alice's 1 waits out its backoff, her 2 waits for it
    # Alice's 1 is ready again, and in the same turn carol sends.
    h.clock.callLater(0.25, h.submit, "c", "carol")
    h.turn(0.25)
    assert [post.data for post in h.posts[1:]] == [[1, "c"]]
    h.posts[1].answer(200)
    h.turn()
    assert h.posts[2].data == [2]
    h.posts[2].answer(200)
    assert second == [None]
    sent = [d for post in h.posts for d in post.data if d in (1, 2)]
    assert sent == [1, 1, 2]


# -- outcomes --------------------------------------------------------------------


def test_2xx_without_results_delivers_every_item():
    """A 2xx whose body is empty or not a JSON object with results acks every item."""
    for body in (b"", b"ok", b"{}", b'{"ok": true}', b"[200, 400]", b"null"):
        h = Harness()
        results = [h.submit(n, lane=f"l{n}") for n in range(3)]
        h.turn()
        h.posts[0].answer(200, body)
        assert results == [[None]] * 3, body
        assert h.relay.stats.delivered == 3


def test_per_item_results_ack_reject_and_retry():
    """{"results": [200, 400, 503]} acks the first, rejects the second for good, retries the third alone."""
    h = Harness()
    acked, rejected, retried = h.submit("a", lane="a"), h.submit("b", lane="b"), h.submit("c", lane="c")
    h.turn()
    h.posts[0].results(200, 400, 503)
    assert acked == [None]
    assert failed_with(rejected, RelayRejected).status == 400
    assert retried == []
    h.turn(0.24)
    assert len(h.posts) == 1
    h.turn(0.01)
    assert h.posts[1].data == ["c"]
    assert h.posts[1].items[0]["delivery"] == h.posts[0].items[2]["delivery"]
    h.posts[1].results(201)
    assert retried == [None]
    stats = h.relay.stats
    assert (stats.delivered, stats.rejections, stats.retries, stats.failures) == (2, 1, 1, 0)


@pytest.mark.parametrize("status", [408, 429, 500, 302, 0, 99999])
def test_per_item_transient_statuses_are_retried(status):
    """An item's 408, 429, 5xx, or any other odd status is retried, like a single message's."""
    h = Harness()
    results = h.submit("x")
    h.turn()
    h.posts[0].results(status)
    h.turn(0.25)
    assert h.posts[1].data == ["x"]
    h.posts[1].results(200)
    assert results == [None]


def test_delivery_ids_stay_the_same_across_retries():
    """Every retry of an item carries its delivery id, whichever batch it travels in."""
    h = Harness()
    h.submit("a", lane="a", delivery="id-a")
    h.submit("b", lane="b")
    h.turn()
    b_id = h.posts[0].items[1]["delivery"]
    h.posts[0].answer(503)
    h.turn(0.25)
    h.posts[1].answer(500)
    h.turn(0.5)
    for post in h.posts:
        assert [item["delivery"] for item in post.items] == ["id-a", b_id]


def test_whole_post_5xx_retries_every_item():
    """A 500 for the whole POST is every item's: all are retried, then acked."""
    h = Harness()
    results = [h.submit(n, lane=f"l{n}") for n in range(3)]
    h.turn()
    h.posts[0].answer(500, b'{"results": [200, 200, 200]}')
    assert results == [[], [], []]
    h.turn(0.25)
    assert h.posts[1].data == [0, 1, 2]
    h.posts[1].answer(200)
    assert results == [[None]] * 3
    assert h.relay.stats.retries == 3


def test_whole_post_4xx_rejects_every_item():
    """A 400 for the whole POST rejects every item, none retried."""
    h = Harness()
    results = [h.submit(n, lane=f"l{n}") for n in range(2)]
    h.turn()
    h.posts[0].answer(422)
    assert [failed_with(r, RelayRejected).status for r in results] == [422, 422]
    h.turn(100)
    assert len(h.posts) == 1
    assert h.relay.stats.rejections == 2


def test_whole_post_retry_after_honoured():
    """A Retry-After on a 503 for the whole POST delays every item's retry."""
    h = Harness()
    h.submit(1, lane="a")
    h.submit(2, lane="b")
    h.turn()
    h.posts[0].answer(503, headers={b"Retry-After": b"7"})
    h.turn(6.99)
    assert len(h.posts) == 1
    h.turn(0.01)
    assert h.posts[1].data == [1, 2]


@pytest.mark.parametrize("results", [
    [200], [200, 200, 200], [200, "400"], [200, 200.0], [True, 200], {"0": 200}, None,
])
def test_a_broken_results_list_retries_every_item_and_is_logged_once(results):
    """A results list of the wrong length or with non-integers is a broken answer: all retried, one warning."""
    h = Harness()
    outcomes = [h.submit(n, lane=f"l{n}") for n in range(2)]
    h.turn()
    with captured_log() as events:
        h.posts[0].answer(200, {"results": results})
    warnings = [e for e in events if e.get("log_namespace") == "chloed.relay"]
    assert len(warnings) == 1
    assert "results" in warnings[0]["why"]
    assert outcomes == [[], []]
    assert h.relay.stats.retries == 2
    h.turn(0.25)
    h.posts[1].answer(200)
    assert outcomes == [[None], [None]]


def test_connection_error_retries_every_item():
    """A refused connection retries every item of the POST."""
    h = Harness()
    results = [h.submit(n, lane=f"l{n}") for n in range(2)]
    h.turn()
    h.posts[0].fail(ConnectionRefusedError("app down"))
    assert h.relay.in_flight == 0
    h.turn(0.25)
    h.posts[1].answer(200)
    assert results == [[None], [None]]


def test_timeout_retries_every_item():
    """A POST not answered within upstream_timeout is abandoned and every item retried."""
    h = Harness(timeout=10)
    results = [h.submit(n, lane=f"l{n}") for n in range(2)]
    h.turn()
    h.turn(9.9)
    assert h.relay.in_flight == 1 and h.posts[0].deferred.called is False
    h.turn(0.1)
    assert h.posts[0].deferred.called and h.relay.in_flight == 0
    h.turn(0.25)
    assert h.posts[1].data == [0, 1]
    h.posts[1].answer(200)
    assert results == [[None], [None]]


def test_gives_up_per_item_after_the_retries():
    """An item always refused gets upstream_retries retries, then fails; its companion is not held up."""
    h = Harness(retries=1)
    doomed, fine = h.submit("x", lane="a"), h.submit("y", lane="b")
    h.turn()
    h.posts[0].results(503, 200)
    assert fine == [None]
    h.turn(0.25)
    h.posts[1].results(503)
    assert "503" in str(failed_with(doomed, RelayUnavailable))
    assert (h.relay.stats.retries, h.relay.stats.failures) == (1, 1)
    assert h.relay.queued == 0


# -- bounds, counters, drain -------------------------------------------------------


def test_posts_in_flight_are_bounded():
    """At most BATCH_POSTS_IN_FLIGHT POSTs are in flight; what is ready meanwhile goes when one comes back."""
    h = Harness(batch=2, queue=1000)
    for n in range(2 * BATCH_POSTS_IN_FLIGHT + 5):
        h.submit(n, lane=f"l{n}")
    h.turn()
    assert len(h.posts) == BATCH_POSTS_IN_FLIGHT
    assert h.relay.in_flight == BATCH_POSTS_IN_FLIGHT
    h.posts[0].answer(200)
    assert len(h.posts) == BATCH_POSTS_IN_FLIGHT  # at the end of the turn
    h.turn()
    assert h.posts[-1].data == [2 * BATCH_POSTS_IN_FLIGHT, 2 * BATCH_POSTS_IN_FLIGHT + 1]
    assert h.relay.in_flight == BATCH_POSTS_IN_FLIGHT


def test_waiting_messages_fill_the_next_post():
    """Messages that arrive while every POST is out wait, and leave together when one returns."""
    h = Harness(batch=10, queue=1000)
    for n in range(BATCH_POSTS_IN_FLIGHT):
        h.submit(n, lane=f"early{n}")
        h.turn()
    assert len(h.posts) == BATCH_POSTS_IN_FLIGHT
    for n in range(5):
        h.submit(f"late{n}", lane=f"late{n}")
        h.turn()
    h.posts[0].answer(200)
    h.turn()
    assert h.posts[-1].data == [f"late{n}" for n in range(5)]


def test_queue_full_fails_at_once():
    """When upstream_queue messages are waiting or in flight, a new one fails at once, counted."""
    h = Harness(queue=3)
    held = [h.submit(n, lane=f"l{n}") for n in range(3)]
    overflow = h.submit(3, lane="l3")
    failed_with(overflow, RelayUnavailable)
    assert (h.relay.stats.overflows, h.relay.stats.failures) == (1, 1)
    assert h.relay.queued == 3
    h.turn()
    assert h.posts[0].data == [0, 1, 2]
    h.posts[0].answer(200)
    assert held == [[None]] * 3
    assert h.submit(4, lane="l4") == []


def test_queue_counts_messages_waiting_behind_a_head():
    """Messages waiting behind their session's head count against upstream_queue too."""
    h = Harness(queue=2)
    h.submit(1, lane="a")
    h.submit(2, lane="a")
    failed_with(h.submit(3, lane="b"), RelayUnavailable)


def test_stats_per_message_latency_and_in_flight_per_post():
    """delivered counts messages; the latency is observed once per POST; in_flight counts POSTs."""
    seen: list = []
    h = Harness(observe=seen.append)
    for n in range(3):
        h.submit(n, lane=f"l{n}")
    h.turn()
    assert h.relay.in_flight == 1 and h.relay.queued == 3
    h.turn(1.5)
    h.posts[0].answer(200)
    assert seen == [1.5]
    assert h.relay.stats.delivered == 3 and h.relay.in_flight == 0 and h.relay.queued == 0


def test_when_idle_waits_for_retries_and_followers():
    """when_idle fires once every message, retried ones and those behind them included, has its outcome."""
    h = Harness()
    h.submit(1, lane="a")
    h.submit(2, lane="a")
    h.submit(3, lane="b")
    idle: list = []
    h.relay.when_idle().addCallback(idle.append)
    h.turn()
    h.posts[0].results(503, 200)
    assert idle == []
    h.turn(0.25)
    h.posts[1].answer(200)
    assert idle == []
    h.turn()
    h.posts[2].answer(400)
    assert idle == [None]
    assert h.relay.queued == 0
    done: list = []
    h.relay.when_idle().addCallback(done.append)
    assert done == [None]


def test_unbatched_relay_sends_each_message_alone_with_its_header():
    """relay_batch 1 keeps the single-message format: the event as the body, X-Chloe-Delivery, no batch header."""
    h = Harness(batch=1)
    h.submit("x", lane="a", delivery="d-7")
    h.submit("y", lane="b")
    assert len(h.posts) == 2  # at once, without waiting for the turn to end
    post = h.posts[0]
    assert json.loads(post.body)["data"] == "x" and "delivery" not in json.loads(post.body)
    assert post.header(b"X-Chloe-Delivery") == b"d-7"
    assert post.header(b"X-Chloe-Batch") is None


@pytest.mark.parametrize("batch", [1, 5])
def test_service_builds_the_relay_with_relay_batch(batch):
    """make_service hands the relay the configured relay_batch, and by default its own HTTP client."""
    from twisted.internet.testing import MemoryReactorClock

    from chloed.config import Config
    from chloed.relay import AppClient
    from chloed.service import make_service

    config = Config(listen=("tcp:0:interface=127.0.0.1",), application_server_url=URL, relay_batch=batch)
    service = make_service(config, MemoryReactorClock(), open_files=lambda wanted: wanted)
    assert service.hub.relay is not None
    assert service.hub.relay.batch == batch
    assert isinstance(service.hub.relay._http, AppClient)
