"""The Redis broker against a real ``redis-server``: several brokers in this
process stand for several nodes sharing one Redis."""

from __future__ import annotations

import json
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from chloed.backends import BackendUnavailable
from chloed.backends.redis import RedisBroker, parse_key
from chloed.backends.redis.scripts import NODE_SCRIPT
from chloed.frames import Encoded
from tests.redis_server import RedisServer, redis_server  # noqa: F401 (fixture)

TIMEOUT = 10.0


class Recorder:
    """A subscriber that keeps every frame it gets."""

    def __init__(self, id: str = "s1") -> None:
        self.id = id
        self.frames: list[Encoded] = []
        self._waiting: list[tuple[Callable[[], bool], defer.Deferred[None]]] = []

    def deliver(self, frame: Encoded) -> bool:
        self.frames.append(frame)
        for entry in list(self._waiting):
            if entry[0]():
                self._waiting.remove(entry)
                entry[1].callback(None)
        return False

    def messages(self) -> list[Any]:
        return [json.loads(f.payload) for f in self.frames if f.kind == "message"]

    def data(self) -> list[Any]:
        return [m["data"] for m in self.messages()]

    def wait(self, count: int) -> defer.Deferred[None]:
        """Fires once ``count`` messages arrived (fails after TIMEOUT)."""
        done: defer.Deferred[None] = defer.Deferred()
        predicate = lambda: len(self.messages()) >= count  # noqa: E731
        if predicate():
            done.callback(None)
        else:
            self._waiting.append((predicate, done))
        return done.addTimeout(TIMEOUT, reactor)


def until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> defer.Deferred[None]:
    """Fires once ``predicate()`` holds, checking each 10 ms (a bounded wait
    for a state change, not a sleep)."""
    deadline = reactor.seconds() + timeout

    @defer.inlineCallbacks
    def check() -> Any:
        while not predicate():
            if reactor.seconds() > deadline:
                raise AssertionError("timed out waiting for a condition")
            yield task.deferLater(reactor, 0.01, lambda: None)

    return check()


@defer.inlineCallbacks
def subscribed_pair(nodes: Callable[[], RedisBroker], channel: str) -> Any:
    """Two nodes up, and a subscriber of ``channel`` on the second that has
    had message 1 from the first: ``(a, b, subscriber)``."""
    a, b = nodes(), nodes()
    yield until(lambda: a.backend_state == "up" and b.backend_state == "up")
    sub = Recorder()
    yield b.subscribe(channel, sub)
    yield a.publish([channel], b"1")
    yield sub.wait(1)
    return a, b, sub


@pytest.fixture
def nodes(redis_server: RedisServer):  # noqa: F811
    """Make brokers on the test's Redis; all are disconnected after."""
    made: list[RedisBroker] = []

    def make(history_size: int = 100, history_ttl: float = 300, node_ttl_ms: int | None = None) -> RedisBroker:
        broker = RedisBroker(reactor, history_size, history_ttl, redis_server.url)
        if node_ttl_ms is not None:
            broker.census.node_ttl_ms = node_ttl_ms
        broker.connect()
        made.append(broker)
        return broker

    yield make
    for broker in made:
        pytest_twisted.blockon(broker.disconnect())


@pytest_twisted.inlineCallbacks
def test_a_publish_on_one_node_reaches_subscribers_on_another(nodes):
    """A message published on node A reaches B's subscriber, encoded once on
    B for all of B's subscribers, with an id that increases."""
    a, b = nodes(), nodes()
    yield until(lambda: a.backend_state == "up" and b.backend_state == "up")
    one, two = Recorder("one"), Recorder("two")
    assert (yield b.subscribe("pumpkin", one)) == (True, [])
    assert (yield b.subscribe("pumpkin", two)) == (True, [])
    first = yield a.publish(["pumpkin"], b'"Trotter"')
    second = yield a.publish(["pumpkin"], b'{"n":2}')
    yield one.wait(2)
    yield two.wait(2)
    assert one.data() == ["Trotter", {"n": 2}]
    assert one.frames[0] is two.frames[0]  # the same bytes for both
    ids = [first.ids["pumpkin"], second.ids["pumpkin"]]
    assert [m["id"] for m in one.messages()] == ids
    assert parse_key(ids[0]) < parse_key(ids[1])


