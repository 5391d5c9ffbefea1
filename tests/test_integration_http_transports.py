"""SSE, long-poll and JSONP against a real chloed, from outside, as a
client library would use them."""

from __future__ import annotations

import http.client
import json
import threading
import time
from typing import Any

import pytest

from tests.servers import Chloed


class SSEReader:
    """A raw EventSource: reads ``event``/``id``/``data`` blocks."""

    def __init__(self, chloed: Chloed, path: str, headers: dict[str, str] | None = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", chloed.port, timeout=10)
        self.conn.request("GET", path, headers=headers or {})
        self.response = self.conn.getresponse()

    def event(self) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        while True:
            line = self.response.fp.readline().decode("utf-8")
            if line == "":
                raise EOFError("stream ended")
            line = line.rstrip("\n")
            if line == "":
                if "data" in fields or "event" in fields:
                    if "data" in fields:
                        fields["data"] = json.loads(fields["data"])
                    return fields
                continue
            if line.startswith(":"):
                fields.setdefault("comments", 0)
                continue
            name, _, value = line.partition(": ")
            fields[name] = value

    def close(self) -> None:
        self.conn.close()


def post_frames(chloed: Chloed, session: str, body: Any) -> int:
    status, _, _ = chloed.request(
        "POST", f"/session/{session}", json.dumps(body).encode(), {"Content-Type": "text/plain"}, auth=False
    )
    return status


def poll(chloed: Chloed, query: str) -> tuple[int, Any]:
    status, _, body = chloed.request("GET", "/poll?" + query, auth=False)
    return status, json.loads(body)


def test_sse_stream_subscribes_from_the_url_and_carries_ids(chloed):
    """/sse?channel= streams connected, subscribed, then messages with id: lines."""
    reader = SSEReader(chloed, "/sse?channel=pumpkin")
    try:
        assert reader.response.getheader("Content-Type").startswith("text/event-stream")
        connected = reader.event()
        assert connected["event"] == "connected" and connected["data"]["session"]
        assert reader.event()["data"] == {"type": "subscribed", "channel": "pumpkin", "recovered": True}
        _, sent = chloed.send(data="Trotter", channel="pumpkin")
        message = reader.event()
        assert message["event"] == "message" and message["id"] == sent["ids"]["pumpkin"]
        assert message["data"]["data"] == "Trotter"
    finally:
        reader.close()


def test_sse_last_event_id_resumes_every_channel_in_order(chloed):
    """Last-Event-ID replays what each channel of the stream missed, merged in publish order."""
    _, first = chloed.send(data=0, channel="a")
    for n, channel in enumerate(["a", "b", "a", "b"], start=1):
        chloed.send(data=n, channel=channel)
    reader = SSEReader(chloed, "/sse?channel=a&channel=b", {"Last-Event-ID": first["ids"]["a"]})
    try:
        assert reader.event()["event"] == "connected"
        subscribed = [reader.event()["data"] for _ in range(2)]
        assert all(s["recovered"] for s in subscribed)
        assert [reader.event()["data"]["data"] for _ in range(4)] == [1, 2, 3, 4]
    finally:
        reader.close()


def test_sse_sends_through_the_session_post_endpoint(chloed, app_server):
    """A browser on SSE sends frames by POST /session/<id>; answers come on the stream."""
    reader = SSEReader(chloed, "/sse")
    try:
        session = reader.event()["data"]["session"]
        assert post_frames(chloed, session, [{"type": "ping"}, {"type": "send", "data": "hi", "ref": "x"}]) == 204
        assert reader.event()["data"] == {"type": "pong"}
        assert app_server.next().event["data"] == "hi"
        assert reader.event()["data"] == {"type": "ack", "ref": "x"}
        assert post_frames(chloed, session, {"type": "nope"}) == 204
        assert reader.event()["data"]["code"] == "unknown_type"
    finally:
        reader.close()
    assert post_frames(chloed, "not-a-session", {"type": "ping"}) == 404


def test_longpoll_delivers_by_cursor_and_loses_nothing_between_polls(chloed):
    """A message published while no poll is open comes with the next poll; a repeated cursor repeats it."""
    status, opened = poll(chloed, "channel=news")
    assert status == 200
    session, cursor = opened["session"], opened["cursor"]
    assert [f["type"] for f in opened["frames"]] == ["connected", "subscribed"]
    status, receipt = chloed.send(data="while away", channel="news")
    # Nobody had it now; the polling session holds it for its next poll.
    assert status == 202 and (receipt["delivered"], receipt["queued"]) == (0, 1)
    status, answer = poll(chloed, f"session={session}&cursor={cursor}")
    assert [f["data"] for f in answer["frames"]] == ["while away"]
    # The answer was "lost": the same cursor gets the same frames again.
    status, again = poll(chloed, f"session={session}&cursor={cursor}")
    assert again == answer


def test_longpoll_is_held_until_a_message_arrives(chloed):
    """An open poll answers as soon as something is published."""
    _, opened = poll(chloed, "channel=news")
    result: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: result.update(answer=poll(chloed, f"session={opened['session']}&cursor={opened['cursor']}"))
    )
    thread.start()
    # Publish until the held poll has taken a message (it may not be open yet on the first send).
    for n in range(200):
        chloed.send(data=n, channel="news")
        thread.join(timeout=0.05)
        if not thread.is_alive():
            break
    assert not thread.is_alive()
    status, answer = result["answer"]
    assert status == 200 and answer["frames"][0]["data"] == 0


def test_longpoll_errors(chloed):
    """Unknown sessions are 404; a cursor from nowhere is 400."""
    assert poll(chloed, "session=nope&cursor=0")[0] == 404
    _, opened = poll(chloed, "")
    assert poll(chloed, f"session={opened['session']}&cursor=999")[0] == 400
    assert poll(chloed, f"session={opened['session']}&cursor=abc")[0] == 400


