"""Fuzzing chloed's Pusher layer: bad frames on ``/app/{key}`` and bad
requests to the HTTP API, while a well-behaved subscriber listens.

One chloed runs for the module (one app, client events on, a webhook URL,
small limits). Each bad frame must get Pusher's refusal, a
``pusher:error`` (``{"code", "message"}``) or a
``pusher:subscription_error`` on the channel, and leave its socket open
(a barrier after each, a subscription to a channel of its own, must still
succeed); each bad request Pusher's status, its body saying why. Frames
the WebSocket itself cannot carry (over its size limit, invalid UTF-8)
close that socket with RFC 6455's code, and no other.

Meanwhile a thread triggers a steady series of numbered events to a public
channel through the official library, and a subscriber records them: after
every test each one triggered so far has arrived, in order, and nothing
else (no refused request leaked an event into that channel: several name
it). chloed must not log a traceback.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import socket as tcp
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pusher.http import make_query_string
from pusher.signature import sign
from websockets.exceptions import InvalidStatus

from tests.pusher_peer import (
    APP_ID,
    APP_KEY,
    APP_SECRET,
    TIMEOUT,
    Listener,
    PusherSocket,
    Webhooks,
    api_client,
    library,
    pusher_conf,
    send,
    signed,
)
from tests.servers import Chloed

MAX_MESSAGE_BYTES = 2048  # the app's: an event's data, a client event's frame
NATIVE_MAX = 16384  # chloed's: the WebSocket takes messages up to 4x this
FRAME_LIMIT = MAX_MESSAGE_BYTES + 1024 + 512  # what the Pusher layer reads of a frame
STEADY = f"steady-{uuid.uuid4().hex}"  # no generated name is this one
EVENTS = f"/apps/{APP_ID}/events"
BATCH = f"/apps/{APP_ID}/batch_events"

FUZZ = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# -- the server, the steady publisher and its subscriber ---------------------------------


class Steady:
    """Triggers ``tick`` events numbered 0, 1, 2... to STEADY through the
    library, one after the other, until stopped."""

    def __init__(self, server: Chloed) -> None:
        self.app = library(server)
        self.published = 0
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.app.trigger(STEADY, "tick", str(self.published))
            except Exception as exc:  # reported by every checkpoint
                self.errors.append(repr(exc))
                return
            with self.cond:
                self.published += 1
                self.cond.notify_all()
            # A pace, not a synchronisation: ~100 events a second, so the
            # fuzzing keeps most of the two cores.
            self.stopping.wait(0.01)

    def wait_published(self, count: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.published >= count or bool(self.errors), TIMEOUT)

    def stop(self) -> int:
        self.stopping.set()
        self.thread.join(TIMEOUT)
        return self.published


class Fixture:
    def __init__(self, server: Chloed, hooks: Webhooks) -> None:
        self.server = server
        self.hooks = hooks
        self.listener = Listener(server, STEADY)
        self.steady = Steady(server)
        self.app = library(server)
        self.counter = itertools.count()

    def checkpoint(self) -> None:
        """chloed runs and logged no traceback; the subscriber has every
        event triggered so far, in order, and nothing else."""
        assert self.server.process.poll() is None, self.server.log()[-3000:]
        n = self.steady.published
        seen = self.listener.wait_for(n)
        assert self.steady.errors == []
        assert seen[:n] == [("tick", str(i)) for i in range(n)], seen[:n]
        assert all(s[0] == "tick" for s in seen[n:]) and seen[n:] == [("tick", str(i)) for i in range(n, len(seen))]
        assert self.listener.others == [] and self.listener.ended is None, (self.listener.others, self.listener.ended)
        log = self.server.log()
        assert "Traceback" not in log and "Unhandled" not in log, log[-5000:]
        assert self.hooks.invalid_posts() == []

    def name(self, prefix: str = "fuzz") -> str:
        return f"{prefix}-{next(self.counter)}"


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Iterator[Fixture]:
    hooks = Webhooks()
    conf = pusher_conf(
        tmp_path_factory.mktemp("pusher-fuzz") / "chloe.toml",
        # rate_limit 0: one socket takes every generated frame and a barrier
        # after each, faster than 50 a second on a quiet machine; a barrier
        # refused for the rate would read as a socket no longer served.
        options={"max_message_bytes": NATIVE_MAX, "upstream_timeout": 5, "rate_limit": 0},
        enable_client_messages=True, webhook_url=hooks.url, max_message_bytes=MAX_MESSAGE_BYTES,
    )
    server = Chloed(config=conf)
    fixture = Fixture(server, hooks)
    yield fixture
    fixture.steady.stop()
    fixture.listener.close()
    server.stop()
    hooks.stop()


@pytest.fixture(autouse=True)
def checkpoint(fx) -> Iterator[None]:
    yield
    fx.checkpoint()


@pytest.fixture
def sockets(fx) -> Iterator[Callable[..., PusherSocket]]:
    opened: list[PusherSocket] = []

    def open_socket(**kwargs: Any) -> PusherSocket:
        socket = PusherSocket(fx.server, **kwargs)
        opened.append(socket)
        return socket

    yield open_socket
    for socket in opened:
        socket.close()


# -- answers --------------------------------------------------------------------------


def answers(fx: Fixture, socket: PusherSocket, payload: str | bytes) -> list[dict[str, Any]]:
    """Send ``payload``, then a barrier (a subscription to a public channel
    of its own): the frames the socket got before the barrier's answer. The
    barrier succeeding shows the socket is still open and served."""
    socket.send(payload)
    barrier = fx.name("barrier")
    socket.send({"event": "pusher:subscribe", "data": {"channel": barrier}})
    before, _ = socket.until("pusher_internal:subscription_succeeded", barrier)
    socket.send({"event": "pusher:unsubscribe", "data": {"channel": barrier}})
    return before


def is_error(frame: dict[str, Any], code: Any = "any") -> bool:
    """Pusher's pusher:error: data an object with a code (a number, or null)
    and a message."""
    data = frame.get("data")
    return (
        frame.get("event") == "pusher:error" and isinstance(data, dict)
        and (data.get("code") is None or isinstance(data.get("code"), int))
        and isinstance(data.get("message"), str) and bool(data["message"])
        and (code == "any" or data.get("code") == code)
    )


def is_subscription_error(frame: dict[str, Any], channel: str | None = None, status: int | None = None) -> bool:
    """pusher:subscription_error on the channel, as pusher-js reads it."""
    data = frame.get("data")
    return (
        frame.get("event") == "pusher:subscription_error" and isinstance(data, dict)
        and isinstance(data.get("error"), str) and isinstance(data.get("status"), int)
        and isinstance(data.get("type"), str)
        and (channel is None or frame.get("channel") == channel)
        and (status is None or data["status"] == status)
    )


def refused(frames: list[dict[str, Any]], channel: str | None = None) -> bool:
    """One refusal: a pusher:error, or a pusher:subscription_error (on ``channel``)."""
    return len(frames) == 1 and (is_error(frames[0]) or is_subscription_error(frames[0], channel))


def frame(event: Any, data: Any = None, **rest: Any) -> str:
    body = {"event": event, **rest}
    if data is not None:
        body["data"] = data
    return json.dumps(body)


# -- frames that are not Pusher frames --------------------------------------------------

NOT_FRAMES = {
    "not json": "not json at all",
    "empty": "",
    "truncated": '{"event": "pusher:ping"',
    "trailing garbage": '{"event": "pusher:ping"} x',
    "NaN": '{"event": "pusher:ping", "data": NaN}',
    "1e400": '{"event": "pusher:ping", "data": 1e400}',
    "lone surrogate": '{"event": "pusher:\\ud800ping"}',
    "deep nesting": "[" * 1700 + "]" * 1700,
    "array": '["pusher:ping", {}]',
    "empty array": "[]",
    "number": "42",
    "string": '"pusher:ping"',
    "null": "null",
    "true": "true",
    "no event": '{"data": {}}',
    "empty object": "{}",
    "event a number": '{"event": 5}',
    "event null": '{"event": null}',
    "event a list": '{"event": ["pusher:ping"]}',
    "event an object": '{"event": {"name": "pusher:ping"}}',
    "unknown pusher event": frame("pusher:bogus", {}),
    "unknown event": frame("hello", {}),
    "empty event name": frame("", {}),
    "client sends pusher_internal": frame("pusher_internal:subscription_succeeded", "{}", channel="x"),
    "client sends member_added": frame("pusher_internal:member_added", {"user_id": "x"}, channel="presence-x"),
    "long event name": frame("e" * 1500, {}),
    "subscribe without data": frame("pusher:subscribe"),
    "subscribe data null": '{"event": "pusher:subscribe", "data": null}',
    "subscribe data a number": frame("pusher:subscribe", 5),
    "subscribe data a list": frame("pusher:subscribe", ["x"]),
    "subscribe data a string not JSON": frame("pusher:subscribe", "{channel: x}"),
    "subscribe data a JSON string of a string": frame("pusher:subscribe", '"x"'),
    "subscribe without channel": frame("pusher:subscribe", {}),
    "subscribe channel a number": frame("pusher:subscribe", {"channel": 5}),
    "subscribe channel null": frame("pusher:subscribe", {"channel": None}),
    "subscribe channel a list": frame("pusher:subscribe", {"channel": ["x"]}),
    "subscribe channel empty": frame("pusher:subscribe", {"channel": ""}),
    "subscribe channel with a space": frame("pusher:subscribe", {"channel": "bad name"}),
    "subscribe channel with a slash": frame("pusher:subscribe", {"channel": "a/b"}),
    "subscribe channel non-ASCII": frame("pusher:subscribe", {"channel": "caf\u00e9"}),
    "subscribe channel 201 chars": frame("pusher:subscribe", {"channel": "c" * 201}),
    "subscribe channel with a hash": frame("pusher:subscribe", {"channel": "#not-a-user-channel"}),
    "subscribe another user's channel": frame("pusher:subscribe", {"channel": "#server-to-user-someone"}),
    "unsubscribe without data": frame("pusher:unsubscribe"),
    "unsubscribe data a number": frame("pusher:unsubscribe", 7),
    "unsubscribe channel a number": frame("pusher:unsubscribe", {"channel": 7}),
    "unsubscribe bad channel": frame("pusher:unsubscribe", {"channel": "bad name"}),
    "signin without data": frame("pusher:signin"),
    "signin data a list": frame("pusher:signin", []),
    "signin without user_data": frame("pusher:signin", {"auth": APP_KEY + ":" + "0" * 64}),
    "signin user_data an object": frame("pusher:signin", {"auth": APP_KEY + ":" + "0" * 64, "user_data": {"id": "x"}}),
    "signin without auth": frame("pusher:signin", {"user_data": json.dumps({"id": "x"})}),
    "signin bad auth": frame("pusher:signin", {"auth": "nonsense", "user_data": json.dumps({"id": "x"})}),
    "client event without channel": frame("client-typing", {}),
    "client event channel a number": frame("client-typing", {}, channel=5),
    "client event on a public channel": frame("client-typing", {}, channel="public-room"),
    "client event on a private channel not subscribed": frame("client-typing", {}, channel="private-elsewhere"),
    "client event on an encrypted channel": frame("client-typing", {}, channel="private-encrypted-x"),
    "frame over the limit": frame("pusher:ping", {"pad": "x" * (FRAME_LIMIT + 10)}),
    "client event over the limit": frame("client-big", {"pad": "x" * FRAME_LIMIT}, channel="private-x"),
}


@pytest.mark.parametrize("payload", list(NOT_FRAMES.values()), ids=list(NOT_FRAMES))
def test_bad_frames_are_refused_and_the_socket_stays(fx, sockets, payload):
    """Each bad frame: one pusher:error (or pusher:subscription_error on the channel), the socket
    still open and served."""
    socket = sockets()
    got = answers(fx, socket, payload)
    assert refused(got), got


def test_binary_frames_are_refused_and_the_socket_stays(fx, sockets):
    """Binary frames, even of a valid frame's bytes: pusher:error, the socket open."""
    socket = sockets()
    for payload in (b"\x00\x01\x02", json.dumps({"event": "pusher:ping", "data": {}}).encode(), b""):
        got = answers(fx, socket, payload)
        assert len(got) == 1 and is_error(got[0]), (payload, got)


