"""``GET /sessions`` and ``GET /channels/NAME/presence`` on the memory
backend, on the whole site (tests/site_harness.py: a StringTransport and a
MemoryReactorClock): what an app that lost its state reads back."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest
from twisted.internet import defer

from chloed.backends.base import BackendUnavailable
from chloed.session import Session
from tests.fakes import RecordingSink
from tests.site_harness import SECRET, SiteHarness, body_json
from tests.test_pusher_api import pusher_config
from tests.test_pusher_protocol import KEY

Answer = tuple[int, dict[bytes, bytes], bytes]


def token(channels: list[str], user: dict[str, Any] | None = None) -> str:
    claims: dict[str, Any] = {"channels": channels, "exp": int(time.time()) + 600}
    if user is not None:
        claims["user"] = user
    return jwt.encode(claims, SECRET, algorithm="HS256")


class Site:
    """A chloed on the harness, with browsers opened on its hub."""

    def __init__(self, **options: Any) -> None:
        self.harness = SiteHarness(**options)
        self.hub = self.harness.hub

    def get(self, path: str, auth: bool = True, **params: Any) -> Answer:
        target = path + ("?" + urlencode(params, doseq=True) if params else "")
        head = f"GET {target} HTTP/1.1\r\nHost: x\r\n"
        if auth:
            head += f"Authorization: Bearer {SECRET}\r\n"
        [answer] = self.harness.feed((head + "\r\n").encode())
        return answer

    def ok(self, path: str, **params: Any) -> Any:
        answer = self.get(path, **params)
        assert answer[0] == 200, answer
        assert answer[1][b"content-type"] == b"application/json"
        return body_json(answer)

    def browser(self, *channels: str, transport: str = "websocket", user: dict[str, Any] | None = None) -> Session:
        """A session subscribed to ``channels`` (a token for private and
        presence ones, naming ``user``)."""
        session = self.hub.open_session(transport, RecordingSink() if transport != "longpoll" else None)
        for channel in channels:
            frame: dict[str, Any] = {"type": "subscribe", "channel": channel}
            if channel.startswith(("private-", "presence-")):
                frame["token"] = token([channel], user)
            self.hub.receive(session, json.dumps(frame))
        return session

    def walk(self, limit: int) -> list[list[str]]:
        """Every page's ids, following ``next`` to the end."""
        pages, params = [], {"limit": limit}
        while True:
            body = self.ok("/sessions", **params)
            pages.append([s["id"] for s in body["sessions"]])
            if body["next"] is None:
                return pages
            params = {"limit": limit, "cursor": body["next"]}


@pytest.fixture
def site() -> Site:
    return Site()


def refusal(answer: Answer, status: int, code: str) -> str:
    assert answer[0] == status, answer
    body = body_json(answer)
    assert body["error"] == code, body
    return str(body["message"])


# -- GET /sessions ----------------------------------------------------------------


def test_each_session_is_listed_with_its_transport_user_channels_and_node(site: Site) -> None:
    """A session's transport, its token's user (null without one), its
    channels sorted, and node null (one process); scope cluster."""
    user = {"id": "u1", "info": {"name": "Ada"}}
    a = site.browser("news", "alerts", "presence-room", user=user)
    b = site.browser(transport="longpoll")
    body = site.ok("/sessions")
    assert body["scope"] == "cluster"
    assert body["next"] is None
    listed = {s["id"]: s for s in body["sessions"]}
    assert listed == {
        a.id: {"id": a.id, "transport": "websocket", "user": user, "channels": ["alerts", "news", "presence-room"],
               "node": None},
        b.id: {"id": b.id, "transport": "longpoll", "user": None, "channels": [], "node": None},
    }


def test_no_sessions_is_an_empty_last_page(site: Site) -> None:
    """Nobody connected: no sessions, no next page."""
    assert site.ok("/sessions") == {"sessions": [], "next": None, "scope": "cluster"}


def test_pages_of_limit_sessions_in_id_order_list_each_once(site: Site) -> None:
    """Pages hold ``limit`` sessions in id order; ``next`` is null on the
    last page, which is never an empty one when the count divides evenly."""
    ids = sorted(site.browser().id for _ in range(9))
    assert site.walk(3) == [ids[0:3], ids[3:6], ids[6:9]]
    assert site.walk(4) == [ids[0:4], ids[4:8], ids[8:]]
    assert site.walk(1000) == [ids]


def test_the_default_page_holds_100(site: Site) -> None:
    """Without ``limit``, 100 a page."""
    for _ in range(101):
        site.browser()
    first = site.ok("/sessions")
    assert len(first["sessions"]) == 100 and first["next"] is not None
    assert len(site.ok("/sessions", cursor=first["next"])["sessions"]) == 1


def test_a_walk_lists_once_every_session_there_throughout(site: Site) -> None:
    """Sessions ending and opening during a walk: every one there from the
    first page to the last is listed exactly once, none that had ended
    before its page is."""
    sessions = sorted((site.browser() for _ in range(10)), key=lambda s: s.id)
    first = site.ok("/sessions", limit=4)
    assert [s["id"] for s in first["sessions"]] == [s.id for s in sessions[:4]]
    gone = sessions[5]
    site.hub.close_session(gone)
    new = [site.browser() for _ in range(5)]
    seen = [s["id"] for s in first["sessions"]]
    cursor = first["next"]
    while cursor is not None:
        page = site.ok("/sessions", limit=4, cursor=cursor)
        seen += [s["id"] for s in page["sessions"]]
        cursor = page["next"]
    assert len(seen) == len(set(seen))
    assert gone.id not in seen
    assert {s.id for s in sessions if s is not gone} <= set(seen)
    assert set(seen) <= {s.id for s in sessions + new}


