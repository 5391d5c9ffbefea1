"""``POST /send`` to users (``user=``), on the whole site with the memory
backend: every session of the user gets it, with or beside channels, its
id per user in the receipt's ``users``; and a send held to the namespaces
of its channels (an unknown one refused, the smallest limit kept)."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest

from chloed.config import Namespace
from chloed.session import Session
from tests.fakes import RecordingSink
from tests.site_harness import SECRET, SiteHarness, body_json, send_request

JSON = b"application/json"
NDJSON = b"application/x-ndjson"
FORM = b"application/x-www-form-urlencoded"
Answer = tuple[int, dict[bytes, bytes], bytes]


def connection_token(user: str, **claims: Any) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 600, **claims}, SECRET, algorithm="HS256")


class Site:
    """A chloed on the harness, and browsers of users on its hub."""

    def __init__(self, **options: Any) -> None:
        self.harness = SiteHarness(**options)
        self.hub = self.harness.hub

    def browser(self, user: str | None = None, *channels: str) -> tuple[Session, RecordingSink]:
        """A WebSocket session, authenticated as ``user`` (when given),
        subscribed to ``channels``."""
        sink = RecordingSink()
        session = self.hub.open_session("websocket", sink)
        if user is not None:
            self.hub.receive(session, json.dumps({"type": "auth", "token": connection_token(user)}))
            assert sink.of_type("authenticated"), sink.frames
        for channel in channels:
            self.hub.receive(session, json.dumps({"type": "subscribe", "channel": channel}))
        return session, sink

    def send(self, body: Any, ctype: bytes = JSON) -> Answer:
        if ctype == JSON:
            raw = json.dumps(body).encode()
        elif ctype == NDJSON:
            raw = b"".join(json.dumps(item).encode() + b"\n" for item in body)
        else:
            raw = urlencode(body, doseq=True).encode()
        [answer] = self.harness.feed(send_request(raw, ctype))
        return answer

    def sent(self, body: Any, ctype: bytes = JSON) -> Any:
        answer = self.send(body, ctype)
        assert answer[0] == 202, answer
        return body_json(answer)


def messages(sink: RecordingSink) -> list[dict[str, Any]]:
    return sink.of_type("message")


def refusal(answer: Answer, status: int, code: str) -> str:
    assert answer[0] == status, answer
    body = body_json(answer)
    assert body["error"] == code, body
    return str(body["message"])


@pytest.fixture
def site() -> Site:
    return Site()


def test_a_message_to_a_user_reaches_each_of_its_sessions_and_nobody_else(site: Site) -> None:
    """Both tabs of alice get it, as a message to her (``user``, no
    channel); bob and an anonymous browser do not. The receipt has her
    message id in ``users``, none in ``ids``, and counts both sessions."""
    (_, tab1), (_, tab2) = site.browser("alice"), site.browser("alice")
    (_, bob), (_, nobody) = site.browser("bob"), site.browser()
    receipt = site.sent({"user": "alice", "data": {"n": 1}})
    id = receipt["users"]["alice"]
    assert receipt == {"ids": {}, "users": {"alice": id}, "delivered": 2, "queued": 0}
    for tab in (tab1, tab2):
        assert messages(tab) == [{"type": "message", "channel": None, "user": "alice", "id": id, "data": {"n": 1}}]
    assert messages(bob) == messages(nobody) == []


def test_users_and_channels_in_one_send_each_get_it_once_with_their_own_id(site: Site) -> None:
    """``user`` beside ``channel``: the channel's subscribers get it as a
    channel message, the users as theirs; ``ids`` keeps the channels only."""
    _, reader = site.browser(None, "news")
    _, alice = site.browser("alice")
    _, bob = site.browser("bob")
    receipt = site.sent({"channel": "news", "user": ["alice", "bob"], "data": "hi"})
    assert set(receipt["ids"]) == {"news"} and set(receipt["users"]) == {"alice", "bob"}
    assert len({receipt["ids"]["news"], *receipt["users"].values()}) == 3
    assert receipt["delivered"] == 3
    assert [(m["channel"], m.get("user"), m["id"]) for m in messages(reader)] == [("news", None, receipt["ids"]["news"])]
    assert [(m["channel"], m["user"], m["id"]) for m in messages(alice)] == [(None, "alice", receipt["users"]["alice"])]
    assert [m["user"] for m in messages(bob)] == ["bob"]


def test_a_user_named_twice_gets_it_once(site: Site) -> None:
    """As a channel named twice is published once."""
    _, alice = site.browser("alice")
    receipt = site.sent({"user": ["alice", "alice"], "data": 1})
    assert list(receipt["users"]) == ["alice"] and receipt["delivered"] == 1
    assert len(messages(alice)) == 1


def test_a_form_takes_user_once_per_user(site: Site) -> None:
    """``user=a&user=b``, beside ``channel=``, as a form."""
    _, alice = site.browser("alice")
    _, bob = site.browser("bob", "news")
    receipt = site.sent([("data", "x"), ("user", "alice"), ("user", "bob"), ("channel", "news")], FORM)
    assert set(receipt["users"]) == {"alice", "bob"} and set(receipt["ids"]) == {"news"}
    assert [m["data"] for m in messages(alice)] == ["x"]
    assert sorted((m["channel"] or "", m.get("user")) for m in messages(bob)) == [("", "bob"), ("news", None)]


def test_a_user_with_no_session_is_sent_to_all_the_same(site: Site) -> None:
    """Nobody to deliver to now: 202, an id, nothing delivered (the user's
    channel keeps it for a tab that reconnects)."""
    receipt = site.sent({"user": "carol", "data": 1})
    assert set(receipt["users"]) == {"carol"} and receipt["delivered"] == 0


def test_exclude_leaves_out_one_session_of_the_user(site: Site) -> None:
    """The tab that acted gets nothing, the user's other tab does."""
    (acting, tab1), (_, tab2) = site.browser("alice"), site.browser("alice")
    receipt = site.sent({"user": "alice", "data": 1, "exclude": acting.id})
    assert receipt["delivered"] == 1
    assert messages(tab1) == [] and len(messages(tab2)) == 1


