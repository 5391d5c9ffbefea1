"""Unit tests of the relay's spool, relay_ttl, dead letters and lifecycle
lane (chloed.relay with chloed.spool), over StubTreq and a Clock."""

from __future__ import annotations

import json

from standardwebhooks.webhooks import Webhook
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from chloed.errors import RelayRejected, RelayUnavailable
from chloed.relay import Relay, lifecycle_body
from chloed.signing import generate_standard_secret
from chloed.spool.base import EVENT, DeadLetter, Record, SpoolError
from chloed.spool.memory import MemorySpool
from tests.fakes import HOLD, FakeApp

URL = "http://app.example/chloe"
SECRET = "app-and-chloe-share-this-secret"


class DurableSpool(MemorySpool):
    """A memory spool that says it is durable, whose appends the test
    completes (or fails) when it likes, and which records what it is told."""

    name = "fake"
    durable = True

    def __init__(self, kept: list[Record] = ()) -> None:  # type: ignore[assignment]
        super().__init__()
        self.kept = list(kept)
        self.appends: list[tuple[Record, defer.Deferred]] = []
        self.finished: list[Record] = []
        self.recover = None

    def start(self, recover):
        self.recover = recover
        for record in self.kept:
            recover(record)
        return defer.succeed(None)

    def append(self, record):
        super().append(record)
        d: defer.Deferred = defer.Deferred()
        self.appends.append((record, d))
        return d

    def done(self, record):
        self.finished.append(record)

    def settle_all(self) -> None:
        for _, d in self.appends:
            if not d.called:
                d.callback(None)


class Harness:
    """A Relay to a FakeApp over StubTreq on a Clock (no jitter: a retry
    after attempt n waits 0.25 * 2**n seconds, up to 30)."""

    def __init__(self, *answers, default=200, retries=None, ttl=None, queue=100, events_queue=None,
                 spool=None, secrets=(SECRET,), signature="chloe", start=1_700_000_000.0):
        self.app = FakeApp(*answers)
        self.app.default = default
        self.clock = Clock()
        self.clock.advance(start)
        self.stub = StubTreq(self.app)
        self.lags: list[float] = []
        self.relay = Relay(
            self.stub, URL, secrets, self.clock, 10.0, retries, queue, rng=lambda: 0.0, spool=spool, ttl=ttl,
            events_queue=events_queue, signature=signature, observe_lag=self.lags.append,
        )
        self.relay.start()

    def submit(self, body=b'{"n":1}', lane="lane", kind="message", accepted=None) -> list:
        results: list = []
        self.relay.submit(lane, body, None, kind=kind, accepted=accepted).addBoth(results.append)
        self.stub.flush()
        return results

    def advance(self, seconds: float, steps: int = 1) -> None:
        for _ in range(steps):
            self.clock.advance(seconds / steps)
            self.stub.flush()


def dead(relay: Relay) -> list[DeadLetter]:
    letters: list = []
    relay.dead_letters(100, None).addCallback(letters.extend)
    return letters


def test_retried_until_relay_ttl_then_a_dead_letter():
    """With no upstream_retries, a message the app keeps refusing with 503
    is retried with capped backoff until relay_ttl has passed since it
    arrived, then it is a dead letter with the reason and the last status,
    and the browser hears upstream_failed."""
    h = Harness(default=503, ttl=120.0)
    results = h.submit()
    h.advance(119.0, steps=119)
    assert results == []
    tries = len(h.app.requests)
    assert tries > 5  # more than the old five retries
    h.advance(1.0)
    [failure] = results
    assert failure.check(RelayUnavailable)
    assert "relay_ttl (120s) passed" in str(failure.value)
    [letter] = dead(h.relay)
    assert letter.status == 503 and "503" in letter.reason
    assert letter.record.body == b'{"n":1}'
    assert h.relay.stats.dead == 1 and h.relay.spool.dead_count() == 1
    # The last attempt was made at the deadline, not a backoff after it.
    assert len(h.app.requests) == tries + 1


def test_backoff_is_capped():
    """During a long outage each lane is retried at least every 30 s."""
    h = Harness(default=503, ttl=3600.0)
    h.submit()
    h.advance(600.0, steps=600)
    assert len(h.app.requests) >= 600 / 30