@pytest_twisted.inlineCallbacks
def test_resume_on_another_node_replays_exactly_what_was_missed(nodes):
    """A subscriber resuming with ``since`` on any node gets every message
    after it, in order, and ``recovered: true``."""
    a, b = nodes(), nodes()
    yield until(lambda: a.backend_state == "up" and b.backend_state == "up")
    ids = []
    for n in range(5):
        ids.append((yield a.publish(["c"], str(n).encode())).ids["c"])
    sub = Recorder()
    recovered, missed = yield b.subscribe("c", sub, ids[1])
    assert recovered is True
    assert [json.loads(f.payload)["data"] for f in missed] == [2, 3, 4]
    assert [f.id for f in missed] == ids[2:]


@pytest_twisted.inlineCallbacks
def test_recovered_false_when_history_was_trimmed_or_the_id_is_foreign(nodes):
    """``recovered`` is false when ``since`` is older than what Redis kept,
    or is not an id of this cluster (then everything kept is replayed)."""
    a = nodes(history_size=3)
    yield until(lambda: a.backend_state == "up")
    ids = []
    for n in range(6):
        ids.append((yield a.publish(["t"], str(n).encode())).ids["t"])
    recovered, missed = yield a.subscribe("t", Recorder("x"), ids[0])
    assert recovered is False
    assert missed and missed[-1].id == ids[-1]
    recovered, missed = yield a.subscribe("t", Recorder("y"), ids[-2])
    assert recovered is True and [f.id for f in missed] == [ids[-1]]
    recovered, missed = yield a.subscribe("t", Recorder("z"), "not-an-id")
    assert recovered is False and missed[-1].id == ids[-1]
    recovered, missed = yield a.subscribe("fresh", Recorder("w"), ids[-1])
    assert recovered is True and missed == []


@pytest_twisted.inlineCallbacks
def test_joining_while_messages_flow_loses_and_repeats_nothing(nodes):
    """A subscriber joining with ``since`` while another node publishes
    gets every message after ``since`` exactly once, in order."""
    a, b = nodes(history_size=1000), nodes(history_size=1000)
    yield until(lambda: a.backend_state == "up" and b.backend_state == "up")
    first = yield a.publish(["flow"], b"0")
    sub = Recorder()
    answer: list[Any] = []

    def joined(result: Any) -> None:
        recovered, missed = result
        answer.append((recovered, len(missed)))
        for frame in missed:
            sub.deliver(frame)

    for n in range(1, 301):
        if n == 50:
            # Join while the publishes go on, one after the other.
            b.subscribe("flow", sub, first.ids["flow"]).addCallback(joined)
        yield a.publish(["flow"], str(n).encode())
    yield sub.wait(300)
    (recovered, replayed), = answer
    assert 0 < replayed < 300  # some came from history, the rest live
    assert recovered is True
    assert sub.data() == list(range(1, 301))


@pytest_twisted.inlineCallbacks
def test_subscribe_many_merges_the_replay_in_publish_order(nodes):
    """One cursor over several channels (SSE's Last-Event-ID) replays them
    merged in publish order."""
    a, b = nodes(), nodes()
    yield until(lambda: a.backend_state == "up" and b.backend_state == "up")
    start = yield a.publish(["x"], b"0")
    for n, name in enumerate(["x", "y", "x", "y", "y"], 1):
        yield a.publish([name], str(n).encode())
    recovered, missed = yield b.subscribe_many(["x", "y"], Recorder(), start.ids["x"])
    assert recovered == {"x": True, "y": True}
    assert [json.loads(f.payload)["data"] for f in missed] == [1, 2, 3, 4, 5]


@pytest_twisted.inlineCallbacks
def test_broadcast_and_one_session_across_nodes(nodes, redis_server):  # noqa: F811
    """A broadcast reaches every session of every node; a message to one
    session reaches it on whichever node holds it; an unknown session is
    None (404)."""
    a, b = nodes(), nodes()
    yield until(lambda: a.backend_state == "up" and b.backend_state == "up")
    on_a, on_b = Recorder("session-a"), Recorder("session-b")
    a.add_session(on_a)
    b.add_session(on_b)
    yield a.broadcast(b'"all"')
    yield on_a.wait(1)
    yield on_b.wait(1)
    assert on_a.messages()[0]["channel"] is None
    # B registers its session without waiting for Redis (on B's connection):
    # wait until A can see it.
    yield until(lambda: redis_server.command("GET", "chloe:s:session-b") == b"$16\r\n" + b.node.encode() + b"\r\n")
    result = yield a.to_session("session-b", b'"you"')
    assert result is not None and result.id
    yield on_b.wait(2)
    assert on_b.data() == ["all", "you"]
    assert (yield a.to_session("nobody", b"1")) is None


