"""Pusher clients on several chloed nodes sharing one real Redis: an event
published through node A reaches a socket on node B; presence, sign-in and
``terminate_connections`` are cluster-wide; ``channel_occupied`` and
``channel_vacated`` reach the app once per cluster, not once per node."""

from __future__ import annotations

import json
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import pusher
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.redis_server import redis_server  # noqa: F401 (a fixture)
from tests.servers import Chloed

TIMEOUT = 10
APP_ID, KEY, SECRET = "4242", "multi-key", "multi-secret-0123"


class Socket:
    """A raw Pusher protocol 7 client."""

    def __init__(self, node: Chloed) -> None:
        self._connection = connect(f"ws://127.0.0.1:{node.port}/app/{KEY}?protocol=7&client=test", open_timeout=TIMEOUT)
        self.ws = self._connection.__enter__()
        established = self.recv()
        assert established["event"] == "pusher:connection_established", established
        self.socket_id = json.loads(established["data"])["socket_id"]

    def send(self, event: str, data: Any, channel: str | None = None) -> None:
        frame: dict[str, Any] = {"event": event, "data": data}
        if channel is not None:
            frame["channel"] = channel
        self.ws.send(json.dumps(frame))

    def recv(self) -> Any:
        return json.loads(self.ws.recv(timeout=TIMEOUT))

    def next(self, event: str) -> Any:
        """The next frame of ``event``, skipping presence bookkeeping of others."""
        while True:
            frame = self.recv()
            if frame["event"] == event:
                return frame

    def subscribe(self, channel: str, **auth: Any) -> Any:
        self.send("pusher:subscribe", {"channel": channel, **auth})
        frame = self.next("pusher_internal:subscription_succeeded")
        assert frame["channel"] == channel, frame
        return frame

    def close(self) -> None:
        self._connection.__exit__(None, None, None)


class WebhookSink:
    """The app's webhook URL: every event POSTed, validated with the
    ``pusher`` library, in a queue."""

    def __init__(self, client: pusher.Pusher) -> None:
        self.events: queue.Queue[Any] = queue.Queue()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                valid = client.validate_webhook(
                    self.headers["X-Pusher-Key"], self.headers["X-Pusher-Signature"], body.decode("utf-8")
                )
                self.send_response(200 if valid is not None else 401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if valid is not None:
                    for event in valid["events"]:
                        sink.events.put(event)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def next(self, timeout: float = TIMEOUT) -> Any:
        return self.events.get(timeout=timeout)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def cluster(redis_server, tmp_path) -> Iterator[Callable[[int], tuple[list[Chloed], WebhookSink]]]:  # noqa: F811
    started: list[Chloed] = []
    sinks: list[WebhookSink] = []

    def start(n: int) -> tuple[list[Chloed], WebhookSink]:
        sink = WebhookSink(pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET))
        sinks.append(sink)
        conf = tmp_path / "chloe.toml"
        conf.write_text(
            f'backend = "{redis_server.url}"\nsession_grace = 1\n'
            f'[pusher]\n[[pusher.apps]]\nid = "{APP_ID}"\nkey = "{KEY}"\nsecret = "{SECRET}"\n'
            f'enable_client_messages = true\nwebhook_url = "{sink.url}"\n'
        )
        nodes = [Chloed(config=str(conf)) for _ in range(n)]
        started.extend(nodes)
        return nodes, sink

    yield start
    for node in started:
        node.stop()
    for sink in sinks:
        sink.stop()


def api(node: Chloed) -> pusher.Pusher:
    return pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET, host="127.0.0.1", port=node.port, ssl=False)


def test_an_event_through_one_node_reaches_sockets_on_every_node(cluster) -> None:
    (a, b), sink = cluster(2)
    on_a, on_b = Socket(a), Socket(b)
    try:
        on_a.subscribe("news")
        on_b.subscribe("news")
        for n in range(3):
            api(a).trigger("news", "update", {"n": n})
        for socket in (on_a, on_b):
            got = [socket.next("update") for _ in range(3)]
            assert [json.loads(f["data"])["n"] for f in got] == [0, 1, 2]
            assert all(f["channel"] == "news" for f in got)
        # socket_id leaves out that socket, whichever node holds it.
        api(a).trigger("news", "not-for-b", "x", socket_id=on_b.socket_id)
        api(a).trigger("news", "for-all", "y")
        assert on_a.next("not-for-b")["data"] == "x"
        assert on_b.recv()["event"] == "for-all"
    finally:
        on_a.close()
        on_b.close()


def test_occupied_and_vacated_reach_the_app_once_per_cluster(cluster) -> None:
    (a, b), sink = cluster(2)
    first, second = Socket(a), Socket(b)
    first.subscribe("room")
    occupied = sink.next()
    assert occupied["name"] == "channel_occupied" and occupied["channel"] == "room", occupied
    assert occupied["delivery"]
    second.subscribe("room")
    first.send("pusher:unsubscribe", {"channel": "room"})
    # Still occupied through node B: nothing more until its socket goes too.
    second.close()
    vacated = sink.next()
    assert vacated["name"] == "channel_vacated" and vacated["channel"] == "room", vacated
    with pytest.raises(queue.Empty):
        sink.next(timeout=1)
    first.close()


def test_presence_and_terminate_are_cluster_wide(cluster) -> None:
    (a, b), sink = cluster(2)
    client = api(a)
    alice, bob = Socket(a), Socket(b)
    try:
        auth = client.authenticate(channel="presence-team", socket_id=alice.socket_id,
                                   custom_data={"user_id": "alice", "user_info": {"name": "Alice"}})
        alice.subscribe("presence-team", **auth)
        auth = client.authenticate(channel="presence-team", socket_id=bob.socket_id,
                                   custom_data={"user_id": "bob", "user_info": {"name": "Bob"}})
        joined = bob.subscribe("presence-team", **auth)
        members = json.loads(joined["data"])["presence"]
        assert set(members["ids"]) == {"alice", "bob"} and members["hash"]["alice"] == {"name": "Alice"}
        added = alice.next("pusher_internal:member_added")
        assert json.loads(added["data"]) == {"user_id": "bob", "user_info": {"name": "Bob"}}
        assert {u["id"] for u in client.users_info("presence-team")["users"]} >= {"alice"}

        # Bob signs in on node B; node A's API terminates his connections.
        signed = client.authenticate_user(bob.socket_id, {"id": "bob"})
        bob.send("pusher:signin", {"auth": signed["auth"], "user_data": signed["user_data"]})
        success = bob.next("pusher:signin_success")
        assert json.loads(json.loads(success["data"])["user_data"])["id"] == "bob"
        api(a).send_to_user("bob", "hello", {"to": "bob"})
        assert json.loads(bob.next("hello")["data"]) == {"to": "bob"}
        api(a).terminate_user_connections("bob")
        assert bob.next("pusher:error")["data"]["code"] == 4009
        with pytest.raises(ConnectionClosed) as closed:
            bob.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4009
        removed = alice.next("pusher_internal:member_removed")
        assert json.loads(removed["data"]) == {"user_id": "bob"}
    finally:
        alice.close()
        bob.close()
