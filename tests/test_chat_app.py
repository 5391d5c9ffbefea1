"""The chat demo's server side over HTTP: the tokens it mints open exactly
the channels they should (as chloed itself checks them), what chloed relays
is refused without a good signature or from someone not allowed there, and
a good message is stamped with its sender's name, kept for history and
pushed to chloed's ``/send``."""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import jwt
import pytest

from chloed import tokens
from chloed.errors import ProtocolError
from examples import chat_app

SECRET = "chat-secret-of-at-least-thirty-two-bytes"
NEW_KEY = "the-new-key-of-at-least-thirty-two-bytes"
OLD_KEY = "the-old-key-of-at-least-thirty-two-bytes"


class FakeChloe:
    """chloed's ``/send``, recording each push (body and Authorization)."""

    def __init__(self, status: int = 202) -> None:
        self.pushes: "queue.Queue[tuple[str | None, Any]]" = queue.Queue()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fake.pushes.put((self.headers.get("Authorization"), json.loads(body)))
                answer = json.dumps({"ids": {"x": "1-1"}} if status < 300 else {"error": "nope"}).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class App:
    """The chat app on a free port, talking to a :class:`FakeChloe`."""

    def __init__(self, chloe: FakeChloe, secret: str | list[str] = SECRET) -> None:
        self.chloe = chloe
        self.chat = chat_app.Chat(chloe.url, secret, staff=frozenset({"alice"}))
        self.server = chat_app.serve(0, self.chat)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, data=body, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def mint(self, name: str, room: str = "lobby") -> tuple[int, Any]:
        status, body = self.request("POST", "/token", json.dumps({"name": name, "room": room}).encode(),
                                    {"Content-Type": "application/json"})
        return status, json.loads(body)

    def relay(self, event: Any, secret: str = SECRET, timestamp: int | None = None,
              delivery: str = "d-1", signature: str | None = None) -> tuple[int, bytes]:
        """POST ``event`` to /updates the way chloed does, signed with ``secret``."""
        body = json.dumps(event).encode()
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        mac = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        headers = {"Content-Type": "application/json", "X-Chloe-Timestamp": stamp,
                   "X-Chloe-Signature": signature if signature is not None else "sha256=" + mac,
                   "X-Chloe-Delivery": delivery}
        return self.request("POST", "/updates", body, headers)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def chloe() -> Iterator[FakeChloe]:
    fake = FakeChloe()
    yield fake
    fake.stop()


@pytest.fixture
def app(chloe: FakeChloe) -> Iterator[App]:
    server = App(chloe)
    yield server
    server.stop()


def message(user: dict[str, Any], text: Any = "hello", channel: str = "presence-room-lobby") -> dict[str, Any]:
    return {"type": "message", "session": "s" * 32, "channel": channel, "data": {"text": text},
            "ref": "r1", "user": user}


def test_the_page_loads_chloe_js_from_chloed(app, chloe):
    """The page a browser opens loads chloe.js from chloed's address."""
    status, body = app.request("GET", "/")
    assert status == 200
    assert f'<script src="{chloe.url}/chloe.js"></script>'.encode() in body


def test_a_token_opens_the_room_and_names_its_member(app):
    """The token minted for Bob opens his room's presence channel in
    chloed's own check, with Bob as the member, and nothing else."""
    status, answer = app.mint("  bob  ", "lobby")
    assert status == 200
    assert answer["room"] == "presence-room-lobby"
    assert answer["user"]["info"] == {"name": "bob"}
    assert len(answer["user"]["id"]) == 32
    claims = jwt.decode(answer["token"], SECRET, algorithms=["HS256"])
    assert claims["channels"] == ["presence-room-lobby"]
    assert claims["user"] == answer["user"]
    assert time.time() + 3600 < claims["exp"] <= time.time() + 12 * 3600 + 5
    grant = tokens.verify(answer["token"], "presence-room-lobby", (SECRET,))
    assert grant.user == answer["user"]
    for channel in ("private-staff", "presence-room-kitchen"):
        with pytest.raises(ProtocolError) as refused:
            tokens.verify(answer["token"], channel, (SECRET,))
        assert refused.value.code == "forbidden"


def test_only_staff_tokens_open_the_staff_room(app):
    """Alice, on the staff list, gets a token that also opens private-staff."""
    _, answer = app.mint("alice")
    assert tokens.verify(answer["token"], "private-staff", (SECRET,)).user == answer["user"]
    assert answer["staff"] == "private-staff"


