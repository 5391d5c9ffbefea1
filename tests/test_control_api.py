"""The control API (chloed.control: ``POST /disconnect``, ``/subscribe``,
``/unsubscribe``, ``/revoke``, ``GET /users/ID``) and ``GET
/channels/NAME/history`` (chloed.api), on the whole site with the memory
backend and a real hub: what the app asks of its users' browsers, and what
each browser sees of it."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote, urlencode

import jwt
import pytest
from twisted.internet import defer

from chloed.backends.base import BackendUnavailable
from chloed.config import Namespace
from chloed.session import Session
from tests.fakes import RecordingSink
from tests.site_harness import SECRET, SiteHarness, body_json, send_request

Answer = tuple[int, dict[bytes, bytes], bytes]
#: iat of the tokens the browsers here connect with, unless told otherwise.
IAT = 1000


def connection_token(user: str, **claims: Any) -> str:
    claims.setdefault("iat", IAT)
    return jwt.encode({"sub": user, "exp": int(time.time()) + 600, **claims}, SECRET, algorithm="HS256")


class Browser:
    """One session and what it was sent."""

    def __init__(self, session: Session, sink: RecordingSink) -> None:
        self.session = session
        self.sink = sink

    @property
    def id(self) -> str:
        return self.session.id

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return self.sink.of_type(kind)


class Site:
    """A chloed on the harness, with browsers opened on its hub."""

    def __init__(self, **options: Any) -> None:
        self.harness = SiteHarness(**options)
        self.hub = self.harness.hub
        # The clock past IAT: a token issued in the future is refused.
        self.advance(IAT + 100)

    def request(self, method: str, path: str, body: Any = None, auth: bool = True) -> Answer:
        raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\n"
        if auth:
            head += f"Authorization: Bearer {SECRET}\r\n"
        if raw:
            head += "Content-Type: application/json\r\n"
        [answer] = self.harness.feed(head.encode() + b"Content-Length: %d\r\n\r\n" % len(raw) + raw)
        return answer

    def post(self, path: str, body: Any) -> Any:
        """``body`` posted; the 202's JSON."""
        answer = self.request("POST", path, body)
        assert answer[0] == 202, answer
        assert answer[1][b"content-type"] == b"application/json"
        return body_json(answer)

    def get(self, path: str, **params: Any) -> Any:
        answer = self.request("GET", path + ("?" + urlencode(params) if params else ""))
        assert answer[0] == 200, answer
        return body_json(answer)

    def browser(self, user: str | None = None, *channels: str, **claims: Any) -> Browser:
        """A WebSocket session, authenticated as ``user`` when given (a
        token with ``claims``), subscribed to ``channels``."""
        sink = RecordingSink()
        session = self.hub.open_session("websocket", sink)
        if user is not None:
            self.hub.receive(session, json.dumps({"type": "auth", "token": connection_token(user, **claims)}))
        for channel in channels:
            self.hub.receive(session, json.dumps({"type": "subscribe", "channel": channel}))
        return Browser(session, sink)

    def advance(self, seconds: float) -> None:
        """Let time pass (on a new connection: the idle one timed out)."""
        self.harness.reactor.advance(seconds)
        self.harness.connect()

    def publish(self, channel: str, data: Any) -> str:
        [answer] = self.harness.feed(send_request(json.dumps({"channel": channel, "data": data}).encode(),
                                                  b"application/json"))
        assert answer[0] == 202, answer
        return str(body_json(answer)["ids"][channel])


@pytest.fixture
def site() -> Site:
    return Site()


def refusal(answer: Answer, status: int, code: str) -> str:
    assert answer[0] == status, answer
    assert answer[1][b"content-type"] == b"application/json"
    body = body_json(answer)
    assert set(body) == {"error", "message"} and body["error"] == code, body
    return str(body["message"])


def down(*args: Any) -> defer.Deferred[Any]:
    return defer.fail(BackendUnavailable("redis is away"))


# -- POST /disconnect ---------------------------------------------------------------


