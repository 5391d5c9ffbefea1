"""The probes of a Redis node's pub/sub connection (:mod:`chloed.backends.
redis.liveness`) on a fake clock and a fake link; the link's own bound on
its SUBSCRIBE; a channel read again on the connection that replaced the one
it was being read on; and, against a real ``redis-server``, a pub/sub
connection that stops reading, healed with nothing lost (the whole server
behind a freezing proxy is in test_integration_liveness)."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from chloed.backends import BackendUnavailable
from chloed.backends.redis import RedisBroker
from chloed.backends.redis.channel import RedisChannel, Retention, _Snapshot
from chloed.backends.redis.channels import ChannelSubscriptions
from chloed.backends.redis.link import REPLY_TIMEOUT, RedisLink
from chloed.backends.redis.liveness import PROBE_INTERVAL, PROBE_TIMEOUT, Liveness
from tests.backends.support import Recorder, until
from tests.redis_server import RedisServer, redis_server  # noqa: F401 (fixture)


class FakeLink:
    """Stands for the node's connections: whether they are up, the probes
    PUBLISHed (answered ``publish_reply``), and the heals asked for."""

    def __init__(self) -> None:
        self.up = True
        self.published: list[bytes] = []
        self.heals: list[str] = []
        self.publish_reply: Any = 1

    def publish(self, payload: bytes) -> Deferred[Any]:
        self.published.append(payload)
        if isinstance(self.publish_reply, Exception):
            return defer.fail(self.publish_reply)
        return defer.succeed(self.publish_reply)

    def heal(self, why: str) -> None:
        self.heals.append(why)
        self.up = False  # the link tears the pub/sub connection down


def prober() -> tuple[Clock, FakeLink, Liveness]:
    clock, link = Clock(), FakeLink()
    liveness = Liveness(clock, publish=link.publish, up=lambda: link.up, heal=link.heal)
    liveness.start()
    return clock, link, liveness


def test_a_probe_goes_every_interval_and_its_round_trip_is_kept():
    """Every few seconds the node publishes a probe to its own channel; when
    it comes back, its round trip is recorded and the next one goes an
    interval later; nothing is missed, nothing healed."""
    clock, link, liveness = prober()
    assert link.published == []
    clock.advance(PROBE_INTERVAL)
    assert link.published == [b"l 1"]
    clock.advance(0.25)
    liveness.answered(b"l 1")
    assert liveness.seconds == 0.25
    clock.advance(PROBE_INTERVAL - 0.25)
    assert link.published == [b"l 1", b"l 2"]
    liveness.answered(b"l 2")
    assert (liveness.probes, liveness.failures, liveness.heals) == (2, 0, 0)
    assert not liveness.degraded and link.heals == []


def test_one_probe_in_flight_at_a_time():
    """A probe not back yet is not joined by another (the timeout is
    longer than the interval)."""
    clock, link, liveness = prober()
    clock.advance(PROBE_INTERVAL)
    clock.advance(PROBE_INTERVAL)
    assert link.published == [b"l 1"]
    liveness.answered(b"l 1")
    clock.advance(PROBE_INTERVAL)
    assert link.published == [b"l 1", b"l 2"]


def test_no_probe_while_a_connection_is_down():
    """While Redis is away (either connection down) no probe is sent, and
    so none is missed; the first goes once both are back."""
    clock, link, liveness = prober()
    link.up = False
    for _ in range(5):
        clock.advance(PROBE_INTERVAL)
    assert link.published == [] and liveness.probes == 0
    link.up = True
    clock.advance(PROBE_INTERVAL)
    assert link.published == [b"l 1"]


def test_a_missed_probe_heals_the_pubsub_connection_once_then_a_probe_back_ends_it():
    """A probe not back within the timeout is a miss: the node is degraded
    and its pub/sub connection is torn down, once. No probe goes while it
    is reconnecting; the first that comes back on the new connection ends
    the degradation and counts one heal."""
    clock, link, liveness = prober()
    clock.advance(PROBE_INTERVAL)
    clock.advance(PROBE_TIMEOUT - 0.001)
    assert link.heals == [] and not liveness.degraded
    clock.advance(0.001)
    assert len(link.heals) == 1 and "did not come back" in link.heals[0]
    assert liveness.degraded and liveness.failures == 1 and liveness.heals == 0
    for _ in range(3):
        clock.advance(PROBE_INTERVAL)  # reconnecting: link down
    assert link.published == [b"l 1"] and len(link.heals) == 1
    link.up = True
    clock.advance(PROBE_INTERVAL)
    assert link.published == [b"l 1", b"l 2"]
    assert liveness.degraded  # not until it is back
    liveness.answered(b"l 2")
    assert not liveness.degraded
    assert (liveness.probes, liveness.failures, liveness.heals) == (2, 1, 1)


def test_a_probe_back_too_late_changes_nothing():
    """A probe that arrives after its timeout (its connection given up)
    neither ends the degradation nor counts a heal."""
    clock, link, liveness = prober()
    clock.pump([PROBE_INTERVAL, PROBE_TIMEOUT])
    assert liveness.degraded
    liveness.answered(b"l 1")
    assert liveness.degraded and liveness.heals == 0 and liveness.seconds is None


def test_each_miss_heals_again():
    """A new connection that does not deliver either is torn down again at
    its own miss."""
    clock, link, liveness = prober()
    clock.pump([PROBE_INTERVAL, PROBE_TIMEOUT])
    link.up = True
    clock.pump([PROBE_INTERVAL, PROBE_TIMEOUT])
    assert len(link.heals) == 2 and liveness.failures == 2 and liveness.degraded


def test_a_probe_that_could_not_be_published_is_no_miss():
    """The command connection failing the PUBLISH says nothing of pub/sub:
    no miss, no heal, and the next probe goes at the next interval."""
    clock, link, liveness = prober()
    link.publish_reply = BackendUnavailable("not connected to Redis")
    clock.advance(PROBE_INTERVAL)
    clock.advance(PROBE_TIMEOUT)
    assert link.heals == [] and liveness.failures == 0 and not liveness.degraded
    link.publish_reply = 1
    clock.advance(PROBE_INTERVAL)
    assert link.published == [b"l 1", b"l 2", b"l 3"]


def test_a_connection_lost_the_ordinary_way_is_no_miss():
    """A pub/sub connection that closes (Redis restarted) is reconnected by
    the link: the probe in flight on it is dropped, not counted a miss."""
    clock, link, liveness = prober()
    clock.advance(PROBE_INTERVAL)
    liveness.lost()
    clock.advance(PROBE_TIMEOUT)
    assert link.heals == [] and liveness.failures == 0


def test_stopped_it_sends_nothing_and_leaves_no_timer():
    """Once the node disconnects, no probe goes and no timer is left."""
    clock, link, liveness = prober()
    clock.advance(PROBE_INTERVAL)
    liveness.stop()
    assert clock.getDelayedCalls() == []
    clock.advance(10 * PROBE_INTERVAL)
    assert link.published == [b"l 1"] and link.heals == []


# -- the link -------------------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = 0

    def abortConnection(self) -> None:
        self.aborted += 1


class FakeSubscriptions:
    """A pub/sub connection whose SUBSCRIBEs wait for the test."""

    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.subscribed: list[tuple[list[str], Deferred[Any]]] = []

    def subscribe(self, names: list[str]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.subscribed.append((names, d))
        return d


def fake_link(clock: Clock) -> RedisLink:
    return RedisLink(clock, "127.0.0.1", 6379, 0, channels=["chloe:0:all", "chloe:0:n:x"], on_message=lambda c, p: None)


def test_a_pubsub_connection_whose_subscribe_goes_unanswered_is_torn_down():
    """A pub/sub connection that never confirms the node's own channels
    (no probe can go on it) is torn down after the reply timeout, so that
    it is connected again."""
    clock = Clock()
    link, proto = fake_link(clock), FakeSubscriptions()
    link._pubsub_ready(proto)  # as txredisapi's connectionMade ends
    assert proto.subscribed[0][0] == ["chloe:0:all", "chloe:0:n:x"]
    clock.advance(REPLY_TIMEOUT)
    assert proto.transport.aborted == 1


def test_a_confirmed_pubsub_connection_is_torn_down_only_when_asked():
    """Once confirmed, the pub/sub connection stays; ``reset_pubsub`` (a
    missed probe) aborts it."""
    clock = Clock()
    link, proto = fake_link(clock), FakeSubscriptions()
    link._pubsub_ready(proto)
    proto.subscribed[0][1].callback([b"subscribe", b"chloe:0:all", 1])
    clock.advance(2 * REPLY_TIMEOUT)
    assert proto.transport.aborted == 0 and clock.getDelayedCalls() == []
    link.reset_pubsub("a probe did not come back")
    assert proto.transport.aborted == 1


# -- reading a channel again ----------------------------------------------


def snapshot_reply(head: tuple[int, int], entries: list[tuple[str, bytes]]) -> Any:
    """What SNAPSHOT_SCRIPT answers for one channel holding ``entries``."""
    stream = [1, b"0-0", entries[0][0].encode() if entries else b"0-0",
              [(id.encode(), [b"d", data]) for id, data in entries]]
    return _Snapshot([head[0] + 1, head[0], head[1], 1, stream])


def test_a_channel_read_on_a_connection_since_replaced_is_read_again():
    """A channel whose history was being read when its pub/sub connection
    was replaced is read again once subscribed on the new one: what the
    first read missed (published before the new subscription) is delivered,
    each message once, and the channel is ready only then."""
    delivered: list[str] = []
    reads: list[tuple[list[str], Deferred[Any]]] = []

    class SubLink:
        """The link, as the channels' subscriptions use it."""

        def __init__(self) -> None:
            self.subscriptions = FakeSubscriptions()

        def subscribe(self, names: list[str]) -> Deferred[Any]:
            return self.subscriptions.subscribe(names)

        def later(self, f: Any, *args: Any) -> None:
            raise AssertionError("nothing is retried here")

    def snapshot(names: list[str], sinces: list[str], counts: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        reads.append((sinces, d))
        return d

    link = SubLink()
    channels: dict[str, RedisChannel] = {}
    subscriptions = ChannelSubscriptions(
        channels, link=link, pubsub="chloe:0:", connected=lambda: True,  # type: ignore[arg-type]
        snapshot=snapshot, deliver=lambda channel, id, data, exclude: delivered.append(id),
        try_join=lambda join: None, presence=lambda: None, retention=lambda name: Retention(100, 300_000),
    )
    channel = subscriptions.channel("c")
    channel.subscribers[Recorder("s")] = None
    channel.last_id = "1000-5"
    first = link.subscriptions
    first.subscribed[0][1].callback(None)
    assert [since for since, _ in reads] == [["1000-5"]]

    # The pub/sub connection is replaced while that read is out.
    subscriptions.lost()
    link.subscriptions = FakeSubscriptions()
    subscriptions.subscribed_again()
    link.subscriptions.subscribed[0][1].callback(None)
    reads[0][1].callback(snapshot_reply((1000, 6), [("1000-6", b"6")]))
    assert delivered == [] and not channel.ready
    assert [since for since, _ in reads] == [["1000-5"], ["1000-5"]]
    reads[1][1].callback(snapshot_reply((1000, 7), [("1000-6", b"6"), ("1000-7", b"7")]))
    assert delivered == ["1000-6", "1000-7"] and channel.ready


# -- a real Redis ---------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_a_pubsub_connection_that_stops_reading_is_healed_and_nothing_is_lost(redis_server):  # noqa: F811
    """A node's pub/sub socket stays open but nothing is read from it: its
    probe is missed, the node is not "up", its pub/sub connection is torn
    down and subscribed again, and its subscriber gets what was published
    meanwhile (read again from the history) once, in order, and what comes
    after live."""
    made = []
    try:
        for _ in range(2):
            broker = RedisBroker(reactor, 100, 300, redis_server.url)
            broker.liveness.interval, broker.liveness.timeout = 0.2, 0.5
            broker.connect()
            made.append(broker)
        a, b = made
        yield until(lambda: a.backend_state == "up" and b.backend_state == "up")
        sub = Recorder("s")
        yield b.subscribe("c", sub)
        yield a.publish(["c"], b"1")
        yield until(lambda: sub.data() == [1])
        yield until(lambda: b.liveness.seconds is not None)
        frozen = b._subscriptions
        frozen.transport.stopReading()  # the socket stays open
        yield a.publish(["c"], b"2")
        yield a.publish(["c"], b"3")
        yield until(lambda: b.liveness.failures >= 1)
        assert b.backend_state != "up"
        yield until(lambda: b.liveness.heals >= 1 and b.backend_state == "up")
        assert b._subscriptions is not frozen
        yield a.publish(["c"], b"4")
        yield until(lambda: len(sub.data()) >= 4)
        assert sub.data() == [1, 2, 3, 4]
        assert b.liveness.failures == 1 and a.liveness.failures == 0
    finally:
        for broker in made:
            yield broker.disconnect()


def test_the_timeout_counts_from_redis_answering_the_publish():
    """A command connection busy for longer than the timeout (thousands of
    browsers connecting) is no miss of the pub/sub one: the probe's
    timeout starts when Redis has run the PUBLISH."""
    from chloed.backends.redis.liveness import COMMAND_TIMEOUT

    clock, link = Clock(), FakeLink()
    answers: list[Deferred[Any]] = []

    def publish(payload: bytes) -> Deferred[Any]:
        answers.append(Deferred())
        return answers[-1]

    liveness = Liveness(clock, publish=publish, up=lambda: link.up, heal=link.heal)
    liveness.start()
    clock.advance(PROBE_INTERVAL)
    [answer] = answers
    clock.advance(PROBE_TIMEOUT * 3)
    assert link.heals == [] and liveness.failures == 0
    answer.callback(1)
    clock.advance(PROBE_TIMEOUT - 0.5)
    liveness.answered(b"l 1")
    assert link.heals == [] and liveness.failures == 0
    # A PUBLISH never answered is a miss after COMMAND_TIMEOUT.
    clock.advance(PROBE_INTERVAL)
    assert len(answers) == 2
    clock.advance(COMMAND_TIMEOUT)
    clock.advance(0)
    assert liveness.failures == 1 and len(link.heals) == 1


def test_a_publish_that_reached_no_subscriber_is_a_miss_at_once():
    """PUBLISH answered 0: Redis has no pub/sub connection of this node
    subscribed to its own channel: healed without waiting."""
    clock, link, liveness = prober()
    link.publish_reply = 0
    clock.advance(PROBE_INTERVAL)
    clock.advance(0)
    clock.advance(0)
    assert liveness.failures == 1 and len(link.heals) == 1
