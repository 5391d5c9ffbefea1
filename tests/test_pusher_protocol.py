"""Unit tests of chloed.pusher.protocol (and the /app/{key} socket of
chloed.pusher.socket): PusherProtocol on a Hub with the memory backend and
a Clock, its sessions written to recording sinks that read each frame as a
Pusher client does; the socket itself over a StringTransport. No socket, no
sleep.

What Pusher's protocol says a server does is the reference: Pusher's docs
("Pusher Channels Protocol", version 7), as pusher-js reads it."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
from typing import Any, Iterator

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from chloed import config as chloe_config
from chloed.backends.memory import MemoryBackend
from chloed.frames import Encoded
from chloed.hub import Hub
from chloed.pusher import names, wire
from chloed.pusher.apps import PusherApp
from chloed.pusher.protocol import MAX_CHANNEL_DATA, MAX_MEMBERS, PusherProtocol
from chloed.pusher.socket import PusherWebSocket, app_sockets
from chloed.session import Session
from tests.rawws import OP_BINARY, OP_CLOSE, OP_TEXT, Frame, frame, parse_frames, upgrade_request
from tests.test_websocket_failures import PEER, Transport, clock  # noqa: F401 (clock: a fixture)

APP_ID = "4242"
KEY = "app-key"
SECRET = "app-secret-0123"
SOCKET_ID_RE = re.compile(r"[0-9]+\.[0-9]+")


def app_entry(**options: Any) -> dict[str, Any]:
    """The test app's ``[[pusher.apps]]``: client events on unless said."""
    table: dict[str, Any] = {"id": APP_ID, "key": KEY, "secret": SECRET, "enable_client_messages": True}
    table.update(options)
    return table


def mac(secret: str, text: str) -> str:
    return hmac.new(secret.encode("utf-8"), text.encode("utf-8"), hashlib.sha256).hexdigest()


