"""chloe.js with connection tokens (users, not only sessions), in real
Chromium against a real chloed with ``require_connection_token = true``.

The page gets its tokens from its app (``getToken`` fetching ``/token`` of
the page server, which mints HS256 JWTs here, in Python) and:

- gets a message sent to its user (``/send user=``) on every tab, with
  ``meta.user``, on every transport;
- renews its connection token and its channel token on the same
  connection (``token_expiring`` → ``refresh``), past their first ``exp``;
- stops for good when the app disconnects it with ``reconnect: false``,
  and comes back when it says ``reconnect: true``;
- gets what was sent to its user while it was away once it reconnects
  (the user cursor, ``since``);
- hears the server's own subscriptions on ``onmessage``, and is told of
  its own subscriptions the server ended (a channel token run out, ``POST
  /unsubscribe``);
- reports refused tokens and tries again with a fresh one.

The page talks to chloed through a cutting TCP proxy
(tests/browser/proxy.py), so that a test can take the network away.
"""

from __future__ import annotations

import itertools
import json
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from playwright.sync_api import Browser, Page, WebSocket

from tests.browser.pages import serve_static
from tests.browser.proxy import CuttingProxy
from tests.servers import Chloed

CHLOE_JS = (Path(__file__).parent.parent.parent / "chloed" / "static" / "chloe.js").read_bytes()
SECRET = "users-secret-of-at-least-thirty-two-bytes"
MARGIN = 2  # token_refresh_margin: token_expiring comes this long before exp
MAX_DELAY = 300  # the page's maxDelay (ms): no reconnect waits longer

CONFIG = f"require_connection_token = true\ntoken_refresh_margin = {MARGIN}\n"

PAGE = """<!doctype html><html><head><meta charset="utf-8">
<script src="/chloe.js"></script></head><body><script>
var params = new URLSearchParams(location.search);
window.log = []; window.errors = []; window.disconnects = []; window.servers = []; window.auths = [];
window.unsubscribed = []; window.subscribedTo = []; window.fetched = {{user: 0, channel: 0}};
function token(query) {{
  return fetch('/token?' + query, {{cache: 'no-store'}}).then(function (r) {{
    window.fetched[query.indexOf('user=') === 0 ? 'user' : 'channel']++;
    return r.text();
  }});
}}
var options = {{host: '127.0.0.1', port: {port}, minDelay: 50, maxDelay: {max_delay},
               transports: (params.get('transport') || 'websocket').split(',')}};
if (params.get('user')) options.getToken = function () {{
  return token('user=' + params.get('user') + '&ttl=' + (params.get('ttl') || '60'));
}};
var chloe = window.chloe = new Chloe(options);
chloe.onmessage(function (data, meta) {{ window.log.push({{data: data, meta: meta}}); }});
chloe.onerror(function (e) {{ window.errors.push(e.code); }});
chloe.onauthenticated(function (user, frame) {{ window.auths.push(frame); }});
chloe.ondisconnect(function (reason, again) {{
  window.disconnects.push([reason, again]);
  // Long enough for any reconnect the page would make: the test then
  // checks that none came.
  setTimeout(function () {{ window.quiet = true; }}, 3 * {max_delay});
}});
chloe.onsubscribed(function (frame) {{
  (frame.server ? window.servers : window.subscribedTo).push(frame.channel);
}});
chloe.connect(function () {{ window.connected = true; }});
window.subscribe = function (channel, ttl) {{
  var messages = window[channel] = [];
  chloe.subscribe(channel, function (data, meta) {{ messages.push(data); }}, {{
    getToken: function (name) {{ return token('channel=' + name + '&ttl=' + ttl); }},
    onunsubscribed: function (reason) {{ window.unsubscribed.push([channel, reason]); }}
  }});
}};
window.subscribeWith = function (channel, token, report) {{
  var messages = window[channel] = [], options = {{token: token}};
  if (report) options.onunsubscribed = function (reason) {{ window.unsubscribed.push([channel, reason]); }};
  chloe.subscribe(channel, function (data, meta) {{ messages.push(data); }}, options);
}};
</script></body></html>"""


