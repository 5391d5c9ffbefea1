"""The sharded Redis engine without Redis: where rendezvous hashing puts a
channel, which shard each call of the backend contract goes to (on fake
brokers), and a publish's receipts merged across shards. The engine on
real ``redis-server`` processes is ``tests/test_integration_shards.py``."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from twisted.application.service import IService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from chloed import config, frames
from chloed.backends import make_backend
from chloed.backends.base import BackendUnavailable, ChannelInfo, ChannelListing, PublishResult
from chloed.backends.redis.placement import Placement, merge_receipts, shard_name
from chloed.backends.redis.shards import ShardedBackend
from chloed.errors import ConfigError
from tests.fakes import RecordingSubscriber

URLS = ["redis://a:6379/0", "redis://b:6379/0", "redis://c:6379/0"]
NAMES = [f"channel-{n}" for n in range(10_000)]


def result(d: Deferred[Any]) -> Any:
    """What an already-fired Deferred holds (the fakes answer at once)."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def failure(d: Deferred[Any]) -> Any:
    """The failure an already-fired Deferred holds."""
    out: list[Any] = []
    d.addErrback(out.append)
    assert out, "the Deferred has not failed"
    return out[0]


# -- placement ---------------------------------------------------------------


def test_a_channel_lives_on_the_same_shard_on_every_node():
    """Two nodes computing placement on their own agree on every channel,
    whatever order they list the shards in, and the answer is fixed by the
    algorithm (a change here would move every channel of a running
    cluster)."""
    one = Placement([shard_name(url) for url in URLS])
    other = Placement([shard_name(url) for url in reversed(URLS)])
    for name in NAMES[:2000]:
        assert one.names[one.index(name)] == other.names[other.index(name)]
    assert [one.index(name) for name in ["news", "chat", "#u:ann", "presence-room", "z"]] == [1, 2, 2, 2, 0]


def test_a_shards_name_is_its_host_port_and_db():
    """``redis://a`` and ``redis://a:6379/0`` are one shard; the password
    of a URL is no part of its name."""
    assert shard_name("redis://a") == shard_name("redis://a:6379/0") == "a:6379/0"
    assert shard_name("redis://:secret@b:6380/2") == "b:6380/2"
    with pytest.raises(ValueError):
        Placement(["a:6379/0", "a:6379/0"])


def test_channels_spread_evenly_over_the_shards():
    """10,000 channels over 3 shards: each holds a third, within 5%."""
    placement = Placement([shard_name(url) for url in URLS])
    counts = Counter(placement.index(name) for name in NAMES)
    assert sorted(counts) == [0, 1, 2]
    for count in counts.values():
        assert abs(count - len(NAMES) / 3) < 0.05 * len(NAMES) / 3, counts


def test_adding_a_shard_moves_only_what_the_new_one_wins():
    """A 4th shard takes about a quarter of 10,000 channels, every one of
    them moving to it: none moves between the shards already there."""
    before = Placement([shard_name(url) for url in URLS])
    after = Placement([shard_name(url) for url in URLS + ["redis://d:6379/0"]])
    moved = [name for name in NAMES if after.names[after.index(name)] != before.names[before.index(name)]]
    assert 0.22 * len(NAMES) < len(moved) < 0.28 * len(NAMES)
    assert {after.names[after.index(name)] for name in moved} == {"d:6379/0"}


def test_removing_a_shard_moves_only_its_channels():
    """Without shard b, b's channels go to the others; the rest stay."""
    before = Placement([shard_name(url) for url in URLS])
    after = Placement([shard_name(url) for url in (URLS[0], URLS[2])])
    for name in NAMES[:3000]:
        was = before.names[before.index(name)]
        if was != "b:6379/0":
            assert after.names[after.index(name)] == was


def test_receipts_merged():
    """A publish's receipts from several shards: every id, in the order
    the channels were given, the counts summed, a lower bound if any was."""
    merged = merge_receipts(
        ["x", "y", "z"],
        [PublishResult(ids={"y": "5-1"}, delivered=2, queued=1),
         PublishResult(ids={"z": "6-9", "x": "6-10"}, delivered=3, lower_bound=True)],
    )
    assert list(merged.ids.items()) == [("x", "6-10"), ("y", "5-1"), ("z", "6-9")]
    assert (merged.delivered, merged.queued, merged.lower_bound) == (5, 1, True)
    assert merge_receipts(["x"], [PublishResult(ids={"x": "1-1"})]).lower_bound is False