def test_every_join_is_a_new_member(app):
    """Two people typing the same name are two members, not one."""
    _, first = app.mint("bob")
    _, second = app.mint("bob")
    assert first["user"]["id"] != second["user"]["id"]


@pytest.mark.parametrize("body", [
    {"name": "", "room": "lobby"},
    {"name": "x" * 41, "room": "lobby"},
    {"name": "bob\x00", "room": "lobby"},
    {"name": "bob", "room": "a room"},
    {"name": "bob", "room": "x" * 65},
    {"name": "bob"},
    {"name": 7, "room": "lobby"},
    ["bob", "lobby"],
])
def test_bad_names_and_rooms_get_no_token(app, body):
    """A missing or unusable name or room is answered 400 with a reason."""
    status, answer = app.request("POST", "/token", json.dumps(body).encode())
    assert status == 400
    assert json.loads(answer)["error"]


def test_a_message_is_published_with_its_senders_name(app, chloe):
    """A message chloed relays from Bob is pushed to the room with Bob's
    name from his token, using the shared secret."""
    _, bob = app.mint("bob")
    status, body = app.relay(message(bob["user"], "hi <b>all</b>"))
    assert (status, body) == (200, b"published")
    auth, push = chloe.pushes.get(timeout=5)
    assert auth == "Bearer " + SECRET
    assert push["channel"] == ["presence-room-lobby"]
    data = push["data"]
    assert (data["name"], data["text"], data["user"]) == ("bob", "hi <b>all</b>", bob["user"]["id"])
    assert isinstance(data["seq"], int) and isinstance(data["at"], int)


def test_the_name_comes_from_the_token_not_the_message(app, chloe):
    """A sender cannot pass as someone else by putting a name in the data."""
    _, bob = app.mint("bob")
    event = message(bob["user"])
    event["data"]["name"] = "alice"
    assert app.relay(event)[0] == 200
    assert chloe.pushes.get(timeout=5)[1]["data"]["name"] == "bob"


@pytest.mark.parametrize("tamper", ["other secret", "old", "future", "no signature", "garbage", "body"])
def test_relayed_posts_without_a_good_signature_are_refused(app, chloe, tamper):
    """Anything not signed by chloed with the shared secret, just now, gets
    403 and publishes nothing."""
    _, bob = app.mint("bob")
    event = message(bob["user"])
    if tamper == "other secret":
        status, _ = app.relay(event, secret="not-the-secret-but-as-long-as-it-anyway")
    elif tamper == "old":
        status, _ = app.relay(event, timestamp=int(time.time()) - 3600)
    elif tamper == "future":
        status, _ = app.relay(event, timestamp=int(time.time()) + 3600)
    elif tamper == "no signature":
        status, _ = app.request("POST", "/updates", json.dumps(event).encode())
    elif tamper == "garbage":
        status, _ = app.relay(event, signature="sha256=" + "0" * 64)
    else:
        stamp = str(int(time.time()))
        mac = hmac.new(SECRET.encode(), stamp.encode() + b"." + json.dumps(event).encode(), hashlib.sha256)
        event["data"]["text"] = "changed on the way"
        status, _ = app.request("POST", "/updates", json.dumps(event).encode(), {
            "X-Chloe-Timestamp": stamp, "X-Chloe-Signature": "sha256=" + mac.hexdigest()})
    assert status == 403
    assert chloe.pushes.empty()


def test_rotated_keys_verify_relays_and_the_first_signs(chloe):
    """With the secret as a list, a relay signed with an older key is still
    accepted, and tokens are signed with the first."""
    app = App(chloe, secret=[NEW_KEY, OLD_KEY])
    try:
        _, bob = app.mint("bob")
        jwt.decode(bob["token"], NEW_KEY, algorithms=["HS256"])
        assert app.relay(message(bob["user"]), secret=OLD_KEY)[0] == 200
        assert chloe.pushes.get(timeout=5)[0] == "Bearer " + NEW_KEY
    finally:
        app.stop()