def test_a_send_without_user_answers_the_receipt_it_always_had(site: Site) -> None:
    """No ``users`` key unless users were named."""
    assert set(site.sent({"channel": "news", "data": 1})) == {"ids", "delivered", "queued"}
    assert set(site.sent({"data": 1})) == {"ids", "id", "delivered", "queued"}


@pytest.mark.parametrize("ctype", [JSON, NDJSON], ids=["array", "ndjson"])
def test_batch_items_take_user_too(site: Site, ctype: bytes) -> None:
    """Each item its own targets; a bad user id is that item's error."""
    _, alice = site.browser("alice")
    got = site.sent([{"user": "alice", "data": 1}, {"user": "", "data": 2}, {"channel": "a", "data": 3}], ctype)
    first, bad, third = got["results"]
    assert set(first["users"]) == {"alice"} and first["delivered"] == 1
    assert (bad["status"], bad["error"]) == (400, "invalid_user")
    assert "users" not in third
    assert (got["sent"], got["failed"]) == (2, 1)
    assert [m["data"] for m in messages(alice)] == [1]


@pytest.mark.parametrize("user", [
    "", "u" * 129, "u" * 10000, "a\x00b", "tab\there", "line\nbreak", "del\x7f", 5, True, {"id": "a"}, ["ok", 5],
    ["ok", ""], [],
], ids=["empty", "129 characters", "10000 characters", "nul", "tab", "newline", "DEL", "number", "true", "object",
        "list with a number", "list with an empty one", "empty list"])
def test_a_user_id_that_cannot_be_one_is_400_invalid_user(site: Site, user: Any) -> None:
    """1 to 128 characters, no control character; and nothing is sent."""
    _, alice = site.browser("alice")
    message = refusal(site.send({"user": user, "data": 1}), 400, "invalid_user")
    assert len(message) < 200  # (a 10000-character id is not repeated back)
    assert messages(alice) == []


def test_a_bad_user_in_a_form_is_400_too(site: Site) -> None:
    """``user=`` empty, or of 129 characters."""
    refusal(site.send([("data", "x"), ("user", "")], FORM), 400, "invalid_user")
    refusal(site.send([("data", "x"), ("user", "u" * 129)], FORM), 400, "invalid_user")


def test_user_and_session_are_not_both_given(site: Site) -> None:
    """A message goes to one session or to targets, not both."""
    session, _ = site.browser("alice")
    assert "not both" in refusal(site.send({"user": "alice", "session": session.id, "data": 1}), 400, "bad_request")
    assert "not both" in refusal(
        site.send([("data", "x"), ("user", "alice"), ("session", session.id)], FORM), 400, "bad_request"
    )


def test_user_null_is_user_not_given(site: Site) -> None:
    """As ``channel: null``: the message goes to everyone."""
    _, alice = site.browser("alice")
    receipt = site.sent({"user": None, "data": 1})
    assert "id" in receipt and "users" not in receipt
    assert [m["channel"] for m in messages(alice)] == [None]


# -- namespaces -----------------------------------------------------------------


def namespaced_site() -> Site:
    return Site(namespaces=(Namespace("chat", max_message_bytes=100), Namespace("feed")))


def test_a_channel_of_a_namespace_not_configured_is_400_invalid_channel() -> None:
    """``nope:x`` when namespaces are configured and nope is not one of
    them; ``chat:x`` and a name without ``:`` are fine."""
    site = namespaced_site()
    assert "namespace" in refusal(site.send({"channel": "nope:x", "data": 1}), 400, "invalid_channel")
    refusal(site.send({"channel": ["chat:x", "nope:x"], "data": 1}), 400, "invalid_channel")
    refusal(site.send([("data", "x"), ("channel", "nope:x")], FORM), 400, "invalid_channel")
    assert set(site.sent({"channel": ["chat:x", "plain"], "data": 1})["ids"]) == {"chat:x", "plain"}


def test_without_namespaces_any_prefix_is_a_channel(site: Site) -> None:
    """No namespace configured: ``nope:x`` is a channel like any other."""
    assert set(site.sent({"channel": "nope:x", "data": 1})["ids"]) == {"nope:x"}


def test_data_is_held_to_the_smallest_limit_of_the_namespaces_named() -> None:
    """chat holds data to 100 bytes: over it is 413 for chat alone and for
    chat with feed (which has the global limit), fine for feed alone."""
    site = namespaced_site()
    data = "x" * 120
    assert "100 bytes" in refusal(site.send({"channel": "chat:a", "data": data}), 413, "too_large")
    refusal(site.send({"channel": ["feed:a", "chat:a"], "data": data}), 413, "too_large")
    refusal(site.send([("data", data), ("channel", "chat:a")], FORM), 413, "too_large")
    assert site.sent({"channel": "feed:a", "data": data})["ids"]
    assert site.sent({"channel": "chat:a", "data": "x" * 90})["ids"]


def test_a_batch_item_of_an_unknown_namespace_is_that_items_error() -> None:
    """The others still go."""
    site = namespaced_site()
    got = site.sent([{"channel": "nope:x", "data": 1}, {"channel": "chat:x", "data": 2}])
    assert got["results"][0]["error"] == "invalid_channel" and got["sent"] == 1