# -- the option ----------------------------------------------------------------


def test_the_backend_option_takes_a_list_of_shards(tmp_path):
    """``backend = [url, url, …]`` is a tuple of URLs; a list of one, a URL
    listed twice (however spelled) or a bad one is refused naming
    ``backend``; one string stays one Redis."""
    path = tmp_path / "chloe.toml"
    path.write_text('backend = ["redis://a:6379/0", "redis://b"]\n')
    assert config.load(str(path)).backend == ("redis://a:6379/0", "redis://b")
    for bad in (["redis://a"], ["redis://a", "redis://A:6379/00"], ["redis://a", "mysql://b"], []):
        with pytest.raises(ConfigError) as info:
            config._backend("backend", bad)
        assert info.value.option == "backend"
    assert config._backend("backend", "redis://a:6379/0") == "redis://a:6379/0"


def test_make_backend_makes_one_broker_per_shard_under_one_node_id():
    """A list of URLs is a sharded backend: one Redis broker per shard, all
    with the node's id, the first the home one; the relay's Redis spool
    uses the home shard's link."""
    backend = make_backend(tuple(URLS), Clock(), 100, 300.0)
    assert isinstance(backend, ShardedBackend)
    assert [shard.url for shard in backend.shards] == URLS
    assert {shard.node for shard in backend.shards} == {backend.node}
    assert backend.link is backend.shards[0].link
    assert backend.backend == "redis"
    # Not connected: every shard says so.
    assert backend.backend_state == "; ".join(f"down: {url}" for url in URLS)
    service = backend.service()
    assert IService.providedBy(service) and len(list(service)) == 3


# -- routing, on fake brokers ------------------------------------------------------


class FakeRoster:
    def __init__(self) -> None:
        self.changed_sessions: list[str] = []

    def changed(self, session: Any) -> None:
        self.changed_sessions.append(session.id)


class FakeCensus:
    def __init__(self) -> None:
        self.reported: list[str] = []

    def report_now(self, name: str) -> None:
        self.reported.append(name)


class FakeUsers:
    def __init__(self) -> None:
        self.left: list[tuple[str, str]] = []

    def leave(self, user: str, session: Any) -> None:
        self.left.append((user, session.id))


class FakeLink:
    commands: Any = object()


class FakePresence:
    def __init__(self) -> None:
        self.idle: Any = None
        self.changed: Any = None
        self.is_presence: Any = None
        self.calls: list[tuple[Any, ...]] = []

    def members(self, channel: str) -> list[dict[str, Any]]:
        self.calls.append(("members", channel))
        return [{"id": "ann", "info": None}]

    def fetch(self, channel: str) -> Deferred[Any]:
        self.calls.append(("fetch", channel))
        return defer.succeed([])

    def join(self, channel: str, session: str, user: Any) -> None:
        self.calls.append(("join", channel, session))

    def part(self, channel: str, session: str, user: Any, away: bool = False) -> None:
        self.calls.append(("part", channel, session, away))