def test_upstream_retries_still_bounds_when_set():
    """With upstream_retries set, the message is a dead letter after that
    many retries, long before relay_ttl."""
    h = Harness(default=500, retries=2, ttl=86400.0)
    results = h.submit()
    h.advance(10.0, steps=10)
    assert len(h.app.requests) == 3
    assert results[0].check(RelayUnavailable)
    [letter] = dead(h.relay)
    assert "gave up after 3 attempts" in letter.reason and letter.status == 500


def test_a_4xx_is_a_dead_letter_at_once():
    """A 4xx other than 408/429 is not retried: a dead letter at once, and
    the browser hears upstream_rejected."""
    h = Harness(422)
    results = h.submit()
    assert results[0].check(RelayRejected)
    assert len(h.app.requests) == 1
    [letter] = dead(h.relay)
    assert letter.status == 422 and letter.reason == "the application answered 422"


def test_a_connection_error_gives_a_dead_letter_without_status():
    """A message the app never answered ends with a status of None."""
    h = Harness(retries=0)
    h.stub = StubTreq(None)  # (never used: the relay has its own)
    h.relay._http = _Refusing()
    results = h.submit()
    assert results[0].check(RelayUnavailable)
    [letter] = dead(h.relay)
    assert letter.status is None and "refused" in letter.reason


class _Refusing:
    def post(self, *args, **kwargs):
        return defer.fail(ConnectionRefusedError("refused"))


def test_replay_sends_dead_letters_again():
    """Replayed dead letters go back to their lane and reach the app."""
    h = Harness(422, 422)
    h.submit(b'{"n":1}')
    h.submit(b'{"n":2}')
    assert len(dead(h.relay)) == 2
    replayed: list = []
    h.relay.replay(None).addCallback(replayed.extend)
    h.stub.flush()
    assert [r.body for r in replayed] == [b'{"n":1}', b'{"n":2}']
    assert h.app.bodies[-2:] == [b'{"n":1}', b'{"n":2}']
    assert dead(h.relay) == [] and h.relay.queued == 0


def test_delete_forgets_a_dead_letter():
    """A deleted dead letter is gone; deleting it again finds nothing."""
    h = Harness(400)
    h.submit()
    [letter] = dead(h.relay)
    found: list = []
    h.relay.delete_dead(letter.id).addCallback(found.append)
    h.relay.delete_dead(letter.id).addCallback(found.append)
    assert found == [True, False]


def test_dead_letters_page_in_order():
    """Dead letters page oldest first after a given id."""
    h = Harness(*([400] * 5))
    for n in range(5):
        h.submit(b'{"n":%d}' % n, lane=f"lane-{n}")
    first: list = []
    h.relay.dead_letters(2, None).addCallback(first.extend)
    rest: list = []
    h.relay.dead_letters(10, first[-1].id).addCallback(rest.extend)
    assert [json.loads(x.record.body)["n"] for x in first + rest] == [0, 1, 2, 3, 4]


def test_events_have_their_own_bound():
    """Lifecycle events fill events_queue, never upstream_queue: with the
    app holding every POST, events past their bound fail (counted), and a
    browser's message is still taken."""
    h = Harness(default=HOLD, queue=1, events_queue=3)
    events = [h.submit(b'{"e":%d}' % n, lane=f"s{n}", kind=EVENT) for n in range(5)]
    assert [bool(r) for r in events] == [False, False, False, True, True]
    assert events[3][0].check(RelayUnavailable)
    assert h.relay.stats.event_overflows == 2 and h.relay.stats.event_failures == 2
    assert h.submit(b'{"m":1}', lane="browser") == []  # queued, not failed
    assert h.relay.stats.overflows == 0
    assert h.submit(b'{"m":2}', lane="browser")[0].check(RelayUnavailable)  # upstream_queue is 1
    assert h.relay.stats.overflows == 1


