"""The official ``pusher`` server library (PyPI) against a real chloed, used
as an app uses it: ``pusher.Pusher(app_id, key, secret, host, port,
ssl=False)``, no monkeypatching. What it publishes reaches real Pusher
sockets (protocol 7, raw frames on ``websockets``); what it signs (channel
auths, user sign-ins) the server accepts, and what it did not sign the
server refuses with Pusher's frames, the socket staying open; Chloe's
webhooks pass the library's ``validate_webhook``; the errors of bad
requests are the library's exceptions, with the reason in them.

One chloed serves the module (two apps: the one under test, with client
events and a webhook URL to a real app server in a thread, and another);
every test uses channel and user names of its own.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Iterator

import pusher
import pytest
from pusher.errors import PusherBadAuth, PusherBadRequest, PusherBadStatus

from tests.pusher_peer import (
    APP_ID,
    APP_KEY,
    PusherSocket,
    Webhooks,
    api_client,
    data_of,
    library,
    pusher_conf,
    signed,
)
from tests.servers import Chloed

MAX_MESSAGE_BYTES = 2048
OTHER_ID, OTHER_KEY, OTHER_SECRET = "67890", "other-key", "other-secret"


@pytest.fixture(scope="module")
def hooks() -> Iterator[Webhooks]:
    app = Webhooks()
    yield app
    app.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory, hooks) -> Iterator[Chloed]:
    conf = pusher_conf(
        tmp_path_factory.mktemp("pusher-library") / "chloe.toml",
        options={"upstream_timeout": 5},
        others=({"id": OTHER_ID, "key": OTHER_KEY, "secret": OTHER_SECRET},),
        enable_client_messages=True, webhook_url=hooks.url, max_message_bytes=MAX_MESSAGE_BYTES,
    )
    chloed = Chloed(config=conf)
    yield chloed
    chloed.stop()


@pytest.fixture(autouse=True)
def healthy(server, hooks) -> Iterator[None]:
    """After each test: chloed runs, logged no traceback, and every webhook
    it sent passed the library's validate_webhook."""
    yield
    hooks.status = lambda events: 200
    assert server.process.poll() is None, server.log()[-3000:]
    log = server.log()
    assert "Traceback" not in log and "Unhandled" not in log, log[-5000:]
    assert hooks.invalid_posts() == []


@pytest.fixture
def sockets(server) -> Iterator[Any]:
    opened: list[PusherSocket] = []

    def open_socket(**kwargs: Any) -> PusherSocket:
        socket = PusherSocket(server, **kwargs)
        opened.append(socket)
        return socket

    yield open_socket
    for socket in opened:
        socket.close()


