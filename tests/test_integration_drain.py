"""SIGTERM drains a real chloed: it stops accepting, tells browsers
``shutting_down``, hands the app every message it still holds, and exits 0;
a second SIGTERM ends it at once."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import signal
import socket
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosedOK

from tests.test_integration import Browser

EXIT_TIMEOUT = 20


def conf(tmp_path, **options) -> str:
    path = tmp_path / "chloe.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in options.items()))
    return str(path)


@pytest.fixture
def gated_app(app_server):
    """The app holds every answer until the test opens the gate."""
    gate = threading.Event()

    def respond(relayed):
        gate.wait(EXIT_TIMEOUT)
        return 200

    app_server.respond = respond
    yield app_server, gate
    gate.set()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_drains_the_relay_and_exits_0(chloed_factory, gated_app, tmp_path):
    """Messages queued for the app at SIGTERM all reach it; the browser hears
    shutting_down; new connections are refused; the exit status is 0; a new
    chloed on the same port takes the browser back."""
    app, gate = gated_app
    server = chloed_factory("--app-url", app.url, config=conf(tmp_path, upstream_timeout=10))
    browser = Browser(server)
    others = [Browser(server) for _ in range(3)]
    for n in range(5):
        browser.send({"type": "send", "data": n, "ref": f"r{n}"})
    first = app.next()  # the app holds it: four more wait in chloed's queue
    assert first.event["data"] == 0
    server.process.send_signal(signal.SIGTERM)
    for each in [browser] + others:
        last = each.recv()
        assert (last["type"], last["code"]) == ("error", "shutting_down")
        with pytest.raises(ConnectionClosedOK):  # and a clean close follows
            each.recv()
        each.close()
    assert refused(server.port)
    gate.set()
    assert [app.next().event["data"] for _ in range(4)] == [1, 2, 3, 4]
    assert server.process.wait(EXIT_TIMEOUT) == 0
    log = server.log()
    assert "Traceback" not in log and "draining" in log

    again = chloed_factory("--app-url", app.url, port=server.port)
    browser = Browser(again)
    assert browser.ask({"type": "send", "data": 5, "ref": "r5"}) == {"type": "ack", "ref": "r5"}
    assert app.next().event["data"] == 5
    browser.close()


def test_second_sigterm_stops_at_once(chloed_factory, gated_app, tmp_path):
    """With the app never answering, a second SIGTERM does not wait for the drain."""
    app, gate = gated_app
    server = chloed_factory("--app-url", app.url, config=conf(tmp_path, upstream_timeout=60))
    browser = Browser(server)
    browser.send({"type": "send", "data": 1, "ref": "x"})
    app.next()
    server.process.send_signal(signal.SIGTERM)
    assert browser.recv()["code"] == "shutting_down"
    assert server.process.poll() is None  # still draining, the app holds the message
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(EXIT_TIMEOUT) == -signal.SIGTERM


def _poll(server, path: str) -> tuple[int, bytes]:
    """One GET, answered whole; the status and body."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=EXIT_TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _held(server, path: str) -> concurrent.futures.Future:
    """A poll sent now from a thread, held by chloed until it has something."""
    return concurrent.futures.ThreadPoolExecutor(1).submit(_poll, server, path)


@pytest.mark.parametrize("with_app", [False, True])
def test_sigterm_answers_every_held_poll_with_shutting_down(chloed_factory, app_server, with_app):
    """A /poll and a /jsonp held open when the drain starts are each answered
    with the shutting_down frame before their connections close (not closed
    with no response), with or without a relay to drain; a WebSocket and an
    SSE stream hear it too."""
    server = chloed_factory(*(("--app-url", app_server.url) if with_app else ()))
    status, body = _poll(server, "/poll")
    opened = json.loads(body)
    status, body = _poll(server, "/jsonp?callback=cb")
    jsonp = json.loads(body[len(b"cb("):-len(b");")])
    browser = Browser(server)
    stream = http.client.HTTPConnection("127.0.0.1", server.port, timeout=EXIT_TIMEOUT)
    stream.request("GET", "/sse")
    events = stream.getresponse()
    while not events.readline().startswith(b"event: connected"):
        pass  # the stream's preamble (retry:)
    held = [
        _held(server, f"/poll?session={opened['session']}&cursor={opened['cursor']}"),
        _held(server, f"/jsonp?callback=cb&session={jsonp['session']}&cursor={jsonp['cursor']}"),
    ]
    # Both polls are held (open) before the signal: /status counts them.
    deadline = time.monotonic() + EXIT_TIMEOUT
    while time.monotonic() < deadline:
        _, _, status_body = server.request("GET", "/status")
        connections = json.loads(status_body)["connections"]
        if connections.get("longpoll") == 1 and connections.get("jsonp") == 1:
            break
        time.sleep(0.02)  # waiting for the two polls to reach chloed, not for chloed's answer
    else:
        raise AssertionError(f"the polls were not held: {connections}")
    server.process.send_signal(signal.SIGTERM)
    status, body = held[0].result(EXIT_TIMEOUT)
    assert status == 200
    assert [(f["type"], f.get("code")) for f in json.loads(body)["frames"]] == [("error", "shutting_down")]
    status, body = held[1].result(EXIT_TIMEOUT)
    assert status == 200 and body.startswith(b"cb(") and body.endswith(b");")
    frames = json.loads(body[len(b"cb("):-len(b");")])["frames"]
    assert [(f["type"], f.get("code")) for f in frames] == [("error", "shutting_down")]
    last = browser.recv()
    assert (last["type"], last["code"]) == ("error", "shutting_down")
    browser.close()
    rest = events.read()
    assert b"event: error" in rest and b"shutting_down" in rest
    stream.close()
    assert server.process.wait(EXIT_TIMEOUT) == 0