def test_disconnecting_a_user_ends_each_of_its_sessions_saying_why(site: Site) -> None:
    """Both of alice's tabs are told ``disconnect`` (the default reason,
    reconnect true) and closed; bob's stays. The answer counts them."""
    tabs = [site.browser("alice"), site.browser("alice")]
    bob = site.browser("bob")
    assert site.post("/disconnect", {"user": "alice"}) == {"sessions": 2}
    for tab in tabs:
        assert tab.sink.closed
        assert tab.sink.last == {"type": "disconnect", "reason": "disconnected by the application", "reconnect": True}
        assert tab.id not in site.hub.sessions
    assert not bob.sink.closed


def test_disconnecting_one_session_with_a_reason_and_no_reconnect(site: Site) -> None:
    """A ban: that session alone, told not to come back, whoever it is."""
    banned, other = site.browser("alice"), site.browser("alice")
    anonymous = site.browser()
    body = {"session": banned.id, "reason": "banned for spam", "reconnect": False}
    assert site.post("/disconnect", body) == {"sessions": 1}
    assert banned.sink.last == {"type": "disconnect", "reason": "banned for spam", "reconnect": False}
    assert not other.sink.closed
    assert site.post("/disconnect", {"session": anonymous.id}) == {"sessions": 1}
    assert anonymous.sink.closed


@pytest.mark.parametrize("session", ["no-such-session", "x" * 64, "a b", "é", "s" * 10000])
def test_disconnecting_a_session_nobody_holds_is_404(site: Site, session: str) -> None:
    """Unknown, or no id Chloe could have made: 404 unknown_session."""
    site.browser("alice")
    refusal(site.request("POST", "/disconnect", {"session": session}), 404, "unknown_session")


def test_a_user_with_no_session_is_zero_sessions_not_an_error(site: Site) -> None:
    """The app need not know whether its user is connected."""
    assert site.post("/disconnect", {"user": "carol"}) == {"sessions": 0}
    assert site.post("/subscribe", {"user": "carol", "channel": "news"}) == {"sessions": 0}


@pytest.mark.parametrize("body, code", [
    ({}, "invalid_request"),
    ({"session": "a", "user": "b"}, "invalid_request"),
    ({"user": "alice", "reason": "r" * 201}, "invalid_request"),
    ({"user": "alice", "reason": 5}, "invalid_request"),
    ({"user": "alice", "reason": None}, "invalid_request"),
    ({"user": "alice", "reconnect": "no"}, "invalid_request"),
    ({"user": "alice", "reconnect": 0}, "invalid_request"),
    ({"user": "alice", "channel": "news"}, "invalid_request"),
    ({"user": "alice", "bogus": 1}, "invalid_request"),
    ({"session": 5}, "invalid_request"),
    ({"session": ""}, "invalid_request"),
    ({"session": None}, "invalid_request"),
    ({"user": ""}, "invalid_user"),
    ({"user": "u" * 129}, "invalid_user"),
    ({"user": "u" * 10000}, "invalid_user"),
    ({"user": "a\u0000b"}, "invalid_user"),
    ({"user": "a\nb"}, "invalid_user"),
    ({"user": 7}, "invalid_user"),
    ({"user": ["alice"]}, "invalid_user"),
], ids=["empty object", "session and user", "reason of 201 characters", "reason a number", "reason null",
        "reconnect a string", "reconnect 0", "a field of another route", "unknown field", "session a number",
        "session empty", "session null", "user empty", "user of 129 characters", "user of 10000 characters",
        "user with a nul", "user with a newline", "user a number", "user a list"])
def test_a_bad_disconnect_is_400_and_ends_nothing(site: Site, body: dict[str, Any], code: str) -> None:
    """Every field is checked before anything is done."""
    alice = site.browser("alice")
    message = refusal(site.request("POST", "/disconnect", body), 400, code)
    assert len(message) < 300
    assert not alice.sink.closed


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'"user"', b"null", b'{"user":"alice"} x', b"NaN",
                                 b'{"user":"\\ud800"}', b"[" * 5000 + b"]" * 5000, b'{"user":"alice","user":1e400}'],
                         ids=["empty", "truncated", "an array", "a string", "null", "trailing junk", "NaN",
                              "lone surrogate", "nested 5000 deep", "1e400"])
def test_a_body_that_is_no_json_object_is_400(site: Site, raw: bytes) -> None:
    """Strict JSON, one object."""
    refusal(site.request("POST", "/disconnect", raw), 400, "invalid_request")


