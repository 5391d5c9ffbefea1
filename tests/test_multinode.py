"""Several chloed processes on one real Redis (``backend = "redis://…"``):
publish anywhere, resume anywhere, lose nothing when a node or Redis dies."""

from __future__ import annotations

import json
import threading
import urllib.parse
import time
from typing import Any, Callable, Iterator

import jwt
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.redis_server import redis_server  # noqa: F401 (a fixture)
from tests.servers import Chloed
from tests.test_integration_http_transports import SSEReader

TIMEOUT = 10


class Browser:
    """A WebSocket client speaking Chloe's frames; keeps the last id seen
    per channel, as chloe.js does."""

    def __init__(self, node: Chloed) -> None:
        self._connection = connect(node.ws_url, open_timeout=TIMEOUT)
        self.ws = self._connection.__enter__()
        self.connected = self.recv()
        assert self.connected["type"] == "connected"
        self.last: dict[str, str] = {}

    def send(self, frame: Any) -> None:
        self.ws.send(json.dumps(frame))

    def recv(self) -> Any:
        return json.loads(self.ws.recv(timeout=TIMEOUT))

    def subscribe(self, channel: str, since: str | None = None) -> Any:
        frame = {"type": "subscribe", "channel": channel}
        if since is not None:
            frame["since"] = since
        self.send(frame)
        answer = self.recv()
        assert answer["type"] == "subscribed" and answer["channel"] == channel, answer
        return answer

    def message(self) -> Any:
        """The next message frame (skipping nothing else: none is expected)."""
        frame = self.recv()
        assert frame["type"] == "message", frame
        if frame["channel"] is not None:
            self.last[frame["channel"]] = frame["id"]
        return frame

    def close(self) -> None:
        self._connection.__exit__(None, None, None)


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """A bounded wait for a state another process reaches (checked every
    50 ms)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def health(node: Chloed) -> tuple[int, Any]:
    status, _, body = node.request("GET", "/health", auth=False)
    return status, json.loads(body)


@pytest.fixture
def cluster(redis_server, tmp_path) -> Iterator[Callable[..., list[Chloed]]]:  # noqa: F811
    """Start ``n`` chloed nodes on the test's Redis (``session_grace`` 10 s
    unless given); all stop after."""
    started: list[Chloed] = []

    def start(n: int, session_grace: float = 10) -> list[Chloed]:
        conf = tmp_path / f"chloe-{len(started)}.toml"
        conf.write_text(
            f'backend = "{redis_server.url}"\nhistory_size = 1000\nsession_grace = {session_grace}\n'
        )
        nodes = [Chloed(config=str(conf)) for _ in range(n)]
        started.extend(nodes)
        return nodes

    yield start
    for node in started:
        node.stop()


def test_a_publish_on_any_node_reaches_browsers_on_all(cluster):
    """Each node's /send reaches the subscribers on every node, in order,
    with the same cluster-wide ids."""
    nodes = cluster(3)
    browsers = [Browser(node) for node in nodes]
    try:
        for browser in browsers:
            browser.subscribe("news")
        ids = []
        for n, node in enumerate(nodes):
            status, answer = node.send(data=n, channel="news")
            assert status == 202, answer
            ids.append(answer["ids"]["news"])
        for browser in browsers:
            got = [browser.message() for _ in nodes]
            assert [m["data"] for m in got] == [0, 1, 2]
            assert [m["id"] for m in got] == ids
    finally:
        for browser in browsers:
            browser.close()


def test_a_batch_send_on_one_node_reaches_browsers_on_all_in_order(cluster):
    """A batch ``/send`` through Redis: every item published in order, one
    result per item (a bad one reported by index), each node's browser
    getting the items in that order with the ids the results name."""
    a, b = cluster(2)
    on_a, on_b = Browser(a), Browser(b)
    try:
        on_a.subscribe("batch")
        on_b.subscribe("batch")
        items = [{"channel": "batch", "data": n} for n in range(5)]
        items.insert(2, {"channel": "no spaces", "data": "bad"})
        status, _, body = a.request("POST", "/send", json.dumps(items).encode(), {"Content-Type": "application/json"})
        assert status == 202, body
        answer = json.loads(body)
        assert answer["sent"] == 5 and answer["failed"] == 1
        assert answer["results"][2]["index"] == 2 and answer["results"][2]["error"] == "invalid_channel"
        ids = [r["ids"]["batch"] for r in answer["results"] if "ids" in r]
        for browser in (on_a, on_b):
            got = [browser.message() for _ in range(5)]
            assert [m["data"] for m in got] == [0, 1, 2, 3, 4]
            assert [m["id"] for m in got] == ids
    finally:
        on_a.close()
        on_b.close()


def subscribers(node: Chloed, channel: str) -> int:
    status, _, body = node.request("GET", "/channels/" + channel)
    assert status == 200, body
    answer = json.loads(body)
    assert "history" not in answer  # it lives in Redis
    return answer["subscribers"]


def test_send_receipts_count_browsers_on_every_node(cluster):
    """``/send`` on any node answers with the browsers of all nodes:
    WebSockets ``delivered``, long-poll sessions ``queued``; a browser that
    leaves stops counting. ``/channels/NAME`` counts them all too."""
    a, b, c = cluster(3)
    on_a, on_b = Browser(a), Browser(b)
    try:
        on_a.subscribe("receipts")
        on_b.subscribe("receipts")
        session, cursor, frames = open_poll(c, "channel=receipts")
        poll_until(c, session, cursor, frames, lambda fs: any(f["type"] == "subscribed" for f in fs))
        seen: list[Any] = []

        def receipt_is(expected: tuple[int, int]) -> bool:
            status, answer = c.send(data="count", channel="receipts")
            assert status == 202, answer
            seen.append(answer)
            return (answer["delivered"], answer["queued"]) == expected

        # Counts reach Redis a moment after the subscriptions do.
        wait_until(lambda: receipt_is((2, 1)))
        assert subscribers(a, "receipts") == 3
        on_b.close()
        wait_until(lambda: receipt_is((1, 1)))
        assert subscribers(b, "receipts") == 2
        assert seen[-1]["ids"]["receipts"]
        status, answer = a.send(data="nobody", channel="nobody-here")
        assert status == 202 and (answer["delivered"], answer["queued"]) == (0, 0)
    finally:
        on_a.close()
        on_b.close()


def test_a_send_right_after_subscribed_on_another_node_counts_the_browser(cluster):
    """A browser answered ``subscribed`` on node B is counted by a /send on
    node A made at once after it (no ``0/0`` for a message it gets): the
    first subscriber of the channel on B, later ones, and a long-poll one."""
    a, b = cluster(2)
    wait_until(lambda: health(a)[0] == 200 and health(b)[0] == 200)
    browsers: list[Browser] = []
    try:
        for n in range(1, 4):
            browsers.append(Browser(b))
            browsers[-1].subscribe("just-joined")
            status, answer = a.send(data=n, channel="just-joined")
            assert status == 202 and (answer["delivered"], answer["queued"]) == (n, 0), answer
            assert "lower_bound" not in answer
        session, cursor, frames = open_poll(b, "channel=just-joined")
        poll_until(b, session, cursor, frames, lambda fs: any(f["type"] == "subscribed" for f in fs))
        status, answer = a.send(data=4, channel="just-joined")
        assert status == 202 and (answer["delivered"], answer["queued"]) == (3, 1), answer
        for k, browser in enumerate(browsers, 1):
            assert [browser.message()["data"] for _ in range(k, 5)] == list(range(k, 5))
    finally:
        for browser in browsers:
            browser.close()


def test_a_broadcast_right_after_connected_on_another_node_counts_the_browser(cluster):
    """A browser answered ``connected`` on node B is counted by a broadcast
    from node A made at once after it."""
    a, b = cluster(2)
    wait_until(lambda: health(a)[0] == 200 and health(b)[0] == 200)
    browsers: list[Browser] = []
    try:
        for n in range(1, 4):
            browsers.append(Browser(b))
            status, answer = a.send(data=n)
            assert status == 202 and (answer["delivered"], answer["queued"]) == (n, 0), answer
            assert "lower_bound" not in answer
        for k, browser in enumerate(browsers, 1):
            assert [browser.message()["data"] for _ in range(k, 4)] == list(range(k, 4))
    finally:
        for browser in browsers:
            browser.close()


def test_send_to_everyone_and_to_one_session_on_another_node(cluster):
    """A broadcast reaches browsers on every node; ``session=`` reaches a
    browser on another node; an unknown session is a 404."""
    a, b = cluster(2)
    on_a, on_b = Browser(a), Browser(b)
    try:
        status, _ = a.send(data="all")
        assert status == 202
        assert on_a.message()["data"] == "all" and on_b.message()["data"] == "all"
        status, _ = a.send(data="you", session=on_b.connected["session"])
        assert status == 202
        assert on_b.message()["data"] == "you"
        status, answer = a.send(data="x", session="no-such-session")
        assert status == 404 and answer["error"] == "unknown_session"
    finally:
        on_a.close()
        on_b.close()


class Publisher(threading.Thread):
    """Posts 1..count to ``channel`` through the nodes in turn, each only
    after the one before was accepted (202)."""

    def __init__(self, nodes: list[Chloed], channel: str, count: int) -> None:
        super().__init__(daemon=True)
        self.nodes, self.channel, self.count = nodes, channel, count
        self.accepted = 0
        self.failed: list[Any] = []

    def run(self) -> None:
        for n in range(1, self.count + 1):
            node = self.nodes[n % len(self.nodes)]
            status, answer = node.send(data=n, channel=self.channel)
            if status != 202:
                self.failed.append((n, status, answer))
                return
            self.accepted = n


def test_a_browser_moved_between_nodes_mid_stream_gets_each_number_once_in_order(cluster):
    """A browser that reconnects to another node every few messages and
    resumes with ``since`` ends with every number exactly once, in order."""
    nodes = cluster(3)
    count = 300
    publisher = Publisher(nodes, "count", count)
    browser = Browser(nodes[0])
    browser.subscribe("count")
    publisher.start()
    seen: list[int] = []
    hop = 0
    last = None
    while len(seen) < count:
        if seen and len(seen) % 40 == 0:
            hop += 1
            browser.close()
            browser = Browser(nodes[hop % len(nodes)])
            assert browser.subscribe("count", since=last)["recovered"] is True
        frame = browser.message()
        last = frame["id"]
        seen.append(frame["data"])
    browser.close()
    publisher.join(TIMEOUT)
    assert not publisher.failed
    assert seen == list(range(1, count + 1))
    assert hop >= 5


def test_a_node_killed_loses_none_of_its_browsers_messages(cluster):
    """Browsers on a node killed with SIGKILL reconnect to another node with
    ``since`` and get every message, exactly once, in order."""
    nodes = cluster(3)
    victim = nodes[2]
    count = 200
    browsers = [Browser(victim) for _ in range(3)]
    for browser in browsers:
        browser.subscribe("feed")
    publisher = Publisher(nodes[:2], "feed", count)
    publisher.start()
    seen: list[list[int]] = [[] for _ in browsers]
    for index, browser in enumerate(browsers):
        for _ in range(10 * (index + 1)):
            seen[index].append(browser.message()["data"])
    victim.process.kill()  # SIGKILL
    victim.process.wait()
    for index, browser in enumerate(browsers):
        # Whatever was still on its way arrives before the connection ends.
        try:
            while True:
                frame = browser.recv()
                if frame["type"] == "message":
                    browser.last[frame["channel"]] = frame["id"]
                    seen[index].append(frame["data"])
        except (ConnectionClosed, OSError):
            pass
        moved = Browser(nodes[index % 2])
        assert moved.subscribe("feed", since=browser.last["feed"])["recovered"] is True
        while len(seen[index]) < count:
            seen[index].append(moved.message()["data"])
        moved.close()
    publisher.join(TIMEOUT)
    assert not publisher.failed
    for got in seen:
        assert got == list(range(1, count + 1))


def test_sse_resumes_on_another_node_with_last_event_id(cluster):
    """An EventSource's Last-Event-ID, an id of the cluster, resumes every
    channel of the stream on any node, merged in publish order."""
    a, b = cluster(2)
    reader = SSEReader(a, "/sse?channel=x&channel=y")
    try:
        assert reader.event()["event"] == "connected"
        assert [reader.event()["event"] for _ in range(2)] == ["subscribed", "subscribed"]
        a.send(data=1, channel="x")
        first = reader.event()
        assert first["data"]["data"] == 1
    finally:
        reader.close()
    for n, channel in enumerate(["y", "x", "y"], start=2):
        assert b.send(data=n, channel=channel)[0] == 202
    reader = SSEReader(b, "/sse?channel=x&channel=y", {"Last-Event-ID": first["id"]})
    try:
        assert reader.event()["event"] == "connected"
        subscribed = [reader.event()["data"] for _ in range(2)]
        assert all(s["recovered"] for s in subscribed)
        assert [reader.event()["data"]["data"] for _ in range(3)] == [2, 3, 4]
    finally:
        reader.close()


def open_poll(node: Chloed, query: str) -> tuple[str, int, list[Any]]:
    """``GET /poll?<query>``: a new session, its cursor and first frames."""
    status, _, body = node.request("GET", "/poll?" + query, auth=False)
    assert status == 200, body
    answer = json.loads(body)
    return answer["session"], answer["cursor"], answer["frames"]


def poll_until(node: Chloed, session: str, cursor: int, frames: list[Any],
               done: Callable[[list[Any]], bool]) -> int:
    """Poll ``session`` (each poll held until something comes) until
    ``done(frames)``; returns the cursor."""
    deadline = time.monotonic() + TIMEOUT
    while not done(frames):
        assert time.monotonic() < deadline, frames
        status, _, body = node.request("GET", f"/poll?session={session}&cursor={cursor}", auth=False)
        assert status == 200, body
        answer = json.loads(body)
        frames += answer["frames"]
        cursor = answer["cursor"]
    return cursor


def test_long_poll_carries_on_from_its_cursor_on_another_node(cluster):
    """Polls of a session reaching a node that does not hold it are answered
    by the node that does (no sticky sessions), from the cursor, JSONP too;
    an unknown session is a 404 everywhere."""
    a, b = cluster(2)
    session, cursor, frames = open_poll(a, "channel=c")
    cursor = poll_until(b, session, cursor, frames, lambda fs: any(f["type"] == "subscribed" for f in fs))
    a.send(data=1, channel="c")
    b.send(data=2, channel="c")
    cursor = poll_until(b, session, cursor, frames, lambda fs: len([f for f in fs if f["type"] == "message"]) == 2)
    assert [f["data"] for f in frames if f["type"] == "message"] == [1, 2]
    # JSONP: a session opened on A, polled through B, wrapped by B.
    _, _, body = a.request("GET", "/jsonp?callback=cb&channel=c", auth=False)
    opened = json.loads(body[len(b"cb("):-len(b");")])
    jsonp, jcursor, jframes = opened["session"], opened["cursor"], opened["frames"]

    def jsonp_poll() -> None:
        nonlocal jcursor
        status, _, body = b.request("GET", f"/jsonp?callback=cb&session={jsonp}&cursor={jcursor}", auth=False)
        assert status == 200 and body.startswith(b"cb(") and body.endswith(b");")
        answer = json.loads(body[len(b"cb("):-len(b");")])
        jframes.extend(answer["frames"])
        jcursor = answer["cursor"]

    while not any(f["type"] == "subscribed" for f in jframes):
        jsonp_poll()
    a.send(data=3, channel="c")
    while not any(f["type"] == "message" for f in jframes):
        jsonp_poll()
    assert [f["data"] for f in jframes if f["type"] == "message"] == [3]
    # ... and its frames, sent through B, reach it on A.
    frames_arg = urllib.parse.quote(json.dumps([{"type": "ping"}]))
    status, _, body = b.request("GET", f"/jsonp/send?callback=cb&session={jsonp}&frames={frames_arg}", auth=False)
    assert status == 200 and body == b'cb({"ok":true});'
    while not any(f["type"] == "pong" for f in jframes):
        jsonp_poll()
    status, _, body = b.request("GET", "/poll?session=nobody&cursor=0", auth=False)
    assert status == 404 and json.loads(body)["error"] == "unknown_session"


def test_long_poll_session_of_a_dead_node_is_404_and_resumes_with_since(cluster):
    """When the node holding a long-poll session dies, a poll elsewhere is a
    404 (``unknown_session``); a new session there with ``since`` carries on
    where the old one stopped, as chloe.js does."""
    a, b = cluster(2)
    session, cursor, frames = open_poll(a, "channel=c")
    cursor = poll_until(a, session, cursor, frames, lambda fs: any(f["type"] == "subscribed" for f in fs))
    _, sent = a.send(data=1, channel="c")
    cursor = poll_until(a, session, cursor, frames, lambda fs: any(f["type"] == "message" for f in fs))
    last = [f for f in frames if f["type"] == "message"][-1]["id"]
    assert last == sent["ids"]["c"]
    a.process.kill()  # SIGKILL
    a.process.wait()
    b.send(data=2, channel="c")
    status, _, body = b.request("GET", f"/poll?session={session}&cursor={cursor}", auth=False)
    assert status == 404 and json.loads(body)["error"] == "unknown_session"
    session, cursor, frames = open_poll(b, f"channel=c&since={last}")
    poll_until(b, session, cursor, frames, lambda fs: any(f["type"] == "message" for f in fs))
    assert [f["data"] for f in frames if f["type"] == "message"] == [2]
    assert {"type": "subscribed", "channel": "c", "recovered": True} in frames


def presence_token(user_id: str) -> str:
    claims = {"channels": ["presence-room"], "exp": int(time.time()) + 600, "user": {"id": user_id, "info": {}}}
    return jwt.encode(claims, "test-secret", algorithm="HS256")


def test_presence_across_nodes_and_a_dead_nodes_member_leaves(cluster):
    """A member joining on one node is announced on another and listed in
    its ``subscribed``; when its node is killed it leaves after about
    ``session_grace`` (2 s here), announced on the nodes still up."""
    a, b = cluster(2, session_grace=2)
    ann = Browser(a)
    ann.send({"type": "subscribe", "channel": "presence-room", "token": presence_token("ann")})
    assert ann.recv()["members"] == [{"id": "ann", "info": {}}]
    bob = Browser(b)
    bob.send({"type": "subscribe", "channel": "presence-room", "token": presence_token("bob")})
    subscribed = bob.recv()
    assert sorted(m["id"] for m in subscribed["members"]) == ["ann", "bob"]
    join = ann.recv()
    assert join["type"] == "presence" and join["event"] == "join" and join["member"]["id"] == "bob"
    killed = time.monotonic()
    b.process.kill()  # SIGKILL: bob's node cannot say goodbye
    b.process.wait()
    leave = ann.recv()
    assert leave["type"] == "presence" and leave["event"] == "leave" and leave["member"]["id"] == "bob"
    assert 1.0 <= time.monotonic() - killed <= 8.0
    bob.close()
    ann.close()


def test_redis_killed_and_restarted(cluster, redis_server):  # noqa: F811
    """While Redis is down /send answers 503 backend_unavailable and /health
    503 degraded, browsers stay connected; when it is back every node
    carries on, and no message /send accepted with 202 is lost."""
    a, b = cluster(2)
    browser = Browser(b)
    browser.subscribe("r")
    accepted = []
    status, answer = a.send(data=1, channel="r")
    assert status == 202
    accepted.append(answer["ids"]["r"])
    assert browser.message()["data"] == 1
    redis_server.kill()
    wait_until(lambda: health(a)[0] == 503 and health(b)[0] == 503)
    assert health(a)[1]["status"] == "degraded"
    status, _, body = a.request("GET", "/status")
    backend = json.loads(body)["backend"]
    assert status == 200 and (backend["kind"], backend["state"]) == ("redis", "down")
    status, answer = a.send(data="lost?", channel="r")
    assert status == 503 and answer["error"] == "backend_unavailable"
    status, _, body = a.request("GET", "/channels/r")
    assert status == 503 and json.loads(body)["error"] == "backend_unavailable"
    browser.send({"type": "ping"})
    assert browser.recv() == {"type": "pong"}  # still connected
    redis_server.start()
    wait_until(lambda: health(a)[0] == 200 and health(b)[0] == 200)
    for n in (2, 3):
        status, answer = a.send(data=n, channel="r")
        assert status == 202
        accepted.append(answer["ids"]["r"])
    assert [browser.message()["data"] for _ in range(2)] == [2, 3]
    # Everything accepted is still in Redis's history after the restart.
    late = Browser(a)
    late.subscribe("r", since="0-0")
    assert [late.message()["id"] for _ in accepted] == accepted
    browser.close()
    late.close()


def test_sse_session_frames_posted_to_another_node_are_forwarded(cluster):
    """``POST /session/<id>`` reaching a node that does not hold the SSE
    session is handed over to the node that does (chloe.js's SSE works
    without sticky sessions); an unknown session is still a 404."""
    a, b = cluster(2)
    reader = SSEReader(a, "/sse")
    try:
        session = reader.event()["data"]["session"]
        body = json.dumps([{"type": "subscribe", "channel": "fwd"}, {"type": "ping"}]).encode()
        status, _, _ = b.request("POST", f"/session/{session}", body, {"Content-Type": "text/plain"}, auth=False)
        assert status == 204
        answers = [reader.event()["data"] for _ in range(2)]  # pong may come first: subscribing waits for Redis
        assert {"type": "subscribed", "channel": "fwd", "recovered": True} in answers and {"type": "pong"} in answers
        b.send(data="via b", channel="fwd")
        assert reader.event()["data"]["data"] == "via b"
        status, _, body = b.request("POST", "/session/nobody", b"{}", {"Content-Type": "text/plain"}, auth=False)
        assert status == 404 and json.loads(body)["error"] == "unknown_session"
    finally:
        reader.close()