@dataclass
class Issuer:
    """The app's token endpoint, ``GET /token?user=U&ttl=S`` (a connection
    token) or ``?channel=C&ttl=S`` (a channel token). ``spoil`` lists what
    the next tokens are made instead: ``"invalid"`` (signed with another
    key) or ``"expired"``. ``minted`` records the claims of each token made."""

    spoil: list[str] = field(default_factory=list)
    minted: list[dict[str, Any]] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, query: dict[str, list[str]]) -> tuple[str, bytes]:
        now = int(time.time())
        ttl = int(query.get("ttl", ["60"])[0])
        with self._lock:
            spoil = self.spoil.pop(0) if self.spoil else None
            claims: dict[str, Any] = {"exp": now + ttl, "iat": now, "jti": f"t{next(self._ids)}"}
            if "user" in query:
                claims["sub"] = query["user"][0]
            else:
                claims["channels"] = query["channel"]
            if spoil == "expired":
                claims["exp"] = now - 30
            self.minted.append(claims)
        key = "some-other-key-of-at-least-thirty-two-bytes" if spoil == "invalid" else SECRET
        return "text/plain", jwt.encode(claims, key, algorithm="HS256").encode()

    def of(self, user: str) -> list[dict[str, Any]]:
        return [c for c in list(self.minted) if c.get("sub") == user]


@dataclass
class Stack:
    chloed: Chloed
    proxy: CuttingProxy
    pages: ThreadingHTTPServer
    issuer: Issuer

    def url(self, **query: str) -> str:
        return f"http://127.0.0.1:{self.pages.server_port}/?" + "&".join(f"{k}={v}" for k, v in query.items())

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        status, _, answer = self.chloed.request(method, path, data, {"Content-Type": "application/json"})
        return status, json.loads(answer)

    def sessions_of(self, user: str) -> list[str]:
        status, answer = self.api("GET", f"/users/{user}")
        assert status == 200, answer
        return [s["id"] for s in answer["sessions"]]


@contextmanager
def running() -> Iterator[Stack]:
    """chloed requiring connection tokens, behind a cutting proxy; a page
    server with the page, the working copy of chloe.js and ``/token``."""
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "chloe.toml"
        conf.write_text(CONFIG)
        chloed = Chloed(secret=SECRET, config=str(conf))
        proxy = CuttingProxy(chloed.port)
        issuer = Issuer()
        html = PAGE.format(port=proxy.port, max_delay=MAX_DELAY).encode()
        pages = serve_static({
            "/": ("text/html", html),
            "/chloe.js": ("application/javascript", CHLOE_JS),
            "/token": issuer,
        })
        try:
            yield Stack(chloed, proxy, pages, issuer)
        finally:
            pages.shutdown()
            proxy.close()
            chloed.stop()


@pytest.fixture(scope="module")
def shared() -> Iterator[Stack]:
    with running() as stack:
        yield stack


@pytest.fixture
def stack(shared: Stack) -> Stack:
    """The module's chloed, its token endpoint reset."""
    shared.issuer.spoil.clear()
    shared.issuer.minted.clear()
    shared.proxy.refusing = False
    return shared


_users = itertools.count()


@pytest.fixture
def user() -> str:
    """A user id of this test only (revocations and sessions outlive a test)."""
    return f"user{next(_users)}-{int(time.time() * 1000)}"


@pytest.fixture
def tab(chromium: Browser) -> Iterator[Any]:
    """``tab()`` opens another page in one browser context: tabs of one person."""
    context = chromium.new_context()

    def open_tab() -> Page:
        page = context.new_page()
        page.set_default_timeout(15000)
        return page

    yield open_tab
    context.close()


def sockets_of(page: Page) -> list[list[dict[str, Any]]]:
    """The frames the page sends, per WebSocket it opens, as they go."""
    sockets: list[list[dict[str, Any]]] = []

    def on_websocket(ws: WebSocket) -> None:
        sent: list[dict[str, Any]] = []
        ws.on("framesent", lambda payload: sent.append(json.loads(payload)))
        sockets.append(sent)

    page.on("websocket", on_websocket)
    return sockets