def test_a_body_over_64_kib_is_413(site: Site) -> None:
    """A command is a few short fields."""
    body = json.dumps({"user": "alice", "reason": "r" * 70000}).encode()
    refusal(site.request("POST", "/disconnect", body), 413, "too_large")


# -- POST /subscribe, /unsubscribe ------------------------------------------------------


def test_subscribing_a_user_subscribes_each_of_its_sessions_server_side(site: Site) -> None:
    """Each of alice's tabs is told ``subscribed`` (``server: true``) and
    gets the channel's messages from then on; bob is not subscribed."""
    tabs = [site.browser("alice"), site.browser("alice")]
    bob = site.browser("bob")
    assert site.post("/subscribe", {"user": "alice", "channel": "private-alice"}) == {"sessions": 2}
    id = site.publish("private-alice", "hello")
    for tab in tabs:
        assert tab.of_type("subscribed") == [
            {"type": "subscribed", "channel": "private-alice", "recovered": True, "server": True}
        ]
        assert [(m["channel"], m["id"]) for m in tab.of_type("message")] == [("private-alice", id)]
    assert bob.of_type("subscribed") == bob.of_type("message") == []


def test_unsubscribing_a_session_tells_it_and_stops_the_messages(site: Site) -> None:
    """``unsubscribed`` with reason server; nothing more from the channel."""
    tab = site.browser("alice", "news")
    assert site.post("/unsubscribe", {"session": tab.id, "channel": "news"}) == {"sessions": 1}
    assert tab.of_type("unsubscribed") == [{"type": "unsubscribed", "channel": "news", "reason": "server"}]
    site.publish("news", 1)
    assert tab.of_type("message") == []


def test_a_session_subscribed_server_side_is_listed_in_its_channel(site: Site) -> None:
    """What ``GET /users/ID`` says after a server-side subscribe."""
    anonymous = site.browser()
    assert site.post("/subscribe", {"session": anonymous.id, "channel": "news"}) == {"sessions": 1}
    tab = site.browser("alice")
    site.post("/subscribe", {"user": "alice", "channel": "news"})
    assert site.get("/users/alice") == {
        "user": "alice", "sessions": [{"id": tab.id, "transport": "websocket", "node": None, "channels": ["news"]}],
    }


def test_a_persisted_subscription_reaches_the_users_later_sessions_until_unpersisted(site: Site) -> None:
    """``persist``: a tab opened afterwards is subscribed as it
    authenticates; after ``/unsubscribe`` with persist the next one is not."""
    now = site.browser("alice")
    assert site.post("/subscribe", {"user": "alice", "channel": "team", "persist": True}) == {"sessions": 1}
    assert [f["channel"] for f in now.of_type("subscribed")] == ["team"]
    later = site.browser("alice")
    assert [f["channel"] for f in later.of_type("subscribed")] == ["team"]
    assert site.post("/unsubscribe", {"user": "alice", "channel": "team", "persist": True}) == {"sessions": 2}
    assert [f["channel"] for f in later.of_type("unsubscribed")] == ["team"]
    assert site.browser("alice").of_type("subscribed") == []


def test_a_subscription_not_persisted_is_for_the_sessions_there_now(site: Site) -> None:
    """Without persist (or with persist false) a later tab is not subscribed."""
    site.browser("alice")
    site.post("/subscribe", {"user": "alice", "channel": "a"})
    site.post("/subscribe", {"user": "alice", "channel": "b", "persist": False})
    assert site.browser("alice").of_type("subscribed") == []


def test_subscribing_a_session_nobody_holds_is_404(site: Site) -> None:
    """As for /disconnect."""
    refusal(site.request("POST", "/subscribe", {"session": "no-such", "channel": "a"}), 404, "unknown_session")
    refusal(site.request("POST", "/unsubscribe", {"session": "no-such", "channel": "a"}), 404, "unknown_session")


