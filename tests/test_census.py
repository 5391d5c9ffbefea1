"""The subscriber census of a Redis node, on a fake clock: what it writes
to Redis and when (the Redis side is in test_redis_backend)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock

from chloed.backends import BackendUnavailable
from chloed.backends.redis.census import BEAT, REPORT_DELAY, Census
from chloed.backends.redis.scripts import NODE_SCRIPT


class Channel:
    def __init__(self, subscribers: int, polling: int) -> None:
        self.subscribers = dict.fromkeys(range(subscribers))
        self.polling = polling


class FakeBroker:
    """Records the commands the census sends; answers each with ``answer``."""

    node = "n1"

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


def test_changes_close_together_are_one_write_per_channel():
    clock, broker = Clock(), FakeBroker()
    census = Census(broker, clock)  # type: ignore[arg-type]
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
    census = Census(broker, clock, node_ttl_ms=15_000)  # type: ignore[arg-type]
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
    census = Census(broker, clock)  # type: ignore[arg-type]
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
    census = Census(broker, clock)  # type: ignore[arg-type]
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
