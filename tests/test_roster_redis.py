"""The roster of sessions in Redis (chloed/backends/redis/roster.py) against
a real ``redis-server``: two brokers in this process stand for two nodes.

Each broker's timers (census beats, roster flushes) run on its own
:class:`Clock`, so a test says when a flush happens; the connections use
the reactor. A command sent after a flush on the same connection answers
after it, which is how a test knows Redis has the flush.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock

from chloed.backends.base import SessionListing
from chloed.backends.redis import RedisBroker
from chloed.backends.redis.census import BEAT
from chloed.backends.redis.keys import ROSTER_PREFIX
from chloed.backends.redis.roster import FLUSH_DELAY, TTL_FACTOR
from chloed.backends.redis.scripts import ROSTER_SCRIPT
from chloed.session import Session
from tests.redis_server import RedisServer, redis_server  # noqa: F401 (fixture)
from tests.test_redis_backend import until


class Node:
    """One broker, its clock, and a count of its roster writes."""

    def __init__(self, url: str, name: str) -> None:
        self.clock = Clock()
        self.broker = RedisBroker(self.clock, 100, 300, url, reactor=reactor, node=name)
        self.roster_writes = 0
        call = self.broker.roster._call

        def counting(method: str, *args: Any) -> defer.Deferred[Any]:
            if method == "eval" and args[0] == ROSTER_SCRIPT:
                self.roster_writes += 1
            return call(method, *args)

        self.broker.roster._call = counting
        self.broker.connect()

    @defer.inlineCallbacks
    def open(self, id: str, *channels: str, transport: str = "websocket", user: Any = None) -> Any:
        """A session of this node subscribed to ``channels``, as the hub
        makes one."""
        session = Session(id, transport, 1 << 20, lambda s: None)
        session.user = user
        yield self.broker.add_session(session)
        for channel in channels:
            session.channels.add(channel)
            yield self.broker.subscribe(channel, session)
        return session

    def close(self, session: Session) -> None:
        self.broker.remove_session(session, session.channels)
        session.channels.clear()

    @defer.inlineCallbacks
    def flushed(self) -> Any:
        """The flush due now, and Redis having it (a PING after it on the
        same connection answers after it)."""
        self.clock.advance(FLUSH_DELAY)
        yield self.broker._link.call("ping")

    @defer.inlineCallbacks
    def walk(self, limit: int) -> Any:
        """``(node, id)`` of every page, following ``next`` to the end."""
        pages, cursor = [], None
        while True:
            listing: SessionListing = yield self.broker.session_list(limit, cursor)
            assert listing.scope == "cluster"
            pages.append([(s.node, s.id) for s in listing.sessions])
            if listing.next is None:
                return pages
            cursor = listing.next


def made_nodes(url: str, kind: Callable[[str, str], Any]) -> Iterator[Callable[[str], Any]]:
    """Make nodes of ``kind`` on Redis at ``url``; all are disconnected after
    (the body of a ``nodes`` fixture)."""
    made: list[Any] = []

    def make(name: str) -> Any:
        node = kind(url, name)
        made.append(node)
        return node

    yield make
    for node in made:
        pytest_twisted.blockon(node.broker.disconnect())


@pytest.fixture
def nodes(redis_server: RedisServer) -> Iterator[Callable[[str], Node]]:  # noqa: F811
    """Make nodes on the test's Redis; all are disconnected after."""
    yield from made_nodes(redis_server.url, Node)


@defer.inlineCallbacks
def up(*nodes: Node) -> Any:
    yield until(lambda: all(n.broker.backend_state == "up" for n in nodes))


def listed(listing: SessionListing) -> dict[str, tuple[str | None, str, Any, list[str]]]:
    return {s.id: (s.node, s.transport, s.user, s.channels) for s in listing.sessions}