@pytest.fixture
def uid() -> str:
    """A suffix for this test's channel and user names."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def app(server) -> pusher.Pusher:
    return library(server)


def event(name: str, channel: str, data: str) -> dict[str, Any]:
    return {"event": name, "channel": channel, "data": data}


def pusher_status(server: Chloed) -> dict[str, Any]:
    status, _, body = server.request("GET", "/status")
    assert status == 200, body
    return json.loads(body)["pusher"]


# -- publishing ---------------------------------------------------------------------


def test_trigger_reaches_every_subscriber_of_the_channel(app, sockets, uid):
    """trigger() to one channel: each subscriber gets the event, its data the string the library sent."""
    channel = f"news-{uid}"
    a, b, elsewhere = sockets(), sockets(), sockets()
    a.subscribed(channel)
    b.subscribed(channel)
    elsewhere.subscribed(f"sport-{uid}")
    answer = app.trigger(channel, "headline", {"title": "Chloe speaks Pusher", "n": 1})
    assert isinstance(answer, dict)
    sent = json.dumps({"title": "Chloe speaks Pusher", "n": 1})
    assert a.recv() == event("headline", channel, sent)
    assert b.recv() == event("headline", channel, sent)
    assert elsewhere.ping() == []
    # A string goes as it is, not JSON-encoded again.
    app.trigger(channel, "plain", "just text")
    assert a.recv() == event("plain", channel, "just text")


def test_trigger_to_several_channels(app, sockets, uid):
    """trigger() to a list of channels reaches the subscribers of each, once, and no one else."""
    one, two, three = (f"multi-{n}-{uid}" for n in (1, 2, 3))
    a, b, both, c = sockets(), sockets(), sockets(), sockets()
    a.subscribed(one)
    b.subscribed(two)
    both.subscribed(one)
    both.subscribed(two)
    c.subscribed(three)
    app.trigger([one, two], "fanned", "x")
    assert a.recv() == event("fanned", one, "x")
    assert b.recv() == event("fanned", two, "x")
    got = [both.recv(), both.recv()]
    assert sorted(got, key=lambda f: f["channel"]) == [event("fanned", one, "x"), event("fanned", two, "x")]
    for socket in (a, b, both, c):
        assert socket.ping() == []


def test_socket_id_leaves_that_socket_out(app, sockets, uid):
    """trigger(socket_id=) reaches every subscriber but that socket (on every channel named)."""
    one, two = f"except-1-{uid}", f"except-2-{uid}"
    sender, other = sockets(), sockets()
    for socket in (sender, other):
        socket.subscribed(one)
        socket.subscribed(two)
    app.trigger([one, two], "echoless", "y", socket_id=sender.socket_id)
    got = [other.recv(), other.recv()]
    assert sorted(got, key=lambda f: f["channel"]) == [event("echoless", one, "y"), event("echoless", two, "y")]
    assert sender.ping() == []


def test_trigger_batch(app, sockets, uid):
    """trigger_batch() publishes each event to its channel, in the batch's order."""
    one, two = f"batch-1-{uid}", f"batch-2-{uid}"
    a, b = sockets(), sockets()
    a.subscribed(one)
    b.subscribed(two)
    answer = app.trigger_batch([
        {"channel": one, "name": "first", "data": {"n": 1}},
        {"channel": two, "name": "second", "data": "two"},
        {"channel": one, "name": "third", "data": "3"},
    ])
    assert isinstance(answer, dict)
    assert a.recv() == event("first", one, json.dumps({"n": 1}))
    assert a.recv() == event("third", one, "3")
    assert b.recv() == event("second", two, "two")
    assert a.ping() == [] and b.ping() == []


def test_apps_are_apart(server, app, sockets, uid):
    """Another app's trigger to the same channel name reaches that app's sockets only."""
    channel = f"shared-name-{uid}"
    mine, theirs = sockets(), sockets(key=OTHER_KEY)
    mine.subscribed(channel)
    theirs.subscribed(channel)
    library(server, key=OTHER_KEY, secret=OTHER_SECRET, app_id=OTHER_ID).trigger(channel, "theirs", "t")
    assert theirs.recv() == event("theirs", channel, "t")
    assert mine.ping() == []
    app.trigger(channel, "mine", "m")
    assert mine.recv() == event("mine", channel, "m")
    assert theirs.ping() == []
    # Each app counts its own sockets only.
    other = library(server, key=OTHER_KEY, secret=OTHER_SECRET, app_id=OTHER_ID)
    assert other.channel_info(channel, ["subscription_count"]) == {"occupied": True, "subscription_count": 1}
    assert app.channel_info(channel, ["subscription_count"]) == {"occupied": True, "subscription_count": 1}


# -- what channels hold -----------------------------------------------------------


