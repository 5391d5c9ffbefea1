"""The sharded Redis engine on three real ``redis-server`` processes and two
real chloed nodes (``backend = [a, b, c]``): publishes, receipts, resume,
presence and users across shards, and one shard killed and restarted while
the others' channels go on."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Iterator

import jwt
import pytest

from chloed import frames
from chloed.backends.redis.placement import Placement, shard_name
from tests.redis_server import REDIS_SERVER, RedisServer
from tests.servers import Chloed
from tests.test_multinode import Browser, health, subscribers, wait_until

SECRET = "test-secret-of-the-sharded-cluster-32b"


@pytest.fixture
def shards(tmp_path) -> Iterator[list[RedisServer]]:
    """Three fresh ``redis-server`` processes (AOF, ``appendfsync always``),
    stopped after the test."""
    if not os.path.exists(REDIS_SERVER):
        pytest.skip("redis-server is not installed (scripts/install-system-deps installs it)")
    servers: list[RedisServer] = []
    try:
        for n in range(3):
            directory = tmp_path / f"shard-{n}"
            directory.mkdir()
            servers.append(RedisServer(str(directory)).start())
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def cluster(shards, tmp_path) -> Iterator[Callable[..., list[Chloed]]]:
    """Start ``n`` chloed nodes on the three shards (the first the home
    one); all stop after."""
    started: list[Chloed] = []
    urls = ", ".join(f'"{server.url}"' for server in shards)

    def start(n: int, session_grace: float = 10) -> list[Chloed]:
        conf = tmp_path / f"chloe-{len(started)}.toml"
        conf.write_text(f"backend = [{urls}]\nhistory_size = 1000\nsession_grace = {session_grace}\n")
        nodes = [Chloed(config=str(conf), secret=SECRET) for _ in range(n)]
        started.extend(nodes)
        return nodes

    yield start
    for node in started:
        node.stop()


def on_shard(shards: list[RedisServer], index: int, prefix: str = "ch", count: int = 1) -> list[str]:
    """Channel names (``<prefix>-<n>``) that live on shard ``index``, as
    every node places them."""
    placement = Placement([shard_name(server.url) for server in shards])
    names = (f"{prefix}-{n}" for n in range(10_000))
    return [name for name in names if placement.index(name) == index][:count]


def user_on_shard(shards: list[RedisServer], index: int) -> str:
    """A user id whose own channel (``#u:<id>``) lives on shard ``index``."""
    placement = Placement([shard_name(server.url) for server in shards])
    return next(f"user{n}" for n in range(10_000) if placement.index(frames.user_channel(f"user{n}")) == index)


def kept_on(server: RedisServer, channel: str) -> bool:
    """Whether ``server`` holds ``channel``'s history stream."""
    return server.command("EXISTS", "chloe:h:" + channel).startswith(b":1")


def listed_channels(node: Chloed, session: str) -> list[str] | None:
    """The channels ``GET /sessions`` on ``node`` lists for ``session``."""
    status, _, body = node.request("GET", "/sessions")
    assert status == 200, body
    found = [s["channels"] for s in json.loads(body)["sessions"] if s["id"] == session]
    return sorted(found[0]) if found else None


def receipt_is(node: Chloed, channels: list[str], expected: tuple[int, int]) -> bool:
    """A ``/send`` to ``channels`` (202) answered with ``expected``
    ``(delivered, queued)``."""
    status, answer = node.send(data="count", channel=channels)
    assert status == 202, answer
    return (answer["delivered"], answer["queued"]) == expected


def test_publishes_over_three_shards_reach_browsers_on_both_nodes_counted(cluster, shards):
    """Channels on each of the three shards: a /send on either node reaches
    the WebSockets of both, a /send to all three at once too; the receipts
    count both nodes' browsers; each channel's history is on its shard
    only."""
    a, b = cluster(2)
    channels = [on_shard(shards, index)[0] for index in range(3)]
    on_a, on_b = Browser(a), Browser(b)
    try:
        for browser in (on_a, on_b):
            for channel in channels:
                browser.subscribe(channel)
        for channel in channels:
            for node in (a, b):
                status, answer = node.send(data=channel, channel=channel)
                assert status == 202 and (answer["delivered"], answer["queued"]) == (2, 0), answer
        for browser in (on_a, on_b):
            got = [browser.message() for _ in range(6)]
            assert [(m["channel"], m["data"]) for m in got] == [(c, c) for c in channels for _ in (a, b)]
        # One /send, three scripts, one receipt: 3 channels × 2 browsers.
        status, answer = a.send(data="all", channel=channels)
        assert status == 202 and (answer["delivered"], answer["queued"]) == (6, 0), answer
        assert sorted(answer["ids"]) == sorted(channels)
        for browser in (on_a, on_b):
            got = [browser.message() for _ in range(3)]
            assert sorted(m["channel"] for m in got) == sorted(channels)
            assert all(m["id"] == answer["ids"][m["channel"]] for m in got)
        for index, channel in enumerate(channels):
            assert [kept_on(server, channel) for server in shards] == [i == index for i in range(3)]
        # GET /sessions (the home shard's roster) lists every shard's channels.
        wait_until(lambda: listed_channels(b, on_a.connected["session"]) == sorted(channels))
        on_b.close()
        wait_until(lambda: receipt_is(a, channels, (3, 0)))
    finally:
        on_a.close()
        on_b.close()


def test_a_browser_resumes_each_channel_on_another_node(cluster, shards):
    """A browser that saw some messages of channels on three shards, and
    reconnects to the other node with each channel's own last id, gets
    exactly what it missed of each, ``recovered``."""
    a, b = cluster(2)
    channels = [on_shard(shards, index, "resume")[0] for index in range(3)]
    browser = Browser(a)
    for channel in channels:
        browser.subscribe(channel)
    for n in range(3):
        assert a.send(data=n, channel=channels)[0] == 202
    seen = [browser.message() for _ in range(9)]
    browser.close()
    last = dict(browser.last)
    assert set(last) == set(channels)
    for n in range(3, 6):
        assert b.send(data=n, channel=channels)[0] == 202
    moved = Browser(b)
    try:
        missed = []
        for channel in channels:
            assert moved.subscribe(channel, since=last[channel])["recovered"] is True
            got = [moved.message() for _ in range(3)]
            assert [(m["channel"], m["data"]) for m in got] == [(channel, n) for n in (3, 4, 5)]
            missed += got
        assert not {m["id"] for m in missed} & {m["id"] for m in seen}
    finally:
        moved.close()


def presence_token(channel: str, user_id: str) -> str:
    claims = {"channels": [channel], "exp": int(time.time()) + 600, "user": {"id": user_id, "info": {}}}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def test_presence_on_a_shard_other_than_home_across_nodes(cluster, shards):
    """A presence channel that lives on the third shard: a member joining
    on one node is announced on the other and listed in its
    ``subscribed``; its members are kept on that shard."""
    a, b = cluster(2, session_grace=2)
    (room,) = on_shard(shards, 2, "presence-room")
    ann = Browser(a)
    bob = Browser(b)
    try:
        ann.send({"type": "subscribe", "channel": room, "token": presence_token(room, "ann")})
        assert ann.recv()["members"] == [{"id": "ann", "info": {}}]
        bob.send({"type": "subscribe", "channel": room, "token": presence_token(room, "bob")})
        assert sorted(m["id"] for m in bob.recv()["members"]) == ["ann", "bob"]
        join = ann.recv()
        assert join["type"] == "presence" and join["event"] == "join" and join["member"]["id"] == "bob"
        assert shards[2].command("EXISTS", "chloe:p:" + room).startswith(b":1")
        assert shards[0].command("EXISTS", "chloe:p:" + room).startswith(b":0")
        bob.close()
        leave = ann.recv()
        assert leave["type"] == "presence" and leave["event"] == "leave" and leave["member"]["id"] == "bob"
    finally:
        ann.close()
        bob.close()


def user_token(user: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now - 1, "exp": now + 600}, SECRET, algorithm="HS256")