class Poller(Recorder):
    """A subscriber on a polling transport: counted as ``queued``."""

    transport = "longpoll"


@defer.inlineCallbacks
def receipt_until(node: RedisBroker, names: list[str], expected: tuple[int, int]) -> Any:
    """Publish to ``names`` until the receipt is ``(delivered, queued)`` (a
    node that stopped beating counts until its time is up); the last one."""
    deadline = reactor.seconds() + TIMEOUT
    while True:
        result = yield node.publish(names, b"0")
        if (result.delivered, result.queued) == expected or reactor.seconds() > deadline:
            return result
        yield task.deferLater(reactor, 0.05, lambda: None)


@pytest_twisted.inlineCallbacks
def test_receipts_count_the_subscribers_of_every_node_alive(nodes):
    """A publish on any node answers with the subscribers of every node:
    streaming ones delivered, polling ones queued; a node that leaves stops
    counting at once, one that dies once its beats are overdue."""
    a, b, c = nodes(), nodes(), nodes()
    c.census.node_ttl_ms = 300
    yield until(lambda: all(n.backend_state == "up" for n in (a, b, c)))
    one, two, poller, three = Recorder("one"), Recorder("two"), Poller("poller"), Recorder("three")
    yield a.subscribe("room", one)
    yield b.subscribe("room", two)
    yield b.subscribe("room", poller)
    yield c.subscribe("room", three)
    for node in (a, b, c):
        yield node.census.report()
        yield node.census.beat()
    result = yield a.publish(["room"], b'"hi"')
    assert (result.delivered, result.queued) == (3, 1)
    # Per channel, as on one node: a channel nobody reads adds nothing.
    result = yield b.publish(["room", "empty"], b'"hi"')
    assert (result.delivered, result.queued, len(result.ids)) == (3, 1, 2)

    assert b.unsubscribe("room", two)
    yield b.census.report()
    assert ((yield a.publish(["room"], b"1")).delivered, (yield a.publish(["room"], b"1")).queued) == (2, 1)

    yield b.census.stop()  # b shuts down: it stops counting at once
    result = yield a.publish(["room"], b"2")
    assert (result.delivered, result.queued) == (2, 0)

    c.census._loop.stop()  # c dies without a word: counted until its time is up
    result = yield receipt_until(a, ["room"], (1, 0))
    assert (result.delivered, result.queued) == (1, 0)


@pytest_twisted.inlineCallbacks
def test_broadcast_and_session_receipts(nodes, redis_server):  # noqa: F811
    """A broadcast's receipt counts the sessions of every node (streaming
    delivered, polling queued); a message to one session is delivered 1."""
    a, b = nodes(), nodes()
    yield until(lambda: a.backend_state == "up" and b.backend_state == "up")
    a.add_session(Recorder("s-a"))
    b.add_session(Recorder("s-b"))
    b.add_session(Poller("p-b"))
    yield a.census.beat()
    yield b.census.beat()
    result = yield a.broadcast(b'"all"')
    assert (result.delivered, result.queued) == (2, 1)
    yield until(lambda: redis_server.command("GET", "chloe:s:p-b") == b"$16\r\n" + b.node.encode() + b"\r\n")
    result = yield a.to_session("p-b", b'"you"')
    assert (result.delivered, result.queued) == (1, 0)
    b.remove_session(b.sessions["p-b"], [])
    yield b.census.beat()
    result = yield a.broadcast(b'"all"')
    assert (result.delivered, result.queued) == (2, 0)


@pytest_twisted.inlineCallbacks
def test_a_subscriber_is_counted_by_every_publish_once_it_is_in(nodes):
    """Once a join on node B has fired (the browser is answered
    ``subscribed``), a publish on node A counts it, with no wait: the first
    subscriber of the channel on B, later ones, a polling one, and one
    joining several channels with ``since``."""
    a, b = nodes(), nodes()
    yield until(lambda: a.backend_state == "up" and b.backend_state == "up")
    expected = [(1, 0), (1, 1), (2, 1)]
    for sub, counts in zip([Recorder("one"), Poller("two"), Recorder("three")], expected):
        yield b.subscribe("at-once", sub)
        result = yield a.publish(["at-once"], b"1")
        assert (result.delivered, result.queued, result.lower_bound) == counts + (False,)
    start = yield a.publish(["x"], b"0")
    yield b.subscribe_many(["x", "y"], Recorder("four"), start.ids["x"])
    result = yield a.publish(["x", "y"], b"2")
    assert (result.delivered, result.queued) == (2, 0)


