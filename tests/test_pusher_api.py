"""Unit tests of chloed.pusher.api: Pusher's HTTP API (``/apps/{id}/...``,
``/users/...``) on the whole site (tests/site_harness.py: a twisted.web
site on a StringTransport and a MemoryReactorClock), its requests signed
here with hmac as the Pusher server libraries sign them."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from twisted.internet import defer

from chloed.backends.base import BackendUnavailable
from chloed.pusher import apps, names, wire
from chloed.pusher.protocol import PusherProtocol
from tests.site_harness import SiteHarness
from tests.test_pusher_protocol import APP_ID, KEY, SECRET, Client, PusherSink, app_entry, mac

NOW = 1_700_000_000
OTHER_ID, OTHER_KEY, OTHER_SECRET = "7", "other-key", "other-secret"

Answer = tuple[int, dict[bytes, bytes], bytes]


def pusher_config(*entries: dict[str, Any], **options: Any) -> apps.PusherConfig:
    found = apps.parse("pusher", {"apps": list(entries) or [
        app_entry(), app_entry(id=OTHER_ID, key=OTHER_KEY, secret=OTHER_SECRET),
    ], **options})
    assert found is not None
    return found


def signed_query(method: str, path: str, body: bytes = b"", *, key: str = KEY, secret: str = SECRET,
                 timestamp: int | str = NOW, **params: str) -> dict[str, str]:
    """The query a Pusher library sends: auth_key, auth_timestamp,
    auth_version, body_md5 (with a body), the other parameters, and
    auth_signature: HMAC-SHA256 of "METHOD\\npath\\nk=v&..." sorted, unescaped."""
    query = {"auth_key": key, "auth_timestamp": str(timestamp), "auth_version": "1.0", **params}
    if body:
        query["body_md5"] = hashlib.md5(body).hexdigest()
    text = "&".join(f"{k}={v}" for k, v in sorted(query.items()))
    query["auth_signature"] = hmac.new(secret.encode(), f"{method}\n{path}\n{text}".encode(), hashlib.sha256).hexdigest()
    return query


def http(method: str, path: str, query: dict[str, str] | str | None = None, body: bytes = b"") -> bytes:
    target = path
    if query:
        target += "?" + (query if isinstance(query, str) else urlencode(query))
    head = f"{method} {target} HTTP/1.1\r\nHost: x\r\n"
    if body or method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


class Api:
    """The site of a chloed serving two Pusher apps, its clock at NOW."""

    def __init__(self, config: apps.PusherConfig | None = None, **options: Any) -> None:
        self.site = SiteHarness(pusher=config or pusher_config(), **options)
        self.site.reactor.advance(NOW)
        # (A connection made before the clock moved would be past its
        # request deadline: a fresh one.)
        self.site.connect()
        pusher = self.site.hub.pusher
        assert isinstance(pusher, PusherProtocol)
        self.pusher = pusher

    def ask(self, method: str, path: str, body: bytes = b"", **params: Any) -> Answer:
        """A request signed as the test app's library signs it; its answer."""
        return self.send(http(method, path, signed_query(method, path, body, **params), body))

    def send(self, request: bytes) -> Answer:
        [answer] = self.site.feed(request)
        return answer

    def post(self, path: str, value: Any, **params: Any) -> Answer:
        return self.ask("POST", path, json.dumps(value).encode(), **params)

    def trigger(self, value: Any, app_id: str = APP_ID, **params: Any) -> Answer:
        return self.post(f"/apps/{app_id}/events", value, **params)

    def connect(self, key: str = KEY) -> Client:
        """A Pusher socket's session on the site's hub."""
        app = self.pusher.config.by_key(key)
        assert app is not None
        sink = PusherSink()
        # (Any: Client reads only .pusher and .auth of what it is given.)
        harness: Any = self
        return Client(harness, app, self.pusher.opened(app, sink), sink)

    def auth(self, client: Client, channel: str, channel_data: str | None = None) -> str:
        text = f"{client.id}:{channel}" if channel_data is None else f"{client.id}:{channel}:{channel_data}"
        return f"{client.app.key}:{mac(client.app.secret, text)}"


def ok(answer: Answer) -> Any:
    status, headers, body = answer
    assert status == 200, answer
    assert headers[b"content-type"] == b"application/json"
    return json.loads(body)


