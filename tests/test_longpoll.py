"""Unit tests of chloed.transports.longpoll that need no server."""

from __future__ import annotations

import pytest

from chloed.transports.longpoll import parse_cursor


@pytest.mark.parametrize("text,cursor", [("0", 0), ("7", 7), ("0012", 12), ("9" * 20, int("9" * 20))])
def test_cursor_is_ascii_digits(text, cursor):
    assert parse_cursor(text) == cursor


@pytest.mark.parametrize(
    "text",
    [None, "", " 1", "1 ", "+1", "-1", "1.5", "0x1", "1e3", "abc", "²", "٣", "１", "1" * 21, "9" * 5000],
)
def test_bad_cursor_is_none(text):
    """Anything but up to 20 ASCII digits is refused (``"²".isdigit()`` is
    true, yet ``int("²")`` raises; so does ``int`` of 5000 digits)."""
    assert parse_cursor(text) is None


# -- the resource, on a Hub over a Clock ------------------------------------


def poll_resource():
    from twisted.internet.task import Clock

    from chloed.backends.memory import MemoryBackend
    from chloed.config import Config
    from chloed.hub import Hub
    from chloed.transports.longpoll import PollResource

    clock = Clock()
    config = Config(longpoll_timeout=1.0)
    hub = Hub(config, MemoryBackend(clock, config.history_size, config.history_ttl), clock, None)
    return PollResource(hub, jsonp=False), hub


def get(resource, query: dict[bytes, list[bytes]]):
    import json

    from twisted.web.test.requesthelper import DummyRequest

    request = DummyRequest([b""])
    request.args = query
    body = resource.render(request)
    return request.responseCode or 200, json.loads(body)


@pytest.mark.parametrize("session", [b"\xff", b"", b"no-such-session"])
def test_poll_of_a_session_that_is_not_there_is_404(session):
    """session= naming no session, even one that is not UTF-8, is 404 (it
    used to open a new session when the name did not decode)."""
    resource, hub = poll_resource()
    status, answer = get(resource, {b"session": [session], b"cursor": [b"0"]})
    assert (status, answer["error"]) == (404, "unknown_session")
    assert not hub.sessions


@pytest.mark.parametrize("cursor", [b"\xc2\xb2", b"9" * 5000, b"2", b"-1", b""])
def test_bad_cursor_is_400(cursor):
    """A cursor that is not one this session answered is 400, never a crash."""
    resource, hub = poll_resource()
    status, opened = get(resource, {})
    assert status == 200 and opened["cursor"] == 1
    status, answer = get(resource, {b"session": [opened["session"].encode()], b"cursor": [cursor]})
    assert (status, answer["error"]) == (400, "bad_request")


def test_a_session_ended_between_polls_tells_its_next_poll_why():
    """A polling session ended with no poll open (slow_consumer,
    shutting_down) answers its next poll with the frame that says why; the
    poll after that, or one after session_grace, is 404."""
    resource, hub = poll_resource()
    status, opened = get(resource, {})
    session = hub.find(opened["session"])
    hub.slow(session)
    assert hub.find(opened["session"]) is None
    query = {b"session": [opened["session"].encode()], b"cursor": [str(opened["cursor"]).encode()]}
    status, answer = get(resource, query)
    assert status == 200
    assert [(f["type"], f["code"]) for f in answer["frames"]] == [("error", "slow_consumer")]
    status, answer = get(resource, query)
    assert (status, answer["error"]) == (404, "unknown_session")

    status, opened = get(resource, {})
    hub.end_session(hub.find(opened["session"]), None)  # nothing to say: no last words
    query = {b"session": [opened["session"].encode()], b"cursor": [b"1"]}
    assert get(resource, query)[0] == 404

    status, opened = get(resource, {})
    hub.slow(hub.find(opened["session"]))
    hub.clock.advance(hub.config.session_grace)
    query = {b"session": [opened["session"].encode()], b"cursor": [b"1"]}
    assert get(resource, query)[0] == 404
    assert not hub._last_words
