"""The whole loop against a real chloed process: real WebSocket clients,
real HTTP requests, a real app server that checks signatures."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from websockets.sync.client import connect

from chloed import __version__
from tests.servers import TWISTD, Chloed

TIMEOUT = 10


class Browser:
    """A WebSocket client speaking Chloe's frames."""

    def __init__(self, chloed: Chloed, **kwargs: Any) -> None:
        self._connection = connect(chloed.ws_url, open_timeout=TIMEOUT, **kwargs)
        self.ws = self._connection.__enter__()
        self.connected = self.recv()
        assert self.connected["type"] == "connected"
        self.session = self.connected["session"]

    def send(self, frame: Any) -> None:
        self.ws.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))

    def recv(self) -> Any:
        return json.loads(self.ws.recv(timeout=TIMEOUT))

    def ask(self, frame: Any) -> Any:
        self.send(frame)
        return self.recv()

    def subscribe(self, channel: str, **extra: Any) -> Any:
        answer = self.ask({"type": "subscribe", "channel": channel, **extra})
        assert answer == {"type": "subscribed", "channel": channel, "recovered": answer["recovered"]}
        return answer

    def close(self) -> None:
        self._connection.__exit__(None, None, None)


@pytest.fixture
def browsers():
    opened: list[Browser] = []

    def open_browser(chloed: Chloed, **kwargs: Any) -> Browser:
        browser = Browser(chloed, **kwargs)
        opened.append(browser)
        return browser

    yield open_browser
    for browser in opened:
        browser.close()


def test_connected_frame_first(chloed, browsers):
    """A browser's first frame names its unguessable session and the heartbeat."""
    browser = browsers(chloed)
    assert browser.connected["heartbeat"] == 25
    assert len(browser.session) >= 22
    assert browsers(chloed).session != browser.session