def test_channel_info_and_channels_info(app, sockets, uid):
    """channel_info: occupied and subscription_count; channels_info: the occupied channels, by prefix."""
    one, two = f"info-{uid}-a", f"info-{uid}-b"
    a, b = sockets(), sockets()
    a.subscribed(one)
    b.subscribed(one)
    b.subscribed(two)
    assert app.channel_info(one, ["subscription_count"]) == {"occupied": True, "subscription_count": 2}
    assert app.channel_info(two) == {"occupied": True}
    assert app.channel_info(f"info-{uid}-nobody") == {"occupied": False}
    assert app.channels_info(prefix_filter=f"info-{uid}") == {"channels": {one: {}, two: {}}}
    b.send({"event": "pusher:unsubscribe", "data": {"channel": two}})
    assert b.ping() == []
    assert app.channel_info(two) == {"occupied": False}
    assert app.channels_info(prefix_filter=f"info-{uid}") == {"channels": {one: {}}}
    assert app.channel_info(one, ["subscription_count"]) == {"occupied": True, "subscription_count": 2}


def test_presence_channel_info_users_and_counts(app, sockets, uid):
    """On a presence channel: user_count counts users (not sockets), users_info lists them,
    channels_info(prefix_filter='presence-', attributes=['user_count']) gives each channel's."""
    room, hall = f"presence-info-{uid}", f"presence-info-{uid}-hall"
    alice1, alice2, bob = sockets(), sockets(), sockets()
    for socket, user in ((alice1, "alice"), (alice2, "alice"), (bob, "bob")):
        socket.subscribed(room, **app.authenticate(room, socket.socket_id, {"user_id": user, "user_info": {"name": user}}))
    bob.subscribed(hall, **app.authenticate(hall, bob.socket_id, {"user_id": "bob"}))
    assert app.channel_info(room, ["user_count", "subscription_count"]) == {
        "occupied": True, "user_count": 2, "subscription_count": 3,
    }
    assert app.channel_info(room, ["user_count"]) == {"occupied": True, "user_count": 2}
    users = app.users_info(room)
    assert sorted(users["users"], key=lambda u: u["id"]) == [{"id": "alice"}, {"id": "bob"}]
    assert app.users_info(hall) == {"users": [{"id": "bob"}]}
    assert app.channels_info(prefix_filter=f"presence-info-{uid}", attributes=["user_count"]) == {
        "channels": {room: {"user_count": 2}, hall: {"user_count": 1}},
    }
    # One of alice's sockets going leaves alice in; bob's going takes bob
    # out, which alice's other socket hears.
    alice1.close()
    bob.close()
    before, removed = alice2.until("pusher_internal:member_removed", room)
    assert [(f["event"], data_of(f)["user_id"]) for f in before] == [("pusher_internal:member_added", "bob")]
    assert data_of(removed) == {"user_id": "bob"}
    assert app.users_info(room) == {"users": [{"id": "alice"}]}
    assert app.channel_info(room, ["user_count"]) == {"occupied": True, "user_count": 1}
    assert app.channels_info(prefix_filter=f"presence-info-{uid}", attributes=["user_count"]) == {
        "channels": {room: {"user_count": 1}},
    }


# -- the auths the library makes -------------------------------------------------------


def test_private_channel_auth(server, app, sockets, uid):
    """authenticate() for a private channel: that socket gets in; the same auth on another socket,
    or one signed with another secret, gets pusher:subscription_error, and the socket stays open."""
    channel = f"private-auth-{uid}"
    a, b = sockets(), sockets()
    auth = app.authenticate(channel, a.socket_id)
    assert set(auth) == {"auth"} and auth["auth"].startswith(APP_KEY + ":")
    a.subscribed(channel, **auth)
    for refused in (
        b.subscribe(channel, **auth),  # made for socket a
        b.subscribe(channel, **library(server, secret="not-the-app-secret").authenticate(channel, b.socket_id)),
        b.subscribe(channel, **app.authenticate(f"private-other-{uid}", b.socket_id)),  # another channel's
        b.subscribe(channel),  # none
    ):
        assert refused["event"] == "pusher:subscription_error" and refused["channel"] == channel, refused
        assert refused["data"]["status"] == 401 and refused["data"]["type"] == "AuthError", refused
        assert "signature" in refused["data"]["error"].lower() or "auth" in refused["data"]["error"].lower()
    assert b.ping() == []
    app.trigger(channel, "secret-news", "s")
    assert a.recv() == event("secret-news", channel, "s")
    assert b.ping() == []
    # b, given its own auth, is in.
    b.subscribed(channel, **app.authenticate(channel, b.socket_id))


