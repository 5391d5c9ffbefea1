"""Users on one real chloed (memory backend): connection tokens on every
transport, refresh before expiry without reconnecting, messages to a user,
the app's commands, the history API, and the per-IP limit."""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import Any, Iterator

import jwt
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.servers import Chloed
from tests.test_integration_http_transports import SSEReader, poll
from tests.test_multinode_users import SECRET, Tab, post, token


@pytest.fixture(scope="module")
def chloed(tmp_path_factory) -> Iterator[Chloed]:
    conf = tmp_path_factory.mktemp("users") / "chloe.toml"
    conf.write_text(
        "session_grace = 10\ntoken_refresh_margin = 2\n[namespaces.chat]\nhistory_size = 5\n"
    )
    node = Chloed(config=str(conf), secret=SECRET)
    yield node
    node.stop()


def test_a_websocket_logs_in_and_gets_messages_to_its_user(chloed):
    tab = Tab(chloed, "alice", info={"name": "Alice"})
    try:
        assert tab.authenticated["type"] == "authenticated" and tab.authenticated["user"] == "alice"
        status, receipt = chloed.send(user=["alice", "nobody"], data={"n": 1})
        assert status == 202 and receipt["delivered"] == 1 and set(receipt["users"]) == {"alice", "nobody"}
        message = tab.message()
        assert message == {"type": "message", "channel": None, "user": "alice", "id": receipt["users"]["alice"],
                           "data": {"n": 1}}
    finally:
        tab.close()


def test_sse_and_polls_log_in_with_the_token_on_the_url(chloed):
    query = urllib.parse.urlencode({"token": token("bob")})
    stream = SSEReader(chloed, "/sse?" + query)
    try:
        assert stream.event()["data"]["type"] == "connected"
        assert stream.event()["data"]["user"] == "bob"
        status, opened = poll(chloed, query)
        assert status == 200
        kinds = [frame["type"] for frame in opened["frames"]]
        assert kinds[:2] == ["connected", "authenticated"], opened
        status, receipt = chloed.send(user="bob", data="to both")
        assert receipt["delivered"] + receipt["queued"] == 2
        assert stream.event()["data"]["data"] == "to both"
    finally:
        stream.close()


def test_a_token_is_refreshed_before_it_expires_without_reconnecting(chloed):
    tab = Tab(chloed, "carol", lifetime=4)
    try:
        session = tab.connected["session"]
        expiring = tab.recv()
        assert expiring["type"] == "token_expiring"
        tab.send({"type": "refresh", "token": token("carol", lifetime=3600)})
        assert tab.recv()["type"] == "refreshed"
        # Until past the first token's exp nothing comes (no token_expired),
        # and then the same session still gets its messages.
        with pytest.raises(TimeoutError):
            tab.ws.recv(timeout=max(0.0, expiring["expires"] + 1 - time.time()))
        status, receipt = chloed.send(session=session, data="still here")
        assert status == 202
        assert tab.recv()["data"] == "still here"
    finally:
        tab.close()


def test_a_token_that_runs_out_closes_the_connection(chloed):
    tab = Tab(chloed, "dan", lifetime=3)
    try:
        assert tab.recv()["type"] == "token_expiring"
        last = tab.closing_frame()
        assert last["type"] == "error" and last["code"] == "token_expired"
    finally:
        tab.close()


def test_the_app_disconnects_a_user_and_subscribes_another(chloed):
    tab, other = Tab(chloed, "eve"), Tab(chloed, "fay")
    try:
        status, answer = post(chloed, "/subscribe", {"user": "fay", "channel": "alerts"})
        assert status == 202 and answer == {"sessions": 1}
        assert other.recv() == {"type": "subscribed", "channel": "alerts", "recovered": True, "server": True}
        status, answer = post(chloed, "/disconnect", {"user": "eve", "reconnect": False})
        assert status == 202 and answer == {"sessions": 1}
        assert tab.closing_frame()["reconnect"] is False
        status, answer = post(chloed, "/disconnect", {"session": "no-such-session"})
        assert status == 404
    finally:
        tab.close()
        other.close()


def test_history_for_the_snapshot_then_subscribe_pattern(chloed):
    ids = [chloed.send(channel="chat:room", data=n)[1]["ids"]["chat:room"] for n in range(7)]
    status, _, raw = chloed.request("GET", "/channels/chat:room/history?limit=3")
    page = json.loads(raw)
    assert status == 200 and [m["data"] for m in page["messages"]] == [4, 5, 6] and page["id"] == ids[-1]
    status, _, raw = chloed.request("GET", f"/channels/chat:room/history?since={ids[3]}&limit=2")
    page = json.loads(raw)
    assert [m["data"] for m in page["messages"]] == [4, 5] and page["more"] is True
    status, _, raw = chloed.request("GET", f"/channels/chat:room/history?since={ids[0]}")
    assert json.loads(raw)["recovered"] is False  # the namespace keeps 5
    status, _, raw = chloed.request("GET", "/channels/chat:room/history?limit=-1")
    assert status == 400
    status, _, raw = chloed.request("GET", "/channels/nope:room/history")
    assert status == 400 and json.loads(raw)["error"] == "invalid_channel"


def test_the_per_ip_limit_refuses_the_next_handshake(tmp_path):
    conf = tmp_path / "chloe.toml"
    # ip_limit_exempt without loopback: 127.0.0.1 is counted here.
    conf.write_text('ip_limit_exempt = ["192.0.2.0/24"]\nmax_connections_per_ip = 3\n')
    chloed = Chloed(config=str(conf), secret=SECRET)
    open_ = []
    try:
        for _ in range(3):
            open_.append(connect(chloed.ws_url, open_timeout=10).__enter__())
        for ws in open_:
            ws.recv(timeout=10)
        with pytest.raises(InvalidStatus) as refused:
            connect(chloed.ws_url, open_timeout=10)
        assert refused.value.response.status_code == 429
        status, _, raw = chloed.request("GET", "/poll", auth=False)
        assert status == 429 and json.loads(raw)["error"] == "too_many_connections"
    finally:
        for ws in open_:
            ws.close()
        chloed.stop()


def test_required_tokens(tmp_path):
    conf = tmp_path / "chloe.toml"
    conf.write_text("require_connection_token = true\n")
    node = Chloed(config=str(conf), secret=SECRET)
    try:
        with connect(node.ws_url, open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "connected"
            ws.send(json.dumps({"type": "subscribe", "channel": "news"}))
            frame: Any = json.loads(ws.recv(timeout=10))
            assert frame["code"] == "token_required"
        tab = Tab(node, "gus")
        assert tab.authenticated["type"] == "authenticated"
        tab.close()
        bad = Tab(node, "gus", lifetime=-5)
        assert bad.authenticated["code"] == "token_expired"
        bad.close()
    finally:
        node.stop()
