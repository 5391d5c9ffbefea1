"""Users with Redis (chloed/backends/redis/users.py and control.py) against a
real ``redis-server``: each user's sessions counted across nodes, read back
with their channels, persisted server-side subscriptions, revocations, the
app's commands reaching every node, and a user's own channel (``#u:<id>``)
on every node. Brokers in this process stand for nodes.

Each broker's timers (census beats, roster flushes) run on its own
:class:`Clock`, so a test says when a node beats; the connections use the
reactor. A command sent after another on the same connection answers after
it, which is how a test knows Redis has what was sent without waiting.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock

from chloed import frames
from chloed.backends.base import BackendUnavailable, SessionInfo
from chloed.backends.redis import RedisBroker
from chloed.backends.redis.census import BEAT
from chloed.backends.redis.roster import FLUSH_DELAY
from chloed.session import Session
from chloed.backends.users import USER_REVOCATION_SECONDS
from tests import test_roster_redis as roster
from tests.backends.support import Recorder, until
from tests.redis_server import RedisServer, redis_server  # noqa: F401 (fixture)


class Node(roster.Node):
    """One broker, its clock, and the commands its handler ran."""

    def __init__(self, url: str, name: str) -> None:
        self.name = name
        self.commands: list[dict[str, Any]] = []
        super().__init__(url, name)
        self.broker.serve_control(self.commands.append)

    @defer.inlineCallbacks
    def sent(self) -> Any:
        """Redis has run what this node sent so far (a PING after it on the
        same connection answers after it)."""
        yield self.broker._link.call("ping")


@pytest.fixture
def nodes(redis_server: RedisServer) -> Iterator[Callable[[str], Node]]:  # noqa: F811
    """Make nodes on the test's Redis; all are disconnected after."""
    yield from roster.made_nodes(redis_server.url, Node)


@defer.inlineCallbacks
def up(*nodes: Node) -> Any:
    yield until(lambda: all(n.broker.backend_state == "up" for n in nodes))


def hkeys(redis_server: RedisServer, key: str) -> set[str]:  # noqa: F811
    """The fields of a hash, read over a plain socket."""
    answer = redis_server.command("HKEYS", key).split(b"\r\n")
    return {line.decode() for line in answer[2::2] if line}


@pytest_twisted.inlineCallbacks
def test_the_limit_counts_a_users_sessions_on_every_node(nodes):
    """With a limit of 2, a user's sessions on two nodes count together:
    the third is refused on either node, one already counted is not, and
    one leaving makes room."""
    a, b = nodes("node-a"), nodes("node-b")
    yield up(a, b)
    s1, s2, s3, s4 = (Recorder(f"s{n}") for n in range(1, 5))
    assert (yield a.broker.user_join("alice", s1, 2)) is True
    assert (yield b.broker.user_join("alice", s2, 2)) is True
    assert (yield a.broker.user_join("alice", s3, 2)) is False
    assert (yield b.broker.user_join("alice", s3, 2)) is False
    assert (yield a.broker.user_join("alice", s1, 2)) is True
    assert (yield b.broker.user_join("bob", s3, 2)) is True
    assert (yield b.broker.user_join("alice", s4, 0)) is True  # no limit
    b.broker.user_leave("alice", s4)
    a.broker.user_leave("alice", s1)
    yield a.sent()
    yield b.sent()
    assert (yield b.broker.user_join("alice", s3, 2)) is True


@pytest_twisted.inlineCallbacks
def test_a_dead_nodes_sessions_stop_counting_and_come_back_with_it(nodes, redis_server):  # noqa: F811
    """Once node C's census entry is past its time, its session of the
    user no longer counts (dropped from the user's hash); when C beats
    again and finds itself given up, it writes its users' sessions again."""
    a, c = nodes("node-a"), nodes("node-c")
    yield up(a, c)
    assert (yield c.broker.user_join("alice", Recorder("s1"), 1)) is True
    assert (yield a.broker.user_join("alice", Recorder("s2"), 1)) is False
    redis_server.command("HSET", "chloe:nodes", "node-c", "1 1 0 0")  # expired in 1970
    assert (yield a.broker.user_join("alice", Recorder("s2"), 1)) is True
    assert hkeys(redis_server, "chloe:u:alice") == {"s2"}
    assert [s.id for s in (yield a.broker.user_sessions("alice"))] == ["s2"]
    c.clock.advance(BEAT)  # C beats, finds itself forgotten, recounts
    yield until(lambda: hkeys(redis_server, "chloe:u:alice") == {"s1", "s2"})
    assert [(s.node, s.id) for s in (yield a.broker.user_sessions("alice"))] == [("node-a", "s2"), ("node-c", "s1")]