@pytest_twisted.inlineCallbacks
def test_the_sessions_of_two_nodes_are_listed_on_either(nodes):
    """Each node's sessions, with their transport, user, sorted channels
    and node, read back from Redis on both nodes."""
    a, b = nodes("node-a"), nodes("node-b")
    yield up(a, b)
    user = {"id": "u1", "info": {"name": "Ada"}}
    yield a.open("s1", "news", "alerts", user=user)
    yield b.open("s2", transport="sse")
    yield a.flushed()
    yield b.flushed()
    expected = {
        "s1": ("node-a", "websocket", user, ["alerts", "news"]),
        "s2": ("node-b", "sse", None, []),
    }
    for node in (a, b):
        listing = yield node.broker.session_list(100, None)
        assert listed(listing) == expected
        assert listing.next is None


@pytest_twisted.inlineCallbacks
def test_nothing_is_written_before_the_flush_and_then_one_write(nodes):
    """Opening and subscribing 50 sessions writes nothing to the roster
    while they are answered; the flush writes them in one script."""
    a = nodes("node-a")
    yield up(a)
    for n in range(50):
        yield a.open(f"s{n:02}", "one", "two")
    assert a.roster_writes == 0
    listing = yield a.broker.session_list(100, None)
    assert listing.sessions == []
    yield a.flushed()
    assert a.roster_writes == 1
    listing = yield a.broker.session_list(100, None)
    assert len(listing.sessions) == 50
    assert all(s.channels == ["one", "two"] for s in listing.sessions)


@pytest_twisted.inlineCallbacks
def test_pages_go_across_nodes_by_node_then_id_each_session_once(nodes):
    """Pages of ``limit`` run through node A's sessions, then node B's,
    whatever the size: a page may hold the end of one and the start of the
    next; the last page's ``next`` is None and it is never empty."""
    a, b = nodes("node-a"), nodes("node-b")
    yield up(a, b)
    for id in ("a1", "a2", "a3"):
        yield a.open(id)
    for id in ("b1", "b2", "b3", "b4"):
        yield b.open(id)
    yield a.flushed()
    yield b.flushed()
    everyone = [("node-a", id) for id in ("a1", "a2", "a3")] + [("node-b", f"b{n}") for n in range(1, 5)]
    assert (yield a.walk(2)) == [everyone[0:2], everyone[2:4], everyone[4:6], everyone[6:]]
    assert (yield b.walk(3)) == [everyone[0:3], everyone[3:6], everyone[6:]]
    assert (yield a.walk(7)) == [everyone]
    assert (yield a.walk(1000)) == [everyone]


@pytest_twisted.inlineCallbacks
def test_a_walk_lists_once_every_session_there_throughout(nodes):
    """Sessions ending and opening between two pages: each one there from
    the first page to the last is listed exactly once."""
    a, b = nodes("node-a"), nodes("node-b")
    yield up(a, b)
    sessions = {}
    for id in ("a1", "a2", "a3", "a4"):
        sessions[id] = yield a.open(id)
    for id in ("b1", "b2"):
        sessions[id] = yield b.open(id)
    yield a.flushed()
    yield b.flushed()
    first = yield a.broker.session_list(2, None)
    assert [s.id for s in first.sessions] == ["a1", "a2"]
    a.close(sessions["a2"])  # listed already
    a.close(sessions["a3"])  # not yet
    yield a.open("a0")  # before the cursor
    yield b.open("b3")  # after it
    yield a.flushed()
    yield b.flushed()
    seen = [s.id for s in first.sessions]
    cursor = first.next
    while cursor is not None:
        page = yield a.broker.session_list(2, cursor)
        seen += [s.id for s in page.sessions]
        cursor = page.next
    assert seen == ["a1", "a2", "a4", "b1", "b2", "b3"]