def test_what_is_no_error(fx, sockets):
    """What Pusher answers without an error: a ping with any data (pong), a pong, an unsubscribe
    of a channel never subscribed to, a subscribe's data as a JSON string."""
    socket = sockets()
    for data in ({}, "x", 5, None, [1], {"a": {"b": 1}}):
        got = answers(fx, socket, json.dumps({"event": "pusher:ping", "data": data}))
        assert [f["event"] for f in got] == ["pusher:pong"], (data, got)
    assert answers(fx, socket, frame("pusher:pong", {})) == []
    assert answers(fx, socket, frame("pusher:pong", "{}")) == []
    assert answers(fx, socket, frame("pusher:unsubscribe", {"channel": "never-subscribed"})) == []
    channel = fx.name("as-a-string")
    got = answers(fx, socket, frame("pusher:subscribe", json.dumps({"channel": channel})))
    assert got == [{"event": "pusher_internal:subscription_succeeded", "channel": channel, "data": "{}"}]
    # Subscribing twice is one subscription, answered again.
    got = answers(fx, socket, frame("pusher:subscribe", {"channel": channel}))
    assert got == [{"event": "pusher_internal:subscription_succeeded", "channel": channel, "data": "{}"}]
    assert fx.app.channel_info(channel, ["subscription_count"]) == {"occupied": True, "subscription_count": 1}