def open_page(page: Page, stack: Stack, **query: str) -> str:
    """Load the page, wait until it is connected and authenticated; its session id."""
    page.goto(stack.url(**query))
    page.wait_for_function("window.connected === true")
    return page.evaluate("chloe.session")


def messages(page: Page) -> list[dict[str, Any]]:
    return page.evaluate("window.log")


@pytest.mark.parametrize("transport", ["websocket", "sse", "longpoll", "jsonp"])
def test_a_message_to_a_user_reaches_every_tab_of_it(stack: Stack, tab: Any, user: str, transport: str) -> None:
    """Two tabs of one user and a tab of another user: ``/send user=`` reaches
    both tabs of the user, on onmessage with ``meta.user`` and the receipt's
    id, and not the other user's tab; ``chloe.user`` is the token's sub."""
    first, second, other = tab(), tab(), tab()
    for page, who in ((first, user), (second, user), (other, user + "-other")):
        open_page(page, stack, user=who, transport=transport)
    assert first.evaluate("chloe.user") == user
    assert first.evaluate("chloe.transport") == transport
    assert sorted(stack.sessions_of(user)) == sorted(p.evaluate("chloe.session") for p in (first, second))
    status, receipt = stack.api("POST", "/send", {"user": user, "data": {"text": "hello"}})
    assert status == 202, receipt
    assert receipt["delivered"] + receipt.get("queued", 0) == 2
    expected = [{"data": {"text": "hello"}, "meta": {"channel": None, "user": user, "id": receipt["users"][user]}}]
    for page in (first, second):
        page.wait_for_function("window.log.length >= 1")
        assert messages(page) == expected
    # The other user's tab: a message to it, sent after, is the first it gets.
    stack.api("POST", "/send", {"user": user + "-other", "data": "yours"})
    other.wait_for_function("window.log.length >= 1")
    assert [m["data"] for m in messages(other)] == ["yours"]
    assert first.evaluate("window.errors") == []


def test_the_auth_frame_goes_first_then_the_subscribes(stack: Stack, page: Page, user: str) -> None:
    """On a WebSocket the token goes in an ``auth`` frame before anything
    else, without ``since`` on a first connection; a channel the page
    subscribed before it was connected follows, with its own token, and
    works on a server that requires a connection token."""
    sockets = sockets_of(page)
    page.goto(stack.url(user=user))
    page.evaluate("window.subscribe('private-first', 60)")  # before connected: sent after auth
    page.wait_for_function("window.subscribedTo.indexOf('private-first') >= 0")
    stack.api("POST", "/send", {"channel": "private-first", "data": "in"})
    page.wait_for_function("window['private-first'].length >= 1")
    assert len(sockets) == 1
    sent = sockets[0]
    assert sent[0]["type"] == "auth" and "since" not in sent[0]
    assert jwt.decode(sent[0]["token"], SECRET, algorithms=["HS256"])["sub"] == user
    assert [f["type"] for f in sent[1:]] == ["subscribe"]
    assert page.evaluate("window.auths.length") == 1