@pytest_twisted.inlineCallbacks
def test_a_session_that_left_disappears_after_the_flush(nodes):
    """Closing a session, or its leaving a channel, shows in the listing
    once the node has flushed (within FLUSH_DELAY), not before."""
    a, b = nodes("node-a"), nodes("node-b")
    yield up(a, b)
    leaves = yield a.open("s1", "news")
    stays = yield a.open("s2", "news", "sport")
    yield a.flushed()
    a.close(leaves)
    stays.channels.discard("news")
    a.broker.unsubscribe("news", stays)
    before = yield b.broker.session_list(100, None)
    assert set(listed(before)) == {"s1", "s2"}
    yield a.flushed()
    after = yield b.broker.session_list(100, None)
    assert listed(after) == {"s2": ("node-a", "websocket", None, ["sport"])}


@pytest_twisted.inlineCallbacks
def test_a_node_whose_census_entry_expired_is_not_listed(nodes, redis_server):  # noqa: F811
    """A node that stopped beating (its chloe:nodes entry past its time)
    is not listed, its roster still in Redis until it expires too; the
    cursor of a page ending on it carries on with the next node."""
    a, b, c = nodes("node-a"), nodes("node-b"), nodes("node-c")
    yield up(a, b, c)
    yield a.open("a1")
    yield a.open("a2")
    yield b.open("b1")
    yield c.open("c1")
    for node in (a, b, c):
        yield node.flushed()
    first = yield a.broker.session_list(1, None)
    page = yield a.broker.session_list(1, first.next)
    assert [s.id for s in page.sessions] == ["a2"]
    ttl = int(redis_server.command("PTTL", ROSTER_PREFIX + "node-b").split(b"\r\n")[0][1:])
    assert 0 < ttl <= TTL_FACTOR * b.broker.census.node_ttl_ms
    redis_server.command("HSET", "chloe:nodes", "node-b", "1 1 0 0")  # expired in 1970
    rest = yield a.broker.session_list(100, page.next)
    assert [(s.node, s.id) for s in rest.sessions] == [("node-c", "c1")]
    assert (yield c.walk(100)) == [[("node-a", "a1"), ("node-a", "a2"), ("node-c", "c1")]]


@pytest_twisted.inlineCallbacks
def test_a_node_leaving_takes_its_roster_with_it(nodes, redis_server):  # noqa: F811
    """A node shutting down removes its roster at once."""
    a, b = nodes("node-a"), nodes("node-b")
    yield up(a, b)
    yield a.open("a1")
    yield b.open("b1")
    yield a.flushed()
    yield b.flushed()
    yield b.broker.disconnect()
    assert redis_server.command("EXISTS", ROSTER_PREFIX + "node-b") == b":0\r\n"
    assert [s.id for s in (yield a.broker.session_list(100, None)).sessions] == ["a1"]


@pytest_twisted.inlineCallbacks
def test_pusher_sockets_are_never_written(nodes, redis_server):  # noqa: F811
    """A Pusher socket's session costs the roster nothing."""
    a = nodes("node-a")
    yield up(a)
    yield a.open("1234.5678", "pusher~1~news", transport="pusher")
    yield a.open("s1")
    yield a.flushed()
    assert redis_server.command("ZCARD", ROSTER_PREFIX + "node-a") == b":1\r\n"
    assert [s.id for s in (yield a.broker.session_list(100, None)).sessions] == ["s1"]


@pytest_twisted.inlineCallbacks
def test_a_roster_redis_lost_is_written_again_at_the_next_beat(nodes, redis_server):  # noqa: F811
    """The beat pushes the roster's expiry on; when it finds the roster
    gone while the node has sessions, it writes every one again."""
    a = nodes("node-a")
    yield up(a)
    yield a.open("s1", "news")
    yield a.open("s2")
    yield a.flushed()
    redis_server.command("DEL", ROSTER_PREFIX + "node-a")
    assert (yield a.broker.session_list(100, None)).sessions == []
    writes = a.roster_writes
    a.clock.advance(BEAT)  # the census beats; the roster is found gone
    yield until(lambda: a.roster_writes > writes)
    yield a.broker._link.call("ping")
    assert listed((yield a.broker.session_list(100, None))) == {
        "s1": ("node-a", "websocket", None, ["news"]), "s2": ("node-a", "websocket", None, []),
    }