class FakeShard:
    """A RedisBroker as the sharded backend uses it: records each call, and
    answers at once (``fail`` set: each Redis call fails as Redis away)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.node = "node-1"
        self.calls: list[tuple[Any, ...]] = []
        self.channels: dict[str, Any] = {}
        self.sessions: dict[str, Any] = {}
        self.roster = FakeRoster()
        self.census = FakeCensus()
        self.users = FakeUsers()
        self.link = FakeLink()
        self.backend_state = "up"
        self.published = 1
        self.delivered = 2
        self.observe_fanout: Any = None
        self.presence = FakePresence()
        self.fail = False

    def _answer(self, method: str, args: tuple[Any, ...], value: Any) -> Deferred[Any]:
        self.calls.append((method, *args))
        if self.fail:
            return defer.fail(BackendUnavailable("not connected to Redis"))
        return defer.succeed(value)

    def subscribe(self, *args: Any) -> Deferred[Any]:
        return self._answer("subscribe", args, (True, []))

    def subscribe_many(self, names: list[str], subscriber: Any, since: Any) -> Deferred[Any]:
        missed = [frames.message(name, f"{10 + n}-{n}", b"1") for n, name in enumerate(names)]
        return self._answer("subscribe_many", (names, subscriber, since), ({name: True for name in names}, missed))

    def unsubscribe(self, name: str, subscriber: Any) -> bool:
        self.calls.append(("unsubscribe", name, subscriber))
        return True

    def publish(self, names: list[str], data: bytes, exclude: Any) -> Deferred[Any]:
        ids = {name: f"1-{n}" for n, name in enumerate(names)}
        return self._answer("publish", (names, data, exclude), PublishResult(ids=ids, delivered=len(names)))

    def broadcast(self, *args: Any) -> Deferred[Any]:
        return self._answer("broadcast", args, PublishResult(id="1-1"))

    def to_session(self, *args: Any) -> Deferred[Any]:
        return self._answer("to_session", args, None)

    def occupy(self, *args: Any) -> Deferred[Any]:
        return self._answer("occupy", args, True)

    def announce(self, *args: Any) -> int:
        self.calls.append(("announce", *args))
        return 1

    def history(self, *args: Any) -> Deferred[Any]:
        return self._answer("history", args, (True, []))

    def channel_info(self, name: str) -> Deferred[Any]:
        return self._answer("channel_info", (name,), ChannelInfo(name, 1, None, None))

    def session_list(self, *args: Any) -> Deferred[Any]:
        return self._answer("session_list", args, None)

    def position(self) -> Deferred[Any]:
        return self._answer("position", (), self.label + "-position")

    def read_history(self, *args: Any) -> Deferred[Any]:
        return self._answer("read_history", args, None)

    def add_session(self, session: Any) -> Deferred[Any]:
        self.sessions[session.id] = session
        return self._answer("add_session", (session,), None)

    def remove_session(self, session: Any, channels: list[str]) -> None:
        self.calls.append(("remove_session", session, list(channels)))

    def user_leave(self, user: str, session: Any) -> None:
        self.calls.append(("user_leave", user, session))

    def make_presence(self, clock: Any, grace: float) -> FakePresence:
        return self.presence

    def sweep(self) -> int:
        return 0

    def __getattr__(self, method: str) -> Any:
        """The home shard's calls, answered alike (None)."""
        if method not in HOME_CALLS:
            raise AttributeError(method)
        return lambda *args: self._answer(method, args, None)


#: What goes to the home shard, whatever it is about, with its arguments.
HOME_CALLS = {
    "user_join": ("ann", "s", 3),
    "user_sessions": ("ann",),
    "user_channels": ("ann",),
    "persist_channel": ("ann", "news", True),
    "revoke": ("jti", "ann", None, 10.0),
    "revoked": ("jti", "ann", 1.0),
    "control": ({"user": "ann"},),
    "serve_control": (print,),
    "serve_handover": (print, print),
    "forward": ("s", b"[]"),
    "forward_poll": ("s", 0, 1.0),
}


@pytest.fixture
def sharded() -> ShardedBackend:
    """A sharded backend over three fake brokers (a, b, c; a the home)."""
    return ShardedBackend.over(URLS, [FakeShard(label) for label in "abc"])


def on(backend: ShardedBackend, index: int, count: int = 1) -> list[str]:
    """``count`` channel names that live on shard ``index``."""
    found = [name for name in NAMES if backend.placement.index(name) == index]
    return found[:count]


def calls(backend: ShardedBackend) -> list[list[tuple[Any, ...]]]:
    return [shard.calls for shard in backend.shards]  # type: ignore[attr-defined]