def test_tokens_are_refreshed_on_the_same_connection(stack: Stack, page: Page, user: str) -> None:
    """A connection token and a channel token of 4 seconds: before each
    runs out the page fetches a new one and hands it over on the same
    connection, so after the first ones' ``exp`` the page still has its
    one session, its user's messages and its channel's, and nothing was
    reported."""
    sockets = sockets_of(page)
    session = open_page(page, stack, user=user, ttl="4")
    channel = "private-renewed"
    page.evaluate(f"window.subscribe({channel!r}, 4)")
    page.wait_for_function(f"window.subscribedTo.indexOf({channel!r}) >= 0")
    first_exp = max(c["exp"] for c in stack.issuer.minted if c.get("sub") == user or c.get("channels") == [channel])
    # token_expiring came for each: the page fetched a second token of each kind.
    page.wait_for_function("window.fetched.user >= 2 && window.fetched.channel >= 2")
    # The point of the test: the first tokens' exp passes with the connection up.
    page.wait_for_function(f"Date.now() / 1000 > {first_exp} + 0.5", polling=100)
    stack.api("POST", "/send", {"user": user, "data": "after exp"})
    stack.api("POST", "/send", {"channel": "private-renewed", "data": "channel after exp"})
    page.wait_for_function("window.log.length >= 1 && window['private-renewed'].length >= 1")
    assert [m["data"] for m in messages(page)] == ["after exp"]
    assert page.evaluate("window['private-renewed']") == ["channel after exp"]
    assert page.evaluate("chloe.session") == session
    assert stack.sessions_of(user) == [session]
    assert len(sockets) == 1
    refreshes = [f for f in sockets[0] if f["type"] == "refresh"]
    assert any("channel" not in f for f in refreshes) and any(f.get("channel") == "private-renewed" for f in refreshes)
    assert page.evaluate("window.errors") == []
    assert page.evaluate("window.unsubscribed") == []


def test_a_disconnect_without_reconnect_stops_the_page(stack: Stack, page: Page, user: str) -> None:
    """``POST /disconnect`` with ``reconnect: false``: the page hears
    ondisconnect(reason, false) and onerror ``disconnected``, and opens no
    connection again, however long its backoff would have been."""
    sockets = sockets_of(page)
    open_page(page, stack, user=user)
    status, answer = stack.api("POST", "/disconnect", {"user": user, "reason": "banned", "reconnect": False})
    assert (status, answer) == (202, {"sessions": 1})
    page.wait_for_function("window.disconnects.length >= 1")
    assert page.evaluate("window.disconnects") == [["banned", False]]
    assert page.evaluate("window.errors") == ["disconnected"]
    assert stack.sessions_of(user) == []
    page.wait_for_function("window.quiet === true")  # three times the longest backoff
    assert len(sockets) == 1
    assert page.evaluate("chloe.transport") is None
    assert stack.sessions_of(user) == []
    assert len(stack.issuer.of(user)) == 1  # not even a token was asked for


def test_a_disconnect_with_reconnect_brings_the_page_back(stack: Stack, page: Page, user: str) -> None:
    """``POST /disconnect`` with ``reconnect: true``: ondisconnect(reason,
    true), then the page connects again, with a new token, and is its
    user's again."""
    first = open_page(page, stack, user=user)
    status, answer = stack.api("POST", "/disconnect", {"user": user, "reason": "moving you", "reconnect": True})
    assert (status, answer) == (202, {"sessions": 1})
    page.wait_for_function(f"chloe.session !== {first!r} && window.auths.length >= 2")
    assert page.evaluate("window.disconnects") == [["moving you", True]]
    second = page.evaluate("chloe.session")
    assert stack.sessions_of(user) == [second]
    assert len(stack.issuer.of(user)) == 2
    assert page.evaluate("window.errors") == []


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_a_message_sent_while_away_arrives_after_the_reconnect(
    stack: Stack, page: Page, user: str, transport: str
) -> None:
    """The network goes (the proxy resets the connection and refuses new
    ones); a message to the user is sent while the user has no session;
    once the network is back the page reconnects with its user cursor
    (``since`` in ``auth``, ``user_since=`` on SSE) and gets the message,
    once."""
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url) if urlsplit(request.url).path == "/sse" else None)
    sockets = sockets_of(page)
    first = open_page(page, stack, user=user, transport=transport)
    stack.api("POST", "/send", {"user": user, "data": "before"})
    page.wait_for_function("window.log.length >= 1")
    cursor = messages(page)[0]["meta"]["id"]
    stack.proxy.refusing = True
    try:
        assert stack.proxy.kill_all() >= 1
        deadline = time.monotonic() + 10
        while stack.sessions_of(user):
            assert time.monotonic() < deadline, "the server kept the session"
            time.sleep(0.02)  # polling the server's record, bounded
        status, receipt = stack.api("POST", "/send", {"user": user, "data": "while away"})
        assert status == 202 and receipt["delivered"] == 0, receipt
    finally:
        stack.proxy.refusing = False
    page.wait_for_function(f"chloe.session !== {first!r} && window.log.length >= 2")
    assert [m["data"] for m in messages(page)] == ["before", "while away"]
    assert messages(page)[1]["meta"] == {"channel": None, "user": user, "id": receipt["users"][user]}
    if transport == "websocket":
        auths = [s[0] for s in sockets if s]
        assert "since" not in auths[0] and auths[-1]["since"] == cursor
    else:
        opened = [parse_qs(urlsplit(url).query) for url in urls]
        assert "user_since" not in opened[0] and opened[-1]["user_since"] == [cursor]
        assert jwt.decode(opened[-1]["token"][0], SECRET, algorithms=["HS256"])["sub"] == user