def test_a_pong_is_no_error_whatever_its_data(fx, sockets):
    """A pong is an answer: nothing comes back, whatever its data (a ping's is not read either)."""
    socket = sockets()
    for data in ("whatever", 5, None, [1]):
        assert answers(fx, socket, json.dumps({"event": "pusher:pong", "data": data})) == [], data


# -- auths: bad, forged, replayed ----------------------------------------------------------------


def test_bad_and_replayed_channel_auths(fx, sockets):
    """Private and presence auths that are not the app's signature of this socket and channel (and
    channel_data): pusher:subscription_error on the channel; the socket stays; the rightful socket
    still gets in with its auth."""
    a, b = sockets(), sockets()
    private, presence = fx.name("private-fuzz"), fx.name("presence-fuzz")
    good = fx.app.authenticate(private, a.socket_id)
    signature = good["auth"].split(":", 1)[1]
    member = fx.app.authenticate(presence, a.socket_id, {"user_id": "a"})

    def sub(channel: str, **data: Any) -> str:
        return frame("pusher:subscribe", {"channel": channel, **data})

    cases = {
        "no auth": sub(private),
        "auth a number": sub(private, auth=5),
        "auth a list": sub(private, auth=[good["auth"]]),
        "auth garbage": sub(private, auth="garbage"),
        "auth key only": sub(private, auth=APP_KEY + ":"),
        "auth zeros": sub(private, auth=APP_KEY + ":" + "0" * 64),
        "auth huge": sub(private, auth=APP_KEY + ":" + "f" * 2500),
        "auth of another key": sub(private, auth="other-key:" + signature),
        "auth upper-case hex": sub(private, auth=APP_KEY + ":" + signature.upper()),
        "replayed: socket a's auth": sub(private, **good),
        "another channel's auth": sub(private, **fx.app.authenticate(fx.name("private-other"), b.socket_id)),
        "private auth with channel_data": sub(private, auth=good["auth"], channel_data=json.dumps({"user_id": "b"})),
        "presence replayed": sub(presence, **member),
        "presence without channel_data": sub(presence, auth=fx.app.authenticate(presence, b.socket_id)["auth"]),
        "presence channel_data changed": sub(presence, **dict(fx.app.authenticate(presence, b.socket_id, {"user_id": "b"}),
                                                             channel_data=json.dumps({"user_id": "root"}))),
        "presence channel_data an object": sub(presence, auth=member["auth"], channel_data={"user_id": "b"}),
    }
    # Signed by the app, but not what a presence member is.
    for name, channel_data in {
        "channel_data over 1 KiB": json.dumps({"user_id": "b", "user_info": {"bio": "x" * 1100}}),
        "channel_data not JSON": "user b",
        "channel_data without user_id": json.dumps({"user_info": {}}),
        "user_id empty": json.dumps({"user_id": ""}),
        "user_id a list": json.dumps({"user_id": ["b"]}),
        "user_id of 129 chars": json.dumps({"user_id": "u" * 129}),
        "channel_data a JSON list": json.dumps(["b"]),
    }.items():
        signed_data = sign(APP_SECRET, f"{b.socket_id}:{presence}:{channel_data}")
        cases[name] = sub(presence, auth=f"{APP_KEY}:{signed_data}", channel_data=channel_data)
    for name, payload in cases.items():
        channel = json.loads(payload)["data"]["channel"]
        got = answers(fx, b, payload)
        assert len(got) == 1 and is_subscription_error(got[0], channel), (name, got)
        assert got[0]["data"]["status"] in (400, 401), (name, got)
    # Refused subscriptions are no subscriptions.
    assert fx.app.channel_info(private) == {"occupied": False}
    assert fx.app.channel_info(presence) == {"occupied": False}
    a.subscribed(private, **good)
    a.subscribed(presence, **member)
    assert fx.app.users_info(presence) == {"users": [{"id": "a"}]}