def test_each_channel_call_goes_to_the_channels_shard(sharded):
    """Subscribing, leaving, history, its page, its info, occupancy, a
    non-message frame and its position go to the shard the channel lives
    on, and nowhere else."""
    sub = RecordingSubscriber("s1")
    for index in range(3):
        (name,) = on(sharded, index)
        before = [len(c) for c in calls(sharded)]
        assert result(sharded.subscribe(name, sub, "1-1")) == (True, [])
        assert sharded.unsubscribe(name, sub) is True
        assert result(sharded.history(name, "1-1")) == (True, [])
        result(sharded.read_history(name, None, 10))
        assert result(sharded.channel_info(name)).name == name
        assert result(sharded.occupy(name, True)) is True
        assert sharded.announce(name, frames.encode({"type": "x"}), None) == 1
        assert result(sharded.position(name)) == "abc"[index] + "-position"
        made = [len(c) - b for c, b in zip(calls(sharded), before)]
        assert made == [8 if i == index else 0 for i in range(3)]
        assert calls(sharded)[index][-8][0:2] == ("subscribe", name)
    assert result(sharded.position()) == "a-position"  # no channel: the home shard's


def test_the_home_shard_gets_what_is_per_node_or_per_cluster(sharded):
    """Sessions, the roster, messages to one session and to everyone, the
    users' registry, revocations, commands and the handover go to the home
    shard (the first listed) only."""
    session = RecordingSubscriber("s1")
    result(sharded.add_session(session))
    assert sharded.sessions == {"s1": session}
    result(sharded.broadcast(b"1", None))
    result(sharded.to_session("s1", b"1"))
    result(sharded.session_list(10, None))
    for method, args in HOME_CALLS.items():
        answer = getattr(sharded, method)(*args)
        if answer is not None:
            result(answer)
    home, b, c = calls(sharded)
    assert [call[0] for call in home] == ["add_session", "broadcast", "to_session", "session_list", *HOME_CALLS]
    assert b == [] and c == []


def test_a_publish_over_shards_is_one_call_per_shard_its_receipts_merged(sharded):
    """Channels of three shards: each shard publishes its own, in the order
    given, once; the receipt has every id in the order given and the counts
    summed."""
    a1, a2 = on(sharded, 0, 2)
    (b1,) = on(sharded, 1)
    (c1,) = on(sharded, 2)
    names = [b1, a1, c1, a2]
    receipt = result(sharded.publish(names, b'"x"', "s9"))
    home, b, c = calls(sharded)
    assert home == [("publish", [a1, a2], b'"x"', "s9")]
    assert b == [("publish", [b1], b'"x"', "s9")] and c == [("publish", [c1], b'"x"', "s9")]
    assert list(receipt.ids) == names
    assert receipt.delivered == 4


def test_a_publish_to_a_shard_that_is_down_fails_naming_it_and_publishes_nothing(sharded):
    """A shard not connected: a publish including one of its channels fails
    with BackendUnavailable naming the shard, and no shard is asked; one to
    the other shards' channels goes on."""
    (a1,) = on(sharded, 0)
    (b1,) = on(sharded, 1)
    shard_b = sharded.shards[1]
    shard_b.link = FakeLink()
    shard_b.link.commands = None
    shard_b.fail = True
    refused = failure(sharded.publish([a1, b1], b"1"))
    assert refused.check(BackendUnavailable) and "redis://b:6379/0" in refused.getErrorMessage()
    assert calls(sharded)[0] == [] and calls(sharded)[1] == []
    refused = failure(sharded.publish([b1], b"1"))
    assert "redis://b:6379/0: not connected to Redis" == refused.getErrorMessage()
    assert result(sharded.publish([a1], b"1")).ids == {a1: "1-0"}


def test_a_join_of_several_shards_channels_is_one_per_shard_its_replays_merged(sharded):
    """``subscribe_many`` joins each shard's channels in one call, with the
    same cursor; ``recovered`` of every channel, the missed messages of all
    merged by id; the home shard's roster hears of the other shards'."""
    a1, a2 = on(sharded, 0, 2)
    (c1,) = on(sharded, 2)
    sub = RecordingSubscriber("s1")
    recovered, missed = result(sharded.subscribe_many([a1, c1, a2, a1], sub, "5-5"))
    home, b, c = calls(sharded)
    assert home == [("subscribe_many", [a1, a2], sub, "5-5")] and c == [("subscribe_many", [c1], sub, "5-5")]
    assert b == []
    assert recovered == {a1: True, a2: True, c1: True}
    # Each fake gives its n-th channel the id "1n-n": merged by id.
    assert [(f.channel, f.id) for f in missed] == [(a1, "10-0"), (c1, "10-0"), (a2, "11-1")]
    assert sharded.home.roster.changed_sessions == ["s1"]