def test_presence_channel_auth_with_custom_data(app, sockets, uid):
    """authenticate() with custom_data: the members see each other's user_info; channel_data
    changed after signing, or left out, is refused."""
    channel = f"presence-auth-{uid}"
    alice, bob, mallory = sockets(), sockets(), sockets()
    answer = alice.subscribed(channel, **app.authenticate(
        channel, alice.socket_id, {"user_id": "alice", "user_info": {"name": "Alice", "role": "host"}}))
    assert data_of(answer) == {"presence": {"ids": ["alice"], "hash": {"alice": {"name": "Alice", "role": "host"}},
                                            "count": 1}}
    answer = bob.subscribed(channel, **app.authenticate(channel, bob.socket_id, {"user_id": "bob", "user_info": {"name": "Bob"}}))
    presence = data_of(answer)["presence"]
    assert sorted(presence["ids"]) == ["alice", "bob"] and presence["count"] == 2
    assert presence["hash"] == {"alice": {"name": "Alice", "role": "host"}, "bob": {"name": "Bob"}}
    added = alice.recv()
    assert added["event"] == "pusher_internal:member_added" and added["channel"] == channel
    assert data_of(added) == {"user_id": "bob", "user_info": {"name": "Bob"}}

    auth = app.authenticate(channel, mallory.socket_id, {"user_id": "mallory"})
    forged = dict(auth, channel_data=json.dumps({"user_id": "alice"}))
    for refused in (mallory.subscribe(channel, **forged), mallory.subscribe(channel, auth=auth["auth"])):
        assert refused["event"] == "pusher:subscription_error" and refused["channel"] == channel, refused
        assert refused["data"]["status"] in (400, 401), refused
    assert mallory.ping() == []
    assert alice.ping() == [] and bob.ping() == []  # nobody joined
    assert sorted(u["id"] for u in app.users_info(channel)["users"]) == ["alice", "bob"]

    bob.send({"event": "pusher:unsubscribe", "data": {"channel": channel}})
    removed = alice.recv()
    assert removed["event"] == "pusher_internal:member_removed" and data_of(removed) == {"user_id": "bob"}


def test_user_signin(server, app, sockets, uid):
    """authenticate_user(): pusher:signin succeeds on that socket; on another socket, or signed with
    another secret, it is pusher:error 4009 and the socket stays open."""
    user = {"id": f"user-{uid}", "user_info": {"name": "Carol"}}
    a, b = sockets(), sockets()
    auth = app.authenticate_user(a.socket_id, user)
    answer = a.ask({"event": "pusher:signin", "data": auth})
    assert answer["event"] == "pusher:signin_success", answer
    assert json.loads(data_of(answer)["user_data"]) == user
    for refused in (
        b.ask({"event": "pusher:signin", "data": auth}),
        b.ask({"event": "pusher:signin", "data": library(server, secret="not-the-app-secret").authenticate_user(
            b.socket_id, user)}),
    ):
        assert refused["event"] == "pusher:error", refused
        assert refused["data"]["code"] == 4009 and refused["data"]["message"], refused
    assert b.ping() == []
    app.send_to_user(user["id"], "only-a", "a")
    assert a.recv() == event("only-a", f"#server-to-user-{user['id']}", "a")
    assert b.ping() == []


