"""Users across three chloed nodes on one real Redis: a message to a user
reaches its tabs on every node, the per-user limit counts every node's
sessions, the app's disconnect and revoke reach every node, and a tab that
reconnects to another node within the grace gets what was sent meanwhile."""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterator

import jwt
import pytest
from websockets.exceptions import ConnectionClosed

from tests.redis_server import redis_server  # noqa: F401 (a fixture)
from tests.servers import Chloed
from tests.test_multinode import Browser, wait_until

SECRET = "test-secret-of-the-users-cluster-32b"


def token(sub: str, lifetime: float = 3600, **claims: Any) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now - 1, "exp": now + lifetime, **claims}, SECRET, algorithm="HS256")


class Tab(Browser):
    """A browser tab logged in as a user (its ``authenticated`` frame read)."""

    def __init__(self, node: Chloed, user: str, since: str | None = None, **claims: Any) -> None:
        super().__init__(node)
        frame: dict[str, Any] = {"type": "auth", "token": token(user, **claims)}
        if since is not None:
            frame["since"] = since
        self.send(frame)
        self.authenticated = self.recv()

    def closing_frame(self) -> Any:
        """The frame the server closed the connection after."""
        last = None
        try:
            while True:
                last = self.recv()
        except ConnectionClosed:
            return last


def post(node: Chloed, path: str, body: Any) -> tuple[int, Any]:
    status, _, raw = node.request("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return status, json.loads(raw)


def user_sessions(node: Chloed, user: str) -> list[Any]:
    status, _, raw = node.request("GET", f"/users/{user}")
    assert status == 200, raw
    return json.loads(raw)["sessions"]


@pytest.fixture
def cluster(redis_server, tmp_path) -> Iterator[Callable[..., list[Chloed]]]:  # noqa: F811
    started: list[Chloed] = []

    def start(n: int, extra: str = "") -> list[Chloed]:
        conf = tmp_path / f"chloe-{len(started)}.toml"
        conf.write_text(f'backend = "{redis_server.url}"\nsession_grace = 10\n{extra}\n')
        nodes = [Chloed(config=str(conf), secret=SECRET) for _ in range(n)]
        started.extend(nodes)
        return nodes

    yield start
    for node in started:
        node.stop()


def test_a_message_to_a_user_reaches_its_tabs_on_two_nodes_and_counts_them(cluster):
    a, b, c = cluster(3)
    tabs = [Tab(a, "alice"), Tab(b, "alice")]
    other = Tab(c, "bob")
    try:
        assert all(t.authenticated["type"] == "authenticated" for t in tabs + [other])
        status, receipt = c.send(user="alice", data={"hello": "alice"})
        assert status == 202, receipt
        assert receipt["delivered"] == 2 and set(receipt["users"]) == {"alice"}
        for tab in tabs:
            message = tab.message()
            assert message["user"] == "alice" and message["channel"] is None
            assert message["data"] == {"hello": "alice"} and message["id"] == receipt["users"]["alice"]
        wait_until(lambda: len(user_sessions(c, "alice")) == 2)
        assert {s["node"] for s in user_sessions(a, "alice")} and len({s["id"] for s in user_sessions(b, "alice")}) == 2
    finally:
        for tab in tabs + [other]:
            tab.close()


def test_the_per_user_limit_counts_every_nodes_sessions(cluster):
    a, b, c = cluster(3, "max_connections_per_user = 2")
    tabs = [Tab(a, "carol"), Tab(b, "carol")]
    try:
        assert all(t.authenticated["type"] == "authenticated" for t in tabs)
        third = Tab(c, "carol")
        assert third.authenticated["type"] == "error" and third.authenticated["code"] == "too_many_connections"
        third.close()
        tabs[0].close()
        wait_until(lambda: len(user_sessions(c, "carol")) == 1)
        again = Tab(c, "carol")
        assert again.authenticated["type"] == "authenticated"
        again.close()
    finally:
        for tab in tabs:
            tab.close()


def test_disconnect_and_revoke_reach_every_node(cluster):
    a, b, c = cluster(3)
    on_a, on_b = Tab(a, "dave", jti="token-1"), Tab(b, "dave")
    erin = Tab(b, "erin", jti="token-2")
    try:
        status, answer = post(c, "/disconnect", {"user": "dave", "reason": "banned", "reconnect": False})
        assert status == 202 and answer == {"sessions": 2}
        for tab in (on_a, on_b):
            assert tab.closing_frame() == {"type": "disconnect", "reason": "banned", "reconnect": False}
        status, _ = post(a, "/revoke", {"jti": "token-2"})
        assert status == 202
        last = erin.closing_frame()
        assert last["type"] == "error" and last["code"] == "token_revoked"
        refused = Tab(c, "erin", jti="token-2")
        assert refused.authenticated["code"] == "token_revoked"
        refused.close()
    finally:
        for tab in (on_a, on_b, erin):
            tab.close()


def test_a_tab_reconnecting_to_another_node_within_the_grace_gets_the_gap(cluster):
    a, b, _ = cluster(3)
    tab = Tab(a, "frank")
    status, first = a.send(user="frank", data="before")
    assert status == 202
    assert tab.message()["data"] == "before"
    cursor = first["users"]["frank"]
    tab.close()
    wait_until(lambda: not user_sessions(b, "frank"))
    status, gap = b.send(user="frank", data="in the gap")
    assert status == 202 and gap["delivered"] == 0
    again = Tab(b, "frank", since=cursor)
    try:
        assert again.authenticated["type"] == "authenticated"
        message = again.message()
        assert message["data"] == "in the gap" and message["id"] == gap["users"]["frank"]
    finally:
        again.close()


def test_a_namespaces_presence_channel_lists_the_users_of_every_node(cluster):
    """``[namespaces.room] presence = true``: ``room:1`` tracks members
    without a token of its own, as the connections' users, on every node."""
    a, b, _ = cluster(3, "[namespaces.room]\npresence = true")
    on_a, on_b = Tab(a, "gina", info={"name": "Gina"}), Tab(b, "hal")
    try:
        on_a.send({"type": "subscribe", "channel": "room:1"})
        assert on_a.recv()["members"] == [{"id": "gina", "info": {"name": "Gina"}}]
        on_b.send({"type": "subscribe", "channel": "room:1"})
        answer = on_b.recv()
        assert answer["type"] == "subscribed", answer
        assert sorted(m["id"] for m in answer["members"]) == ["gina", "hal"]
        joined = on_a.recv()
        assert joined["type"] == "presence" and joined["event"] == "join" and joined["member"]["id"] == "hal"
        status, _, raw = a.request("GET", "/channels/room:1/presence")
        assert status == 200 and sorted(m["id"] for m in json.loads(raw)["members"]) == ["gina", "hal"]
    finally:
        on_a.close()
        on_b.close()
