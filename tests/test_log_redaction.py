"""No log line, at any level, holds a live session id: for long-poll, SSE
and JSONP the id is a capability, so logs name a session by a tag
(:func:`chloed.redact.session_tag`) that cannot be used as the id."""

from __future__ import annotations

import json
import urllib.request

from twisted.logger import formatEvent

from chloed.redact import session_tag
from chloed.session import Session
from tests.fakes import captured_log
from tests.test_hub import World
from tests.test_integration import Browser


def _text(event) -> str:
    """Everything an observer could write of an event: its text, its
    fields and its traceback."""
    parts = [formatEvent(event)]
    parts += [repr(v) for k, v in event.items() if k != "log_logger"]
    failure = event.get("log_failure")
    if failure is not None:
        parts.append(failure.getTraceback())
    return "\n".join(parts)


def test_tags_are_stable_short_and_not_the_id():
    tag = session_tag("abcdefghijklmnopqrstuvwx")
    assert tag == session_tag("abcdefghijklmnopqrstuvwx") != session_tag("abcdefghijklmnopqrstuvwy")
    assert tag.startswith("s:") and len(tag) == 10 and "abcdef" not in tag
    assert "abcdef" not in repr(Session("abcdefghijklmnopqrstuvwx", "sse", 1024, lambda s: None))


def test_hub_log_lines_name_sessions_by_tag_at_every_level():
    """Bad frames, rate limiting, a slow consumer, an expired polling
    session (a debug line) and a failed delivery: the logs name the session
    by its tag, never its id."""
    world = World(rate_limit=1, max_subscriptions=1, outbound_buffer_bytes=1024)
    with captured_log() as events:
        streaming, _ = world.connect("sse")
        polling = world.hub.open_session("longpoll")
        world.send(streaming, "not json")
        world.send(streaming, {"type": "ping"})
        world.send(streaming, {"type": "ping"})  # over the rate limit
        world.hub.subscribe_all(polling, ["a"], None)
        world.broker.publish(["a"], json.dumps("x" * 2000).encode())  # more than it may hold
        other = world.hub.open_session("longpoll")
        world.advance(world.config.session_grace + 1)  # expires, logged at debug
    ids = [streaming.id, polling.id, other.id]
    levels = {e["log_level"].name for e in events}
    assert {"debug", "info", "warn"} <= levels
    for event in events:
        text = _text(event)
        for session_id in ids:
            assert session_id not in text, formatEvent(event)
    tags = [session_tag(i) for i in ids]
    assert any(tag in _text(e) for e in events for tag in tags)


def test_a_real_chloeds_log_holds_no_session_id(chloed_factory, tmp_path):
    """Against a real process with its JSON log: sessions of every transport
    doing what gets logged (bad frames, rate limiting, an unknown frame
    type); none of their ids is in the log afterwards."""
    config = tmp_path / "chloe.toml"
    config.write_text("rate_limit = 1\nmax_subscriptions = 1\n")  # a burst of 11 frames
    server = chloed_factory("--log-format", "json", config=str(config))
    browser = Browser(server)
    ids = [browser.session]
    browser.send("{oops")
    browser.recv()
    for _ in range(15):
        browser.send({"type": "ping"})
    answers = [browser.recv() for _ in range(15)]
    assert {"type": "error", "code": "rate_limited"}.items() <= answers[-1].items()
    with urllib.request.urlopen(server.url + "/poll", timeout=10) as answer:
        polled = json.loads(answer.read())
    ids.append(polled["session"])
    post = urllib.request.Request(
        server.url + "/session/" + polled["session"], data=b'[{"type":"bogus"},{"type":"ping"},{"type":"ping"}]',
        headers={"Content-Type": "text/plain"}, method="POST",
    )
    urllib.request.urlopen(post, timeout=10).close()
    with urllib.request.urlopen(server.url + f"/poll?session={polled['session']}&cursor={polled['cursor']}",
                                timeout=10) as answer:
        assert json.loads(answer.read())["frames"]
    browser.close()
    server.stop()
    log = server.log()
    assert "bad_frame" in log and "rate_limited" in log
    for session_id in ids:
        assert session_id not in log