def test_send_to_user_reaches_every_socket_of_that_user(app, sockets, uid):
    """send_to_user() reaches each socket signed in as the user, and no other."""
    carol, dave = f"carol-{uid}", f"dave-{uid}"
    carol1, carol2, dave1, anonymous = sockets(), sockets(), sockets(), sockets()
    for socket, user in ((carol1, carol), (carol2, carol), (dave1, dave)):
        answer = socket.ask({"event": "pusher:signin", "data": app.authenticate_user(socket.socket_id, {"id": user})})
        assert answer["event"] == "pusher:signin_success", answer
    app.send_to_user(carol, "note", {"text": "hi Carol"})
    expected = event("note", f"#server-to-user-{carol}", json.dumps({"text": "hi Carol"}))
    assert carol1.recv() == expected
    assert carol2.recv() == expected
    assert dave1.ping() == [] and anonymous.ping() == []
    # pusher-js subscribes to its user's channel once signed in: allowed, and
    # still one delivery; another user's channel is refused.
    carol1.subscribed(f"#server-to-user-{carol}")
    refused = dave1.subscribe(f"#server-to-user-{carol}")
    assert refused["event"] == "pusher:subscription_error" and refused["channel"] == f"#server-to-user-{carol}", refused
    refused = anonymous.subscribe(f"#server-to-user-{carol}")
    assert refused["event"] == "pusher:subscription_error", refused
    app.send_to_user(carol, "again", "2")
    assert carol1.recv() == event("again", f"#server-to-user-{carol}", "2")
    assert carol1.ping() == []
    assert carol2.recv() == event("again", f"#server-to-user-{carol}", "2")
    assert dave1.ping() == [] and anonymous.ping() == []


def test_terminate_user_connections(app, sockets, uid):
    """terminate_user_connections() closes each socket of that user with 4009, and no one else's."""
    erin, frank = f"erin-{uid}", f"frank-{uid}"
    erin1, erin2, frank1, anonymous = sockets(), sockets(), sockets(), sockets()
    for socket, user in ((erin1, erin), (erin2, erin), (frank1, frank)):
        answer = socket.ask({"event": "pusher:signin", "data": app.authenticate_user(socket.socket_id, {"id": user})})
        assert answer["event"] == "pusher:signin_success", answer
        socket.subscribed(f"terminate-{uid}")
    anonymous.subscribed(f"terminate-{uid}")
    assert app.terminate_user_connections(erin) == {}
    for socket in (erin1, erin2):
        frames, code = socket.closed()
        assert code == 4009, (frames, code)
        assert [f["event"] for f in frames] == ["pusher:error"] and frames[0]["data"]["code"] == 4009, frames
    app.trigger(f"terminate-{uid}", "still-here", "z")
    assert frank1.recv() == event("still-here", f"terminate-{uid}", "z")
    assert anonymous.recv() == event("still-here", f"terminate-{uid}", "z")
    assert app.channel_info(f"terminate-{uid}", ["subscription_count"]) == {"occupied": True, "subscription_count": 2}


# -- webhooks -------------------------------------------------------------------------


def names(events: list[tuple[dict[str, Any], int]]) -> list[str]:
    return [e["name"] for e, status in events]


def test_webhooks_channel_occupied_and_vacated(hooks, sockets, uid):
    """The first subscriber makes channel_occupied, the last one leaving channel_vacated; each event
    has a delivery id; each POST passes validate_webhook."""
    channel = f"hooked-{uid}"
    a, b = sockets(), sockets()
    a.subscribed(channel)
    b.subscribed(channel)
    b.send({"event": "pusher:unsubscribe", "data": {"channel": channel}})
    assert b.ping() == []
    a.send({"event": "pusher:unsubscribe", "data": {"channel": channel}})
    assert a.ping() == []
    events = hooks.wait_for(channel, "channel_vacated")
    assert names(events) == ["channel_occupied", "channel_vacated"]
    assert [{k: v for k, v in e.items() if k != "delivery"} for e, s in events] == [
        {"name": "channel_occupied", "channel": channel}, {"name": "channel_vacated", "channel": channel},
    ]
    deliveries = [e.get("delivery") for e, s in events]
    assert all(isinstance(d, str) and d for d in deliveries) and len(set(deliveries)) == 2
    # A socket that closes vacates its channels too.
    c = sockets()
    c.subscribed(f"{channel}-closed")
    c.close()
    assert names(hooks.wait_for(f"{channel}-closed", "channel_vacated")) == ["channel_occupied", "channel_vacated"]