def refused(answer: Answer, status: int) -> str:
    """The refusal's line of text (Pusher's: a status and a message)."""
    assert answer[0] == status, answer
    assert answer[1][b"content-type"] == b"text/plain; charset=utf-8"
    assert answer[2].endswith(b"\n")
    return answer[2].decode("utf-8").rstrip("\n")


@pytest.fixture
def api() -> Api:
    return Api()


EVENT = {"name": "breaking", "channel": "news", "data": '{"h":1}'}


# -- POST /events -----------------------------------------------------------------


def test_an_event_reaches_the_channels_sockets(api: Api) -> None:
    a, b = api.connect(), api.connect()
    a.subscribe("news")
    a.new(), b.new()
    answer = ok(api.trigger(EVENT))
    assert answer["delivered"] == 1 and answer["queued"] == 0 and list(answer["ids"]) == ["news"]
    assert a.new() == [{"event": "breaking", "channel": "news", "data": '{"h":1}'}]
    assert b.new() == []


def test_a_whole_publish_is_answered_on_the_lean_path_as_twisted_web_answers_it(api: Api) -> None:
    """Whole in the buffer, ``POST /apps/{id}/events`` is answered from it
    (chloed.transports._lean: no Server header); cut in two, by
    twisted.web: the same status, type and receipt either way."""
    a = api.connect()
    a.subscribe("news")
    a.new()
    path = f"/apps/{APP_ID}/events"
    body = json.dumps(EVENT).encode()
    request = http("POST", path, signed_query("POST", path, body), body)
    lean = api.send(request)
    api.site.feed(request[:20])
    [web] = api.site.feed(request[20:])
    assert b"server" not in lean[1] and b"server" in web[1]
    assert ok(lean).keys() == ok(web).keys() == {"ids", "delivered", "queued"}
    assert [f["event"] for f in a.new()] == ["breaking", "breaking"]


def test_pipelined_publishes_are_answered_in_order_in_one_read(api: Api) -> None:
    """Several publishes in one read (an app's keep-alive connection) are
    all answered, in order, and their events reach the socket in order."""
    a = api.connect()
    a.subscribe("news")
    a.new()
    path = f"/apps/{APP_ID}/events"
    wire_ = b""
    for n in range(3):
        body = json.dumps({**EVENT, "data": str(n)}).encode()
        wire_ += http("POST", path, signed_query("POST", path, body), body)
    answers = api.site.feed(wire_)
    assert [status for status, _, _ in answers] == [200, 200, 200]
    ids = [json.loads(body)["ids"]["news"] for _, _, body in answers]
    assert ids == sorted(ids, key=lambda i: int(i.split("-")[1]))
    assert [f["data"] for f in a.new()] == ["0", "1", "2"]


def test_a_refusal_on_the_lean_path_is_the_apis(api: Api) -> None:
    path = f"/apps/{APP_ID}/events"
    body = json.dumps(EVENT).encode()
    query = signed_query("POST", path, body)
    query["auth_signature"] = "0" * 64
    answer = api.send(http("POST", path, query, body))
    assert b"server" not in answer[1]
    assert refused(answer, 401).startswith("Invalid signature")


def test_an_event_to_several_channels(api: Api) -> None:
    clients = {c: api.connect() for c in ("a", "b", "c")}
    for channel, client in clients.items():
        client.subscribe(channel)
        client.new()
    answer = ok(api.trigger({"name": "e", "channels": ["a", "b", "a"], "data": "x"}))
    assert list(answer["ids"]) == ["a", "b"] and answer["delivered"] == 2
    assert [len(clients[c].new()) for c in "abc"] == [1, 1, 0]


def test_an_event_can_leave_the_socket_that_caused_it_out(api: Api) -> None:
    a, b = api.connect(), api.connect()
    for client in (a, b):
        client.subscribe("news")
        client.new()
    ok(api.trigger({**EVENT, "socket_id": a.id}))
    assert a.new() == [] and len(b.new()) == 1


def test_an_event_asks_for_channel_info(api: Api) -> None:
    a, b = api.connect(), api.connect()
    a.join("presence-room", "ann")
    b.join("presence-room", "ann")
    answer = ok(api.trigger({"name": "e", "channels": ["presence-room", "presence-empty"], "data": "x",
                             "info": "subscription_count,user_count"}))
    assert answer["channels"] == {
        "presence-room": {"subscription_count": 2, "user_count": 1},
        "presence-empty": {"subscription_count": 0, "user_count": 0},
    }