def test_bad_and_replayed_signins(fx, sockets):
    """pusher:signin with an auth not of this socket and user_data, or user_data that is not a user:
    pusher:error 4009, the socket staying open and not signed in."""
    a, b = sockets(), sockets()
    good = fx.app.authenticate_user(a.socket_id, {"id": "alice"})

    def signin_as(user_data: str, socket_id: str) -> str:
        auth = f"{APP_KEY}:" + sign(APP_SECRET, f"{socket_id}::user::{user_data}")
        return frame("pusher:signin", {"auth": auth, "user_data": user_data})

    cases = {
        "replayed: socket a's signin": frame("pusher:signin", good),
        "user_data changed": frame("pusher:signin", dict(good, user_data=json.dumps({"id": "root"}))),
        "signed with another secret": frame("pusher:signin", library(fx.server, secret="not-the-app-secret")
                                            .authenticate_user(b.socket_id, {"id": "bob"})),
        "user_data not JSON": signin_as("bob", b.socket_id),
        "user_data without id": signin_as(json.dumps({"name": "bob"}), b.socket_id),
        "id a number": signin_as(json.dumps({"id": 5}), b.socket_id),
        "id empty": signin_as(json.dumps({"id": ""}), b.socket_id),
        "user_data over 1 KiB": signin_as(json.dumps({"id": "bob", "pad": "x" * 1100}), b.socket_id),
    }
    for name, payload in cases.items():
        got = answers(fx, b, payload)
        assert len(got) == 1 and is_error(got[0], 4009), (name, got)
    # b is not signed in: alice's messages do not reach it, and a signed-in socket is.
    answer = a.ask({"event": "pusher:signin", "data": good})
    assert answer["event"] == "pusher:signin_success", answer
    fx.app.send_to_user("alice", "for-alice", "1")
    assert a.recv() == {"event": "for-alice", "channel": "#server-to-user-alice", "data": "1"}
    assert answers(fx, b, frame("pusher:ping", {})) == [{"event": "pusher:pong", "data": {}}]
    # A socket signed in as alice cannot become someone else.
    got = answers(fx, a, frame("pusher:signin", fx.app.authenticate_user(a.socket_id, {"id": "mallory"})))
    assert len(got) == 1 and is_error(got[0], 4009), got