def test_webhooks_presence_members(app, hooks, sockets, uid):
    """member_added when a user's first socket joins, member_removed when its last leaves, between
    the channel's occupied and vacated."""
    channel = f"presence-hooked-{uid}"
    alice1, alice2, bob = sockets(), sockets(), sockets()

    def join(socket: PusherSocket, user: str) -> None:
        socket.subscribed(channel, **app.authenticate(channel, socket.socket_id, {"user_id": user}))

    def leave(socket: PusherSocket) -> None:
        socket.send({"event": "pusher:unsubscribe", "data": {"channel": channel}})
        socket.ping()

    join(alice1, "alice")
    join(alice2, "alice")
    leave(alice1)  # alice is still in, on alice2
    join(bob, "bob")
    leave(alice2)
    leave(bob)
    events = hooks.wait_for(channel, "channel_vacated")
    assert [(e["name"], e.get("user_id")) for e, s in events] == [
        ("channel_occupied", None), ("member_added", "alice"), ("member_added", "bob"),
        ("member_removed", "alice"), ("member_removed", "bob"), ("channel_vacated", None),
    ]
    assert all(e.get("delivery") for e, s in events)
    # A member whose socket closes is removed.
    carol = sockets()
    join(carol, "carol")
    carol.close()
    events = hooks.wait(channel, lambda es: [e["name"] for e in es].count("channel_vacated") == 2)
    assert [(e["name"], e.get("user_id")) for e, s in events[6:]] == [
        ("channel_occupied", None), ("member_added", "carol"), ("member_removed", "carol"), ("channel_vacated", None),
    ]


def test_webhooks_client_event(app, hooks, sockets, uid):
    """A client event reaches the channel's other subscribers (not its sender) and the app, as
    client_event with the event, its data as a string, the socket id (and user_id on presence)."""
    private, presence = f"private-chat-{uid}", f"presence-chat-{uid}"
    a, b = sockets(), sockets()
    for socket in (a, b):
        socket.subscribed(private, **app.authenticate(private, socket.socket_id))
    a.send({"event": "client-typing", "channel": private, "data": {"who": "a"}})
    assert b.recv() == {"event": "client-typing", "channel": private, "data": {"who": "a"}}
    assert a.ping() == []
    a.subscribed(presence, **app.authenticate(presence, a.socket_id, {"user_id": "ann"}))
    b.subscribed(presence, **app.authenticate(presence, b.socket_id, {"user_id": "ben"}))
    added = a.recv()
    assert added["event"] == "pusher_internal:member_added" and data_of(added)["user_id"] == "ben", added
    b.send({"event": "client-wave", "channel": presence, "data": "hello"})
    assert a.recv() == {"event": "client-wave", "channel": presence, "data": "hello", "user_id": "ben"}
    assert b.ping() == []

    events = hooks.wait_for(private, "client_event")
    hook = [e for e, s in events if e["name"] == "client_event"]
    assert len(hook) == 1 and hook[0]["delivery"]
    assert {k: v for k, v in hook[0].items() if k != "delivery"} == {
        "name": "client_event", "channel": private, "event": "client-typing",
        "data": json.dumps({"who": "a"}, separators=(",", ":")), "socket_id": a.socket_id,
    }
    events = hooks.wait_for(presence, "client_event")
    hook = [e for e, s in events if e["name"] == "client_event"]
    assert len(hook) == 1
    assert {k: v for k, v in hook[0].items() if k != "delivery"} == {
        "name": "client_event", "channel": presence, "event": "client-wave", "data": "hello",
        "socket_id": b.socket_id, "user_id": "ben",
    }