def test_an_app_reaches_its_own_channels_only(api: Api) -> None:
    mine, theirs = api.connect(), api.connect(OTHER_KEY)
    for client in (mine, theirs):
        client.subscribe("news")
        client.new()
    ok(api.trigger(EVENT, app_id=OTHER_ID, key=OTHER_KEY, secret=OTHER_SECRET))
    assert mine.new() == [] and len(theirs.new()) == 1


def test_the_api_and_a_socket_meet_on_the_same_name_only_within_one_app(api: Api) -> None:
    """Chloe's own /send cannot reach an app's channel (its namespace)."""
    client = api.connect()
    client.subscribe("news")
    client.new()
    api.site.hub.broker.publish(["news"], b'"native"')
    assert client.new() == []


@pytest.mark.parametrize("event, message", [
    ([], "An event is a JSON object"),
    ({"channel": "news", "data": "x"}, "name must be a string of 1 to 200 characters"),
    ({**EVENT, "name": ""}, "name must be a string of 1 to 200 characters"),
    ({**EVENT, "name": "x" * 201}, "name must be a string of 1 to 200 characters"),
    ({**EVENT, "name": 5}, "name must be a string of 1 to 200 characters"),
    ({**EVENT, "name": "pusher_internal:member_added"}, "pusher_internal: events are the server's own"),
    ({**EVENT, "name": "pusher_internal:terminate"}, "pusher_internal: events are the server's own"),
    ({**EVENT, "data": {"h": 1}}, "data must be a string (JSON-encode objects first)"),
    ({"name": "e", "channel": "news"}, "data must be a string (JSON-encode objects first)"),
    ({"name": "e", "data": "x"}, "An event needs channel or channels"),
    ({"name": "e", "channels": [], "data": "x"}, "channels must be a non-empty list"),
    ({"name": "e", "channels": "news", "data": "x"}, "channels must be a non-empty list"),
    ({"name": "e", "channels": [f"c{i}" for i in range(101)], "data": "x"}, "Too many channels: at most 100 per event"),
    ({**EVENT, "channel": "no spaces"}, "Invalid channel name 'no spaces'"),
    ({**EVENT, "channel": 5}, "Invalid channel name '5'"),
    ({"name": "e", "channels": ["private-encrypted-a", "b"], "data": "x"},
     "You cannot trigger to multiple channels when using encrypted channels"),
    ({**EVENT, "socket_id": "1234"}, "Invalid socket_id"),
    ({**EVENT, "socket_id": 1234.5}, "Invalid socket_id"),
    ({**EVENT, "info": ["subscription_count"]}, "info must be a comma-separated string"),
    ({**EVENT, "info": "members"}, "Unknown info attribute members"),
    ({**EVENT, "info": "user_count"}, "user_count is only for presence channels"),
])
def test_a_bad_event_is_refused_400_with_why(api: Api, event: Any, message: str) -> None:
    client = api.connect()
    client.subscribe("news")
    client.new()
    assert refused(api.trigger(event), 400) == message
    assert client.new() == []


def test_a_body_that_is_not_json_is_400(api: Api) -> None:
    for body in (b"{not json", b"\xff", b"[1e400]"):
        assert refused(api.ask("POST", f"/apps/{APP_ID}/events", body), 400) == "The body is not JSON"


def test_data_over_max_message_bytes_is_413(api: Api) -> None:
    assert ok(api.trigger({**EVENT, "data": "x" * 10240}))
    message = refused(api.trigger({**EVENT, "data": "x" * 10241}), 413)
    assert message == "Payload too large: data is limited to 10240 bytes"
    # Bytes, not characters.
    refused(api.trigger({**EVENT, "data": "é" * 5121}), 413)


def test_the_limit_is_the_apps() -> None:
    api = Api(pusher_config(app_entry(max_message_bytes=100)))
    assert ok(api.trigger({**EVENT, "data": "x" * 100}))
    refused(api.trigger({**EVENT, "data": "x" * 101}), 413)