def test_app_push_reaches_subscribers_of_the_channel_only(chloed, browsers):
    """POST /send to a channel reaches its subscribers, not the others."""
    fan, other = browsers(chloed), browsers(chloed)
    fan.subscribe("pumpkin")
    other.subscribe("squash")
    status, _, body = chloed.request(
        "POST", "/send", b"channel=pumpkin&data=Trotter",
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 202
    ids = json.loads(body)["ids"]
    message = fan.recv()
    assert message == {"type": "message", "channel": "pumpkin", "id": ids["pumpkin"], "data": "Trotter"}
    assert other.ask({"type": "ping"}) == {"type": "pong"}


def test_json_send_to_several_channels_and_everyone(chloed, browsers):
    """A JSON body carries any JSON value; no channel means every browser."""
    a, b = browsers(chloed), browsers(chloed)
    a.subscribe("one")
    b.subscribe("two")
    status, answer = chloed.send(data={"n": [1, 2.5, None]}, channel=["one", "two"])
    assert status == 202 and set(answer["ids"]) == {"one", "two"}
    assert a.recv()["data"] == {"n": [1, 2.5, None]}
    assert b.recv()["data"] == {"n": [1, 2.5, None]}
    status, answer = chloed.send(data="all", exclude=b.session)
    assert status == 202
    assert a.recv() == {"type": "message", "channel": None, "id": answer["id"], "data": "all"}
    assert b.ask({"type": "ping"}) == {"type": "pong"}


def test_send_to_one_session(chloed, browsers):
    """session= reaches that browser only; an unknown session is a 404."""
    a, b = browsers(chloed), browsers(chloed)
    status, _ = chloed.send(data="just you", session=a.session)
    assert status == 202
    assert a.recv()["data"] == "just you"
    assert b.ask({"type": "ping"}) == {"type": "pong"}
    status, answer = chloed.send(data="x", session="no-such-session")
    assert status == 404 and answer["error"] == "unknown_session"


def test_browser_send_is_relayed_signed_and_acked(chloed, app_server, browsers):
    """A browser send reaches the app as a signed POST; the browser gets its ack."""
    browser = browsers(chloed)
    browser.send({"type": "send", "data": "hi mom", "channel": "pumpkin", "ref": "r1"})
    relayed = app_server.next()
    assert relayed.event == {
        "type": "message", "session": browser.session, "channel": "pumpkin",
        "ref": "r1", "user": None, "data": "hi mom",
    }
    assert relayed.headers["X-Chloe-Signature"].startswith("sha256=")
    assert relayed.headers["X-Chloe-Delivery"]
    assert app_server.bad_signatures == 0
    assert browser.recv() == {"type": "ack", "ref": "r1"}


def test_app_4xx_is_upstream_rejected(chloed, app_server, browsers):
    """When the app answers 422 the browser is told upstream_rejected, with its ref."""
    app_server.respond = lambda relayed: 422
    browser = browsers(chloed)
    answer = browser.ask({"type": "send", "data": "nope", "ref": 7})
    assert answer["type"] == "error" and answer["code"] == "upstream_rejected" and answer["ref"] == 7


def test_no_application(chloed_factory, browsers):
    """Without application_server_url a browser send gets no_application."""
    server = chloed_factory()
    browser = browsers(server)
    answer = browser.ask({"type": "send", "data": "x", "ref": "a"})
    assert answer["code"] == "no_application" and answer["ref"] == "a"


@pytest.mark.parametrize(
    "frame, code",
    [
        ("not json", "bad_frame"),
        ("[1,2]", "bad_frame"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "subscribe", "channel": "no spaces"}', "invalid_channel"),
        ('{"type": "subscribe"}', "bad_frame"),
        ('{"type": "send"}', "bad_frame"),
        ('{"type": "subscribe", "channel": "private-x"}', "forbidden"),
        (b"\x00binary", "bad_frame"),
    ],
)
def test_bad_frames_get_an_error_and_the_connection_stays(chloed, browsers, frame, code):
    """Each bad frame gets an error frame with its code; the connection goes on."""
    browser = browsers(chloed)
    answer = browser.ask(frame)
    assert answer["type"] == "error" and answer["code"] == code and answer["message"]
    assert browser.ask({"type": "ping"}) == {"type": "pong"}


def test_limits_from_the_config_file(chloed_factory, browsers, tmp_path):
    """max_message_bytes and max_subscriptions from the TOML file are enforced."""
    conf = tmp_path / "chloe.toml"
    conf.write_text("max_message_bytes = 1024\nmax_subscriptions = 2\n")
    server = chloed_factory(config=str(conf))
    browser = browsers(server)
    big = json.dumps({"type": "send", "data": "x" * 2000, "ref": 1})
    assert browser.ask(big)["code"] == "too_large"
    browser.subscribe("a")
    browser.subscribe("b")
    answer = browser.ask({"type": "subscribe", "channel": "c"})
    assert answer["code"] == "too_many_subscriptions" and answer["channel"] == "c"
    assert browser.ask({"type": "ping"}) == {"type": "pong"}
    status, _, body = server.request(
        "POST", "/send", json.dumps({"data": "y" * 2000}).encode(), {"Content-Type": "application/json"}
    )
    assert status == 413 and json.loads(body)["error"] == "too_large"


def test_unsubscribe_stops_delivery(chloed, browsers):
    """After unsubscribe a browser gets nothing more from the channel."""
    browser = browsers(chloed)
    browser.subscribe("pumpkin")
    assert browser.ask({"type": "unsubscribe", "channel": "pumpkin"}) == {
        "type": "unsubscribed", "channel": "pumpkin"
    }
    chloed.send(data="late", channel="pumpkin")
    assert browser.ask({"type": "ping"}) == {"type": "pong"}


def test_subscribe_since_replays_what_was_missed(chloed, browsers):
    """subscribe with since replays the retained messages after it, in order."""
    _, first = chloed.send(data=1, channel="count")
    chloed.send(data=2, channel="count")
    chloed.send(data=3, channel="count")
    browser = browsers(chloed)
    assert browser.subscribe("count", since=first["ids"]["count"])["recovered"] is True
    assert [browser.recv()["data"] for _ in range(2)] == [2, 3]


@pytest.mark.parametrize(
    "headers, body, status, code",
    [
        ({}, b"data=x", 401, "unauthorized"),
        ({"Authorization": "Bearer wrong"}, b"data=x", 401, "unauthorized"),
        (None, b"channel=x", 400, "bad_request"),
        (None, b'{"channel": "x"}', 400, "bad_request"),
        (None, b"{not json", 400, "bad_request"),
        (None, b'{"data": 1, "channel": "bad name"}', 400, "invalid_channel"),
        (None, b'{"data": 1, "channel": 5}', 400, "invalid_channel"),
    ],
)
def test_send_errors(chloed, headers, body, status, code):
    """/send answers a clear status and JSON error for every bad request."""
    ctype = "application/json" if body.startswith(b"{") else "application/x-www-form-urlencoded"
    all_headers = {"Content-Type": ctype}
    if headers is not None:
        all_headers.update(headers)
    got, _, answer = chloed.request("POST", "/send", body, all_headers, auth=headers is None)
    assert got == status
    assert json.loads(answer)["error"] == code


@pytest.mark.parametrize(
    "ctype, body, field",
    [
        ("application/x-www-form-urlencoded", b"data=secret&users=u1", "users"),
        ("application/x-www-form-urlencoded", b"data=secret&chanel=room", "chanel"),
        ("application/x-www-form-urlencoded", b"data=secret&bogus=1", "bogus"),
        ("application/json", b'{"data": "secret", "chanel": "room"}', "chanel"),
        ("application/json", b'{"data": "secret", "users": "u1"}', "users"),
    ],
)
def test_send_with_an_unknown_field_is_refused_not_broadcast(chloed, browsers, ctype, body, field):
    """A typo in a target field is a 400 naming the field, never a message to everyone."""
    browser = browsers(chloed)
    got, _, answer = chloed.request("POST", "/send", body, {"Content-Type": ctype}, auth=True)
    assert got == 400
    assert json.loads(answer) == {"error": "bad_request", "message": f"unknown field {field!r}"}
    # The browser gets the next broadcast, not the refused one.
    got, _, _ = chloed.request("POST", "/send", b"data=public", auth=True)
    assert got == 202
    assert browser.recv()["data"] == "public"


def test_channels_listing(chloed, browsers):
    """/channels lists active channels; /channels/NAME gives counts and the last id."""
    browser = browsers(chloed)
    browser.subscribe("pumpkin")
    _, sent = chloed.send(data="x", channel="pumpkin")
    browser.recv()
    status, _, body = chloed.request("GET", "/channels")
    assert status == 200
    assert json.loads(body)["channels"]["pumpkin"] == {"subscribers": 1, "last_id": sent["ids"]["pumpkin"]}
    status, _, body = chloed.request("GET", "/channels/pumpkin")
    info = json.loads(body)
    assert status == 200 and info["subscribers"] == 1 and info["last_id"] == sent["ids"]["pumpkin"]
    assert chloed.request("GET", "/channels", auth=False)[0] == 401


def test_channels_list_presence_members(chloed, browsers):
    """A presence channel's members are in /channels and /channels/NAME."""
    import time

    import jwt

    user = {"id": "u1", "info": {"name": "Ann"}}
    token = jwt.encode(
        {"channels": ["presence-room"], "user": user, "exp": int(time.time()) + 60}, chloed.secret, algorithm="HS256"
    )
    browser = browsers(chloed)
    answer = browser.ask({"type": "subscribe", "channel": "presence-room", "token": token})
    assert answer["type"] == "subscribed" and answer["members"] == [user]
    listing = json.loads(chloed.request("GET", "/channels")[2])["channels"]
    assert listing["presence-room"]["members"] == [user] and listing["presence-room"]["subscribers"] == 1
    info = json.loads(chloed.request("GET", "/channels/presence-room")[2])
    assert info["members"] == [user] and info["subscribers"] == 1


def test_pages_and_health(chloed):
    """/ says Chloe is up with its version; /chloe.js is JavaScript; /health is ok."""
    status, headers, body = chloed.request("GET", "/", auth=False)
    assert status == 200 and b"Chloe is up" in body and __version__.encode() in body
    status, headers, body = chloed.request("GET", "/chloe.js", auth=False)
    assert status == 200 and headers["Content-Type"].startswith("application/javascript")
    assert b"function Chloe" in body
    status, _, body = chloed.request("GET", "/health", auth=False)
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_no_secret_serves_loopback_and_warns(chloed_factory):
    """With no secret the API answers loopback clients, and the log warns."""
    server = chloed_factory(secret=None)
    status, _ = server.send(data="x")
    assert status == 202
    assert "no secret is configured" in server.log()


def test_secret_from_environment(chloed_factory):
    """CHLOE_SECRET stands in for --secret."""
    server = chloed_factory(secret=None, env={"CHLOE_SECRET": "from-env"})
    server.secret = "from-env"
    assert server.send(data="x")[0] == 202
    server.secret = "other"
    assert server.send(data="x")[0] == 401


@pytest.mark.parametrize(
    "args, option",
    [
        (["--listen", "tcp:notaport"], "listen"),
        (["--app-url", "ftp://x"], "application_server_url"),
        (["--config", "/nonexistent/chloe.toml"], "config"),
    ],
)
def test_bad_configuration_stops_start_up(args, option):
    """Bad configuration exits 1 with one clear line naming the option."""
    result = subprocess.run([TWISTD, "-n", "--pidfile=", "chloe", *args], capture_output=True, timeout=60)
    assert result.returncode == 1
    output = (result.stderr.decode() + result.stdout.decode()).strip()
    assert option in output
    assert len(output.splitlines()) == 1, output  # not twistd's usage text too


def test_unknown_config_key_stops_start_up(tmp_path):
    """An unknown key in the TOML file is named, and start-up stops."""
    conf = tmp_path / "chloe.toml"
    conf.write_text("histroy_size = 5\n")
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "chloe", "--config", str(conf)], capture_output=True, timeout=60
    )
    assert result.returncode == 1 and b"histroy_size" in result.stderr + result.stdout


def test_json_logs_one_object_per_line_without_secrets(chloed_factory, browsers):
    """--log-format json: every line of output is a JSON object; client
    mistakes are logged without tracebacks; no secret or token is logged."""
    server = chloed_factory("--log-format", "json")
    browser = browsers(server)
    assert browser.ask("{nope")["code"] == "bad_frame"
    token = "eyJhbGciOiJIUzI1NiJ9.eyJjaGFubmVscyI6WyJwcml2YXRlLXgiXX0.c2lnbmF0dXJlLXRoYXQtZmFpbHM"
    assert browser.ask({"type": "subscribe", "channel": "private-x", "token": token})["code"] == "forbidden"
    server.stop()
    lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    assert any(line.get("code") == "bad_frame" for line in lines)
    assert all({"time", "level", "namespace", "text"} <= set(line) for line in lines)
    text = server.log()
    assert "traceback" not in text.lower()
    assert server.secret not in text and token not in text and token.split(".")[2] not in text