def test_a_session_leaving_leaves_each_shards_channels(sharded):
    """A session removed leaves its channels on the other shards, then the
    home shard forgets it and leaves its own."""
    (a1,) = on(sharded, 0)
    (b1,) = on(sharded, 1)
    session = RecordingSubscriber("s1")
    sharded.remove_session(session, {a1, b1})
    assert calls(sharded)[1] == [("unsubscribe", b1, session)]
    assert calls(sharded)[0] == [("remove_session", session, [a1])]


def test_a_users_leave_counts_its_channel_on_its_shard_and_the_user_at_home(sharded):
    """A user's session ending: its user channel's count is written on the
    channel's shard, the user's sessions on the home shard."""
    session = RecordingSubscriber("s1")
    users = [f"user{n}" for n in range(100)]
    away = next(u for u in users if sharded.placement.index(frames.user_channel(u)) == 2)
    home = next(u for u in users if sharded.placement.index(frames.user_channel(u)) == 0)
    sharded.user_leave(away, session)
    assert sharded.shards[2].census.reported == [frames.user_channel(away)]
    assert sharded.home.users.left == [(away, "s1")]
    sharded.user_leave(home, session)
    assert calls(sharded)[0] == [("user_leave", home, session)]


def test_presence_goes_to_the_channels_shard(sharded):
    """Members are asked of, held on and let go of on the channel's shard;
    what the hub sets on the presence reaches every shard's."""
    presence = sharded.make_presence(Clock(), 1.0)
    idle = lambda session: False  # noqa: E731
    presence.idle = idle
    presence.is_presence = frames.reserved
    for index in range(3):
        (name,) = on(sharded, index)
        assert presence.members(name) == [{"id": "ann", "info": None}]
        result(presence.fetch(name))
        presence.join(name, "s1", {"id": "ann"})
        presence.part(name, "s1", {"id": "ann"}, True)
        shard = sharded.shards[index].presence
        assert shard.calls == [("members", name), ("fetch", name), ("join", name, "s1"), ("part", name, "s1", True)]
        assert shard.idle is idle and shard.is_presence is frames.reserved
    assert presence.idle is idle


def test_the_nodes_channels_and_counters_are_every_shards(sharded):
    """``channels`` is every shard's, looked up on the right one; the
    counters add up; the listing holds them all (``scope: node``)."""
    names = [on(sharded, index)[0] for index in range(3)]
    for index, name in enumerate(names):
        sharded.shards[index].channels[name] = type("C", (), {"subscribers": {1: None}, "last_id": "1-1"})()
    assert sorted(sharded.channels) == sorted(names) and len(sharded.channels) == 3
    assert sharded.channels[names[2]] is sharded.shards[2].channels[names[2]]
    assert names[1] in sharded.channels and "nowhere" not in sharded.channels
    assert list(sharded.channels.values()) == [sharded.shards[i].channels[names[i]] for i in range(3)]
    assert (sharded.published, sharded.delivered) == (3, 6)
    listing = result(sharded.channel_list())
    assert isinstance(listing, ChannelListing) and listing.scope == "node" and sorted(listing.channels) == sorted(names)
    sharded.observe_fanout = print
    assert all(shard.observe_fanout is print for shard in sharded.shards)


def test_the_backend_is_up_when_every_shard_is_and_says_which_is_not(sharded):
    """``backend_state`` is ``"up"`` only when every shard is; else it
    names each shard that is not, with its state."""
    assert sharded.backend_state == "up"
    sharded.shards[1].backend_state = "down"
    sharded.shards[2].backend_state = "degraded"
    assert sharded.backend_state == "down: redis://b:6379/0; degraded: redis://c:6379/0"