@pytest_twisted.inlineCallbacks
def test_a_count_written_while_a_join_is_on_its_way_keeps_it(nodes):
    """One subscriber leaving while another's join is on its way: the
    count written for the leave still holds the one arriving, so once that
    one is in, a publish counts it."""
    a, b = nodes(), nodes()
    yield until(lambda: a.backend_state == "up" and b.backend_state == "up")
    first, second = Recorder("first"), Recorder("second")
    yield b.subscribe("race", first)
    joining = b.subscribe("race", second)  # its script is on its way
    assert b.unsubscribe("race", first)
    yield b.census.report()  # the leave's count, written before the join is in
    assert (yield joining) == (True, [])
    result = yield a.publish(["race"], b"1")
    assert (result.delivered, result.queued) == (1, 0)


@pytest_twisted.inlineCallbacks
def test_a_session_is_counted_by_broadcasts_once_opened(nodes):
    """A session opening on node B is counted by a broadcast on node A once
    B's connection to Redis has carried what the opening sent (before the
    browser heard ``connected``), not at B's next beat."""
    a, b = nodes(), nodes()
    yield until(lambda: a.backend_state == "up" and b.backend_state == "up")
    b.add_session(Recorder("s-b"))
    b.add_session(Poller("p-b"))
    yield b.subscribers("anything")  # a round trip on B's connection, after the opening
    result = yield a.broadcast(b'"all"')
    assert (result.delivered, result.queued, result.lower_bound) == (1, 1, False)


@defer.inlineCallbacks
def receipt_settles(node: RedisBroker, name: str, expected: tuple[int, int]) -> Any:
    """Publish to ``name`` until the receipt is ``expected`` and exact; the
    receipts seen on the way."""
    seen = []
    deadline = reactor.seconds() + TIMEOUT
    while True:
        result = yield node.publish([name], b"0")
        seen.append((result.delivered, result.queued, result.lower_bound))
        if seen[-1] == expected + (False,) or reactor.seconds() > deadline:
            return seen
        yield task.deferLater(reactor, 0.05, lambda: None)


@pytest_twisted.inlineCallbacks
def test_receipts_are_a_lower_bound_while_redis_has_lost_the_census(nodes, redis_server):  # noqa: F811
    """Redis loses its data (here FLUSHALL, then every connection dropped):
    the nodes reconnect and count again; meanwhile, and for a node's ttl
    after (a node may be slower to come back), receipts say they are a
    lower bound; then they are exact again."""
    a, b = nodes(node_ttl_ms=1000), nodes(node_ttl_ms=1000)
    yield until(lambda: a.backend_state == "up" and b.backend_state == "up")
    yield b.subscribe("kept", Recorder())
    result = yield a.publish(["kept"], b"1")
    assert (result.delivered, result.lower_bound) == (1, False)
    connection = a._commands
    assert redis_server.command("FLUSHALL") == b"+OK\r\n"
    assert redis_server.command("CLIENT", "KILL", "TYPE", "normal").startswith(b":")
    yield until(lambda: a._commands not in (None, connection))
    result = yield a.publish(["kept"], b"2")
    assert result.lower_bound is True
    seen = yield receipt_settles(a, "kept", (1, 0))
    assert seen[-1] == (1, 0, False), seen


@pytest_twisted.inlineCallbacks
def test_a_node_redis_gave_up_is_a_lower_bound_until_it_has_counted_again(nodes, redis_server):  # noqa: F811
    """A node Redis had given up (its entry gone) that speaks again is
    counted as partial until it has written all its counts again: receipts
    meanwhile say they are a lower bound, then count it exactly."""
    a, b = nodes(node_ttl_ms=1000), nodes(node_ttl_ms=1000)
    yield until(lambda: a.backend_state == "up" and b.backend_state == "up")
    yield b.subscribe("back", Recorder())
    assert redis_server.command("HDEL", "chloe:nodes", b.node) == b":1\r\n"
    yield a.publish(["back"], b"1")  # drops B's counts, as for a node dead
    yield b.census.beat()  # B finds itself forgotten and counts again
    result = yield a.publish(["back"], b"2")
    assert result.lower_bound is True
    seen = yield receipt_settles(a, "back", (1, 0))
    assert seen[-1] == (1, 0, False), seen