def test_senders_write_only_where_their_token_lets_them(app, chloe):
    """Bob may not write to the staff room nor to a room he did not join,
    and someone the app never minted a token for may not write at all:
    403, and nothing is published."""
    _, bob = app.mint("bob")
    assert app.relay(message(bob["user"], channel="private-staff"))[0] == 403
    assert app.relay(message(bob["user"], channel="presence-room-kitchen"), delivery="d-2")[0] == 403
    assert app.relay(message({"id": "f" * 32, "info": {"name": "bob"}}), delivery="d-3")[0] == 403
    assert app.relay(message(None), delivery="d-4")[0] == 403
    assert chloe.pushes.empty()
    _, alice = app.mint("alice")
    assert app.relay(message(alice["user"], "for staff", channel="private-staff"), delivery="d-5")[0] == 200
    assert chloe.pushes.get(timeout=5)[1]["channel"] == ["private-staff"]


@pytest.mark.parametrize("data", [{"text": ""}, {"text": "   "}, {"text": "x" * 2001}, {"text": 3}, "hi", None])
def test_what_is_not_a_chat_message_is_refused(app, chloe, data):
    """Empty, too long or not-text messages are answered 400."""
    _, bob = app.mint("bob")
    event = message(bob["user"])
    event["data"] = data
    assert app.relay(event)[0] == 400
    assert chloe.pushes.empty()


def test_a_repeated_delivery_is_published_once(app, chloe):
    """chloed delivers at least once: the same X-Chloe-Delivery again is
    answered 200 without a second publish."""
    _, bob = app.mint("bob")
    assert app.relay(message(bob["user"]), delivery="same") == (200, b"published")
    assert app.relay(message(bob["user"]), delivery="same") == (200, b"already published")
    chloe.pushes.get(timeout=5)
    assert chloe.pushes.empty()


def test_lifecycle_events_are_accepted_and_ignored(app, chloe):
    """Other events chloed may be configured to send get 200 and no publish."""
    status, body = app.relay({"type": "subscribe", "session": "s", "channel": "presence-room-lobby"})
    assert (status, body) == (200, b"ignored")
    assert chloe.pushes.empty()


def test_a_refused_publish_is_a_502_so_chloed_tries_again():
    """When chloed's /send refuses, the relay is answered 502 (chloed
    retries) and not remembered as delivered."""
    chloe = FakeChloe(status=503)
    app = App(chloe)
    try:
        _, bob = app.mint("bob")
        assert app.relay(message(bob["user"]))[0] == 502
    finally:
        app.stop()
        chloe.stop()


def test_history_is_for_bearers_of_a_token_opening_the_channel(app, chloe):
    """The room's last messages, oldest first, go to whoever holds a token
    for it; not to someone without one or with one for another room."""
    _, bob = app.mint("bob")
    for n, text in enumerate(["one", "two", "three"]):
        assert app.relay(message(bob["user"], text), delivery=f"h-{n}")[0] == 200
    _, carol = app.mint("carol")
    status, body = app.request("GET", "/history?channel=presence-room-lobby",
                               headers={"Authorization": "Bearer " + carol["token"]})
    assert status == 200
    history = json.loads(body)["messages"]
    assert [(m["name"], m["text"]) for m in history] == [("bob", "one"), ("bob", "two"), ("bob", "three")]
    assert [m["seq"] for m in history] == sorted({m["seq"] for m in history})

    assert app.request("GET", "/history?channel=presence-room-lobby")[0] == 401
    _, dave = app.mint("dave", "kitchen")
    for token in (dave["token"], "not.a.token", jwt.encode({"channels": ["presence-room-lobby"], "exp": 2**40},
                                                          "w" * 40, algorithm="HS256")):
        status, _ = app.request("GET", "/history?channel=presence-room-lobby",
                                headers={"Authorization": "Bearer " + token})
        assert status == 403
    status, _ = app.request("GET", "/history?channel=private-staff",
                            headers={"Authorization": "Bearer " + carol["token"]})
    assert status == 403


def test_history_keeps_the_last_messages_of_each_room(chloe):
    """Only the last ``history_size`` messages of a room are kept."""
    app = App(chloe)
    app.chat.history_size = 3
    try:
        _, bob = app.mint("bob")
        for n in range(5):
            assert app.relay(message(bob["user"], f"m{n}"), delivery=f"k-{n}")[0] == 200
        history = app.chat.history("Bearer " + bob["token"], "presence-room-lobby")
        assert [m["text"] for m in history] == ["m2", "m3", "m4"]
    finally:
        app.stop()
