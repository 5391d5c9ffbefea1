"""The subscriber census of a Redis node, on a fake clock: what it writes
to Redis and when (the Redis side is in test_redis_backend)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock

from chloed.backends import BackendUnavailable
from chloed.backends.redis.census import BEAT, REPORT_DELAY, Census
from chloed.backends.redis.channel import RedisChannel
from chloed.backends.redis.keys import SESSION_TTL
from chloed.backends.redis.scripts import NODE_SCRIPT, SESSION_SCRIPT


class Channel:
    def __init__(self, subscribers: int, polling: int) -> None:
        self.subscribers = dict.fromkeys(range(subscribers))
        self.polling = polling

    def counts(self) -> tuple[int, int]:
        return len(self.subscribers) - self.polling, self.polling


class FakeBroker:
    """Records the commands the census sends; answers each with ``answer``."""

    node = "n1"
    _commands: Any = None  # not connected unless a test says so

    def __init__(self) -> None:
        self.channels: dict[str, Channel] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.answer: Any = 1

    def _call(self, method: str, *args: Any) -> defer.Deferred[Any]:
        self.calls.append((method,) + args)
        if isinstance(self.answer, Exception):
            return defer.fail(self.answer)
        return defer.succeed(self.answer)

    def _ignore(self, failure: Any) -> None:
        """As the broker's: Redis being away is expected, anything else is not."""
        failure.trap(BackendUnavailable)

    def writes(self) -> list[tuple[Any, ...]]:
        calls, self.calls = self.calls, []
        return [c for c in calls if c[0] != "eval"]


def census_of(broker: FakeBroker, clock: Clock, **kwargs: Any) -> Census:
    """A census whose Redis, node and channels are ``broker``'s."""
    return Census(
        clock, call=broker._call, ignore=broker._ignore, node=broker.node, channels=lambda: broker.channels,
        connected=lambda: broker._commands is not None, **kwargs,
    )


def test_changes_close_together_are_one_write_per_channel():
    clock, broker = Clock(), FakeBroker()
    census = census_of(broker, clock)
    broker.channels["room"] = Channel(3, 1)
    for _ in range(5):
        census.changed("room")
    census.changed("gone")
    assert broker.writes() == []
    clock.advance(REPORT_DELAY)
    assert sorted(broker.writes()) == [
        ("expire", "chloe:r:room", 86400),
        ("hdel", "chloe:r:gone", "n1"),
        ("hset", "chloe:r:room", "n1", "2 1"),
    ]
    clock.advance(REPORT_DELAY * 10)
    assert broker.writes() == []


def test_beats_say_the_node_is_alive_and_leaving_says_so():
    clock, broker = Clock(), FakeBroker()
    census = census_of(broker, clock, node_ttl_ms=15_000)
    census.session_added(type("S", (), {"transport": "websocket"})())
    census.session_added(type("S", (), {"transport": "jsonp"})())
    census.start()
    clock.advance(BEAT)
    assert broker.calls == [("eval", NODE_SCRIPT, ["chloe:nodes"], ["n1", 15_000, 1, 1])]
    broker.calls = []
    census.stop()
    assert broker.calls == [("eval", NODE_SCRIPT, ["chloe:nodes"], ["n1", "", "", ""])]
    broker.calls = []
    clock.advance(BEAT * 3)
    assert broker.calls == []


def test_a_node_redis_had_given_up_reports_every_channel_again():
    clock, broker = Clock(), FakeBroker()
    census = census_of(broker, clock)
    broker.channels = {"a": Channel(1, 0), "b": Channel(2, 2)}
    broker.answer = 0  # the beat found no live entry for this node
    census.beat()
    broker.answer = 1
    clock.advance(REPORT_DELAY)
    assert sorted(c for c in broker.writes() if c[0] == "hset") == [
        ("hset", "chloe:r:a", "n1", "1 0"),
        ("hset", "chloe:r:b", "n1", "0 2"),
    ]


def test_redis_away_loses_no_count():
    """Writes while Redis is away fail quietly; the beat after it is back
    finds the node forgotten and reports every channel again."""
    clock, broker = Clock(), FakeBroker()
    census = census_of(broker, clock)
    broker.channels = {"room": Channel(4, 1)}
    broker.answer = BackendUnavailable("not connected to Redis")
    census.changed("room")
    clock.advance(REPORT_DELAY)
    done = census.beat()
    assert done.called and not isinstance(done.result, Exception)  # no failure left over
    broker.calls = []
    broker.answer = 0  # back, and its entry in chloe:nodes had expired
    census.beat()
    broker.answer = 1
    clock.advance(REPORT_DELAY)
    assert ("hset", "chloe:r:room", "n1", "3 1") in broker.writes()