def test_webhooks_cache_miss(app, hooks, sockets, uid):
    """A cache channel with nothing cached: pusher:cache_miss to the socket and cache_miss to the
    app; once an event is published, a new subscriber gets it at once, and no cache_miss."""
    channel = f"cache-hooked-{uid}"
    a = sockets()
    a.subscribed(channel)
    miss = a.recv()
    assert miss["event"] == "pusher:cache_miss" and miss["channel"] == channel, miss
    app.trigger(channel, "price", "42")
    assert a.recv() == event("price", channel, "42")
    b = sockets()
    b.subscribed(channel)
    assert b.recv() == event("price", channel, "42")
    assert b.ping() == []
    for socket in (a, b):
        socket.send({"event": "pusher:unsubscribe", "data": {"channel": channel}})
        socket.ping()
    events = hooks.wait_for(channel, "channel_vacated")
    assert names(events) == ["channel_occupied", "cache_miss", "channel_vacated"]
    assert {k: v for k, v in events[1][0].items() if k != "delivery"} == {"name": "cache_miss", "channel": channel}


def test_webhook_answered_500_is_retried_with_the_same_delivery_id(server, hooks, sockets, uid):
    """A POST the app answers 500 comes again, its events with the same delivery ids; /status's
    pusher.webhooks counts the retry and the delivery, and no failure."""
    channel = f"retried-{uid}"
    before = pusher_status(server)["webhooks"][APP_ID]
    failed_once: list[bool] = []

    def status(events: list[dict[str, Any]]) -> int:
        if not failed_once and any(e.get("channel") == channel for e in events):
            failed_once.append(True)
            return 500
        return 200

    hooks.status = status
    a = sockets()
    a.subscribed(channel)
    events = hooks.wait(channel, lambda es: len(es) >= 2)
    assert [(e["name"], s) for e, s in events] == [("channel_occupied", 500), ("channel_occupied", 200)]
    assert events[0][0]["delivery"] == events[1][0]["delivery"]
    # The channel's events reach the app one after the other: once the
    # vacated is in, the occupied was settled (and counted).
    a.send({"event": "pusher:unsubscribe", "data": {"channel": channel}})
    events = hooks.wait_for(channel, "channel_vacated")
    assert [(e["name"], s) for e, s in events] == [
        ("channel_occupied", 500), ("channel_occupied", 200), ("channel_vacated", 200),
    ]
    assert events[2][0]["delivery"] != events[0][0]["delivery"]
    after = pusher_status(server)["webhooks"][APP_ID]
    assert set(after) >= {"delivered", "retries", "failed", "queued"}
    assert after["retries"] >= before["retries"] + 1
    assert after["delivered"] >= before["delivered"] + 1
    assert after["failed"] == before["failed"] == 0


def test_user_channel_webhooks_are_consistent(app, hooks, sockets, uid):
    """A signed-in socket that closes: if the app hears its #server-to-user- channel vacated, it heard
    it occupied first (no vacated of a channel never occupied)."""
    user = f"gina-{uid}"
    marker = f"after-user-{uid}"
    a = sockets()
    answer = a.ask({"event": "pusher:signin", "data": app.authenticate_user(a.socket_id, {"id": user})})
    assert answer["event"] == "pusher:signin_success", answer
    a.subscribed(marker)
    a.close()
    # The user channel's events were submitted with (before) the marker's.
    hooks.wait_for(marker, "channel_vacated")
    user_events = names(hooks.of(f"#server-to-user-{user}"))
    assert user_events in ([], ["channel_occupied", "channel_vacated"]), user_events


# -- the errors of bad requests ---------------------------------------------------------


def test_the_library_refuses_what_pusher_would(app):
    """The library itself refuses a bad channel name and over 100 channels (nothing sent)."""
    with pytest.raises(ValueError, match="Invalid Channel"):
        app.trigger("bad channel!", "e", "x")
    with pytest.raises(ValueError, match="Too many channels"):
        app.trigger([f"c{n}" for n in range(101)], "e", "x")