@pytest_twisted.inlineCallbacks
def test_a_node_writing_all_its_counts_again_makes_receipts_a_lower_bound(nodes, redis_server):  # noqa: F811
    """A node that starts writing all its channel counts is partial: a
    publish anywhere says its receipt is a lower bound until the node says
    it is done (a broadcast does not: sessions are in the node's entry). A
    node's first entry flags nothing more; a node found forgotten also makes
    every receipt, broadcasts too, a lower bound for its ttl."""
    a = nodes()
    yield until(lambda: a.backend_state == "up")

    def enlist(state: str) -> bytes:
        return redis_server.command("EVAL", NODE_SCRIPT, "1", "chloe:nodes", "other", "60000", "0", "0", state)

    @defer.inlineCallbacks
    def lower_bounds() -> Any:
        published = yield a.publish(["p"], b"1")
        broadcast = yield a.broadcast(b"1")
        return published.lower_bound, broadcast.lower_bound

    assert enlist("begin") == b":0\r\n"  # new
    assert (yield lower_bounds()) == (True, False)
    assert enlist("") == b":1\r\n"  # a beat: still partial
    assert (yield lower_bounds()) == (True, False)
    assert enlist("done") == b":1\r\n"
    assert (yield lower_bounds()) == (False, False)
    redis_server.command("HDEL", "chloe:nodes", "other")
    assert enlist("") == b":0\r\n"  # forgotten, and speaking again
    assert (yield lower_bounds()) == (True, True)


@pytest_twisted.inlineCallbacks
def test_last_subscriber_leaving_unsubscribes_the_node(nodes, redis_server):  # noqa: F811
    """A node listens to a channel's pub/sub only while it has subscribers."""
    b = nodes()
    yield until(lambda: b.backend_state == "up")
    sub = Recorder()
    yield b.subscribe("quiet", sub)
    assert b":1\r\n" in redis_server.command("PUBSUB", "NUMSUB", "chloe:0:c:quiet")
    assert b.unsubscribe("quiet", sub)
    assert "quiet" not in b.channels
    yield until(lambda: b":0\r\n" in redis_server.command("PUBSUB", "NUMSUB", "chloe:0:c:quiet"))


@pytest_twisted.inlineCallbacks
def test_redis_restart_publish_fails_then_nothing_is_lost(nodes, redis_server):  # noqa: F811
    """While Redis is down a publish fails (503) and the state is down; when
    it is back the node subscribes again and its subscribers get what was
    published since, including what another node published before this one
    had resubscribed."""
    a, b, sub = yield subscribed_pair(nodes, "r")
    redis_server.kill()
    yield until(lambda: a.backend_state == "down" and b.backend_state == "down")
    with pytest.raises(BackendUnavailable):
        yield a.publish(["r"], b"2")
    redis_server.start()
    yield until(lambda: a._commands is not None)
    yield a.publish(["r"], b"2")  # maybe before b has resubscribed
    yield until(lambda: b.backend_state == "up")
    yield a.publish(["r"], b"3")
    yield sub.wait(3)
    assert sub.data() == [1, 2, 3]


@pytest_twisted.inlineCallbacks
def test_presence_is_shared_and_a_dead_nodes_members_leave_after_the_grace(redis_server):  # noqa: F811
    """A member joining on node B is announced to subscribers on node A and
    listed there; when B dies (stops holding it) it leaves after about the
    grace period, announced once."""
    a = RedisBroker(reactor, 100, 300, redis_server.url)
    b = RedisBroker(reactor, 100, 300, redis_server.url)
    presence_a = a.make_presence(reactor, 1.0)
    presence_b = b.make_presence(reactor, 1.0)
    a.connect()
    b.connect()
    try:
        yield until(lambda: a.backend_state == "up" and b.backend_state == "up")
        watcher, member = Recorder("watcher"), Recorder("member")
        yield a.subscribe("presence-room", watcher)
        yield b.subscribe("presence-room", member)
        presence_b.join("presence-room", "member", {"id": 7, "info": {"name": "Ann"}})
        yield until(lambda: any(f.kind == "presence" for f in watcher.frames))
        events = [json.loads(f.payload) for f in watcher.frames if f.kind == "presence"]
        assert events == [{"type": "presence", "channel": "presence-room", "event": "join",
                           "member": {"id": "7", "info": {"name": "Ann"}}}]
        assert presence_a.members("presence-room") == [{"id": "7", "info": {"name": "Ann"}}]
        assert presence_b.members("presence-room") == [{"id": "7", "info": {"name": "Ann"}}]
        assert not [f for f in member.frames if f.kind == "presence"]  # not told of itself
        started = reactor.seconds()
        yield b.disconnect()  # node B is gone: nobody holds the member any more
        yield until(lambda: len([f for f in watcher.frames if f.kind == "presence"]) == 2)
        assert reactor.seconds() - started >= 0.5
        leave = json.loads([f for f in watcher.frames if f.kind == "presence"][1].payload)
        assert leave["event"] == "leave" and leave["member"]["id"] == "7"
        assert presence_a.members("presence-room") == []
    finally:
        yield a.disconnect()
        yield b.disconnect()