def test_one_lane_keeps_events_and_messages_in_order():
    """connect, the session's messages, then disconnect, one at a time."""
    h = Harness(HOLD)
    h.submit(b'{"type":"connect"}', kind=EVENT)
    h.submit(b'{"type":"message"}')
    h.submit(b'{"type":"disconnect"}', kind=EVENT)
    assert h.app.bodies == [b'{"type":"connect"}']
    h.app.requests[0].request.setResponseCode(200)
    h.app.requests[0].request.finish()
    h.stub.flush()
    assert h.app.bodies == [b'{"type":"connect"}', b'{"type":"message"}', b'{"type":"disconnect"}']


def test_a_durable_spool_accepts_before_posting():
    """With a durable spool, the message is POSTed (and accepted is called)
    only once the spool has it; accepted comes before the result."""
    spool = DurableSpool()
    h = Harness(spool=spool)
    told: list = []
    results = h.submit(accepted=lambda: told.append("accepted"))
    assert h.app.requests == [] and told == []
    spool.settle_all()
    h.stub.flush()
    assert told == ["accepted"] and results == [None]
    assert len(h.app.requests) == 1
    assert spool.finished and spool.finished[0].key == spool.appends[0][0].key


def test_a_spool_that_fails_is_upstream_failed_not_accepted():
    """A spool write that fails: the browser hears upstream_failed, never
    accepted; nothing is POSTed and nothing is a dead letter."""
    spool = DurableSpool()
    h = Harness(spool=spool)
    told: list = []
    results = h.submit(accepted=lambda: told.append("accepted"))
    spool.appends[0][1].errback(Failure(SpoolError("No space left on device")))
    assert told == []
    assert results[0].check(RelayUnavailable)
    assert "No space left on device" in str(results[0].value)
    assert h.app.requests == [] and dead(h.relay) == []
    assert h.relay.stats.spool_failures == 1 and h.relay.queued == 0


def test_the_memory_spool_never_says_accepted():
    """The memory spool is not durable: accepted is never called."""
    h = Harness()
    told: list = []
    assert h.submit(accepted=lambda: told.append(1)) == [None]
    assert told == []


def test_recovered_records_are_delivered_in_order():
    """What the spool kept from before a restart is POSTed in its lanes'
    order, with its delivery ids, whatever the queue's bound."""
    kept = []
    for n, lane in enumerate(["a", "b", "a", "a"]):
        record = Record(lane, "message", b"d%d" % n, 1_699_999_000.0, b'{"n":%d}' % n)
        record.key = f"k{n}"
        kept.append(record)
    spool = DurableSpool(kept)
    h = Harness(HOLD, HOLD, spool=spool, queue=1)
    assert h.relay.queued == 4 and h.relay.stats.recovered == 4
    assert h.app.bodies == [b'{"n":0}', b'{"n":1}']
    for request in list(h.app.requests):
        request.request.setResponseCode(204)
        request.request.finish()
    h.stub.flush()
    assert h.app.bodies == [b'{"n":0}', b'{"n":1}', b'{"n":2}', b'{"n":3}']
    assert [r.header(b"x-chloe-delivery") for r in h.app.requests] == [b"d0", b"d1", b"d2", b"d3"]
    assert sorted(r.key for r in spool.finished) == ["k0", "k1", "k2", "k3"]


def test_lag_counts_the_queue_wait_and_the_retries():
    """The lag of a message is from its arrival to the app's 2xx, retries
    included; the oldest waiting record's arrival is known meanwhile."""
    h = Harness(503, 503)
    arrived = h.clock.seconds()
    h.submit()
    assert h.relay.oldest() == arrived
    h.advance(1.0, steps=4)
    assert len(h.app.requests) == 3
    assert h.lags == [0.75] and h.relay.oldest() is None


def test_standard_webhooks_signature_verifies():
    """With relay_signature = "standard", the POST verifies with the
    standardwebhooks library, its webhook-id being the delivery id."""
    secret = generate_standard_secret()
    h = Harness(secrets=(secret,), signature="standard")
    h.clock.advance(0)
    import time

    h.clock.rightNow = time.time()  # the library checks against the real clock
    h.submit(lifecycle_body("connect", "s1", None, None, "node", 1))
    [request] = h.app.requests
    headers = {k.decode(): v.decode() for k, v in request.headers.items()}
    payload = Webhook(secret).verify(request.body, headers)
    assert payload["type"] == "connect" and payload["seq"] == 1
    assert headers["webhook-id"] == headers["x-chloe-delivery"]