def test_the_backend_away_is_503(api: Api) -> None:
    def unavailable(*args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        return defer.fail(BackendUnavailable("Redis is down"))

    api.site.hub.broker.publish = unavailable  # type: ignore[method-assign]
    message = refused(api.trigger(EVENT), 503)
    assert message == "The backend cannot take it now: Redis is down"


def test_send_to_user_is_an_event_on_the_users_channel(api: Api) -> None:
    """The libraries' send_to_user: /events to ``#server-to-user-<id>``,
    which the user's signed-in sockets get, subscribed to it or not."""
    ann, bob = api.connect(), api.connect()
    ann.signin({"id": "ann"})
    bob.signin({"id": "bob"})
    ann.new(), bob.new()
    ok(api.trigger({"name": "note", "channel": "#server-to-user-ann", "data": "hi"}))
    assert ann.new() == [{"event": "note", "channel": "#server-to-user-ann", "data": "hi"}]
    assert bob.new() == []


# -- POST /batch_events ----------------------------------------------------------------


def test_a_batch_publishes_each_event_in_order(api: Api) -> None:
    a = api.connect()
    a.subscribe("a")
    a.subscribe("private-b")
    a.new()
    batch = {"batch": [
        {"name": "one", "channel": "a", "data": "1"},
        {"name": "two", "channel": "private-b", "data": "2"},
        {"name": "three", "channel": "a", "data": "3", "socket_id": a.id},
    ]}
    answer = ok(api.post(f"/apps/{APP_ID}/batch_events", batch))
    assert [list(r["ids"]) for r in answer["results"]] == [["a"], ["private-b"], ["a"]]
    assert "batch" not in answer
    assert [(f["event"], f["channel"]) for f in a.new()] == [("one", "a"), ("two", "private-b")]


def test_a_batch_with_info_answers_pushers_batch_list(api: Api) -> None:
    client = api.connect()
    client.join("presence-room", "ann")
    batch = {"batch": [
        {"name": "one", "channel": "presence-room", "data": "1", "info": "user_count,subscription_count"},
        {"name": "two", "channel": "news", "data": "2"},
    ]}
    answer = ok(api.post(f"/apps/{APP_ID}/batch_events", batch))
    assert answer["batch"] == [{"user_count": 1, "subscription_count": 1}, {}]


@pytest.mark.parametrize("batch, message", [
    ({"batch": []}, "batch must be a non-empty list of events"),
    ({"events": [EVENT]}, "batch must be a non-empty list of events"),
    ([EVENT], "batch must be a non-empty list of events"),
    ({"batch": [{"name": "e", "channels": ["a", "b"], "data": "x"}]}, "An event needs channel"),
    ({"batch": [EVENT, {**EVENT, "name": ""}]}, "name must be a string of 1 to 200 characters"),
])
def test_a_bad_batch_is_refused_whole(api: Api, batch: Any, message: str) -> None:
    """One bad event refuses the batch, and nothing of it is published."""
    client = api.connect()
    client.subscribe("news")
    client.new()
    assert refused(api.post(f"/apps/{APP_ID}/batch_events", batch), 400) == message
    assert client.new() == []


def test_a_batch_is_limited_to_send_batch_items() -> None:
    api = Api(send_batch_items=2)
    assert ok(api.post(f"/apps/{APP_ID}/batch_events", {"batch": [EVENT, EVENT]}))
    message = refused(api.post(f"/apps/{APP_ID}/batch_events", {"batch": [EVENT] * 3}), 400)
    assert message == "Batch too large: at most 2 events"


# -- GET /channels, /channels/{name}, /channels/{name}/users --------------------------------


def test_channels_lists_the_occupied_channels_of_the_app(api: Api) -> None:
    a, b, other = api.connect(), api.connect(), api.connect(OTHER_KEY)
    a.subscribe("news")
    a.subscribe("presence-room", channel_data=json.dumps({"user_id": "ann"}))
    b.subscribe("sport")
    b.unsubscribe("sport")
    b.signin({"id": "bob"})
    other.subscribe("theirs")
    api.site.hub.broker.publish([names.backend(APP_ID, "history-only")], wire.message_data("e", "x"))
    assert ok(api.ask("GET", f"/apps/{APP_ID}/channels")) == {"channels": {"news": {}, "presence-room": {}}}


def test_channels_filtered_by_prefix_with_user_count(api: Api) -> None:
    a, b = api.connect(), api.connect()
    a.join("presence-one", "ann")
    b.join("presence-one", "bob")
    b.join("presence-two", "bob")
    a.subscribe("private-x")
    assert ok(api.ask("GET", f"/apps/{APP_ID}/channels", filter_by_prefix="presence-", info="user_count")) == {
        "channels": {"presence-one": {"user_count": 2}, "presence-two": {"user_count": 1}},
    }
    assert ok(api.ask("GET", f"/apps/{APP_ID}/channels", filter_by_prefix="private-")) == {
        "channels": {"private-x": {}},
    }


@pytest.mark.parametrize("params, message", [
    ({"info": "user_count"}, "info=user_count needs filter_by_prefix=presence-"),
    ({"info": "user_count", "filter_by_prefix": "private-"}, "info=user_count needs filter_by_prefix=presence-"),
    ({"info": "subscription_count"}, "Unknown info attribute subscription_count (only user_count)"),
])
def test_channels_with_info_it_cannot_give_is_400(api: Api, params: dict[str, str], message: str) -> None:
    assert refused(api.ask("GET", f"/apps/{APP_ID}/channels", b"", **params), 400) == message


def test_a_channel_says_whether_it_is_occupied(api: Api) -> None:
    client = api.connect()
    assert ok(api.ask("GET", f"/apps/{APP_ID}/channels/news")) == {"occupied": False}
    client.subscribe("news")
    assert ok(api.ask("GET", f"/apps/{APP_ID}/channels/news", info="subscription_count")) == {
        "occupied": True, "subscription_count": 1,
    }


def test_a_presence_channel_says_its_user_count(api: Api) -> None:
    a, b = api.connect(), api.connect()
    a.join("presence-room", "ann")
    b.join("presence-room", "ann")
    assert ok(api.ask("GET", f"/apps/{APP_ID}/channels/presence-room", info="user_count,subscription_count")) == {
        "occupied": True, "user_count": 1, "subscription_count": 2,
    }


def test_a_channel_name_with_escaped_characters_in_the_path(api: Api) -> None:
    """``,`` ``@`` ``;`` ``=`` as a library sends them, percent-encoded; the
    signature is of the path unescaped."""
    client = api.connect()
    channel = "a,b@c;d=e"
    client.subscribe(channel)
    path = f"/apps/{APP_ID}/channels/{channel}"
    request = http("GET", f"/apps/{APP_ID}/channels/{quote(channel, safe='')}", signed_query("GET", path))
    assert ok(api.send(request)) == {"occupied": True}


@pytest.mark.parametrize("path, message", [
    (f"/apps/{APP_ID}/channels/no%20spaces", "Invalid channel name"),
    (f"/apps/{APP_ID}/channels/" + "x" * 201, "Invalid channel name"),
    (f"/apps/{APP_ID}/channels/news/users", "Users are listed for presence channels only"),
    (f"/apps/{APP_ID}/channels/private-room/users", "Users are listed for presence channels only"),
])
def test_bad_channels_are_400(api: Api, path: str, message: str) -> None:
    from urllib.parse import unquote

    signed = signed_query("GET", unquote(path))
    assert refused(api.send(http("GET", path, signed)), 400) == message


def test_user_count_of_a_channel_that_is_no_presence_channel_is_400(api: Api) -> None:
    message = refused(api.ask("GET", f"/apps/{APP_ID}/channels/news", info="user_count"), 400)
    assert message == "user_count is only for presence channels"


def test_users_lists_a_presence_channels_members(api: Api) -> None:
    a, b, c = api.connect(), api.connect(), api.connect()
    a.join("presence-room", "ann", {"name": "Ann"})
    b.join("presence-room", 10)
    c.join("presence-room", "ann")
    assert ok(api.ask("GET", f"/apps/{APP_ID}/channels/presence-room/users")) == {
        "users": [{"id": "ann"}, {"id": "10"}],
    }
    assert ok(api.ask("GET", f"/apps/{APP_ID}/channels/presence-empty/users")) == {"users": []}


# -- POST /users/{id}/terminate_connections -------------------------------------------------


@pytest.mark.parametrize("prefix", [f"/apps/{APP_ID}", ""])
def test_terminate_connections_ends_the_users_sockets(api: Api, prefix: str) -> None:
    """Under /apps/{id}, or (the Python library's path) /users/... with the
    app known by auth_key."""
    ann1, ann2, bob = api.connect(), api.connect(), api.connect()
    for client, user in ((ann1, "ann"), (ann2, "ann"), (bob, "bob")):
        client.signin({"id": user})
    assert ok(api.post(f"{prefix}/users/ann/terminate_connections", {})) == {}
    assert ann1.sink.terminated and ann2.sink.terminated and not bob.sink.terminated


def test_terminate_connections_of_another_apps_user_reaches_nobody_here(api: Api) -> None:
    client = api.connect()
    client.signin({"id": "ann"})
    ok(api.post("/users/ann/terminate_connections", {}, key=OTHER_KEY, secret=OTHER_SECRET))
    assert not client.sink.terminated


def test_terminate_connections_by_an_unknown_key_is_401(api: Api) -> None:
    assert refused(api.post("/users/ann/terminate_connections", {}, key="nobody"), 401) == "Unknown auth_key"


def test_terminate_connections_of_a_too_long_user_id_is_400(api: Api) -> None:
    assert refused(api.post(f"/apps/{APP_ID}/users/{'x' * 129}/terminate_connections", {}), 400) == "Invalid user id"


# -- authentication ------------------------------------------------------------------------


def path_of(method: str) -> str:
    return f"/apps/{APP_ID}/events" if method == "POST" else f"/apps/{APP_ID}/channels"


def test_the_timestamp_may_be_off_by_the_window_either_way(api: Api) -> None:
    for stamp in (NOW - 600, NOW + 600):
        assert ok(api.trigger(EVENT, timestamp=stamp))


@pytest.mark.parametrize("stamp", [NOW - 601, NOW + 601, 0])
def test_a_timestamp_outside_the_window_is_401(api: Api, stamp: int) -> None:
    message = refused(api.trigger(EVENT, timestamp=stamp), 401)
    assert message == f"Timestamp expired: Given timestamp ({stamp}) not within 600s of server time ({NOW})"


def test_the_window_follows_the_clock() -> None:
    api = Api(pusher_config(app_entry(), timestamp_window=30))
    assert ok(api.trigger(EVENT, timestamp=NOW - 30))
    api.site.reactor.advance(31)
    api.site.connect()
    refused(api.trigger(EVENT, timestamp=NOW), 401)
    assert ok(api.trigger(EVENT, timestamp=NOW + 31))


@pytest.mark.parametrize("stamp", ["", "soon", "-5", "1.5", "1" * 13, "١٧٠٠٠٠٠٠٠٠"])
def test_a_timestamp_that_is_no_unix_time_is_401(api: Api, stamp: str) -> None:
    assert refused(api.trigger(EVENT, timestamp=stamp), 401) == "auth_timestamp must be a UNIX time in seconds"


def test_an_unknown_auth_key_is_401(api: Api) -> None:
    assert refused(api.trigger(EVENT, key="nobody"), 401) == "Unknown auth_key"
    # Another app's key and secret, on this app's path.
    assert refused(api.trigger(EVENT, key=OTHER_KEY, secret=OTHER_SECRET), 401) == "Unknown auth_key"


def test_another_secret_is_401(api: Api) -> None:
    message = refused(api.trigger(EVENT, secret="not-the-app-secret"), 401)
    assert message.startswith("Invalid signature")


def test_auth_version_other_than_1_0_is_401(api: Api) -> None:
    path = path_of("GET")
    query = signed_query("GET", path)
    query["auth_version"] = "2.0"
    assert refused(api.send(http("GET", path, query)), 401) == "auth_version must be 1.0"
    del query["auth_version"]
    assert refused(api.send(http("GET", path, query)), 401) == "auth_version must be 1.0"


@pytest.mark.parametrize("field", ["auth_key", "auth_timestamp", "body_md5", "auth_signature"])
def test_a_signed_request_with_a_field_tampered_is_401(api: Api, field: str) -> None:
    body = json.dumps(EVENT).encode()
    path = path_of("POST")
    query = signed_query("POST", path, body)
    query[field] = {"auth_key": OTHER_KEY, "auth_timestamp": str(NOW + 1)}.get(field, "0" * 32)
    refused(api.send(http("POST", path, query, body)), 401)


def test_a_body_changed_after_signing_is_401(api: Api) -> None:
    body = json.dumps(EVENT).encode()
    path = path_of("POST")
    query = signed_query("POST", path, body)
    client = api.connect()
    client.subscribe("news")
    client.new()
    forged = json.dumps({**EVENT, "data": "forged"}).encode()
    assert refused(api.send(http("POST", path, query, forged)), 401) == "body_md5 does not match the body"
    assert client.new() == []


def test_a_body_without_body_md5_is_401(api: Api) -> None:
    body = json.dumps(EVENT).encode()
    path = path_of("POST")
    query = signed_query("POST", path)  # signed without body_md5
    assert refused(api.send(http("POST", path, query, body)), 401) == "body_md5 does not match the body"


def test_a_parameter_added_after_signing_is_401(api: Api) -> None:
    path = path_of("GET")
    query = {**signed_query("GET", path), "filter_by_prefix": "presence-"}
    assert refused(api.send(http("GET", path, query)), 401).startswith("Invalid signature")


def test_a_signature_for_another_path_or_method_is_401(api: Api) -> None:
    query = signed_query("GET", f"/apps/{APP_ID}/channels/a")
    refused(api.send(http("GET", f"/apps/{APP_ID}/channels/b", query)), 401)
    body = json.dumps(EVENT).encode()
    query = signed_query("POST", f"/apps/{APP_ID}/batch_events", body)
    refused(api.send(http("POST", f"/apps/{APP_ID}/events", query, body)), 401)


def test_no_query_at_all_is_401(api: Api) -> None:
    assert refused(api.send(http("GET", path_of("GET"))), 401) == "Unknown auth_key"


def test_a_parameter_given_twice_is_400(api: Api) -> None:
    path = path_of("GET")
    query = urlencode(signed_query("GET", path)) + f"&auth_key={KEY}"
    assert refused(api.send(http("GET", path, query)), 400) == "The parameter auth_key is given more than once"


def test_a_query_that_is_not_utf8_is_400(api: Api) -> None:
    path = path_of("GET")
    query = urlencode(signed_query("GET", path)) + "&filter_by_prefix=%FF"
    assert refused(api.send(http("GET", path, query)), 400) == "The query is not UTF-8"


def test_a_path_that_is_not_utf8_is_400(api: Api) -> None:
    assert refused(api.send(http("GET", f"/apps/{APP_ID}/channels/%FF", signed_query("GET", "x"))), 400) == (
        "The path is not UTF-8"
    )


# -- routes ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/apps/nope/events", "/apps", "/apps/", f"/apps/{KEY}/events"])
def test_an_unknown_app_is_404(api: Api, path: str) -> None:
    assert refused(api.ask("POST", path, b"{}"), 404) == "Unknown app"


@pytest.mark.parametrize("path", [
    f"/apps/{APP_ID}", f"/apps/{APP_ID}/", f"/apps/{APP_ID}/event", f"/apps/{APP_ID}/events/x",
    f"/apps/{APP_ID}/channels/a/b", f"/apps/{APP_ID}/users/ann", f"/apps/{APP_ID}/channels/a/users/b",
])
def test_an_unknown_route_is_404(api: Api, path: str) -> None:
    assert refused(api.ask("GET", path), 404) == "Not found"


@pytest.mark.parametrize("method, path, allow", [
    ("GET", "events", b"POST"), ("PUT", "events", b"POST"), ("DELETE", "batch_events", b"POST"),
    ("POST", "channels", b"GET"), ("POST", "channels/news", b"GET"), ("DELETE", "channels/presence-r/users", b"GET"),
    ("GET", "users/ann/terminate_connections", b"POST"),
])
def test_the_wrong_method_is_405_with_allow(api: Api, method: str, path: str, allow: bytes) -> None:
    answer = api.ask(method, f"/apps/{APP_ID}/{path}")
    assert refused(answer, 405) == f"Use {allow.decode()} here"
    assert answer[1][b"allow"] == allow


def test_the_connection_stays_usable_after_a_refusal(api: Api) -> None:
    refused(api.ask("GET", f"/apps/{APP_ID}/events"), 405)
    refused(api.trigger(EVENT, secret="wrong-secret"), 401)
    assert ok(api.trigger(EVENT))
    assert not api.site.transport.disconnecting


def test_requests_and_refusals_are_counted(api: Api) -> None:
    ok(api.trigger(EVENT))
    refused(api.trigger(EVENT, key="nobody"), 401)
    refused(api.ask("GET", "/apps/nope/channels"), 404)
    status = api.pusher.status()
    assert (status["api_requests"], status["api_refused"]) == (3, 2)