class RecordingWebhooks:
    """Stands in for chloed.pusher.webhooks.Webhooks: what the app would hear,
    as (Pusher's webhook name, app id, fields...)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def occupied(self, app: PusherApp, channel: str) -> None:
        self.calls.append(("channel_occupied", app.id, channel))

    def vacated(self, app: PusherApp, channel: str) -> None:
        self.calls.append(("channel_vacated", app.id, channel))

    def member(self, app: PusherApp, channel: str, joined: bool, user_id: str) -> None:
        self.calls.append(("member_added" if joined else "member_removed", app.id, channel, user_id))

    def cache_miss(self, app: PusherApp, channel: str) -> None:
        self.calls.append(("cache_miss", app.id, channel))

    def client_event(self, app: PusherApp, channel: str, event: str, data: Any, socket_id: str,
                     user_id: str | None) -> None:
        self.calls.append(("client_event", app.id, channel, event, data, socket_id, user_id))

    def status(self) -> dict[str, Any]:
        return {"recorded": len(self.calls)}

    def when_idle(self) -> Deferred[Any]:
        return succeed(None)

    def named(self, *kinds: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] in kinds]

    def take(self) -> list[tuple[Any, ...]]:
        calls, self.calls = self.calls, []
        return calls


class PusherSink:
    """A Pusher socket as its session sees it: each frame written is kept
    as the JSON a Pusher client reads (wire.pusher_json, made once per
    frame for every sink, as a socket's framing is), the frames that are
    nothing to a Pusher client left out; ``terminated`` when the app ended
    the user's connections."""

    def __init__(self) -> None:
        self._written: list[bytes] = []
        self._decoded: list[dict[str, Any]] = []
        self.terminated = False
        self.closed = False
        self.last: dict[str, Any] | None = None

    @property
    def frames(self) -> list[dict[str, Any]]:
        """What was written, decoded (once each, when first asked for)."""
        for data in self._written[len(self._decoded):]:
            self._decoded.append(json.loads(data))
        return self._decoded

    def write(self, frame: Encoded) -> None:
        assert not self.closed, "write after close"
        data = frame.framed(wire.pusher_json)
        if data is wire.TERMINATED:
            self.terminated = True
        elif data:
            self._written.append(data)

    def close(self, last: Encoded | None) -> None:
        self.closed = True
        if last is not None:
            self.last = json.loads(wire.pusher_json(last))


def data_of(frame: dict[str, Any]) -> Any:
    """A frame's data, decoded as pusher-js does when it is a string."""
    data = frame.get("data")
    return json.loads(data) if isinstance(data, str) else data


class Client:
    """One Pusher socket of the harness: its session, what it was sent."""

    def __init__(self, harness: "Harness", app: PusherApp, session: Session, sink: PusherSink) -> None:
        self.harness = harness
        self.app = app
        self.session = session
        self.sink = sink
        self._seen = 0

    @property
    def id(self) -> str:
        return self.session.id

    @property
    def frames(self) -> list[dict[str, Any]]:
        return self.sink.frames

    def new(self) -> list[dict[str, Any]]:
        """The frames written since the last call."""
        frames = self.sink.frames
        fresh = frames[self._seen:]
        self._seen = len(frames)
        return fresh

    def raw(self, payload: bytes | str) -> list[dict[str, Any]]:
        self.new()
        self.harness.pusher.receive(self.session, self.app, payload.encode() if isinstance(payload, str) else payload)
        return self.new()

    def send(self, event: str, data: Any = None, **fields: Any) -> list[dict[str, Any]]:
        """A frame from the client; what it was answered (and sent) meanwhile."""
        message: dict[str, Any] = {"event": event, **fields}
        if data is not None:
            message["data"] = data
        return self.raw(json.dumps(message))

    def subscribe(self, channel: str, auth: Any = None, channel_data: Any = None, signed: bool = True) -> list[dict[str, Any]]:
        data: dict[str, Any] = {"channel": channel}
        if auth is None and signed and names.private(channel):
            auth = self.harness.auth(self, channel, channel_data if isinstance(channel_data, str) else None)
        if auth is not None:
            data["auth"] = auth
        if channel_data is not None:
            data["channel_data"] = channel_data
        return self.send("pusher:subscribe", data)

    def join(self, channel: str, user_id: Any, info: Any = None) -> list[dict[str, Any]]:
        """Subscribe to a presence channel as ``user_id``, signed."""
        channel_data = json.dumps({"user_id": user_id, "user_info": info})
        return self.subscribe(channel, channel_data=channel_data)

    def unsubscribe(self, channel: str) -> list[dict[str, Any]]:
        return self.send("pusher:unsubscribe", {"channel": channel})

    def signin(self, user: dict[str, Any], secret: str | None = None) -> list[dict[str, Any]]:
        user_data = json.dumps(user)
        signature = mac(secret or self.app.secret, f"{self.id}::user::{user_data}")
        return self.send("pusher:signin", {"user_data": user_data, "auth": f"{self.app.key}:{signature}"})

    def trigger(self, channel: str, event: str = "client-typing", data: Any = None) -> list[dict[str, Any]]:
        return self.send(event, data if data is not None else {"n": 1}, channel=channel)

    def close(self) -> None:
        """The socket went, as the socket tells the protocol."""
        self.harness.pusher.closed(self.app, self.session)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [f for f in self.sink.frames if f["event"] == name]


def only(frames: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(frames) == 1, frames
    return frames[0]


def error_of(frames: list[dict[str, Any]]) -> dict[str, Any]:
    """The one ``pusher:error`` answered, its data."""
    answer = only(frames)
    assert answer["event"] == "pusher:error", answer
    data = answer["data"]
    assert isinstance(data, dict)
    return data


def denial_of(frames: list[dict[str, Any]], channel: str) -> dict[str, Any]:
    """The one ``pusher:subscription_error`` of ``channel``, its data."""
    answer = only(frames)
    assert answer["event"] == "pusher:subscription_error" and answer["channel"] == channel, answer
    data = answer["data"]
    assert isinstance(data, dict)
    return data


def succeeded(frames: list[dict[str, Any]], channel: str) -> Any:
    """The data of ``channel``'s subscription_succeeded, the first of ``frames``."""
    first = frames[0]
    assert first == {**first, "event": "pusher_internal:subscription_succeeded", "channel": channel}, frames
    return data_of(first)


class Harness:
    """A hub (memory backend, a Clock) with the Pusher protocol of the apps
    given, and recording webhooks."""

    def __init__(self, *apps: dict[str, Any], clock: Clock | None = None, **options: Any) -> None:
        self.clock = clock if clock is not None else Clock()
        self.config = chloe_config.from_mapping(
            {"pusher": {"apps": list(apps) or [app_entry()]}, **options}
        )
        assert self.config.pusher is not None
        broker = MemoryBackend(self.clock, self.config.history_size, self.config.history_ttl)
        self.hub = Hub(self.config, broker, self.clock, relay=None)
        self.webhooks = RecordingWebhooks()
        # (Any: the fake stands in for chloed.pusher.webhooks.Webhooks.)
        webhooks: Any = self.webhooks
        self.pusher = PusherProtocol(self.hub, self.config.pusher, webhooks)
        self.app = self.config.pusher.apps[0]

    def connect(self, key: str = KEY) -> Client:
        app = self.pusher.config.by_key(key)
        assert app is not None and self.pusher.refusal(key, "7") is None
        sink = PusherSink()
        session = self.pusher.opened(app, sink)
        return Client(self, app, session, sink)

    def auth(self, client: Client, channel: str, channel_data: str | None = None) -> str:
        text = f"{client.id}:{channel}" if channel_data is None else f"{client.id}:{channel}:{channel_data}"
        return f"{client.app.key}:{mac(client.app.secret, text)}"

    def publish(self, channel: str, event: str, data: str, app_id: str = APP_ID, exclude: str | None = None) -> None:
        """What the HTTP API publishes for an event on ``channel``."""
        self.hub.broker.publish([names.backend(app_id, channel)], wire.message_data(event, data), exclude)

    def members(self, channel: str, app_id: str = APP_ID) -> list[str]:
        return [m["id"] for m in self.hub.presence.members(names.backend(app_id, channel))]


@pytest.fixture
def harness() -> Harness:
    return Harness()


# -- the connection ------------------------------------------------------------------


def test_a_socket_is_told_its_socket_id_first(harness: Harness) -> None:
    """``pusher:connection_established`` first, its data a JSON string with
    the socket id (Pusher's NNN.NNN, the session's id) and the activity
    timeout."""
    client = harness.connect()
    first = client.frames[0]
    assert first["event"] == "pusher:connection_established" and "channel" not in first
    assert isinstance(first["data"], str)
    data = data_of(first)
    assert data == {"socket_id": client.id, "activity_timeout": wire.ACTIVITY_TIMEOUT}
    assert SOCKET_ID_RE.fullmatch(client.id)
    assert len(client.frames) == 1


def test_socket_ids_differ(harness: Harness) -> None:
    ids = {harness.connect().id for _ in range(50)}
    assert len(ids) == 50


def test_a_ping_is_answered_pong(harness: Harness) -> None:
    client = harness.connect()
    assert client.send("pusher:ping", {}) == [{"event": "pusher:pong", "data": {}}]
    assert client.send("pusher:ping") == [{"event": "pusher:pong", "data": {}}]
    assert client.send("pusher:pong", {}) == []


def test_sockets_are_counted_per_app_while_open(harness: Harness) -> None:
    a, b = harness.connect(), harness.connect()
    assert harness.pusher.sockets[APP_ID] == 2
    assert harness.hub.sessions[a.id] is a.session
    a.close()
    assert harness.pusher.sockets[APP_ID] == 1 and a.id not in harness.hub.sessions
    b.close()
    assert harness.pusher.sockets[APP_ID] == 0


# -- public channels -------------------------------------------------------------------


def test_a_public_subscription_succeeds_with_empty_data(harness: Harness) -> None:
    client = harness.connect()
    answer = client.subscribe("news")
    assert answer == [{"event": "pusher_internal:subscription_succeeded", "channel": "news", "data": "{}"}]
    assert names.backend(APP_ID, "news") in client.session.channels


def test_what_the_api_publishes_reaches_subscribers_as_pushers_event(harness: Harness) -> None:
    """An event published to ``news`` arrives as ``{"event", "channel",
    "data"}``, its data the string given, to each subscriber."""
    a, b, outsider = harness.connect(), harness.connect(), harness.connect()
    a.subscribe("news")
    b.subscribe("news")
    outsider.subscribe("sport")
    for client in (a, b, outsider):
        client.new()
    harness.publish("news", "breaking", '{"headline":"x"}')
    expected = {"event": "breaking", "channel": "news", "data": '{"headline":"x"}'}
    assert a.new() == [expected] and b.new() == [expected]
    assert outsider.new() == []


def test_a_publish_can_leave_one_socket_out(harness: Harness) -> None:
    a, b = harness.connect(), harness.connect()
    a.subscribe("news")
    b.subscribe("news")
    a.new(), b.new()
    harness.publish("news", "e", "1", exclude=a.id)
    assert a.new() == [] and len(b.new()) == 1


def test_channel_names_with_every_allowed_character(harness: Harness) -> None:
    client = harness.connect()
    channel = "a-b_c=d@e,f.g;h"
    succeeded(client.subscribe(channel), channel)
    client.new()
    harness.publish(channel, "e", "x")
    assert client.new() == [{"event": "e", "channel": channel, "data": "x"}]


def test_a_second_subscribe_to_the_same_channel_is_answered_again_and_counted_once(harness: Harness) -> None:
    client = harness.connect()
    client.subscribe("news")
    succeeded(client.subscribe("news"), "news")
    assert harness.webhooks.named("channel_occupied") == [("channel_occupied", APP_ID, "news")]
    client.new()
    harness.publish("news", "e", "x")
    assert len(client.new()) == 1  # one subscription, one delivery


def test_an_unsubscribed_socket_gets_nothing_more_and_no_answer(harness: Harness) -> None:
    """Pusher answers no ``pusher:unsubscribe``."""
    client = harness.connect()
    client.subscribe("news")
    assert client.unsubscribe("news") == []
    harness.publish("news", "e", "x")
    assert client.new() == []
    assert client.session.channels == set()


def test_unsubscribing_from_a_channel_never_subscribed_is_quiet(harness: Harness) -> None:
    client = harness.connect()
    assert client.unsubscribe("news") == []
    assert harness.webhooks.calls == []


@pytest.mark.parametrize("channel", ["has space", "a/b", "é", "private-a:b", "#nope", "#server-to-user-"])
def test_an_invalid_channel_name_is_refused_as_invalid(harness: Harness, channel: str) -> None:
    client = harness.connect()
    denial = denial_of(client.subscribe(channel, auth="x"), channel)
    assert denial["status"] == 400 and denial["type"] == "InvalidChannel"
    assert client.session.channels == set()


@pytest.mark.parametrize("raw", [
    {"event": "pusher:subscribe", "data": {"channel": "x" * 201}},
    {"event": "pusher:subscribe", "data": {"channel": 5}},
    {"event": "pusher:subscribe", "data": {}},
    {"event": "pusher:subscribe", "data": []},
    {"event": "pusher:subscribe", "data": "{not json"},
    {"event": "pusher:subscribe"},
])
def test_a_subscribe_without_a_usable_channel_is_a_pusher_error(harness: Harness, raw: dict[str, Any]) -> None:
    client = harness.connect()
    error = error_of(client.raw(json.dumps(raw)))
    assert error["code"] is None and error["message"]
    assert client.session.channels == set()


def test_a_subscribe_whose_data_is_a_json_string_is_read(harness: Harness) -> None:
    """Some clients send the data of a frame JSON-encoded into a string."""
    client = harness.connect()
    succeeded(client.send("pusher:subscribe", json.dumps({"channel": "news"})), "news")


# -- private channels --------------------------------------------------------------


def test_a_private_channel_needs_the_apps_signature_of_socket_and_channel(harness: Harness) -> None:
    client = harness.connect()
    assert succeeded(client.subscribe("private-room"), "private-room") == {}


@pytest.mark.parametrize("auth", [
    "missing", "", "app-key", f"{KEY}:" + "0" * 64, f"other-key:{'0' * 64}", 12, ["x"], {"a": 1},
])
def test_a_private_channel_without_a_good_auth_is_refused_401(harness: Harness, auth: Any) -> None:
    client = harness.connect()
    frames = client.subscribe("private-room", signed=False) if auth == "missing" else client.subscribe(
        "private-room", auth=auth
    )
    denial = denial_of(frames, "private-room")
    assert denial["status"] == 401 and denial["type"] == "AuthError"
    assert client.session.channels == set()


def test_an_auth_for_another_socket_or_channel_or_secret_is_refused(harness: Harness) -> None:
    a, b = harness.connect(), harness.connect()
    for_b = harness.auth(b, "private-room")
    assert denial_of(a.subscribe("private-room", auth=for_b), "private-room")["status"] == 401
    for_other_channel = harness.auth(a, "private-other")
    assert denial_of(a.subscribe("private-room", auth=for_other_channel), "private-room")["status"] == 401
    with_other_secret = f"{KEY}:{mac('not-the-app-secret', f'{a.id}:private-room')}"
    assert denial_of(a.subscribe("private-room", auth=with_other_secret), "private-room")["status"] == 401
    assert a.session.channels == set()
    assert harness.webhooks.calls == []


def test_an_encrypted_channel_is_signed_as_a_private_one(harness: Harness) -> None:
    client = harness.connect()
    succeeded(client.subscribe("private-encrypted-room"), "private-encrypted-room")


def test_one_apps_signature_is_no_good_on_another_app() -> None:
    harness = Harness(app_entry(), app_entry(id="7", key="other-key", secret="other-secret"))
    client = harness.connect("other-key")
    signed_by_first = f"{KEY}:{mac(SECRET, f'{client.id}:private-room')}"
    assert denial_of(client.subscribe("private-room", auth=signed_by_first), "private-room")["status"] == 401


# -- presence channels ---------------------------------------------------------------


def test_a_presence_subscription_lists_the_members_with_the_joiner(harness: Harness) -> None:
    ann, bob = harness.connect(), harness.connect()
    ann.join("presence-room", "ann", {"name": "Ann"})
    data = succeeded(bob.join("presence-room", "bob", {"name": "Bob"}), "presence-room")
    assert data == {"presence": {
        "ids": ["ann", "bob"], "hash": {"ann": {"name": "Ann"}, "bob": {"name": "Bob"}}, "count": 2,
    }}


def test_member_added_goes_to_the_others_not_to_the_joiner(harness: Harness) -> None:
    ann, bob = harness.connect(), harness.connect()
    ann.join("presence-room", "ann")
    ann.new()
    joined = bob.join("presence-room", "bob", {"name": "Bob"})
    assert [f["event"] for f in joined] == ["pusher_internal:subscription_succeeded"]
    added = only(ann.new())
    assert added["event"] == "pusher_internal:member_added" and added["channel"] == "presence-room"
    assert data_of(added) == {"user_id": "bob", "user_info": {"name": "Bob"}}


def test_member_removed_goes_to_the_others_at_once_on_unsubscribe(harness: Harness) -> None:
    """Pusher's members leave when they unsubscribe, not a grace later."""
    ann, bob = harness.connect(), harness.connect()
    ann.join("presence-room", "ann")
    bob.join("presence-room", "bob")
    ann.new()
    assert bob.unsubscribe("presence-room") == []
    removed = only(ann.new())
    assert removed["event"] == "pusher_internal:member_removed" and removed["channel"] == "presence-room"
    assert data_of(removed) == {"user_id": "bob"}
    assert harness.members("presence-room") == ["ann"]


def test_member_removed_goes_to_the_others_at_once_when_the_socket_goes(harness: Harness) -> None:
    ann, bob = harness.connect(), harness.connect()
    ann.join("presence-room", "ann")
    bob.join("presence-room", "bob")
    ann.new()
    bob.close()
    assert [(f["event"], data_of(f)) for f in ann.new()] == [("pusher_internal:member_removed", {"user_id": "bob"})]
    assert harness.members("presence-room") == ["ann"]


def test_a_user_with_two_sockets_is_one_member_until_both_go(harness: Harness) -> None:
    ann, bob1, bob2 = harness.connect(), harness.connect(), harness.connect()
    ann.join("presence-room", "ann")
    bob1.join("presence-room", "bob")
    data = succeeded(bob2.join("presence-room", "bob"), "presence-room")
    assert data["presence"]["count"] == 2 and data["presence"]["ids"] == ["ann", "bob"]
    assert [f["event"] for f in ann.new()] == ["pusher_internal:member_added"]
    bob1.close()
    assert ann.new() == []
    bob2.unsubscribe("presence-room")
    assert [f["event"] for f in ann.new()] == ["pusher_internal:member_removed"]
    assert harness.webhooks.named("member_added", "member_removed") == [
        ("member_added", APP_ID, "presence-room", "ann"),
        ("member_added", APP_ID, "presence-room", "bob"),
        ("member_removed", APP_ID, "presence-room", "bob"),
    ]


def test_a_numeric_user_id_is_a_string_id(harness: Harness) -> None:
    """Pusher's own example signs ``"user_id": 10``."""
    client = harness.connect()
    data = succeeded(client.join("presence-room", 10, {"name": "Mr. Channels"}), "presence-room")
    assert data["presence"]["ids"] == ["10"] and data["presence"]["hash"] == {"10": {"name": "Mr. Channels"}}


def test_a_presence_subscription_without_channel_data_and_not_signed_in_is_refused(harness: Harness) -> None:
    client = harness.connect()
    denial = denial_of(client.subscribe("presence-room"), "presence-room")
    assert denial["status"] == 401
    assert harness.members("presence-room") == []


@pytest.mark.parametrize("channel_data", [
    "{}", '{"user_id": ""}', '{"user_id": true}', '{"user_id": null}', '{"user_id": ["a"]}', "[1]", "not json",
    json.dumps({"user_id": "x" * 129}),
])
def test_channel_data_without_a_user_id_string_is_refused_400(harness: Harness, channel_data: str) -> None:
    client = harness.connect()
    denial = denial_of(client.subscribe("presence-room", channel_data=channel_data), "presence-room")
    assert denial["status"] == 400 and denial["type"] == "InvalidData"
    assert harness.members("presence-room") == []


def test_channel_data_that_is_not_a_string_is_refused_400(harness: Harness) -> None:
    client = harness.connect()
    auth = harness.auth(client, "presence-room")
    denial = denial_of(client.subscribe("presence-room", auth=auth, channel_data={"user_id": "ann"}), "presence-room")
    assert denial["status"] == 400


def test_channel_data_is_limited_to_max_channel_data_bytes(harness: Harness) -> None:
    client = harness.connect()
    at_limit = json.dumps({"user_id": "ann", "user_info": {"bio": ""}})
    at_limit = json.dumps({"user_id": "ann", "user_info": {"bio": "x" * (MAX_CHANNEL_DATA - len(at_limit))}})
    assert len(at_limit.encode()) == MAX_CHANNEL_DATA
    succeeded(client.subscribe("presence-room", channel_data=at_limit), "presence-room")
    other = harness.connect()
    over = at_limit.replace('"x', '"xx', 1)
    denial = denial_of(other.subscribe("presence-room", channel_data=over), "presence-room")
    assert denial["status"] == 400 and str(MAX_CHANNEL_DATA) in denial["error"]


def test_a_presence_channel_holds_at_most_max_members(harness: Harness) -> None:
    """The 101st user is refused; another socket of a member is not a new member."""
    clients = [harness.connect() for _ in range(MAX_MEMBERS)]
    for i, client in enumerate(clients):
        succeeded(client.join("presence-room", f"u{i}"), "presence-room")
    late = harness.connect()
    denial = denial_of(late.join("presence-room", "late"), "presence-room")
    assert denial["status"] == 400 and denial["type"] == "LimitReached"
    second_tab = harness.connect()
    assert succeeded(second_tab.join("presence-room", "u0"), "presence-room")["presence"]["count"] == MAX_MEMBERS
    clients[5].close()
    succeeded(late.join("presence-room", "late"), "presence-room")


def test_a_signed_in_user_joins_a_presence_channel_as_itself(harness: Harness) -> None:
    """Without channel_data, a signed-in socket's user is the member (its
    ``user_info``), the auth then over socket and channel alone."""
    client = harness.connect()
    client.signin({"id": "ann", "user_info": {"name": "Ann"}})
    data = succeeded(client.subscribe("presence-room"), "presence-room")
    assert data["presence"]["hash"] == {"ann": {"name": "Ann"}}


def test_a_presence_subscription_tells_the_app_of_the_member(harness: Harness) -> None:
    client = harness.connect()
    client.join("presence-room", "ann")
    assert harness.webhooks.take() == [
        ("channel_occupied", APP_ID, "presence-room"), ("member_added", APP_ID, "presence-room", "ann"),
    ]
    client.close()
    assert harness.webhooks.take() == [
        ("member_removed", APP_ID, "presence-room", "ann"), ("channel_vacated", APP_ID, "presence-room"),
    ]


# -- cache channels -----------------------------------------------------------------


def test_a_cache_channel_gives_a_new_subscriber_its_last_event(harness: Harness) -> None:
    harness.publish("cache-prices", "tick", "1")
    harness.publish("cache-prices", "tick", "2")
    client = harness.connect()
    frames = client.subscribe("cache-prices")
    succeeded(frames, "cache-prices")
    assert frames[1:] == [{"event": "tick", "channel": "cache-prices", "data": "2"}]
    assert harness.webhooks.named("cache_miss") == []


@pytest.mark.parametrize("channel", ["cache-prices", "private-cache-prices", "private-encrypted-cache-prices"])
def test_an_empty_cache_channel_is_a_cache_miss(harness: Harness, channel: str) -> None:
    client = harness.connect()
    frames = client.subscribe(channel)
    succeeded(frames, channel)
    assert frames[1:] == [{"event": "pusher:cache_miss", "channel": channel}]
    assert harness.webhooks.named("cache_miss") == [("cache_miss", APP_ID, channel)]


def test_a_presence_cache_channel_has_members_and_a_cache(harness: Harness) -> None:
    harness.publish("presence-cache-room", "state", "s1")
    client = harness.connect()
    frames = client.join("presence-cache-room", "ann")
    assert succeeded(frames, "presence-cache-room")["presence"]["ids"] == ["ann"]
    assert frames[1:] == [{"event": "state", "channel": "presence-cache-room", "data": "s1"}]


def test_a_plain_channel_replays_nothing(harness: Harness) -> None:
    harness.publish("prices", "tick", "1")
    client = harness.connect()
    assert len(client.subscribe("prices")) == 1


# -- users: sign-in and #server-to-user- ---------------------------------------------


USER = {"id": "ann", "user_info": {"name": "Ann"}}


def test_a_signin_is_answered_signin_success_with_the_user_data(harness: Harness) -> None:
    client = harness.connect()
    answer = only(client.signin(USER))
    assert answer["event"] == "pusher:signin_success"
    assert data_of(answer) == {"user_data": json.dumps(USER)}
    assert client.session.user == USER


def test_signin_success_waits_until_the_backend_has_the_user_channel(harness: Harness) -> None:
    """On a shared backend the user's channel is joined later: the socket
    hears signin_success only then, so what the app sends the user after
    it (send_to_user) cannot be missed."""
    joining: Deferred[Any] = Deferred()
    local = harness.hub.broker.subscribe
    harness.hub.broker.subscribe = lambda name, subscriber, since=None: joining.addCallback(  # type: ignore[method-assign]
        lambda _: local(name, subscriber, since).result
    )
    client = harness.connect()
    assert client.signin(USER) == []
    joining.callback(None)
    assert only(client.new())["event"] == "pusher:signin_success"


def test_a_signed_in_socket_gets_what_is_sent_to_its_user(harness: Harness) -> None:
    """Whether or not it subscribes to ``#server-to-user-<id>``."""
    client = harness.connect()
    client.signin(USER)
    harness.publish("#server-to-user-ann", "note", '"hi"')
    assert client.new() == [{"event": "note", "channel": "#server-to-user-ann", "data": '"hi"'}]
    succeeded(client.subscribe("#server-to-user-ann"), "#server-to-user-ann")
    harness.publish("#server-to-user-ann", "note", '"again"')
    assert len(client.new()) == 1


def test_only_the_signed_in_user_subscribes_to_its_channel(harness: Harness) -> None:
    stranger = harness.connect()
    assert denial_of(stranger.subscribe("#server-to-user-ann"), "#server-to-user-ann")["status"] == 401
    bob = harness.connect()
    bob.signin({"id": "bob"})
    assert denial_of(bob.subscribe("#server-to-user-ann"), "#server-to-user-ann")["status"] == 401
    harness.publish("#server-to-user-ann", "note", "x")
    assert stranger.new() == [] and bob.new() == []


def test_terminating_a_users_connections_ends_its_sockets_only(harness: Harness) -> None:
    ann1, ann2, bob = harness.connect(), harness.connect(), harness.connect()
    ann1.signin(USER)
    ann2.signin(USER)
    bob.signin({"id": "bob"})
    harness.hub.broker.publish([names.backend(APP_ID, "#server-to-user-ann")], wire.message_data(wire.TERMINATE, ""))
    assert ann1.sink.terminated and ann2.sink.terminated and not bob.sink.terminated


def test_the_user_channel_is_no_occupancy_webhook(harness: Harness) -> None:
    """``#server-to-user-`` channels are the server's: neither occupied nor
    vacated is sent for them (not half of the pair either)."""
    client = harness.connect()
    client.signin(USER)
    client.subscribe("#server-to-user-ann")
    client.close()
    assert [c for c in harness.webhooks.calls if "#server-to-user-ann" in c] == []


@pytest.mark.parametrize("user", [{"name": "no id"}, {"id": ""}, {"id": 7}, {"id": "x" * 129}, ["ann"], "ann"])
def test_user_data_without_an_id_string_is_refused_4009(harness: Harness, user: Any) -> None:
    client = harness.connect()
    error = error_of(client.signin(user))
    assert error["code"] == wire.UNAUTHORIZED
    assert client.session.user is None


def test_a_signin_with_a_bad_signature_is_refused_4009(harness: Harness) -> None:
    client = harness.connect()
    assert error_of(client.signin(USER, secret="not-the-app-secret"))["code"] == wire.UNAUTHORIZED
    other = harness.connect()
    user_data = json.dumps(USER)
    for_other_socket = f"{KEY}:{mac(SECRET, f'{other.id}::user::{user_data}')}"
    error = error_of(client.send("pusher:signin", {"user_data": user_data, "auth": for_other_socket}))
    assert error["code"] == wire.UNAUTHORIZED
    assert error_of(client.send("pusher:signin", {"user_data": user_data}))["code"] == wire.UNAUTHORIZED
    assert client.session.user is None


@pytest.mark.parametrize("data", [{}, {"user_data": {"id": "ann"}}, {"user_data": "x" * (MAX_CHANNEL_DATA + 1)}])
def test_a_signin_without_user_data_of_at_most_max_channel_data_is_refused(harness: Harness, data: dict[str, Any]) -> None:
    client = harness.connect()
    assert error_of(client.send("pusher:signin", data))["code"] == wire.UNAUTHORIZED


def test_a_socket_cannot_sign_in_as_a_second_user(harness: Harness) -> None:
    client = harness.connect()
    client.signin(USER)
    assert error_of(client.signin({"id": "bob"}))["code"] == wire.UNAUTHORIZED
    assert client.session.user == USER
    assert only(client.signin(USER))["event"] == "pusher:signin_success"


# -- client events --------------------------------------------------------------------


def pair(harness: Harness, channel: str = "private-chat") -> tuple[Client, Client]:
    a, b = harness.connect(), harness.connect()
    if names.presence(channel):
        a.join(channel, "ann")
        b.join(channel, "bob")
    else:
        a.subscribe(channel)
        b.subscribe(channel)
    a.new(), b.new()
    return a, b


def test_a_client_event_reaches_the_others_not_the_sender(harness: Harness) -> None:
    a, b = pair(harness)
    assert a.trigger("private-chat", "client-typing", {"who": "ann"}) == []
    assert b.new() == [{"event": "client-typing", "channel": "private-chat", "data": {"who": "ann"}}]
    assert harness.pusher.client_events == 1
    assert harness.webhooks.named("client_event") == [
        ("client_event", APP_ID, "private-chat", "client-typing", {"who": "ann"}, a.id, None),
    ]


def test_a_client_event_on_presence_carries_the_senders_user_id(harness: Harness) -> None:
    a, b = pair(harness, "presence-chat")
    a.trigger("presence-chat", "client-typing", "ann types")
    assert b.new() == [{"event": "client-typing", "channel": "presence-chat", "data": "ann types", "user_id": "ann"}]
    assert harness.webhooks.named("client_event")[-1][-1] == "ann"


def test_client_events_need_the_app_to_enable_them() -> None:
    harness = Harness(app_entry(enable_client_messages=False))
    a, b = pair(harness)
    error = error_of(a.trigger("private-chat"))
    assert error["code"] is None and "enable" in error["message"]
    assert b.new() == [] and harness.webhooks.named("client_event") == []


@pytest.mark.parametrize("channel", ["news", "cache-news", "private-encrypted-chat", "#server-to-user-ann"])
def test_client_events_only_on_private_and_presence_channels(harness: Harness, channel: str) -> None:
    a = harness.connect()
    if channel.startswith("#"):
        a.signin(USER)
    a.subscribe(channel)
    b = harness.connect()
    if not channel.startswith("#"):
        b.subscribe(channel)
    b.new()
    error = error_of(a.trigger(channel))
    assert "private and presence" in error["message"]
    assert b.new() == []


def test_a_client_event_needs_the_sender_subscribed(harness: Harness) -> None:
    a, b = pair(harness)
    outsider = harness.connect()
    error = error_of(outsider.trigger("private-chat"))
    assert "subscription" in error["message"]
    assert a.new() == [] and b.new() == []


@pytest.mark.parametrize("message", [
    {"event": "client-x", "data": {}},  # no channel
    {"event": "client-x", "channel": 5, "data": {}},
])
def test_a_client_event_without_a_channel_is_refused(harness: Harness, message: dict[str, Any]) -> None:
    a, _ = pair(harness)
    error_of(a.raw(json.dumps(message)))


def test_a_client_event_name_is_limited(harness: Harness) -> None:
    a, b = pair(harness)
    error_of(a.trigger("private-chat", "client-" + "x" * 200))
    assert b.new() == []
    a.trigger("private-chat", "client-" + "x" * 193)
    assert len(b.new()) == 1


def test_a_client_event_is_limited_to_max_message_bytes() -> None:
    harness = Harness(app_entry(max_message_bytes=256))
    a, b = pair(harness)
    frame_of = lambda size: json.dumps({"event": "client-x", "channel": "private-chat", "data": "x" * size})  # noqa: E731
    base = len(frame_of(0))
    assert a.raw(frame_of(256 - base)) == []
    assert len(b.new()) == 1
    assert "256" in error_of(a.raw(frame_of(257 - base)))["message"]
    assert b.new() == []


def test_client_events_over_the_rate_are_refused_4301() -> None:
    """10 a second per socket: a second's worth at once, then one every
    tenth of a second; the refused ones reach nobody."""
    clock = Clock()
    harness = Harness(clock=clock)
    a, b = pair(harness)
    for _ in range(10):
        assert a.trigger("private-chat") == []
    assert error_of(a.trigger("private-chat"))["code"] == wire.CLIENT_EVENT_RATE
    assert len(b.new()) == 10
    clock.advance(0.1)
    assert a.trigger("private-chat") == []
    assert error_of(a.trigger("private-chat"))["code"] == wire.CLIENT_EVENT_RATE
    assert len(b.new()) == 1
    clock.advance(1.0)
    for _ in range(10):
        assert a.trigger("private-chat") == []
    assert error_of(a.trigger("private-chat"))["code"] == wire.CLIENT_EVENT_RATE
    assert harness.pusher.client_events == 21
    # The rate is per socket: b's own are still in.
    assert b.trigger("private-chat") == []


def test_a_rate_below_one_a_second_still_admits_an_event() -> None:
    """``client_events_per_second = 0.5`` (the config takes any rate above
    0): one event, then one every two seconds, not none ever."""
    clock = Clock()
    harness = Harness(app_entry(client_events_per_second=0.5), clock=clock)
    a, b = pair(harness)
    assert a.trigger("private-chat") == []
    assert len(b.new()) == 1
    assert error_of(a.trigger("private-chat"))["code"] == wire.CLIENT_EVENT_RATE
    clock.advance(2.0)
    assert a.trigger("private-chat") == []


def test_the_rate_limit_is_the_apps() -> None:
    clock = Clock()
    harness = Harness(app_entry(client_events_per_second=2), clock=clock)
    a, _ = pair(harness)
    assert a.trigger("private-chat") == [] and a.trigger("private-chat") == []
    assert error_of(a.trigger("private-chat"))["code"] == wire.CLIENT_EVENT_RATE


def test_frames_over_the_servers_rate_limit_are_refused_and_the_socket_stays() -> None:
    """chloed's ``rate_limit`` holds for Pusher frames as for native ones:
    a burst of max(2 x rate, max_subscriptions + 10), then the rate; a
    frame over it is a ``pusher:error`` (counted in rate_limited) and
    does nothing; the socket stays, and the client-event allowance is a
    separate one."""
    clock = Clock()
    harness = Harness(clock=clock, rate_limit=10, max_subscriptions=5)
    client = harness.connect()
    burst = max(2 * 10, 5 + 10)
    for _ in range(burst):
        assert client.send("pusher:ping") == [{"event": "pusher:pong", "data": {}}]
    error = error_of(client.send("pusher:ping"))
    assert error["code"] is None and "rate_limit" in error["message"]
    assert harness.hub.rate_limited == 1
    clock.advance(0.1)
    assert client.send("pusher:ping") == [{"event": "pusher:pong", "data": {}}]


# -- what a socket may send ------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"not json", b"[1,2]", b'"pusher:ping"', b"{}", b'{"event": 5}', b"\xff\xfe", b"NaN"])
def test_a_frame_that_is_not_an_event_is_a_pusher_error_and_the_socket_stays(harness: Harness, raw: bytes) -> None:
    client = harness.connect()
    error = error_of(client.raw(raw))
    assert error["code"] is None
    assert client.send("pusher:ping") == [{"event": "pusher:pong", "data": {}}]
    assert harness.pusher.refused_frames == 1


def test_an_unknown_event_is_a_pusher_error(harness: Harness) -> None:
    client = harness.connect()
    assert "pusher:nonsense" in error_of(client.send("pusher:nonsense", {}))["message"]
    assert error_of(client.send("pusher_internal:member_added", {}))


def test_a_frame_over_the_size_limit_is_refused_before_it_is_read() -> None:
    harness = Harness(app_entry(max_message_bytes=64))
    client = harness.connect()
    limit = 64 + MAX_CHANNEL_DATA + 512
    padding = json.dumps({"event": "pusher:ping", "data": ""})
    at_limit = json.dumps({"event": "pusher:ping", "data": "x" * (limit - len(padding))})
    assert len(at_limit) == limit
    assert client.raw(at_limit) == [{"event": "pusher:pong", "data": {}}]
    error = error_of(client.raw(at_limit.replace('"x', '"xx', 1)))
    assert "64" in error["message"]


def test_subscriptions_are_limited_to_max_subscriptions() -> None:
    harness = Harness(max_subscriptions=2)
    client = harness.connect()
    succeeded(client.subscribe("a"), "a")
    succeeded(client.subscribe("private-b"), "private-b")
    denial = denial_of(client.subscribe("c"), "c")
    assert denial["status"] == 400 and denial["type"] == "LimitReached"
    succeeded(client.subscribe("a"), "a")  # one it has is no new one
    client.unsubscribe("a")
    succeeded(client.subscribe("c"), "c")


def test_a_closed_session_reads_nothing(harness: Harness) -> None:
    client = harness.connect()
    client.close()
    harness.pusher.receive(client.session, client.app, b'{"event":"pusher:ping"}')
    assert client.frames[-1]["event"] == "pusher:connection_established"


# -- occupancy webhooks ---------------------------------------------------------------


def test_occupied_when_the_first_socket_subscribes_vacated_when_the_last_goes(harness: Harness) -> None:
    a, b = harness.connect(), harness.connect()
    a.subscribe("news")
    b.subscribe("news")
    assert harness.webhooks.take() == [("channel_occupied", APP_ID, "news")]
    a.unsubscribe("news")
    assert harness.webhooks.take() == []
    b.close()
    assert harness.webhooks.take() == [("channel_vacated", APP_ID, "news")]
    a.subscribe("news")
    assert harness.webhooks.take() == [("channel_occupied", APP_ID, "news")]


def test_a_refused_subscription_occupies_nothing(harness: Harness) -> None:
    client = harness.connect()
    client.subscribe("private-room", auth="app-key:bad")
    client.close()
    assert harness.webhooks.calls == []


def test_apps_are_apart() -> None:
    """The same channel name of two apps is two channels: events, members
    and webhooks each the app's own."""
    harness = Harness(app_entry(), app_entry(id="7", key="other-key", secret="other-secret"))
    mine, theirs = harness.connect(), harness.connect("other-key")
    mine.join("presence-room", "ann")
    data = succeeded(theirs.join("presence-room", "bob"), "presence-room")
    assert data["presence"]["ids"] == ["bob"]
    mine.new()
    harness.publish("presence-room", "e", "x", app_id="7")
    assert mine.new() == [] and len(theirs.new()) == 1
    assert [c[1] for c in harness.webhooks.named("channel_occupied")] == [APP_ID, "7"]


# -- refusal of a socket ----------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["5", "6", "7"])
def test_protocols_5_to_7_are_served(harness: Harness, protocol: str) -> None:
    assert harness.pusher.refusal(KEY, protocol) is None


def test_no_protocol_is_4008(harness: Harness) -> None:
    assert harness.pusher.refusal(KEY, None) == (wire.NO_PROTOCOL, "No protocol version supplied")


@pytest.mark.parametrize("protocol", ["4", "8", "70", "0"])
def test_another_protocol_is_4007(harness: Harness, protocol: str) -> None:
    assert harness.pusher.refusal(KEY, protocol) == (
        wire.UNSUPPORTED_PROTOCOL, f"Unsupported protocol version {protocol}"
    )


@pytest.mark.parametrize("protocol", ["", "seven", "7.0", "-7", " 7", "٧"])
def test_a_protocol_that_is_no_number_is_4006(harness: Harness, protocol: str) -> None:
    assert harness.pusher.refusal(KEY, protocol) == (wire.INVALID_VERSION, "Invalid version string format")


def test_a_protocol_of_thousands_of_digits_is_refused_not_raised(harness: Harness) -> None:
    """``?protocol=999...`` (a request line can carry 5000 digits): int()
    raises ValueError past 4300 digits, which must not escape the upgrade."""
    code, _ = harness.pusher.refusal(KEY, "9" * 5000) or (None, None)
    assert code == wire.UNSUPPORTED_PROTOCOL


def test_an_unknown_key_is_4001(harness: Harness) -> None:
    assert harness.pusher.refusal("nobody", "7") == (wire.APP_NOT_FOUND, "Could not find app by key nobody")
    code, message = harness.pusher.refusal("k" * 1000, "7") or (0, "")
    assert code == wire.APP_NOT_FOUND and len(message) < 100


def test_an_apps_socket_quota_is_4004() -> None:
    harness = Harness(app_entry(max_connections=2), app_entry(id="7", key="other-key", secret="other-secret"))
    a, _ = harness.connect(), harness.connect()
    assert harness.pusher.refusal(KEY, "7") == (wire.OVER_QUOTA, "Application is over connection quota")
    assert harness.pusher.refusal("other-key", "7") is None  # the quota is the app's
    a.close()
    assert harness.pusher.refusal(KEY, "7") is None


def test_a_full_server_is_4100_and_a_draining_one_4200() -> None:
    harness = Harness(max_connections=1)
    harness.connect()
    assert harness.pusher.refusal(KEY, "7") == (wire.OVER_CAPACITY, "Over capacity")
    harness.hub.draining = True
    assert harness.pusher.refusal(KEY, "7") == (wire.RECONNECT, "This server is restarting; reconnect")


def test_status_counts_sockets_frames_and_webhooks() -> None:
    harness = Harness(app_entry(), app_entry(id="7", key="other-key", secret="other-secret"))
    a, b = pair(harness)
    a.trigger("private-chat")
    a.raw(b"junk")
    assert harness.pusher.status() == {
        "sockets": {APP_ID: 2, "7": 0}, "client_events": 1, "refused_frames": 1,
        "api_requests": 0, "api_refused": 0, "webhooks": harness.webhooks.status(),
    }


# -- the /app/{key} socket, over a StringTransport ----------------------------------------


class Socket:
    """A Pusher client's WebSocket to /app/{key}, past the upgrade."""

    def __init__(self, protocol: PusherWebSocket, transport: StringTransport, head: bytes) -> None:
        self.protocol = protocol
        self.transport = transport
        self.head = head

    def frames(self) -> list[Frame]:
        """Every WebSocket frame since the upgrade (or the last clear())."""
        return parse_frames(self.transport.value())

    def texts(self) -> list[dict[str, Any]]:
        return [json.loads(f.payload) for f in self.frames() if f.opcode == OP_TEXT]

    def close_codes(self) -> list[int | None]:
        return [f.close_code for f in self.frames() if f.opcode == OP_CLOSE]

    def clear(self) -> None:
        self.transport.clear()

    def send(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        self.clear()
        self.protocol.dataReceived(frame(OP_TEXT, json.dumps(message).encode()))
        return self.texts()

    def answer_close(self) -> None:
        """The client answers the server's close frame, as pusher-js does."""
        self.protocol.dataReceived(frame(OP_CLOSE, struct.pack("!H", 1000)))

    def drop(self) -> None:
        """The TCP connection goes."""
        self.protocol.connectionLost(Failure(ConnectionDone()))


class Sockets:
    """The /app resource of a Harness's protocol, as make_site wires it."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        resource: Any = app_sockets(harness.hub, harness.pusher)
        self.factory = resource._sockets._factory

    def connect(self, key: str = KEY, query: str = "protocol=7&client=js&version=8.4.0",
                origin: str | None = "http://app.example.com") -> Socket:
        protocol = self.factory.buildProtocol(PEER)
        transport = Transport(peerAddress=PEER)
        protocol.makeConnection(transport)
        path = f"/app/{key}" + (f"?{query}" if query else "")
        protocol.dataReceived(upgrade_request(path=path, origin=origin))
        head, _, rest = transport.value().partition(b"\r\n\r\n")
        transport.clear()
        transport.write(rest)
        return Socket(protocol, transport, head)


@pytest.fixture
def sockets(clock: MemoryReactorClock) -> Iterator[Sockets]:
    yield Sockets(Harness(app_entry(max_connections=1), clock=clock))


def test_a_socket_is_established_over_protocol_7(sockets: Sockets) -> None:
    socket = sockets.connect()
    assert socket.head.startswith(b"HTTP/1.1 101")
    [established] = socket.texts()
    assert established["event"] == "pusher:connection_established"
    assert data_of(established)["socket_id"] in sockets.harness.hub.sessions
    assert socket.send({"event": "pusher:ping", "data": {}}) == [{"event": "pusher:pong", "data": {}}]


@pytest.mark.parametrize("key, query, code", [
    ("nobody", "protocol=7", wire.APP_NOT_FOUND),
    (KEY, "", wire.NO_PROTOCOL),
    (KEY, "client=js", wire.NO_PROTOCOL),
    (KEY, "protocol=8", wire.UNSUPPORTED_PROTOCOL),
    (KEY, "protocol=4", wire.UNSUPPORTED_PROTOCOL),
    (KEY, "protocol=x", wire.INVALID_VERSION),
])
def test_a_refused_socket_is_upgraded_told_why_and_closed_with_the_code(sockets: Sockets, key: str, query: str,
                                                                        code: int) -> None:
    """As Pusher does: 101, then ``pusher:error`` with the code, then a
    close frame with it (pusher-js decides by it whether to reconnect)."""
    socket = sockets.connect(key, query)
    assert socket.head.startswith(b"HTTP/1.1 101")
    [told] = socket.texts()
    assert told["event"] == "pusher:error" and told["data"]["code"] == code
    assert socket.close_codes() == [code]
    assert sockets.harness.hub.sessions == {} and sockets.harness.pusher.sockets[APP_ID] == 0


def test_a_socket_over_the_apps_quota_is_4004_until_one_goes(sockets: Sockets) -> None:
    first = sockets.connect()
    second = sockets.connect()
    assert [t["data"]["code"] for t in second.texts()] == [wire.OVER_QUOTA]
    assert second.close_codes() == [wire.OVER_QUOTA]
    first.drop()
    third = sockets.connect()
    assert third.texts()[0]["event"] == "pusher:connection_established"


def test_a_socket_ended_by_the_server_gives_its_quota_back(sockets: Sockets) -> None:
    """A socket the hub ends (a slow consumer here; a drain does the same)
    is closed with 4100; once gone, it is no longer one of the app's
    sockets, so the next one is let in."""
    first = sockets.connect()
    session = sockets.harness.hub.sessions[data_of(first.texts()[0])["socket_id"]]
    assert isinstance(session, Session)
    first.clear()
    sockets.harness.hub.slow(session)
    assert [t["data"]["code"] for t in first.texts()] == [wire.OVER_CAPACITY]
    assert first.close_codes() == [wire.OVER_CAPACITY]
    first.answer_close()
    first.drop()
    assert sockets.harness.pusher.sockets[APP_ID] == 0
    second = sockets.connect()
    assert second.texts()[0]["event"] == "pusher:connection_established"


def test_a_member_of_a_socket_ended_by_the_server_leaves_at_once(clock: MemoryReactorClock) -> None:
    """Pusher's members leave when their socket goes, whoever ended it:
    the others hear member_removed and the app the channel vacated, not
    session_grace later."""
    harness = Harness(clock=clock)
    sockets = Sockets(harness)
    watcher = harness.connect()
    watcher.join("presence-room", "ann")
    socket = sockets.connect()
    socket_id = data_of(socket.texts()[0])["socket_id"]
    channel_data = json.dumps({"user_id": "bob"})
    auth = f"{KEY}:{mac(SECRET, f'{socket_id}:presence-room:{channel_data}')}"
    socket.send({"event": "pusher:subscribe", "data": {"channel": "presence-room", "auth": auth,
                                                       "channel_data": channel_data}})
    socket.send({"event": "pusher:subscribe", "data": {"channel": "news"}})
    watcher.new()
    harness.webhooks.take()
    session = harness.hub.sessions[socket_id]
    assert isinstance(session, Session)
    harness.hub.slow(session)
    socket.answer_close()
    socket.drop()
    assert [(f["event"], data_of(f)) for f in watcher.new()] == [
        ("pusher_internal:member_removed", {"user_id": "bob"}),
    ]
    assert harness.members("presence-room") == ["ann"]
    assert sorted(harness.webhooks.take()) == [
        ("channel_vacated", APP_ID, "news"), ("member_removed", APP_ID, "presence-room", "bob"),
    ]


def test_a_terminated_users_socket_is_told_and_closed_4009(sockets: Sockets) -> None:
    socket = sockets.connect()
    socket_id = data_of(socket.texts()[0])["socket_id"]
    user_data = json.dumps(USER)
    answer = socket.send({"event": "pusher:signin", "data": {
        "user_data": user_data, "auth": f"{KEY}:{mac(SECRET, f'{socket_id}::user::{user_data}')}",
    }})
    assert [a["event"] for a in answer] == ["pusher:signin_success"]
    socket.clear()
    sockets.harness.hub.broker.publish(
        [names.backend(APP_ID, "#server-to-user-ann")], wire.message_data(wire.TERMINATE, "")
    )
    [told] = socket.texts()
    assert told["event"] == "pusher:error" and told["data"]["code"] == wire.UNAUTHORIZED
    assert socket.close_codes() == [wire.UNAUTHORIZED]
    socket.answer_close()
    socket.drop()
    assert sockets.harness.pusher.sockets[APP_ID] == 0 and sockets.harness.hub.sessions == {}


def test_a_binary_frame_is_a_pusher_error_and_the_socket_stays(sockets: Sockets) -> None:
    socket = sockets.connect()
    socket.clear()
    socket.protocol.dataReceived(frame(OP_BINARY, b'{"event":"pusher:ping"}'))
    [told] = socket.texts()
    assert told["event"] == "pusher:error" and told["data"]["code"] is None
    assert socket.close_codes() == []
    assert socket.send({"event": "pusher:ping"}) == [{"event": "pusher:pong", "data": {}}]


def test_a_dropped_socket_leaves_its_channels(clock: MemoryReactorClock) -> None:
    harness = Harness(clock=clock)
    sockets = Sockets(harness)
    socket = sockets.connect()
    socket.send({"event": "pusher:subscribe", "data": {"channel": "news"}})
    assert harness.webhooks.take() == [("channel_occupied", APP_ID, "news")]
    socket.drop()
    assert harness.webhooks.take() == [("channel_vacated", APP_ID, "news")]
    assert harness.pusher.sockets[APP_ID] == 0 and harness.hub.sessions == {}
    assert names.backend(APP_ID, "news") not in harness.hub.broker.channels


def test_a_socket_from_a_refused_origin_is_not_upgraded(clock: MemoryReactorClock) -> None:
    sockets = Sockets(Harness(clock=clock, allowed_origins=["https://app.example.com"]))
    refused = sockets.connect(origin="https://evil.example.com")
    assert refused.head.startswith(b"HTTP/1.1 403")
    allowed = sockets.connect(origin="https://app.example.com")
    assert allowed.head.startswith(b"HTTP/1.1 101")


def test_a_silent_socket_is_closed_4201(clock: MemoryReactorClock) -> None:
    """A client that answers no ping (sends nothing) for a heartbeat after
    one is told Pusher's 4201 and closed with it; one that answers stays."""
    harness = Harness(clock=clock, heartbeat=10.0)
    sockets = Sockets(harness)
    silent, lively = sockets.connect(), sockets.connect()
    silent.clear()
    for _ in range(25):
        clock.advance(1.0)
        lively.protocol.dataReceived(frame(0xA))  # a pong, or any frame
    [told] = silent.texts()
    assert told["event"] == "pusher:error" and told["data"]["code"] == wire.PONG_NOT_RECEIVED
    assert silent.close_codes() == [wire.PONG_NOT_RECEIVED]
    assert lively.close_codes() == []


@pytest.mark.parametrize("path_key", [f"nobody/{KEY}", f"{KEY}/extra", f"x/y/{KEY}"])
def test_only_app_slash_key_is_a_socket_path(sockets: Sockets, path_key: str) -> None:
    """``/app/{key}`` and nothing under or around it (Pusher's 4005, path
    not found): ``/app/nobody/app-key`` is no socket of app-key."""
    socket = sockets.connect(path_key)
    [told] = socket.texts()
    assert told["event"] == "pusher:error" and told["data"]["code"] in (wire.PATH_NOT_FOUND, wire.APP_NOT_FOUND)
    assert socket.close_codes() == [told["data"]["code"]]
    assert sockets.harness.hub.sessions == {} and sockets.harness.pusher.sockets[APP_ID] == 0


def test_a_client_event_up_to_the_apps_limit_goes_through_the_socket(clock: MemoryReactorClock) -> None:
    """An app's max_message_bytes may be up to 1 MiB: a 300 KB client event
    under a 512 KiB limit is published, not cut off by the socket's own
    frame limit (4 x the server's max_message_bytes, 256 KiB: close 1009)."""
    harness = Harness(app_entry(max_message_bytes=512 * 1024), clock=clock)
    sockets = Sockets(harness)
    a, b = sockets.connect(), sockets.connect()
    for socket in (a, b):
        socket_id = data_of(socket.texts()[0])["socket_id"]
        socket.send({"event": "pusher:subscribe", "data": {
            "channel": "private-c", "auth": f"{KEY}:{mac(SECRET, f'{socket_id}:private-c')}",
        }})
    b.clear()
    assert a.send({"event": "client-big", "channel": "private-c", "data": "x" * 300_000}) == []
    assert a.close_codes() == []
    [got] = b.texts()
    assert got["event"] == "client-big" and len(got["data"]) == 300_000