@pytest.mark.parametrize("path", ["/subscribe", "/unsubscribe"])
@pytest.mark.parametrize("body, code", [
    ({"user": "alice"}, "invalid_request"),
    ({"user": "alice", "channel": None}, "invalid_request"),
    ({"channel": "news"}, "invalid_request"),
    ({"user": "alice", "channel": "a b"}, "invalid_channel"),
    ({"user": "alice", "channel": ""}, "invalid_channel"),
    ({"user": "alice", "channel": "c" * 129}, "invalid_channel"),
    ({"user": "alice", "channel": ["news"]}, "invalid_channel"),
    ({"user": "alice", "channel": "#u:bob"}, "invalid_channel"),
    ({"user": "alice", "channel": "chloe.status"}, "invalid_channel"),
    ({"user": "alice", "channel": "news", "persist": "yes"}, "invalid_request"),
    ({"session": "abc", "channel": "news", "persist": True}, "invalid_request"),
    ({"session": "abc", "channel": "news", "persist": False}, "invalid_request"),
    ({"user": "alice", "channel": "news", "reason": "x"}, "invalid_request"),
    ({"user": "u" * 10000, "channel": "news"}, "invalid_user"),
], ids=["no channel", "channel null", "no target", "channel with a space", "channel empty",
        "channel of 129 characters", "channel a list", "a user channel", "a reserved channel", "persist a string",
        "persist with a session", "persist false with a session", "a field of another route", "user of 10000 characters"])
def test_a_bad_subscription_is_400_and_subscribes_nobody(site: Site, path: str, body: dict[str, Any],
                                                          code: str) -> None:
    """Checked whole before anything is done or persisted."""
    tab = site.browser("alice")
    refusal(site.request("POST", path, body), 400, code)
    assert tab.of_type("subscribed") == tab.of_type("unsubscribed") == []
    assert site.browser("alice").of_type("subscribed") == []


def test_a_channel_of_a_namespace_not_configured_is_400() -> None:
    """``nope:x`` with namespaces configured; ``chat:x`` is fine."""
    site = Site(namespaces=(Namespace("chat"),))
    site.browser("alice")
    refusal(site.request("POST", "/subscribe", {"user": "alice", "channel": "nope:x"}), 400, "invalid_channel")
    assert site.post("/subscribe", {"user": "alice", "channel": "chat:x"}) == {"sessions": 1}


# -- POST /revoke ---------------------------------------------------------------------


def test_revoking_a_jti_ends_the_sessions_using_it_and_refuses_it_from_then_on(site: Site) -> None:
    """Sessions of that token get ``token_revoked`` and close; the same
    user's other token stays; connecting with the revoked one is refused."""
    using = [site.browser("alice", jti="t-1"), site.browser("alice", jti="t-1")]
    other = site.browser("alice", jti="t-2")
    assert site.post("/revoke", {"jti": "t-1"}) == {}
    for tab in using:
        assert tab.sink.closed and tab.sink.last is not None and tab.sink.last["code"] == "token_revoked"
    assert not other.sink.closed
    again = site.browser("alice", jti="t-1")
    assert again.sink.closed and again.of_type("authenticated") == []


def test_a_jti_revocation_lasts_until_until(site: Site) -> None:
    """Kept until ``until`` (epoch seconds on the server's clock), then
    the token connects again."""
    now = site.harness.reactor.seconds()
    site.post("/revoke", {"jti": "t-1", "until": now + 50})
    assert site.browser("alice", jti="t-1").sink.closed
    site.advance(51)
    assert site.browser("alice", jti="t-1").of_type("authenticated")


def test_a_jti_revocation_lasts_a_day_by_default(site: Site) -> None:
    """No ``until``: 86400 s."""
    site.post("/revoke", {"jti": "t-1"})
    site.advance(86399)
    assert site.browser("alice", jti="t-1").sink.closed
    site.advance(2)
    assert site.browser("alice", jti="t-1").of_type("authenticated")


def test_revoking_a_user_ends_its_tokens_issued_before_and_refuses_them(site: Site) -> None:
    """Tokens with ``iat`` before ``before`` (or none: issued at 0) are
    ended and refused; one issued at or after it connects and stays."""
    old, fresh = site.browser("alice", iat=100), site.browser("alice", iat=500)
    no_iat = site.browser("alice", iat=None)
    bob = site.browser("bob", iat=100)
    assert site.post("/revoke", {"user": "alice", "before": 500}) == {}
    assert old.sink.closed and old.sink.last is not None and old.sink.last["code"] == "token_revoked"
    assert no_iat.sink.closed
    assert not fresh.sink.closed and not bob.sink.closed
    assert site.browser("alice", iat=499).sink.closed
    assert site.browser("alice", iat=500).of_type("authenticated")


