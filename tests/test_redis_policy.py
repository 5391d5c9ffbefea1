"""What each channel's history keeps with Redis (its policy's size and
ttl), the cluster's position, and pages of history
(chloed/backends/redis: PUBLISH_SCRIPT, POSITION_SCRIPT, HISTORY_SCRIPT),
against a real ``redis-server``; several brokers in this process stand for
several nodes sharing it."""

from __future__ import annotations

import json
from typing import Any, Callable, Iterator

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from chloed.backends.base import HistoryPage, Policy
from chloed.backends.redis import RedisBroker, parse_key
from chloed.backends.redis.keys import HISTORY_PREFIX
from tests.backends.support import Recorder, until
from tests.redis_server import RedisServer, redis_server  # noqa: F401 (fixture)

#: Two channels keeping different histories; every other the globals.
POLICIES: dict[str, tuple[int, float]] = {"short": (2, 60.0), "long": (5, 300.0), "brief": (100, 5.0)}


def policy(name: str) -> tuple[int, float]:
    return POLICIES.get(name, (100, 300.0))


def integer(answer: bytes) -> int:
    """A RESP integer answer (``:5\\r\\n``)."""
    assert answer[:1] == b":", answer
    return int(answer[1:].split(b"\r\n")[0])


@pytest.fixture
def nodes(redis_server: RedisServer) -> Iterator[Callable[..., RedisBroker]]:  # noqa: F811
    """Make brokers on the test's Redis, each up before it is given; all
    are disconnected after."""
    made: list[RedisBroker] = []

    def make(history_size: int = 100, history_ttl: float = 300.0, policy: Policy | None = policy) -> RedisBroker:
        broker = RedisBroker(reactor, history_size, history_ttl, redis_server.url, policy=policy)
        broker.connect()
        made.append(broker)
        return broker

    yield make
    for broker in made:
        pytest_twisted.blockon(broker.disconnect())


@defer.inlineCallbacks
def up(*brokers: RedisBroker) -> Any:
    yield until(lambda: all(b.backend_state == "up" for b in brokers))
    return brokers


@defer.inlineCallbacks
def publish_n(broker: RedisBroker, names: list[str], n: int) -> Any:
    """``n`` messages (0, 1, …) to ``names`` at once each; their ids per channel."""
    ids: dict[str, list[str]] = {name: [] for name in names}
    for i in range(n):
        result = yield broker.publish(names, str(i).encode())
        for name in names:
            ids[name].append(result.ids[name])
    return ids


@pytest_twisted.inlineCallbacks
def test_one_publish_to_channels_of_different_sizes_trims_each_to_its_own(nodes, redis_server):  # noqa: F811
    """A publish to two channels at once keeps 2 messages of one, 5 of the
    other, as their policies say; a resume from before what a channel kept
    is not recovered, one within it is."""
    (a,) = yield up(nodes())
    ids = yield publish_n(a, ["short", "long"], 6)
    assert integer(redis_server.command("XLEN", HISTORY_PREFIX + "short")) == 2
    assert integer(redis_server.command("XLEN", HISTORY_PREFIX + "long")) == 5
    recovered, missed = yield a.history("short", ids["short"][0])
    assert recovered is False and [f.id for f in missed] == ids["short"][4:]
    recovered, missed = yield a.history("long", ids["long"][0])
    assert recovered is True and [f.id for f in missed] == ids["long"][1:]


@pytest_twisted.inlineCallbacks
def test_each_stream_expires_after_its_own_ttl(nodes, redis_server):  # noqa: F811
    """A channel with a 60 s ttl expires 60 s after its last message, one
    with 300 s after 300 s."""
    (a,) = yield up(nodes())
    yield a.publish(["short", "long"], b"1")
    short = integer(redis_server.command("PTTL", HISTORY_PREFIX + "short"))
    long = integer(redis_server.command("PTTL", HISTORY_PREFIX + "long"))
    assert 50_000 < short <= 60_000
    assert 250_000 < long <= 300_000


@pytest_twisted.inlineCallbacks
def test_recovered_follows_each_channels_ttl_on_joins_and_reads(nodes):
    """A cursor 10 s old, before a channel's first message: older than a
    5 s channel keeps anything (not recovered, whether read or joined, on
    any node) but within a 300 s channel's ttl (recovered)."""
    a, b = yield up(nodes(), nodes())
    position = yield a.position()
    ms, seq = parse_key(position)
    old = f"{ms - 10_000}-{seq}"
    yield a.publish(["brief", "long"], b'"x"')
    for node in (a, b):
        assert (yield node.history("brief", old))[0] is False
        assert (yield node.history("long", old))[0] is True
        assert (yield node.read_history("brief", old, 10)).recovered is False
        assert (yield node.read_history("long", old, 10)).recovered is True
    recovered, missed = yield b.subscribe_many(["brief", "long"], Recorder("s1"), old)
    assert recovered == {"brief": False, "long": True}
    assert [json.loads(f.payload)["data"] for f in missed] == ["x", "x"]


