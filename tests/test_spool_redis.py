"""The Redis spool against a real ``redis-server``: several spools in this
process, each on its own connection, stand for several nodes. Beats are
driven by a ``Clock`` each test advances (or by calling ``beat()``); the
round trips to Redis go through the real reactor."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from chloed.backends.redis.link import RedisLink
from chloed.spool.base import MESSAGE, DeadLetter, Record, SpoolError
from chloed.spool.redis import OWNER_PREFIX, STREAM_PREFIX, STREAMS_KEY, RedisSpool
from tests.backends.support import until
from tests.redis_server import RedisServer, redis_server  # noqa: F401 (fixture)
from tests.servers import free_port


@pytest.fixture
def links(redis_server: RedisServer):  # noqa: F811
    """Make Redis connections (one per node) to the test's Redis, or to
    ``port``; all are closed after."""
    made: list[RedisLink] = []

    def make(port: int | None = None) -> RedisLink:
        link = RedisLink(
            reactor, "127.0.0.1", port or redis_server.port, 0,
            channels=["chloe-test:spool"], on_message=lambda channel, payload: None,
        )
        link.connect()
        made.append(link)
        return link

    yield make
    for link in made:
        pytest_twisted.blockon(link.disconnect())


class Node:
    """A spool on its own connection and clock, and what it recovered."""

    def __init__(self, link: RedisLink, name: str, **kwargs: Any) -> None:
        self.link = link
        self.clock = task.Clock()
        self.spool = RedisSpool(link.call, name, self.clock, **kwargs)
        self.recovered: list[Record] = []

    @defer.inlineCallbacks
    def start(self) -> Any:
        yield until(lambda: self.link.commands is not None)
        yield self.spool.start(self.recovered.append)
        yield self.spool.idle()

    def redis(self, *args: Any) -> defer.Deferred[Any]:
        """A command on this node's connection: its reply comes after every
        command the spool sent before it."""
        return self.link.call("execute_command", *args)

    @defer.inlineCallbacks
    def beat(self) -> Any:
        """One beat, driven by the clock, and the reading it starts."""
        self.clock.advance(self.spool.interval)
        yield self.spool.idle()


@pytest.fixture
def nodes(links: Callable[..., RedisLink]) -> Callable[..., Node]:
    """Make nodes on the test's Redis."""
    def make(name: str, **kwargs: Any) -> Node:
        return Node(links(), name, **kwargs)

    return make


def record(lane: str, n: int, body: bytes | None = None) -> Record:
    return Record(lane, MESSAGE, b"delivery-%d" % n, 1_700_000_000.25 + n, body or b'{"n":%d}' % n)


def ids(reply: Any) -> list[str]:
    """The entry ids of an XRANGE reply (the link hands back bytes)."""
    return [entry[0].decode() for entry in reply]


@pytest_twisted.inlineCallbacks
def test_the_stream_holds_only_what_is_pending(nodes):
    """An append fires once Redis has the entry, keyed ``<node>.<n>``; done
    deletes it (also when done comes before Redis answered the append)."""
    a = nodes("a")
    yield a.start()
    records = [record("lane", n) for n in range(3)]
    yield defer.gatherResults([a.spool.append(r) for r in records])
    assert [r.key for r in records] == ["a.1", "a.2", "a.3"]
    entries = yield a.redis("XRANGE", STREAM_PREFIX + "a", "-", "+")
    assert ids(entries) == [r.token.id for r in records]
    assert a.spool.pending == 3
    a.spool.done(records[1])
    a.spool.done(records[1])  # a second done is nothing
    assert ids((yield a.redis("XRANGE", STREAM_PREFIX + "a", "-", "+"))) == [records[0].token.id, records[2].token.id]
    assert a.spool.pending == 2
    early = record("lane", 3)
    appended = a.spool.append(early)
    a.spool.done(early)  # before the XADD's reply
    yield appended
    a.spool.done(records[0])
    a.spool.done(records[2])
    assert (yield a.redis("XLEN", STREAM_PREFIX + "a")) == 0
    assert a.spool.pending == 0
    assert (yield a.redis("EXISTS", STREAM_PREFIX + "a")) == 1  # empty, kept for the next append