def test_revoking_a_user_without_before_means_before_now(site: Site) -> None:
    """``before`` defaults to the start of the server's second now: a token
    issued in that second (a login just after the logout) is taken."""
    site.advance(2000.5)
    tab = site.browser("alice", iat=IAT)  # issued before now
    site.post("/revoke", {"user": "alice"})
    assert tab.sink.closed
    now = site.harness.reactor.seconds()
    assert site.browser("alice", iat=int(now)).of_type("authenticated")
    assert site.browser("alice", iat=int(now) - 1).sink.closed


@pytest.mark.parametrize("body, code", [
    ({}, "invalid_request"),
    ({"jti": "t", "user": "alice"}, "invalid_request"),
    ({"jti": "t", "before": 5}, "invalid_request"),
    ({"user": "alice", "until": 5}, "invalid_request"),
    ({"jti": ""}, "invalid_request"),
    ({"jti": "j" * 129}, "invalid_request"),
    ({"jti": "a\u0001b"}, "invalid_request"),
    ({"jti": 5}, "invalid_request"),
    ({"jti": "t", "until": "tomorrow"}, "invalid_request"),
    ({"jti": "t", "until": True}, "invalid_request"),
    ({"jti": "t", "until": -1}, "invalid_request"),
    ({"jti": "t", "until": 10 ** 20}, "invalid_request"),
    ({"jti": "t", "until": None}, "invalid_request"),
    ({"user": "alice", "before": [1]}, "invalid_request"),
    ({"user": "alice", "session": "x"}, "invalid_request"),
    ({"user": ""}, "invalid_user"),
    ({"user": "u" * 10000}, "invalid_user"),
], ids=["empty object", "jti and user", "jti with before", "user with until", "jti empty", "jti of 129 characters",
        "jti with a control character", "jti a number", "until a string", "until true", "until negative",
        "until past year 9999", "until null", "before a list", "unknown field", "user empty",
        "user of 10000 characters"])
def test_a_bad_revoke_is_400_and_revokes_nothing(site: Site, body: dict[str, Any], code: str) -> None:
    """Nothing is stored, no session ended."""
    tab = site.browser("alice", jti="t")
    refusal(site.request("POST", "/revoke", body), 400, code)
    assert not tab.sink.closed
    assert site.browser("alice", jti="t").of_type("authenticated")


# -- GET /users/ID -----------------------------------------------------------------------


def test_a_users_sessions_are_listed_with_their_transport_node_and_channels(site: Site) -> None:
    """Each of its sessions (not another user's, not anonymous ones)."""
    a = site.browser("alice", "news", "alerts")
    b = site.browser("alice")
    site.browser("bob", "news")
    site.browser(None, "news")
    body = site.get("/users/alice")
    assert body["user"] == "alice"
    listed = {s["id"]: s for s in body["sessions"]}
    assert listed == {
        a.id: {"id": a.id, "transport": "websocket", "node": None, "channels": ["alerts", "news"]},
        b.id: {"id": b.id, "transport": "websocket", "node": None, "channels": []},
    }


def test_a_user_gone_or_never_seen_has_no_sessions(site: Site) -> None:
    """200 and an empty list, once its last session has ended."""
    tab = site.browser("alice")
    site.hub.close_session(tab.session)
    assert site.get("/users/alice") == {"user": "alice", "sessions": []}
    assert site.get("/users/nobody") == {"user": "nobody", "sessions": []}


@pytest.mark.parametrize("user", ["org/alice", "a//b", "/leading", "trailing/", "..", "%41", "café ☕", "with space",
                                  "?&#"])
def test_any_user_id_is_found_percent_encoded_in_the_path(site: Site, user: str) -> None:
    """An id may hold ``/`` and other reserved characters: sent
    percent-encoded, it is the id, decoded once."""
    tab = site.browser(user)
    body = site.get("/users/" + quote(user, safe=""))
    assert body["user"] == user and [s["id"] for s in body["sessions"]] == [tab.id]


@pytest.mark.parametrize("path", ["/users/" + "u" * 129, "/users/" + "u" * 10000, "/users/a%00b", "/users/a%0Ab",
                                  "/users/%7F"])
def test_a_user_id_that_cannot_be_one_is_400(site: Site, path: str) -> None:
    """Too long, or with a control character."""
    refusal(site.request("GET", path), 400, "invalid_user")