@pytest_twisted.inlineCallbacks
def test_without_a_policy_every_channel_keeps_the_globals(nodes, redis_server):  # noqa: F811
    """``policy=None``: the history_size given keeps every channel."""
    (a,) = yield up(nodes(history_size=3, policy=None))
    yield publish_n(a, ["short", "other"], 5)
    assert integer(redis_server.command("XLEN", HISTORY_PREFIX + "short")) == 3
    assert integer(redis_server.command("XLEN", HISTORY_PREFIX + "other")) == 3


@pytest_twisted.inlineCallbacks
def test_position_is_the_clusters_last_id_and_a_cursor_that_misses_nothing(nodes):
    """The position on either node has the seq of the last id given out on
    any node, never an ms before it; a browser subscribing from it gets
    exactly what was published after, recovered."""
    a, b = yield up(nodes(), nodes())
    first = yield b.position()
    assert parse_key(first) is not None
    result = yield a.publish(["news"], b"1")
    position = yield b.position()
    last = parse_key(result.ids["news"])
    assert parse_key(position)[1] == last[1] and parse_key(position) >= last
    later = yield a.publish(["news", "sport"], b"2")
    assert parse_key(later.ids["news"]) > parse_key(position)
    recovered, missed = yield b.subscribe_many(["news", "sport"], Recorder("s1"), position)
    assert recovered == {"news": True, "sport": True}
    assert [f.id for f in missed] == [later.ids["news"], later.ids["sport"]]


@pytest_twisted.inlineCallbacks
def test_a_page_without_since_is_the_newest_oldest_first(nodes):
    """Without ``since``: the newest ``limit`` messages, oldest first, the
    position their last id; an empty channel's position is the cluster's,
    from which a subscriber misses nothing."""
    a, b = yield up(nodes(), nodes())
    ids = (yield publish_n(a, ["long"], 4))["long"]
    page: HistoryPage = yield b.read_history("long", None, 3)
    assert page.messages == [(ids[1], b"1"), (ids[2], b"2"), (ids[3], b"3")]
    assert (page.position, page.recovered, page.more) == (ids[3], True, False)
    empty: HistoryPage = yield b.read_history("nothing-here", None, 3)
    assert (empty.messages, empty.recovered, empty.more) == ([], True, False)
    assert parse_key(empty.position)[1] == parse_key(ids[3])[1]
    later = yield a.publish(["nothing-here"], b'"late"')
    recovered, missed = yield b.subscribe("nothing-here", Recorder("s1"), empty.position)
    assert recovered is True and [f.id for f in missed] == [later.ids["nothing-here"]]


@pytest_twisted.inlineCallbacks
def test_pages_after_since_say_more_until_the_last(nodes):
    """With ``since``: ``limit`` messages after it, ``more`` while some
    follow (the position the page's last id), then the rest without."""
    (a,) = yield up(nodes())
    ids = (yield publish_n(a, ["long"], 5))["long"]
    page: HistoryPage = yield a.read_history("long", ids[0], 2)
    assert page.messages == [(ids[1], b"1"), (ids[2], b"2")]
    assert (page.position, page.recovered, page.more) == (ids[2], True, True)
    page = yield a.read_history("long", page.position, 2)
    assert [id for id, _ in page.messages] == ids[3:5]
    assert (page.position, page.more) == (ids[4], False)
    page = yield a.read_history("long", ids[4], 2)
    assert (page.messages, page.recovered, page.more) == ([], True, False)
    assert parse_key(page.position) >= parse_key(ids[4])


@pytest_twisted.inlineCallbacks
def test_a_page_after_trimmed_messages_is_not_recovered(nodes):
    """A channel keeping 2 of 6: a page after the first is not recovered
    (it holds the 2 kept), one after the 4th is; a cursor not of this
    cluster reads from the oldest kept, not recovered."""
    (a,) = yield up(nodes())
    ids = (yield publish_n(a, ["short"], 6))["short"]
    page: HistoryPage = yield a.read_history("short", ids[0], 10)
    assert [id for id, _ in page.messages] == ids[4:]
    assert (page.recovered, page.more) == (False, False)
    assert (yield a.read_history("short", ids[3], 10)).recovered is True
    for foreign in ("99999999999999-1", f"1-{parse_key(ids[-1])[1] + 1000}", "not-an-id"):
        page = yield a.read_history("short", foreign, 1)
        assert [id for id, _ in page.messages] == ids[4:5], foreign
        assert (page.recovered, page.more) == (False, True), foreign