def test_a_message_to_a_user_whose_channel_is_not_on_the_home_shard(cluster, shards):
    """A user whose own channel lives on the second shard, logged in on
    both nodes: ``/send`` with ``user=`` reaches both tabs, counted; the
    user's sessions are listed from the home shard."""
    a, b = cluster(2)
    user = user_on_shard(shards, 1)
    tabs = [Browser(node) for node in (a, b)]
    try:
        for tab in tabs:
            tab.send({"type": "auth", "token": user_token(user)})
            assert tab.recv()["type"] == "authenticated"
        status, answer = a.send(data="hi", user=user)
        assert status == 202 and answer["delivered"] == 2, answer
        for tab in tabs:
            assert tab.recv()["data"] == "hi"
        assert kept_on(shards[1], frames.user_channel(user)) and not kept_on(shards[0], frames.user_channel(user))
        status, _, body = b.request("GET", f"/users/{user}")
        assert status == 200 and len(json.loads(body)["sessions"]) == 2
    finally:
        for tab in tabs:
            tab.close()


def test_a_shard_killed_stops_only_its_channels_and_they_recover(cluster, shards):
    """The second shard SIGKILLed: ``/health`` names it (503), a /send to
    its channel answers 503 backend_unavailable while the other shards'
    channels still reach both nodes' browsers. Restarted on the same port
    and data: its channel works again, the browser that stayed gets what
    is published after, one resuming from its last id gets everything
    since, and nothing accepted with 202 is lost."""
    a, b = cluster(2)
    (home, ) = on_shard(shards, 0, "kill")
    (victim, ) = on_shard(shards, 1, "kill")
    (third, ) = on_shard(shards, 2, "kill")
    stays, leaves = Browser(a), Browser(b)
    try:
        for browser in (stays, leaves):
            for channel in (home, victim, third):
                browser.subscribe(channel)
        status, answer = a.send(data=1, channel=victim)
        assert status == 202
        accepted = [answer["ids"][victim]]
        assert stays.message()["data"] == 1 and leaves.message()["data"] == 1
        leaves.close()
        wait_until(lambda: all(subscribers(a, channel) == 1 for channel in (home, third)))

        shards[1].kill()
        wait_until(lambda: health(a)[0] == 503 and health(b)[0] == 503)
        state = health(a)[1]["state"]
        assert state == f"down: redis://127.0.0.1:{shards[1].port}/0", state
        status, answer = a.send(data="lost?", channel=victim)
        assert status == 503 and answer["error"] == "backend_unavailable", answer
        assert f"127.0.0.1:{shards[1].port}" in answer["message"]
        status, answer = b.send(data="lost?", channel=[home, victim])
        assert status == 503 and answer["error"] == "backend_unavailable", answer
        for channel in (home, third):
            status, answer = b.send(data="on", channel=channel)
            assert status == 202 and answer["delivered"] == 1, answer
        assert [(m["channel"], m["data"]) for m in (stays.message(), stays.message())] == [(home, "on"), (third, "on")]

        shards[1].start()
        wait_until(lambda: health(a)[0] == 200 and health(b)[0] == 200)
        for n in (2, 3):
            status, answer = b.send(data=n, channel=victim)
            assert status == 202, answer
            accepted.append(answer["ids"][victim])
        assert [stays.message()["data"] for _ in range(2)] == [2, 3]
        back = Browser(b)
        try:
            assert back.subscribe(victim, since=accepted[0])["recovered"] is True
            assert [back.message()["data"] for _ in range(2)] == [2, 3]
            back.subscribe(home)
            status, answer = a.send(data=4, channel=[home, victim, third])
            # stays is in all three channels, back in two.
            assert status == 202 and answer["delivered"] == 3 + 2, answer
        finally:
            back.close()
        late = Browser(a)
        try:
            late.subscribe(victim, since="0-0")
            assert [late.message()["id"] for _ in range(4)][:3] == accepted  # AOF: nothing lost
        finally:
            late.close()
    finally:
        stays.close()
        leaves.close()