def test_users_without_an_id_is_404(site: Site) -> None:
    """``/users`` and ``/users/`` name no user."""
    refusal(site.request("GET", "/users"), 404, "not_found")
    refusal(site.request("GET", "/users/"), 404, "not_found")


# -- every control route ----------------------------------------------------------------

ROUTES = [
    ("POST", "/disconnect", {"user": "alice"}),
    ("POST", "/subscribe", {"user": "alice", "channel": "news"}),
    ("POST", "/unsubscribe", {"user": "alice", "channel": "news"}),
    ("POST", "/revoke", {"user": "alice"}),
    ("GET", "/users/alice", None),
    ("GET", "/channels/news/history", None),
]
ROUTE_IDS = [f"{method} {path}" for method, path, _ in ROUTES]


@pytest.mark.parametrize("method, path, body", ROUTES, ids=ROUTE_IDS)
def test_each_route_takes_the_bearer_secret(site: Site, method: str, path: str, body: Any) -> None:
    """Without it: 401 with a Bearer challenge, and nothing done."""
    tab = site.browser("alice")
    answer = site.request(method, path, body, auth=False)
    refusal(answer, 401, "unauthorized")
    assert answer[1][b"www-authenticate"] == b'Bearer realm="chloe"'
    assert not tab.sink.closed


@pytest.mark.parametrize("method, path, body", ROUTES, ids=ROUTE_IDS)
def test_the_other_method_is_405(site: Site, method: str, path: str, body: Any) -> None:
    """POST routes take POST, GET routes GET (and HEAD)."""
    other = "GET" if method == "POST" else "POST"
    answer = site.request(other, path, body)
    refusal(answer, 405, "method_not_allowed")
    assert method.encode() in answer[1][b"allow"]


@pytest.mark.parametrize("method, path, body", ROUTES, ids=ROUTE_IDS)
def test_the_backend_away_is_503(site: Site, method: str, path: str, body: Any) -> None:
    """Redis away: 503 backend_unavailable, retry."""
    broker = site.hub.broker
    for name in ("control", "revoke", "user_sessions", "read_history", "persist_channel"):
        setattr(broker, name, down)
    refusal(site.request(method, path, body), 503, "backend_unavailable")


def test_a_persisted_subscribe_with_the_backend_away_is_503(site: Site) -> None:
    """The persisting fails first: nothing is run."""
    site.hub.broker.persist_channel = down  # type: ignore[method-assign,assignment]
    tab = site.browser("alice")
    answer = site.request("POST", "/subscribe", {"user": "alice", "channel": "news", "persist": True})
    refusal(answer, 503, "backend_unavailable")
    assert tab.of_type("subscribed") == []


def test_a_revoke_the_backend_could_not_run_is_503(site: Site) -> None:
    """Stored, but not run on the nodes: 503, so the app retries (a
    revocation stored twice is one)."""
    site.hub.broker.control = down  # type: ignore[method-assign,assignment]
    refusal(site.request("POST", "/revoke", {"jti": "t"}), 503, "backend_unavailable")


def test_an_answer_the_backend_keeps_waiting_comes_when_it_answers(site: Site) -> None:
    """With Redis the count comes later: the 202 waits for it."""
    later: defer.Deferred[int] = defer.Deferred()
    site.hub.broker.control = lambda command: later  # type: ignore[method-assign]
    head = f"POST /disconnect HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}\r\n".encode()
    body = b'{"user":"alice"}'
    assert site.harness.feed(head + b"Content-Length: %d\r\n\r\n" % len(body) + body) == []
    later.callback(3)
    [answer] = site.harness.take()
    assert answer[0] == 202 and body_json(answer) == {"sessions": 3}


# -- GET /channels/NAME/history -------------------------------------------------------------


def test_history_without_since_is_the_newest_messages_oldest_first(site: Site) -> None:
    """``limit`` of the newest, in publish order, data as published; ``id``
    the last of them, so a browser subscribing from it misses nothing."""
    ids = [site.publish("news", {"n": n, "text": "é"}) for n in range(5)]
    page = site.get("/channels/news/history", limit=3)
    assert page == {
        "channel": "news", "id": ids[4], "recovered": True, "more": False,
        "messages": [{"id": id, "data": {"n": n, "text": "é"}} for n, id in list(enumerate(ids))[2:]],
    }
    assert [m["id"] for m in site.get("/channels/news/history")["messages"]] == ids