def test_the_servers_subscriptions_reach_onmessage(stack: Stack, page: Page, user: str) -> None:
    """``POST /subscribe`` subscribes the page to a channel it never asked
    for: onsubscribed has it with ``server: true`` and its messages reach
    onmessage with ``meta.channel``; after ``POST /unsubscribe`` they stop
    (the page is not told: it did not subscribe)."""
    open_page(page, stack, user=user)
    status, answer = stack.api("POST", "/subscribe", {"user": user, "channel": "news"})
    assert (status, answer) == (202, {"sessions": 1})
    page.wait_for_function("window.servers.length >= 1")
    assert page.evaluate("window.servers") == ["news"]
    status, receipt = stack.api("POST", "/send", {"channel": "news", "data": "extra"})
    page.wait_for_function("window.log.length >= 1")
    assert messages(page) == [{"data": "extra", "meta": {"channel": "news", "id": receipt["ids"]["news"]}}]
    assert stack.api("POST", "/unsubscribe", {"user": user, "channel": "news"})[0] == 202
    stack.api("POST", "/send", {"channel": "news", "data": "gone"})
    stack.api("POST", "/send", {"user": user, "data": "marker"})  # after the news, on the same connection
    page.wait_for_function("window.log.length >= 2")
    assert [m["data"] for m in messages(page)] == ["extra", "marker"]
    assert page.evaluate("window.errors") == []


def test_subscriptions_the_server_ends_are_dropped_and_reported(stack: Stack, page: Page, user: str) -> None:
    """A channel token of 3 seconds and no getToken to renew it: at its
    ``exp`` the subscription ends and its onunsubscribed hears
    ``token_expired``; a channel the page subscribed and the app
    unsubscribes (``POST /unsubscribe``), with no onunsubscribed, is
    reported to onerror as ``unsubscribed``. Neither is subscribed again
    after a reconnect."""
    sockets = sockets_of(page)
    first = open_page(page, stack, user=user)
    now = int(time.time())
    short = jwt.encode({"channels": ["private-short"], "exp": now + 3, "iat": now}, SECRET, algorithm="HS256")
    page.evaluate(f"window.subscribeWith('private-short', {short!r}, true)")
    page.evaluate("window.subscribeWith('room', null, false)")
    page.wait_for_function("window.subscribedTo.length >= 2")
    assert stack.api("POST", "/unsubscribe", {"user": user, "channel": "room"}) == (202, {"sessions": 1})
    page.wait_for_function("window.errors.length >= 1")
    assert page.evaluate("window.errors") == ["unsubscribed"]
    page.wait_for_function("window.unsubscribed.length >= 1")  # the token's exp
    assert page.evaluate("window.unsubscribed") == [["private-short", "token_expired"]]
    assert stack.proxy.close_all() >= 1
    page.wait_for_function(f"chloe.session !== {first!r} && window.auths.length >= 2")
    assert [f["type"] for f in sockets[-1]] == ["auth"]