def test_a_session_that_left_is_not_listed_and_one_that_left_a_channel_shows_it(site: Site) -> None:
    """What the listing says is what is true when it is asked."""
    stays, leaves = site.browser("a", "b"), site.browser("a")
    site.hub.receive(stays, json.dumps({"type": "unsubscribe", "channel": "a"}))
    site.hub.close_session(leaves)
    assert [(s["id"], s["channels"]) for s in site.ok("/sessions")["sessions"]] == [(stays.id, ["b"])]


def test_any_cursor_of_the_alphabet_is_a_position(site: Site) -> None:
    """A cursor is a position in id order, not a token looked up: one made
    up answers the sessions after it, never an error."""
    ids = sorted(site.browser().id for _ in range(6))
    after = ids[2]
    assert [s["id"] for s in site.ok("/sessions", cursor=after)["sessions"]] == ids[3:]
    assert site.ok("/sessions", cursor="~")["sessions"] == []  # after every id


def test_pusher_sockets_are_left_out() -> None:
    """A Pusher socket's session is its app's (its own API reports it):
    not listed, nor counted against a page."""
    site = Site(pusher=pusher_config())
    pusher = site.hub.pusher
    assert pusher is not None
    app = pusher.config.by_key(KEY)
    assert app is not None
    for _ in range(3):
        pusher.opened(app, RecordingSink())
    browser = site.browser("news")
    assert [s.transport for s in site.hub.sessions.values()].count("pusher") == 3
    assert site.ok("/sessions", limit=1) == {
        "sessions": [{"id": browser.id, "transport": "websocket", "user": None, "channels": ["news"], "node": None}],
        "next": None, "scope": "cluster",
    }


def test_sessions_takes_the_bearer_secret(site: Site) -> None:
    """Without it: 401 with a Bearer challenge."""
    site.browser()
    answer = site.get("/sessions", auth=False)
    refusal(answer, 401, "unauthorized")
    assert answer[1][b"www-authenticate"] == b'Bearer realm="chloe"'


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "ten", "1.5", "", "+5", "٣"])
def test_a_bad_limit_is_400(site: Site, limit: str) -> None:
    """``limit`` is an integer from 1 to 1000 in ASCII digits."""
    assert "limit" in refusal(site.get("/sessions", limit=limit), 400, "invalid_request")


@pytest.mark.parametrize("cursor", ["", "a b", "x" * 513, "café", "a/b"])
def test_a_bad_cursor_is_400(site: Site, cursor: str) -> None:
    """A cursor outside the alphabet of ``next`` (or empty, or too long)."""
    assert "cursor" in refusal(site.get("/sessions", cursor=cursor), 400, "invalid_request")


def test_a_parameter_given_twice_is_400(site: Site) -> None:
    """Which one was meant cannot be told."""
    assert "more than once" in refusal(site.get("/sessions", limit=["1", "2"]), 400, "invalid_request")


def test_the_backend_away_is_503(site: Site) -> None:
    """A backend that cannot be read now (Redis away): 503, retry."""
    site.hub.broker.session_list = lambda limit, cursor: defer.fail(BackendUnavailable("down"))  # type: ignore[method-assign]
    refusal(site.get("/sessions"), 503, "backend_unavailable")


# -- GET /channels/NAME/presence ----------------------------------------------------


def test_presence_lists_the_members_of_the_channel(site: Site) -> None:
    """Each user once, however many sessions it has there."""
    ada, bob = {"id": "ada", "info": {"n": 1}}, {"id": "bob", "info": None}
    site.browser("presence-room", user=ada)
    site.browser("presence-room", user=ada)
    site.browser("presence-room", user=bob)
    body = site.ok("/channels/presence-room/presence")
    assert body["channel"] == "presence-room"
    assert sorted(body["members"], key=lambda m: m["id"]) == [ada, bob]


def test_presence_of_a_channel_nobody_is_in_is_empty(site: Site) -> None:
    """No members: 200 and an empty list."""
    assert site.ok("/channels/presence-empty/presence") == {"channel": "presence-empty", "members": []}


def test_presence_of_a_channel_that_is_not_a_presence_one_is_400(site: Site) -> None:
    """Only presence- channels have members."""
    assert "not a presence channel" in refusal(site.get("/channels/news/presence"), 400, "not_presence")


def test_presence_of_an_invalid_name_is_400_as_channel_info_is(site: Site) -> None:
    """As ``GET /channels/NAME``: invalid_channel."""
    refusal(site.get("/channels/presence-r%C3%A9/presence"), 400, "invalid_channel")
    refusal(site.get("/channels/" + "p" * 129 + "/presence"), 400, "invalid_channel")


def test_presence_takes_the_bearer_secret(site: Site) -> None:
    """Without it: 401."""
    refusal(site.get("/channels/presence-room/presence", auth=False), 401, "unauthorized")


def test_presence_with_the_backend_away_is_503(site: Site) -> None:
    """Members that cannot be read now: 503."""
    site.hub.presence.fetch = lambda channel: defer.fail(BackendUnavailable("down"))  # type: ignore[method-assign]
    refusal(site.get("/channels/presence-room/presence"), 503, "backend_unavailable")