def test_client_event_limits(fx, sockets):
    """Client events: over the size limit, with a long name, or past the rate (10 a second):
    pusher:error (4301 for the rate), the socket open; the events within reach the others."""
    a, b = sockets(), sockets()
    channel = fx.name("private-chat")
    for socket in (a, b):
        socket.subscribed(channel, **fx.app.authenticate(channel, socket.socket_id))
    big = json.dumps({"event": "client-big", "channel": channel, "data": "x" * MAX_MESSAGE_BYTES})
    assert len(big) <= FRAME_LIMIT
    got = answers(fx, a, big)
    assert len(got) == 1 and is_error(got[0]), got
    got = answers(fx, a, frame("client-" + "n" * 200, {}, channel=channel))
    assert len(got) == 1 and is_error(got[0]), got
    # A burst past the rate: a second's worth goes (ten, or one more if the
    # rate refilled meanwhile), the others are refused.
    for n in range(15):
        a.send({"event": "client-burst", "channel": channel, "data": {"n": n}})
    got = answers(fx, a, frame("pusher:ping", {}))
    assert [f["event"] for f in got][-1] == "pusher:pong", got
    errors = got[:-1]
    assert all(is_error(f, 4301) for f in errors), got
    delivered = answers(fx, b, frame("pusher:ping", {}))[:-1]
    assert all(f["event"] == "client-burst" and f["channel"] == channel for f in delivered), delivered
    numbers = [f["data"]["n"] for f in delivered]
    assert numbers[:10] == list(range(10)) and numbers == sorted(numbers), numbers
    assert len(delivered) + len(errors) == 15 and 10 <= len(delivered) <= 11, (delivered, errors)


# -- what the WebSocket cannot carry -------------------------------------------------------


def test_websocket_violations_close_that_socket_only(fx, sockets):
    """A message over the WebSocket's limit (1009) or a text message that is not UTF-8 (1007) closes
    that socket, with that code; another socket, and the steady subscriber, go on."""
    bystander = sockets()
    big, bad = sockets(), sockets()
    big.send(json.dumps({"event": "pusher:ping", "data": "x" * (4 * NATIVE_MAX + 1)}))
    frames, code = big.closed()
    assert code == 1009, (frames, code)
    bad.ws.send(b'{"event": "pusher:ping", "data": "\xff"}', text=True)
    frames, code = bad.closed()
    assert code == 1007, (frames, code)
    assert answers(fx, bystander, frame("pusher:ping", {})) == [{"event": "pusher:pong", "data": {}}]


@pytest.mark.parametrize("key, query, code", [
    ("no-such-key", "protocol=7&client=js&version=8.6.0", 4001),
    (APP_KEY, "client=js&version=8.6.0", 4008),
    (APP_KEY, "protocol=8&client=js", 4007),
    (APP_KEY, "protocol=4&client=js", 4007),
    (APP_KEY, "protocol=seven&client=js", 4006),
    (APP_KEY, "protocol=&client=js", 4008),  # an empty version is none supplied
    (APP_KEY, "protocol=%EF%BC%97", 4006),  # a full-width 7
])
def test_refused_connections(fx, key, query, code):
    """A socket chloed will not serve: pusher:error with Pusher's code, then closed with it."""
    socket = PusherSocket(fx.server, key=key, query=query, established=False)
    try:
        frames, closed_with = socket.closed()
        assert closed_with == code, (frames, closed_with)
        assert len(frames) == 1 and is_error(frames[0], code), frames
    finally:
        socket.close()


def test_app_without_a_key_is_404(fx):
    with pytest.raises(InvalidStatus) as raised:
        PusherSocket(fx.server, key="")
    assert raised.value.response.status_code == 404


# -- the HTTP API -----------------------------------------------------------------------


def event_body(**fields: Any) -> dict[str, Any]:
    body = {"name": "intruder", "channels": [STEADY], "data": "INTRUDER"}
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