@pytest_twisted.inlineCallbacks
def test_a_dead_nodes_records_are_taken_over_in_order(nodes):
    """Node A appends 50 records over 5 lanes and dies (no more beats, its
    owner key gone); B's next beat takes A's stream over and recovers all
    50 in append order (so each lane's order holds), keys and bytes as they
    were; once B is done with them A's stream and registration are gone."""
    a, b = nodes("a"), nodes("b")
    yield a.start()
    yield b.start()
    records = [record("lane%d" % (n % 5), n, b'{"n":%d,"raw":"\xff"}' % n) for n in range(50)]
    yield defer.gatherResults([a.spool.append(r) for r in records])
    owner = OWNER_PREFIX + "a"
    assert 0 < (yield a.redis("PTTL", owner)) <= a.spool.ttl_ms  # it would expire by itself
    yield b.beat()
    assert b.recovered == []  # A is alive
    yield a.redis("DEL", owner)  # A's owner key expired
    yield b.beat()
    assert [r.key for r in b.recovered] == [r.key for r in records]
    for lane in range(5):
        mine = [r for r in b.recovered if r.lane == "lane%d" % lane]
        assert [r.delivery for r in mine] == [b"delivery-%d" % n for n in range(lane, 50, 5)]
    got = b.recovered[7]
    assert (got.kind, got.arrived, got.body) == (MESSAGE, records[7].arrived, records[7].body)
    assert got.token.stream == STREAM_PREFIX + "a"
    assert (yield b.redis("GET", owner)) == b"b"
    assert b.spool.recovering == 50
    for r in b.recovered[:-1]:
        b.spool.done(r)
    yield b.beat()  # one left: the stream stays B's
    assert (yield b.redis("XLEN", STREAM_PREFIX + "a")) == 1
    assert 0 < (yield b.redis("PTTL", owner)) <= b.spool.ttl_ms
    b.spool.done(b.recovered[-1])
    yield b.spool.idle()
    assert (yield b.redis("EXISTS", STREAM_PREFIX + "a", owner)) == 0
    assert (yield b.redis("SMEMBERS", STREAMS_KEY)) == [b"b"]
    assert b.spool.recovering == 0
    yield b.beat()
    assert len(b.recovered) == 50


@pytest_twisted.inlineCallbacks
def test_exactly_one_survivor_takes_a_dead_stream(nodes):
    """Two nodes beating at once when A's stream is up for takeover: one
    claims it and recovers all of it, the other gets nothing, then or at
    its next beats."""
    a, b, c = nodes("a"), nodes("b"), nodes("c")
    for node in (a, b, c):
        yield node.start()
    yield defer.gatherResults([a.spool.append(record("lane", n)) for n in range(10)])
    yield a.redis("DEL", OWNER_PREFIX + "a")
    b.clock.advance(b.spool.interval)
    c.clock.advance(c.spool.interval)
    yield defer.gatherResults([b.spool.idle(), c.spool.idle()])
    yield b.beat()
    yield c.beat()
    counts = sorted([len(b.recovered), len(c.recovered)])
    assert counts == [0, 10]


@pytest_twisted.inlineCallbacks
def test_a_node_never_claims_its_own_stream(nodes):
    """A node whose owner key expired takes it back at its next beat rather
    than recovering its own records (its relay still holds them)."""
    a = nodes("a")
    yield a.start()
    yield a.spool.append(record("lane", 1))
    yield a.redis("DEL", OWNER_PREFIX + "a")
    yield a.beat()
    assert a.recovered == []
    assert (yield a.redis("GET", OWNER_PREFIX + "a")) == b"a"


@pytest_twisted.inlineCallbacks
def test_a_node_whose_stream_was_taken_goes_on_with_a_new_one(nodes):
    """A node that missed its beats for longer than ttl_ms finds its stream
    taken over: it appends to a new one, which nobody else claims."""
    a, b = nodes("a"), nodes("b")
    yield a.start()
    yield b.start()
    old = record("lane", 1)
    yield a.spool.append(old)
    yield a.redis("DEL", OWNER_PREFIX + "a")
    yield b.beat()
    assert [r.key for r in b.recovered] == ["a.1"]
    yield a.beat()
    assert a.spool.stream == STREAM_PREFIX + "a-1"
    new = record("lane", 2)
    yield a.spool.append(new)
    assert new.token.stream == STREAM_PREFIX + "a-1"
    assert a.spool.pending == 1
    yield b.beat()
    assert len(b.recovered) == 1
    a.spool.done(old)  # deleted where it is, in the stream B holds
    b.spool.done(b.recovered[0])
    yield b.spool.idle()
    assert (yield b.redis("EXISTS", STREAM_PREFIX + "a")) == 0


@pytest_twisted.inlineCallbacks
def test_a_clean_stop_lets_another_node_take_over_at_once(nodes):
    """Stopping with records pending leaves them in Redis and deletes the
    owner key, so the next beat of another node delivers them; stopping
    with nothing pending deletes the stream and its registration."""
    a, b, c = nodes("a"), nodes("b"), nodes("c")
    for node in (a, b, c):
        yield node.start()
    yield a.spool.append(record("lane", 1))
    yield a.spool.stop()
    assert (yield b.redis("EXISTS", OWNER_PREFIX + "a")) == 0
    assert (yield b.redis("XLEN", STREAM_PREFIX + "a")) == 1
    with pytest.raises(SpoolError):
        yield a.spool.append(record("lane", 2))
    yield b.beat()
    assert [r.key for r in b.recovered] == ["a.1"]
    yield c.spool.stop()
    assert (yield b.redis("EXISTS", OWNER_PREFIX + "c", STREAM_PREFIX + "c")) == 0
    assert (yield b.redis("SISMEMBER", STREAMS_KEY, "c")) == 0