@pytest_twisted.inlineCallbacks
def test_a_member_held_only_by_an_idle_poll_is_let_go(redis_server):  # noqa: F811
    """A member whose only session is a polling session between polls (in
    its grace) is no longer held: it leaves about session_grace after the
    last poll, while its node is up and the session still exists (its own
    end then makes no second grace)."""
    a = RedisBroker(reactor, 100, 300, redis_server.url)
    b = RedisBroker(reactor, 100, 300, redis_server.url)
    presence_a = a.make_presence(reactor, 1.0)
    presence_b = b.make_presence(reactor, 1.0)
    idle = {"member": False}
    presence_b.idle = lambda session: idle[session]
    a.connect()
    b.connect()
    try:
        yield until(lambda: a.backend_state == "up" and b.backend_state == "up")
        watcher, member = Recorder("watcher"), Recorder("member")
        yield a.subscribe("presence-room", watcher)
        yield b.subscribe("presence-room", member)
        presence_b.join("presence-room", "member", {"id": 7, "info": {"name": "Ann"}})
        yield until(lambda: any(f.kind == "presence" for f in watcher.frames))
        idle["member"] = True  # its poll ended; no new one
        yield until(lambda: len([f for f in watcher.frames if f.kind == "presence"]) == 2)
        leave = json.loads([f for f in watcher.frames if f.kind == "presence"][1].payload)
        assert leave["event"] == "leave" and leave["member"]["id"] == "7"
        assert b.backend_state == "up"
    finally:
        yield a.disconnect()
        yield b.disconnect()


@pytest_twisted.inlineCallbacks
def test_leaving_before_the_join_completes(nodes):
    """A subscriber that unsubscribes while its join is on its way is told
    None, gets nothing later, and the node stops listening to the channel."""
    a, b = nodes(), nodes()
    yield until(lambda: a.backend_state == "up" and b.backend_state == "up")
    sub, other = Recorder("gone"), Recorder("other")
    joining = b.subscribe("brief", sub, "0-0")
    assert b.unsubscribe("brief", sub)
    assert (yield joining) is None
    yield b.subscribe("elsewhere", other)
    yield a.publish(["brief"], b"1")
    yield a.publish(["elsewhere"], b"2")
    yield other.wait(1)
    assert sub.frames == [] and "brief" not in b.channels


@pytest_twisted.inlineCallbacks
def test_messages_published_while_the_pubsub_connection_is_away_arrive_once(nodes, redis_server):  # noqa: F811
    """When a node's pub/sub connection drops (Redis itself stays up), what
    other nodes publish meanwhile reaches its subscribers once it has
    subscribed again: each message once, in order."""
    a, b, sub = yield subscribed_pair(nodes, "gap")
    connection = b._subscriptions
    assert redis_server.command("CLIENT", "KILL", "TYPE", "pubsub").startswith(b":")
    yield until(lambda: b._subscriptions is not connection)
    for n in range(2, 6):
        yield a.publish(["gap"], str(n).encode())
    yield until(lambda: b.backend_state == "up")
    yield a.publish(["gap"], b"6")
    yield sub.wait(6)
    assert sub.data() == [1, 2, 3, 4, 5, 6]


@pytest_twisted.inlineCallbacks
def test_frames_for_a_session_on_another_node_are_handed_over(nodes):
    """Frames posted on node A for a session node B holds reach B, even
    when B registers the session a moment after A looks for it; a session
    nobody holds is refused."""
    a, b = nodes(), nodes()
    yield until(lambda: a.backend_state == "up" and b.backend_state == "up")
    got: list[tuple[str, bytes]] = []
    b.on_forward = lambda session_id, body: got.append((session_id, body))
    reactor.callLater(0.05, b.add_session, Recorder("late-session"))
    assert (yield a.forward("late-session", b'{"type":"ping"}')) is True
    yield until(lambda: bool(got))
    assert got == [("late-session", b'{"type":"ping"}')]
    assert (yield a.forward("nobody", b"{}")) is False