@pytest_twisted.inlineCallbacks
def test_sessions_are_written_again_and_leaves_resent_when_redis_is_back(nodes, redis_server):  # noqa: F811
    """Redis lost a session's entry, and another session left while Redis
    was away: once it is back the node has written the first again and
    removed the second."""
    a = nodes("node-a")
    yield up(a)
    stays, leaves = Recorder("s1"), Recorder("s2")
    yield a.broker.user_join("alice", stays, 0)
    yield a.broker.user_join("alice", leaves, 0)
    redis_server.command("HDEL", "chloe:u:alice", "s1")
    redis_server.kill()
    yield until(lambda: a.broker.backend_state == "down")
    a.broker.user_leave("alice", leaves)
    redis_server.start()
    yield until(lambda: a.broker.backend_state == "up")
    yield until(lambda: hkeys(redis_server, "chloe:u:alice") == {"s1"})


@pytest_twisted.inlineCallbacks
def test_a_users_sessions_are_listed_with_their_node_transport_and_channels(nodes):
    """``user_sessions`` on either node lists the user's sessions of both:
    this node's as they are, the other's as its roster says once flushed
    (before: its id and node only)."""
    a, b = nodes("node-a"), nodes("node-b")
    yield up(a, b)
    user = {"id": "alice"}
    s1 = yield a.open("s1", "news", "alerts", user=user)
    s2 = yield b.open("s2", "sport", transport="sse", user=user)
    yield a.broker.user_join("alice", s1, 0)
    yield b.broker.user_join("alice", s2, 0)
    early = yield a.broker.user_sessions("alice")
    assert early == [
        SessionInfo("s1", "websocket", user, ["alerts", "news"], "node-a"), SessionInfo("s2", "", None, [], "node-b"),
    ]
    yield b.flushed()
    expected = [
        SessionInfo("s1", "websocket", user, ["alerts", "news"], "node-a"),
        SessionInfo("s2", "sse", user, ["sport"], "node-b"),
    ]
    assert (yield a.broker.user_sessions("alice")) == expected
    yield a.flushed()
    assert (yield b.broker.user_sessions("alice")) == expected
    assert (yield b.broker.user_sessions("nobody")) == []


@pytest_twisted.inlineCallbacks
def test_persisted_channels_are_the_clusters(nodes):
    """A channel persisted on one node is a user's on every node until it
    is removed."""
    a, b = nodes("node-a"), nodes("node-b")
    yield up(a, b)
    assert (yield b.broker.user_channels("alice")) == []
    yield a.broker.persist_channel("alice", "news", True)
    yield a.broker.persist_channel("alice", "alerts", True)
    yield a.broker.persist_channel("alice", "news", True)
    assert (yield b.broker.user_channels("alice")) == ["alerts", "news"]
    yield b.broker.persist_channel("alice", "news", False)
    assert (yield a.broker.user_channels("alice")) == ["alerts"]
    assert (yield a.broker.user_channels("bob")) == []


@pytest_twisted.inlineCallbacks
def test_a_revoked_jti_is_refused_on_every_node_until_its_time(nodes, redis_server):  # noqa: F811
    """A jti revoked until an hour from now is refused on the other node
    (for a connection token or a channel token), its key expiring then (a
    later revocation with an earlier until keeps the later); one revoked
    until a time gone is not; other jtis are not."""
    a, b = nodes("node-a"), nodes("node-b")
    yield up(a, b)
    hour = time.time() + 3600  # an epoch, as the API gives it (Redis's clock is the real one)
    yield a.broker.revoke("j1", None, None, hour)
    yield a.broker.revoke("j1", None, None, hour - 1800)
    yield a.broker.revoke("j0", None, None, time.time() - 10)
    assert (yield b.broker.revoked("j1", "bob", 0)) is True
    assert (yield b.broker.revoked("j2", "bob", 0)) is False
    assert (yield b.broker.revoked("j0", "bob", 0)) is False
    assert (yield b.broker.revoked(None, "bob", 0)) is False
    assert (yield b.broker.revoked("j1", "", 0)) is True  # a channel token's: no user
    assert (yield b.broker.revoked("j2", "", 0)) is False
    ttl = int(redis_server.command("PTTL", "chloe:rv:j:j1").split(b"\r\n")[0][1:])
    assert 3_500_000 < ttl <= 3_600_000