def test_a_refused_token_is_reported_and_tried_again_with_a_fresh_one(stack: Stack, page: Page, user: str) -> None:
    """The first two tokens the app gives are bad: each is reported as
    ``token_invalid``, and the page tries again (the same transport first:
    a refused token is no reason to fall back), with a new token each time,
    until one is good."""
    stack.issuer.spoil[:] = ["invalid", "invalid"]
    requests: list[str] = []
    page.on("request", lambda request: requests.append(urlsplit(request.url).path))
    open_page(page, stack, user=user, transport="websocket,sse,longpoll")
    assert page.evaluate("window.errors") == ["token_invalid", "token_invalid"]
    assert len(stack.issuer.of(user)) == 3
    assert page.evaluate("chloe.transport") == "websocket"
    assert "/sse" not in requests and "/poll" not in requests
    assert stack.sessions_of(user) == [page.evaluate("chloe.session")]


def test_an_expired_token_is_replaced_at_once(stack: Stack, page: Page, user: str) -> None:
    """A token that ran out before the page presented it: ``token_expired``,
    and the page connects again with a fresh one."""
    stack.issuer.spoil[:] = ["expired"]
    open_page(page, stack, user=user)
    assert page.evaluate("window.errors") == ["token_expired"]
    assert len(stack.issuer.of(user)) == 2
    assert page.evaluate("chloe.user") == user


def test_a_revoked_user_keeps_being_refused(stack: Stack, page: Page, user: str) -> None:
    """After ``POST /revoke`` of a user, the page is refused with
    ``token_revoked`` each time it tries, a fresh token each time, and never
    gets a session (the app would stop giving tokens: here it does not)."""
    assert stack.api("POST", "/revoke", {"user": user, "before": time.time() + 60})[0] == 202
    page.goto(stack.url(user=user))
    page.wait_for_function("window.errors.length >= 3")
    assert set(page.evaluate("window.errors")) == {"token_revoked"}
    assert len(stack.issuer.of(user)) >= 3
    assert page.evaluate("window.connected") is None
    assert stack.sessions_of(user) == []


@pytest.mark.parametrize("transport", ["sse", "longpoll"])
def test_no_token_on_a_server_that_requires_one(stack: Stack, page: Page, transport: str) -> None:
    """A page without a token is told ``token_required`` each time it tries
    (with backoff), on the transport it has: not falling back."""
    requests: list[str] = []
    page.on("request", lambda request: requests.append(urlsplit(request.url).path))
    page.goto(stack.url(transport=transport + ",jsonp"))
    page.wait_for_function("window.errors.length >= 2")
    assert set(page.evaluate("window.errors")) == {"token_required"}
    assert "/jsonp" not in requests


def test_snapshot_then_subscribe_gets_only_what_follows_the_snapshot(stack: Stack, page: Page, user: str) -> None:
    """The app reads a channel's history (``GET /channels/NAME/history``)
    and hands the page its ``id``; ``subscribe(name, cb, {since: id})``
    then gets what was published after the snapshot, and nothing of it."""
    channel = f"snap-{user}"
    for n in range(3):
        assert stack.api("POST", "/send", {"channel": channel, "data": f"old {n}"})[0] == 202
    status, snapshot = stack.api("GET", f"/channels/{channel}/history?limit=10")
    assert status == 200 and [m["data"] for m in snapshot["messages"]] == ["old 0", "old 1", "old 2"]
    status, after = stack.api("POST", "/send", {"channel": channel, "data": "after the snapshot"})
    open_page(page, stack, user=user)
    page.evaluate(
        "([channel, since]) => { window.got = []; chloe.subscribe(channel, function (data, meta) {"
        " window.got.push([data, meta.id]); }, {since: since}); }",
        [channel, snapshot["id"]],
    )
    page.wait_for_function("window.got.length >= 1")
    stack.api("POST", "/send", {"channel": channel, "data": "live"})
    page.wait_for_function("window.got.length >= 2")
    got = page.evaluate("window.got")
    assert [data for data, _ in got] == ["after the snapshot", "live"]
    assert got[0][1] == after["ids"][channel]