def test_library_errors_for_bad_credentials_and_limits(server, app, uid):
    """What the server refuses reaches the library's caller as its exceptions, saying why."""
    channel = f"refused-{uid}"
    with pytest.raises(PusherBadStatus) as raised:
        app.trigger(channel, "big", "x" * (MAX_MESSAGE_BYTES + 1))
    assert str(raised.value).startswith("413: ") and "too large" in str(raised.value).lower()
    with pytest.raises(PusherBadStatus) as raised:
        library(server, app_id="999").trigger(channel, "e", "x")
    assert str(raised.value).startswith("404: ") and "app" in str(raised.value).lower()
    with pytest.raises(PusherBadAuth, match="auth_key"):
        library(server, key="no-such-key").trigger(channel, "e", "x")
    with pytest.raises(PusherBadAuth, match="(?i)signature"):
        library(server, secret="not-the-app-secret").trigger(channel, "e", "x")
    with pytest.raises(PusherBadAuth, match="auth_key"):
        library(server, key=OTHER_KEY, secret=OTHER_SECRET).trigger(channel, "e", "x")  # another app's key
    with pytest.raises(PusherBadRequest, match="(?i)presence"):
        app.channel_info(channel, ["user_count"])
    with pytest.raises(PusherBadRequest, match="(?i)presence"):
        app.users_info(channel)
    with pytest.raises(PusherBadRequest):
        app.channels_info(attributes=["user_count"])  # user_count needs the presence- prefix


EVENTS = f"/apps/{APP_ID}/events"
ONE_EVENT = {"name": "e", "channels": ["refused"], "data": "x"}


@pytest.mark.parametrize("case, build, error, status, says", [
    ("101 channels", lambda c: signed(c, "POST", EVENTS, {"name": "e", "channels": [f"c{n}" for n in range(101)],
                                                           "data": "x"}),
     PusherBadRequest, 400, "too many channels"),
    ("bad body_md5", lambda c: signed(c, "POST", EVENTS, ONE_EVENT, body_md5="0" * 32),
     PusherBadAuth, 401, "body_md5"),
    ("stale auth_timestamp", lambda c: signed(c, "POST", EVENTS, ONE_EVENT, auth_timestamp=str(int(time.time()) - 601)),
     PusherBadAuth, 401, "timestamp"),
    ("future auth_timestamp", lambda c: signed(c, "POST", EVENTS, ONE_EVENT, auth_timestamp=str(int(time.time()) + 601)),
     PusherBadAuth, 401, "timestamp"),
    ("wrong auth_key", lambda c: signed(c, "POST", EVENTS, ONE_EVENT, auth_key="no-such-key"),
     PusherBadAuth, 401, "auth_key"),
    ("bad signature", lambda c: signed(c, "POST", EVENTS, ONE_EVENT, secret="not-the-app-secret"),
     PusherBadAuth, 401, "signature"),
    ("data over max_message_bytes", lambda c: signed(c, "POST", EVENTS, dict(ONE_EVENT, data="x" * (MAX_MESSAGE_BYTES + 1))),
     PusherBadStatus, 413, "too large"),
    ("unknown app", lambda c: signed(c, "POST", "/apps/999/events", ONE_EVENT),
     PusherBadStatus, 404, "app"),
])
def test_api_refusals(server, case, build, error, status, says):
    """Requests signed with the library's own pieces, one thing wrong in each: Pusher's status,
    and a body that says why."""
    client = api_client(server)
    request = build(client)
    with pytest.raises(error) as raised:
        client.http.send_request(request)
    text = str(raised.value)
    if error is PusherBadStatus:
        assert text.startswith(f"{status}: "), text
    assert says in text.lower(), text
    # The same request, well made, goes through.
    assert isinstance(client.http.send_request(signed(client, "POST", EVENTS, ONE_EVENT)), dict)