@pytest_twisted.inlineCallbacks
def test_a_users_tokens_issued_before_a_time_are_refused(nodes, redis_server):  # noqa: F811
    """A user revoked before 1000 s: tokens with iat 999 (or none: 0) are
    refused on every node, iat 1000 and later are not, other users' are
    not; kept 30 days. Without ``before``, it is the node's now."""
    a, b = nodes("node-a"), nodes("node-b")
    yield up(a, b)
    yield a.broker.revoke(None, "alice", 1000.0, 0)
    assert (yield b.broker.revoked(None, "alice", 999)) is True
    assert (yield b.broker.revoked("j1", "alice", 0)) is True
    assert (yield b.broker.revoked(None, "alice", 1000)) is False
    assert (yield b.broker.revoked("j1", "alice", 1001.5)) is False
    assert (yield b.broker.revoked(None, "bob", 0)) is False
    ttl = int(redis_server.command("TTL", "chloe:rv:u:alice").split(b"\r\n")[0][1:])
    assert USER_REVOCATION_SECONDS - 60 < ttl <= USER_REVOCATION_SECONDS
    a.clock.advance(5000)
    yield a.broker.revoke(None, "carol", None, 0)
    assert (yield b.broker.revoked(None, "carol", 4999)) is True
    assert (yield b.broker.revoked(None, "carol", 5001)) is False


@pytest_twisted.inlineCallbacks
def test_a_command_reaches_every_nodes_handler_with_the_sessions_it_targets(nodes):
    """A command for a user with a session on each node answers 2 and
    reaches both nodes' handlers (the sender's too); one for a session of
    the other node answers 1; for nobody, 0 (and still reaches them)."""
    a, b = nodes("node-a"), nodes("node-b")
    yield up(a, b)
    yield a.broker.user_join("alice", Recorder("s1"), 0)
    yield b.broker.user_join("alice", Recorder("s2"), 0)
    yield b.open("s3")
    commands = [
        ({"op": "disconnect", "user": "alice", "reason": "bye", "reconnect": False}, 2),
        ({"op": "subscribe", "session": "s3", "channel": "news"}, 1),
        ({"op": "unsubscribe", "session": "s404", "channel": "news"}, 0),
        ({"op": "disconnect", "user": "nobody"}, 0),
        ({"op": "revoke", "jti": "j1"}, 0),
    ]
    for command, targets in commands:
        assert (yield a.broker.control(command)) == targets, command
    sent = [command for command, _ in commands]
    yield until(lambda: a.commands == sent and b.commands == sent)


@pytest_twisted.inlineCallbacks
def test_a_command_fails_while_redis_is_away(nodes, redis_server):  # noqa: F811
    """Redis away: a command fails with BackendUnavailable (the API
    answers 503), and no handler runs it."""
    a = nodes("node-a")
    yield up(a)
    redis_server.kill()
    yield until(lambda: a.broker.backend_state == "down")
    with pytest.raises(BackendUnavailable):
        yield a.broker.control({"op": "disconnect", "user": "alice"})
    assert a.commands == []


@pytest_twisted.inlineCallbacks
def test_a_users_channel_reaches_its_sessions_on_every_node(nodes):
    """A message to a user's own channel (any id: spaces, accents) reaches
    its sessions on both nodes, as a user message, the receipt counting
    both; a session joining later from a cursor before it gets it
    replayed."""
    a, b = nodes("node-a"), nodes("node-b")
    yield up(a, b)
    name = frames.user_channel("Zoë Smith")
    before = yield b.broker.position()
    one, two = Recorder("s1"), Recorder("s2")
    assert (yield a.broker.subscribe(name, one)) == (True, [])
    assert (yield b.broker.subscribe(name, two)) == (True, [])
    result = yield a.broker.publish([name], b'{"n":1}')
    assert (result.delivered, result.queued, result.lower_bound) == (2, 0, False)
    yield until(lambda: len(one.messages()) == 1 and len(two.messages()) == 1)
    expected = {"type": "message", "channel": None, "user": "Zoë Smith", "id": result.ids[name], "data": {"n": 1}}
    assert one.messages() == [expected] and two.messages() == [expected]
    recovered, missed = yield b.broker.subscribe(name, Recorder("s3"), before)
    assert recovered is True and [f.id for f in missed] == [result.ids[name]]


@pytest_twisted.inlineCallbacks
def test_a_session_that_left_its_user_is_no_longer_in_the_users_receipts(nodes):
    """A session leaving its user's channel and its user, as the hub ends
    one: once its node has sent that, neither the user's sessions nor a
    message to the user count it (the census' next report is not waited
    for: this node's clock never gets there)."""
    a, b = nodes("node-a"), nodes("node-b")
    yield up(a, b)
    name = frames.user_channel("frank")
    session = yield a.open("s1")
    yield a.broker.user_join("frank", session, 0)
    yield a.broker.subscribe(name, session)
    assert (yield b.broker.publish([name], b"1")).delivered == 1
    a.broker.unsubscribe(name, session)
    a.broker.user_leave("frank", session)
    yield a.sent()
    assert (yield b.broker.user_sessions("frank")) == []
    assert (yield b.broker.publish([name], b"2")).delivered == 0