def test_longpoll_session_expires_after_grace(chloed_factory, tmp_path):
    """A long-poll session not polled for session_grace seconds is gone (404)."""
    conf = tmp_path / "c.toml"
    conf.write_text("session_grace = 0.2\nlongpoll_timeout = 0.1\n")
    server = chloed_factory(config=str(conf))
    _, opened = poll(server, "")
    query = f"session={opened['session']}&cursor={opened['cursor']}"
    assert poll(server, query)[0] == 200  # within the grace: held 0.1 s, answered empty
    time.sleep(0.5)  # longer than the grace: this wait is what is tested
    assert poll(server, query)[0] == 404


@pytest.mark.parametrize("callback", ["alert(1)//", "a b", "1abc", "x;y", "a..b", "", "a" * 70])
def test_jsonp_rejects_bad_callbacks(chloed, callback):
    """A JSONP callback that is not an identifier path gets 400."""
    from urllib.parse import quote

    status, headers, body = chloed.request("GET", "/jsonp?callback=" + quote(callback), auth=False)
    assert status == 400


def test_jsonp_poll_and_send(chloed, app_server):
    """JSONP wraps the poll answer in the callback, as nosniff JavaScript; sends go by GET."""
    from urllib.parse import quote

    status, headers, body = chloed.request("GET", "/jsonp?callback=jQuery.cb_1&channel=c", auth=False)
    assert status == 200
    assert headers["Content-Type"].startswith("application/javascript")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert body.startswith(b"jQuery.cb_1(") and body.endswith(b");")
    opened = json.loads(body[len(b"jQuery.cb_1("):-2])
    frames = quote(json.dumps([{"type": "send", "data": "via jsonp", "ref": "j"}]))
    status, _, body = chloed.request(
        "GET", f"/jsonp/send?callback=cb&session={opened['session']}&frames={frames}", auth=False
    )
    assert body == b'cb({"ok":true});'
    assert app_server.next().event["data"] == "via jsonp"
    status, _, body = chloed.request(
        "GET", f"/jsonp?callback=cb&session={opened['session']}&cursor={opened['cursor']}", auth=False
    )
    answer = json.loads(body[3:-2])
    assert answer["frames"] == [{"type": "ack", "ref": "j"}]
    status, _, body = chloed.request("GET", "/jsonp?callback=cb&session=gone&cursor=0", auth=False)
    assert status == 200 and json.loads(body[3:-2])["error"] == "unknown_session"


def test_jsonp_escapes_line_separators(chloed):
    """U+2028 and U+2029 are JSON but end a line in older JavaScript: a
    JSONP answer carries them escaped, a plain poll as they are."""
    text = "line\u2028para\u2029end"
    status, _, body = chloed.request("GET", "/jsonp?callback=cb&channel=seps", auth=False)
    opened = json.loads(body[3:-2])
    plain_status, plain = poll(chloed, "channel=seps")
    assert chloed.send(data=text, channel="seps")[0] == 202
    status, _, body = chloed.request(
        "GET", f"/jsonp?callback=cb&session={opened['session']}&cursor={opened['cursor']}", auth=False
    )
    assert status == 200 and b"\xe2\x80\xa8" not in body and b"\xe2\x80\xa9" not in body
    assert b"\\u2028" in body and b"\\u2029" in body
    messages = [f for f in json.loads(body[3:-2])["frames"] if f["type"] == "message"]
    assert [m["data"] for m in messages] == [text]
    status, answer = poll(chloed, f"session={plain['session']}&cursor={plain['cursor']}")
    assert [f["data"] for f in answer["frames"] if f["type"] == "message"] == [text]


def test_origins_are_checked_on_every_browser_endpoint(chloed_factory, tmp_path):
    """With allowed_origins set, other origins are refused everywhere and allowed ones get CORS headers."""
    conf = tmp_path / "c.toml"
    conf.write_text('allowed_origins = ["https://good.example"]\n')
    server = chloed_factory(config=str(conf))
    bad = {"Origin": "https://evil.example"}
    good = {"Origin": "https://good.example"}
    for path in ["/poll", "/sse"]:
        status, _, body = server.request("GET", path, headers=bad, auth=False)
        assert status == 403 and json.loads(body)["error"] == "forbidden_origin", path
    # JSONP answers 200 (a <script> cannot read a status), the refusal as the callback's argument.
    for path in ["/jsonp?callback=cb", "/jsonp/send?callback=cb&session=x&frames=%5B%5D"]:
        status, _, body = server.request("GET", path, headers=bad, auth=False)
        assert status == 200 and json.loads(body[3:-2])["error"] == "forbidden_origin", path
    # Preflights: CORS for the allowed origin only.
    for path in ["/poll", "/sse"]:
        status, headers, _ = server.request("OPTIONS", path, headers=good, auth=False)
        assert status == 204 and headers["Access-Control-Allow-Origin"] == "https://good.example", path
        status, headers, _ = server.request("OPTIONS", path, headers=bad, auth=False)
        assert status == 403 and "Access-Control-Allow-Origin" not in headers, path
    status, headers, body = server.request("GET", "/poll", headers=good, auth=False)
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "https://good.example"
    session = json.loads(body)["session"]
    status, _, _ = server.request("POST", f"/session/{session}", b'{"type":"ping"}', headers=bad, auth=False)
    assert status == 403
    status, headers, _ = server.request("OPTIONS", f"/session/{session}", headers=good, auth=False)
    assert status == 204 and "POST" in headers["Access-Control-Allow-Methods"]
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus):
        with connect(server.ws_url, origin="https://evil.example", open_timeout=10):
            pass
    with connect(server.ws_url, origin="https://good.example", open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "connected"