def test_a_browser_subscribing_from_the_history_id_gets_what_followed(site: Site) -> None:
    """Load the page's messages, then subscribe with ``since`` = ``id``:
    what was published in between is replayed, nothing twice."""
    site.publish("news", "before")
    cursor = site.get("/channels/news/history")["id"]
    after = site.publish("news", "after")
    tab = site.browser()
    site.hub.receive(tab.session, json.dumps({"type": "subscribe", "channel": "news", "since": cursor}))
    assert [(m["id"], m["data"]) for m in tab.of_type("message")] == [(after, "after")]


def test_history_of_an_empty_channel_is_the_position_now(site: Site) -> None:
    """No messages: ``id`` is where everything published from now starts."""
    site.publish("other", 1)
    page = site.get("/channels/quiet/history")
    assert page["messages"] == [] and page["recovered"] and not page["more"]
    first = site.publish("quiet", "first")
    tab = site.browser()
    site.hub.receive(tab.session, json.dumps({"type": "subscribe", "channel": "quiet", "since": page["id"]}))
    assert [m["id"] for m in tab.of_type("message")] == [first]


def test_history_pages_after_since_with_more(site: Site) -> None:
    """With ``since``: up to ``limit`` after it, ``more`` while more
    remain, ``id`` the last returned; following ``id`` reads the rest."""
    start = site.get("/channels/news/history")["id"]
    ids = [site.publish("news", n) for n in range(5)]
    first = site.get("/channels/news/history", since=start, limit=2)
    assert [m["id"] for m in first["messages"]] == ids[:2] and first["more"] and first["id"] == ids[1]
    second = site.get("/channels/news/history", since=first["id"], limit=2)
    assert [m["data"] for m in second["messages"]] == [2, 3] and second["more"]
    last = site.get("/channels/news/history", since=second["id"], limit=2)
    assert [m["data"] for m in last["messages"]] == [4] and not last["more"] and last["id"] == ids[4]
    assert last["recovered"]


def test_history_says_when_messages_after_since_are_gone() -> None:
    """history_size 2: from before the first of five, three are gone:
    recovered false, and the two kept are given."""
    site = Site(history_size=2)
    start = site.get("/channels/news/history")["id"]
    ids = [site.publish("news", n) for n in range(5)]
    page = site.get("/channels/news/history", since=start)
    assert not page["recovered"] and [m["id"] for m in page["messages"]] == ids[3:]


@pytest.mark.parametrize("query", ["limit=0", "limit=-1", "limit=1001", "limit=ten", "limit=", "limit=1.5",
                                   "limit=1&limit=2", "since=abc", "since=1-", "since=-1", "since=1-2-3",
                                   "since=" + "1" * 60 + "-1234", "since=", "since=%FF", "since=1%2D2x"],
                         ids=lambda q: q[:40])
def test_a_bad_limit_or_since_is_400(site: Site, query: str) -> None:
    """``limit`` 1 to 1000; ``since`` a message id (digits-digits, at
    most 64 characters)."""
    refusal(site.request("GET", "/channels/news/history?" + query), 400, "invalid_request")


@pytest.mark.parametrize("name", ["a%20b", "c" * 129, "caf%C3%A9", "%23u%3Aalice"])
def test_history_of_a_name_that_is_no_channel_is_400(site: Site, name: str) -> None:
    """As ``GET /channels/NAME``; a user's channel cannot be named."""
    refusal(site.request("GET", f"/channels/{name}/history"), 400, "invalid_channel")


def test_history_of_a_namespace_not_configured_is_400() -> None:
    """``nope:x`` with namespaces configured."""
    site = Site(namespaces=(Namespace("chat"),))
    refusal(site.request("GET", "/channels/nope:x/history"), 400, "invalid_channel")
    assert site.get("/channels/chat:x/history")["messages"] == []


def test_with_pusher_apps_served_users_is_still_the_control_apis() -> None:
    """Pusher's ``/users/{id}/terminate_connections`` (signed, with
    ``auth_key``) shares the prefix: an unsigned ``GET /users/ID`` is ours."""
    from tests.test_pusher_api import pusher_config

    site = Site(pusher=pusher_config())
    tab = site.browser("alice")
    assert [s["id"] for s in site.get("/users/alice")["sessions"]] == [tab.id]