def raw_request(fx: Fixture, method: str, path: str, body: bytes, query: dict[str, str],
                sign_with: str | None = APP_SECRET) -> tuple[int, bytes]:
    """A request with this exact body and query (signed over them, unless
    ``sign_with`` is None)."""
    query = dict(query)
    if sign_with is not None:
        query["auth_signature"] = sign(sign_with, "\n".join([method, path, make_query_string(query)]))
    url = f"{fx.server.url}{path}?{make_query_string(query)}"
    return _send(url, method, body)


def _send(url: str, method: str, body: bytes | None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body if method == "POST" else None, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def base_query(body: bytes, **changes: str | None) -> dict[str, str]:
    query = {
        "auth_key": APP_KEY, "auth_timestamp": str(int(time.time())), "auth_version": "1.0",
        "body_md5": hashlib.md5(body).hexdigest(),
    }
    query.update(changes)  # type: ignore[arg-type]
    return {k: v for k, v in query.items() if v is not None}


def body_cases() -> dict[str, tuple[Any, int, str]]:
    """Bodies of POST /events, well signed: (body, status, what the answer says)."""
    return {
        "not JSON": (b"{name: intruder}", 400, "json"),
        "empty": (b"", 400, "json"),
        "a list": ([event_body()], 400, "object"),
        "a string": ("intruder", 400, "object"),
        "no name": (event_body(name=None), 400, "name"),
        "name a number": (event_body(name=5), 400, "name"),
        "name empty": (event_body(name=""), 400, "name"),
        "name of 201 chars": (event_body(name="n" * 201), 400, "name"),
        "pusher_internal: name": (event_body(name="pusher_internal:member_added"), 400, "pusher_internal"),
        "no data": (event_body(data=None), 400, "data"),
        "data an object": (event_body(data={"a": 1}), 400, "data"),
        "data a number": (event_body(data=5), 400, "data"),
        "no channel": (event_body(channels=None), 400, "channel"),
        "channels empty": (event_body(channels=[]), 400, "channels"),
        "channels a string": (event_body(channels=STEADY), 400, "channels"),
        "101 channels": (event_body(channels=[STEADY] + [f"c{n}" for n in range(100)]), 400, "too many channels"),
        "a bad channel among good ones": (event_body(channels=[STEADY, "bad name"]), 400, "channel"),
        "a channel a number": (event_body(channels=[STEADY, 5]), 400, "channel"),
        "a channel of 201 chars": (event_body(channels=[STEADY, "c" * 201]), 400, "channel"),
        "encrypted among several": (event_body(channels=[STEADY, "private-encrypted-x"]), 400, "encrypted"),
        "socket_id not one": (event_body(socket_id="abc"), 400, "socket_id"),
        "socket_id a number": (event_body(socket_id=5), 400, "socket_id"),
        "info unknown": (event_body(info="everything"), 400, "info"),
        "info user_count off presence": (event_body(info="user_count"), 400, "user_count"),
        "data over max_message_bytes": (event_body(data="x" * (MAX_MESSAGE_BYTES + 1)), 413, "too large"),
        "data over max_message_bytes in UTF-8": (event_body(data="\u00e9" * (MAX_MESSAGE_BYTES // 2 + 1)), 413, "too large"),
    }


@pytest.mark.parametrize("case", list(body_cases()))
def test_bad_event_bodies(fx, case):
    """Each bad body of POST /events, correctly signed: Pusher's status and why; nothing reaches
    the steady channel (each names it)."""
    body, status, says = body_cases()[case]
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    got, answer = raw_request(fx, "POST", EVENTS, raw, base_query(raw))
    assert got == status and says in answer.decode("utf-8", "replace").lower(), (got, answer)


def test_bad_batches(fx):
    """Batches with one bad item publish nothing (the good ones name the steady channel)."""
    good = {"channel": STEADY, "name": "intruder", "data": "INTRUDER"}
    for batch, says in (
        ({"batch": [good, dict(good, channel="bad name")]}, "channel"),
        ({"batch": [good, dict(good, data="x" * (MAX_MESSAGE_BYTES + 1))]}, "too large"),
        ({"batch": [good, dict(good, name="")]}, "name"),
        ({"batch": [good, "not an event"]}, "object"),
        ({"batch": []}, "batch"),
        ({"batch": good}, "batch"),
        ({"events": [good]}, "batch"),
        ([good], "batch"),
        ({"batch": [{"name": "intruder", "data": "INTRUDER", "channels": [STEADY]}]}, "channel"),  # one channel an item
    ):
        raw = json.dumps(batch).encode()
        got, answer = raw_request(fx, "POST", BATCH, raw, base_query(raw))
        assert got in (400, 413) and says in answer.decode().lower(), (batch, got, answer)


def test_bad_signatures_and_stale_timestamps(fx):
    """A well-formed event with bad authentication: 401 and why, nothing published."""
    raw = json.dumps(event_body()).encode()
    now = int(time.time())
    cases = {
        "bad body_md5": (base_query(raw, body_md5="0" * 32), APP_SECRET, "body_md5"),
        "body_md5 of another body": (base_query(raw, body_md5=hashlib.md5(b"{}").hexdigest()), APP_SECRET, "body_md5"),
        "no body_md5": (base_query(raw, body_md5=None), APP_SECRET, "body_md5"),
        "stale timestamp": (base_query(raw, auth_timestamp=str(now - 601)), APP_SECRET, "timestamp"),
        "a day old": (base_query(raw, auth_timestamp=str(now - 86400)), APP_SECRET, "timestamp"),
        "future timestamp": (base_query(raw, auth_timestamp=str(now + 601)), APP_SECRET, "timestamp"),
        "timestamp in ms": (base_query(raw, auth_timestamp=str(now * 1000)), APP_SECRET, "timestamp"),
        "timestamp not a number": (base_query(raw, auth_timestamp="yesterday"), APP_SECRET, "timestamp"),
        "timestamp negative": (base_query(raw, auth_timestamp="-5"), APP_SECRET, "timestamp"),
        "no timestamp": (base_query(raw, auth_timestamp=None), APP_SECRET, "timestamp"),
        "auth_version 2.0": (base_query(raw, auth_version="2.0"), APP_SECRET, "auth_version"),
        "no auth_version": (base_query(raw, auth_version=None), APP_SECRET, "auth_version"),
        "wrong auth_key": (base_query(raw, auth_key="no-such-key"), APP_SECRET, "auth_key"),
        "no auth_key": (base_query(raw, auth_key=None), APP_SECRET, "auth_key"),
        "signed with another secret": (base_query(raw), "not-the-app-secret", "signature"),
        "not signed": (base_query(raw), None, "signature"),
    }
    for name, (query, secret, says) in cases.items():
        got, answer = raw_request(fx, "POST", EVENTS, raw, query, sign_with=secret)
        assert got == 401 and says in answer.decode().lower(), (name, got, answer)
    # A signature over another path, or method, or with a parameter added after signing.
    query = base_query(raw)
    query["auth_signature"] = sign(APP_SECRET, "\n".join(["POST", BATCH, make_query_string(query)]))
    assert _send(f"{fx.server.url}{EVENTS}?{make_query_string(query)}", "POST", raw)[0] == 401
    query = base_query(raw)
    query["auth_signature"] = sign(APP_SECRET, "\n".join(["GET", EVENTS, make_query_string(query)]))
    assert _send(f"{fx.server.url}{EVENTS}?{make_query_string(query)}", "POST", raw)[0] == 401
    query = base_query(raw)
    query["auth_signature"] = sign(APP_SECRET, "\n".join(["POST", EVENTS, make_query_string(query)]))
    assert _send(f"{fx.server.url}{EVENTS}?{make_query_string(query)}&info=subscription_count", "POST", raw)[0] == 401
    # The same parameter twice.
    query = base_query(raw)
    query["auth_signature"] = sign(APP_SECRET, "\n".join(["POST", EVENTS, make_query_string(query)]))
    got, answer = _send(f"{fx.server.url}{EVENTS}?{make_query_string(query)}&auth_key={APP_KEY}", "POST", raw)
    assert got in (400, 401) and answer.strip(), (got, answer)


def test_routes_and_methods(fx):
    """Unknown apps and routes are 404, a wrong method 405, each with a reason."""
    client = api_client(fx.server)
    for request, status in (
        (signed(client, "POST", "/apps/999/events", event_body()), 404),
        (signed(client, "POST", f"/apps/{APP_ID}/nothing-here", event_body()), 404),
        (signed(client, "GET", f"/apps/{APP_ID}/channels/a/b/c"), 404),
        (signed(client, "GET", EVENTS), 405),
        (signed(client, "POST", f"/apps/{APP_ID}/channels", {}), 405),
        (signed(client, "GET", f"/apps/{APP_ID}/channels/{'c' * 201}"), 400),
        (signed(client, "GET", f"/apps/{APP_ID}/channels/{STEADY}/users"), 400),
    ):
        got, answer = send(request)
        assert got == status and answer.strip(), (request.path, got, answer)
    # The body guard, before any of it: a body declared over what chloed
    # reads at all is answered at once (the head alone is sent).
    query = base_query(b"x")
    head = (f"POST {EVENTS}?{make_query_string(query)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {64 * 1024 * 1024}\r\n\r\n")
    with tcp.create_connection(("127.0.0.1", fx.server.port), timeout=TIMEOUT) as conn:
        conn.sendall(head.encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = conn.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]


# -- generated frames and bodies -------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
EVENT_NAMES = st.sampled_from([
    "pusher:subscribe", "pusher:unsubscribe", "pusher:signin", "pusher:ping", "pusher:pong", "pusher:bogus",
    "client-x", "pusher_internal:subscription_succeeded",
]) | st.text(max_size=30)
CHANNELS = st.sampled_from(["public", "private-x", "presence-x", "cache-x", "private-encrypted-x", "#server-to-user-x",
                            "", "bad name"]) | st.text(max_size=30)
DATA = JSON | st.fixed_dictionaries(
    {"channel": CHANNELS}, optional={"auth": st.text(max_size=80) | JSON, "channel_data": st.text(max_size=80) | JSON,
                                     "user_data": st.text(max_size=80)}
)
FRAMES = (
    JSON.map(json.dumps)
    | st.fixed_dictionaries({"event": EVENT_NAMES}, optional={"data": DATA | DATA.map(json.dumps), "channel": CHANNELS})
    .map(json.dumps)
    | st.text(max_size=60)
)
def generated_socket(sockets: Any) -> PusherSocket:
    """One socket for all of a test's examples (the fixture's value is the
    same across them)."""
    if not hasattr(sockets, "socket"):
        sockets.socket = sockets()
    return sockets.socket


#: What a socket may get back for a frame of its own.
ANSWERS = {"pusher:error", "pusher:subscription_error", "pusher_internal:subscription_succeeded", "pusher:cache_miss",
           "pusher:pong"}


@FUZZ
@given(payload=FRAMES)
def test_generated_frames(fx, sockets, payload):
    """Any frame: answered with a refusal, a pong or a subscription (and the cache's), never
    closed; a frame the server cannot take is refused."""
    got = answers(fx, generated_socket(sockets), payload)
    assert len(got) <= 2 and all(f.get("event") in ANSWERS for f in got), (payload, got)
    for f in got:
        if f["event"] == "pusher:error":
            assert is_error(f), f
        if f["event"] == "pusher:subscription_error":
            assert is_subscription_error(f), f
    try:
        parsed = json.loads(payload)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("event"), str):
        assert len(got) == 1 and is_error(got[0]), (payload, got)


EVENT_BODIES = st.fixed_dictionaries({}, optional={
    "name": st.text(max_size=12) | JSON,
    "data": st.text(max_size=40) | JSON,
    "channel": CHANNELS | JSON,
    "channels": st.lists(CHANNELS, max_size=4) | JSON,
    "socket_id": st.sampled_from(["1.2", "abc", ""]) | JSON,
    "info": st.sampled_from(["subscription_count", "user_count", "x", ""]) | JSON,
}) | JSON


@FUZZ
@given(body=EVENT_BODIES)
def test_generated_event_bodies(fx, body):
    """Any JSON body of POST /events, well signed: 200 with a JSON object, or 400 / 413 with a reason;
    never a 5xx."""
    raw = json.dumps(body).encode()
    got, answer = raw_request(fx, "POST", EVENTS, raw, base_query(raw))
    if got == 200:
        assert isinstance(json.loads(answer), dict), answer
    else:
        assert got in (400, 413) and answer.strip(), (body, got, answer)


@FUZZ
@given(param=st.sampled_from(["auth_key", "auth_timestamp", "auth_version", "body_md5", "auth_signature"]),
       value=st.text(max_size=40))
def test_generated_auth_parameters(fx, param, value):
    """Any value of one auth parameter (signed over, but for auth_signature): refused with 401
    (or 400 for a query chloed cannot read), unless it is the right value."""
    raw = json.dumps(event_body(channels=["fuzz-sink"])).encode()
    query = base_query(raw)
    right = query.get(param)
    if param == "auth_signature":
        query[param] = value
        got, answer = _send(f"{fx.server.url}{EVENTS}?{urllib.parse.urlencode(query)}", "POST", raw)
    else:
        query[param] = value
        query["auth_signature"] = sign(APP_SECRET, "\n".join(["POST", EVENTS, make_query_string(query)]))
        got, answer = _send(f"{fx.server.url}{EVENTS}?{urllib.parse.urlencode(query)}", "POST", raw)
    if value == right or (param == "auth_timestamp" and value.strip().isdigit() and value.isascii()
                          and abs(int(value) - time.time()) < 590):
        return  # (what was right cannot be told apart from a publish; the steady check would see it)
    assert got in (400, 401) and answer.strip(), (param, value, got, answer)


# -- the end ------------------------------------------------------------------------------


def test_the_steady_subscriber_got_every_event_in_order(fx):
    """Last: the publisher stops; the subscriber got every event it sent, in order, nothing else,
    on the one socket, open all along."""
    fx.steady.wait_published(100)  # a series worth the name, even when run alone
    total = fx.steady.stop()
    assert total >= 100 and fx.steady.errors == []
    seen = fx.listener.wait_for(total)
    assert seen == [("tick", str(n)) for n in range(total)]
    assert fx.listener.others == [] and fx.listener.ended is None