class PendingBroker(FakeBroker):
    """Records the commands the census sends and leaves them unanswered
    until the test answers them (as Redis would, a moment later)."""

    def __init__(self) -> None:
        super().__init__()
        self._commands = object()  # connected
        self.pending: list[defer.Deferred[Any]] = []

    def _call(self, method: str, *args: Any) -> defer.Deferred[Any]:
        self.calls.append((method,) + args)
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending.append(d)
        return d

    def answer_all(self, value: Any = 1) -> None:
        pending, self.pending = self.pending, []
        for d in pending:
            if isinstance(value, Exception):
                d.errback(value)
            else:
                d.callback(value)

    def states(self) -> list[str]:
        """The enlist states of the NODE_SCRIPT calls so far ('' for a beat)."""
        return [c[3][4] if len(c[3]) > 4 else "" for c in self.calls if c[:2] == ("eval", NODE_SCRIPT)]


WEBSOCKET = type("S", (), {"transport": "websocket"})


def test_a_session_opening_tells_redis_at_once_and_a_close_a_moment_later():
    """A new session is registered with the node's sessions in one script
    sent at once (before the browser is answered connected); a closed one
    is taken off with the next write, a moment later."""
    clock, broker = Clock(), FakeBroker()
    broker._commands = object()
    census = census_of(broker, clock, node_ttl_ms=15_000)
    session = WEBSOCKET()
    census.session_added(session)
    census.session_opened("sid")
    assert broker.calls == [
        ("eval", SESSION_SCRIPT, ["chloe:nodes", "chloe:s:sid"], ["n1", 15_000, 1, 0, SESSION_TTL])
    ]
    broker.calls = []
    census.session_removed(session)
    assert broker.calls == []
    clock.advance(REPORT_DELAY)
    assert broker.calls == [("eval", NODE_SCRIPT, ["chloe:nodes"], ["n1", 15_000, 0, 0])]


def test_a_beat_finding_the_node_forgotten_counts_again_at_once_partial_until_redis_has_all():
    """The beat that finds the node forgotten starts a recount at once, not
    a report later: the node marks itself partial ("begin" the first time,
    "again" after), writes every channel, and says "done" only once Redis
    has taken every count."""
    clock, broker = Clock(), PendingBroker()
    broker.channels = {"a": Channel(1, 0), "b": Channel(2, 2)}
    census = census_of(broker, clock, node_ttl_ms=15_000)
    census.beat()
    broker.answer_all(0)  # forgotten
    assert broker.states() == ["", "begin"]
    assert sorted(c for c in broker.calls if c[0] == "hset") == [
        ("hset", "chloe:r:a", "n1", "1 0"),
        ("hset", "chloe:r:b", "n1", "0 2"),
    ]
    broker.answer_all()  # the partial entry and the HSETs; EXPIREs follow
    assert broker.states() == ["", "begin"]
    broker.answer_all()
    assert broker.states() == ["", "begin", "done"]
    broker.answer_all()
    broker.calls = []
    census.beat()
    broker.answer_all(0)
    assert broker.states() == ["", "again"]


def test_a_recount_with_a_write_that_failed_stays_partial_until_the_next_beat():
    """A count Redis did not take leaves the node partial (no "done"); the
    next beat counts everything again."""
    clock, broker = Clock(), PendingBroker()
    broker.channels = {"a": Channel(1, 0)}
    census = census_of(broker, clock, node_ttl_ms=15_000)
    census.start()
    census.recount()
    broker.answer_all(BackendUnavailable("lost the connection"))
    assert broker.states() == ["begin"]
    broker.calls = []
    clock.advance(BEAT)
    assert broker.states() == ["begin"]
    assert ("hset", "chloe:r:a", "n1", "1 0") in broker.calls
    census.stop()


def test_an_older_recount_does_not_finish_over_a_newer_one():
    """Two recounts on their way: only the newer says "done", after its
    own writes, so the older cannot clear the partial mark early."""
    clock, broker = Clock(), PendingBroker()
    broker.channels = {"a": Channel(1, 0)}
    census = census_of(broker, clock)
    census.recount()
    census.recount()
    for _ in range(3):
        broker.answer_all()
    assert broker.states() == ["begin", "begin", "done"]


def test_a_channel_counts_the_subscribers_on_their_way_in():
    """A subscriber whose join has told Redis is counted by the channel's
    count (streaming or polling) until it is in, and then once."""
    channel = RedisChannel("room")
    inside, arriving, poller = WEBSOCKET(), WEBSOCKET(), type("P", (), {"transport": "longpoll"})()
    channel.subscribers[inside] = None
    channel.arriving[arriving] = None
    channel.arriving[poller] = None
    assert channel.counts() == (2, 1)
    channel.subscribers[arriving] = None  # in, not yet forgotten as arriving
    assert channel.counts() == (2, 1)