@pytest_twisted.inlineCallbacks
def test_dead_letters_are_kept_paged_revived_and_deleted(nodes):
    """Buried records leave their stream for the cluster's dead letters,
    paged in the order they died; revive moves the ones asked for back to
    the reviving node's stream and fires with them in arrival order;
    delete says whether there was one."""
    a, b = nodes("a"), nodes("b")
    yield a.start()
    yield b.start()
    records = [record("lane", n) for n in range(5)]
    yield defer.gatherResults([a.spool.append(r) for r in records])
    for n in (3, 0, 1, 2):
        a.spool.bury(DeadLetter(records[n], f"reason {n}", 500 + n if n else None, 1_800_000_000.0 + n))
    assert (yield a.redis("XLEN", STREAM_PREFIX + "a")) == 1
    assert a.spool.dead_count() == 4
    assert a.spool.pending == 1
    first = yield b.spool.dead_letters(2, None)  # any node sees them
    assert [d.id for d in first] == ["a.4", "a.1"]
    assert (first[0].reason, first[0].status, first[0].died) == ("reason 3", 503, 1_800_000_003.0)
    assert first[1].status is None
    assert (first[0].record.body, first[0].record.arrived) == (records[3].body, records[3].arrived)
    assert [d.id for d in (yield b.spool.dead_letters(2, "a.1"))] == ["a.2", "a.3"]
    assert (yield b.spool.dead_letters(2, "a.3")) == []
    assert (yield b.spool.dead_letters(2, "unknown")) == []
    revived = yield b.spool.revive(["a.4", "a.2", "unknown", "a.4"])
    assert [r.key for r in revived] == ["a.2", "a.4"]  # in arrival order
    assert [r.token.stream for r in revived] == [STREAM_PREFIX + "b"] * 2
    assert ids((yield b.redis("XRANGE", STREAM_PREFIX + "b", "-", "+"))) == [r.token.id for r in revived]
    assert revived[1].body == records[3].body and revived[1].delivery == records[3].delivery
    assert b.spool.dead_count() == 2 and b.spool.pending == 2
    assert (yield b.spool.delete("a.1")) is True
    assert (yield b.spool.delete("a.1")) is False
    assert [r.key for r in (yield b.spool.revive(None))] == ["a.3"]
    assert b.spool.dead_count() == 0
    b.spool.done(revived[0])
    assert (yield b.redis("XLEN", STREAM_PREFIX + "b")) == 2


@pytest_twisted.inlineCallbacks
def test_dead_letters_are_bounded(nodes):
    """Past dead_limit the oldest dead letters are dropped and counted; a
    bury before the append's reply waits for it."""
    a = nodes("a", dead_limit=3)
    yield a.start()
    records = [record("lane", n) for n in range(5)]
    appends = [a.spool.append(r) for r in records]
    for r in records:
        a.spool.bury(DeadLetter(r, "gone", None, 0.0))
    yield defer.gatherResults(appends)
    assert [d.id for d in (yield a.spool.dead_letters(10, None))] == ["a.3", "a.4", "a.5"]
    assert (a.spool.dead_count(), a.spool.dead_dropped) == (3, 2)
    assert (yield a.redis("XLEN", STREAM_PREFIX + "a")) == 0


@pytest_twisted.inlineCallbacks
def test_without_redis_start_and_append_fail(links, nodes, redis_server):  # noqa: F811
    """No Redis to reach: start tries for start_timeout, then fails with
    SpoolError, and so does append. Redis dying under a running spool:
    appends fail with SpoolError."""
    nowhere = Node(links(free_port()), "x", start_timeout=0.5)
    started = nowhere.spool.start(nowhere.recovered.append)
    for _ in range(4):
        assert not started.called
        nowhere.clock.advance(0.1)
    nowhere.clock.advance(0.2)
    with pytest.raises(SpoolError):
        yield started
    with pytest.raises(SpoolError):
        yield nowhere.spool.append(record("lane", 1))
    a = nodes("a")
    yield a.start()
    yield a.spool.append(record("lane", 1))
    redis_server.kill()
    yield until(lambda: a.link.commands is None)
    with pytest.raises(SpoolError):
        yield a.spool.append(record("lane", 2))
    yield a.spool.stop()


@pytest_twisted.inlineCallbacks
def test_an_append_never_makes_a_stream_by_itself(nodes):
    """A node's stream gone from Redis (lost, or taken over and deleted):
    the append fails rather than writing where no node would look, and the
    node registers its stream again for the next one."""
    a = nodes("a")
    yield a.start()
    yield a.redis("DEL", STREAM_PREFIX + "a")
    with pytest.raises(SpoolError):
        yield a.spool.append(record("lane", 1))
    yield a.spool.idle()
    later = record("lane", 2)
    yield a.spool.append(later)
    assert ids((yield a.redis("XRANGE", STREAM_PREFIX + "a", "-", "+"))) == [later.token.id]
    assert (yield a.redis("SISMEMBER", STREAMS_KEY, "a")) == 1
