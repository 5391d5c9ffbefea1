"""The status page at / in Chromium, against a real chloed carrying real
traffic: WebSocket and SSE browsers on public, private and presence
channels, /send calls, browser sends relayed to a real app.

The page's screenshot goes to the test's tmp directory; with
``CHLOE_UPDATE_SCREENSHOT=1`` the traffic runs longer (the charts fill up)
and the screenshot replaces ``docs/status-page.png``, the one the README
shows.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import jwt
import pytest
from playwright.sync_api import Page, expect
from websockets.sync.client import connect

from tests.servers import Chloed

DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "status-page.png"
UPDATE = os.environ.get("CHLOE_UPDATE_SCREENSHOT") == "1"


def token(secret: str, channels: list[str], user: dict[str, Any] | None = None) -> str:
    claims: dict[str, Any] = {"channels": channels, "exp": int(time.time()) + 3600}
    if user is not None:
        claims["user"] = user
    return jwt.encode(claims, secret, algorithm="HS256")


class Traffic:
    """Browsers and an app publishing, each in a thread, until stopped."""

    def __init__(self, chloed: Chloed) -> None:
        self.chloed = chloed
        self.stop = threading.Event()
        self.ready = threading.Semaphore(0)
        self.threads: list[threading.Thread] = []
        self.streams: list[http.client.HTTPConnection] = []
        self.browsers = 0

    def start(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self.threads.append(thread)

    def websocket(self, channels: list[str], send_every: float | None = None, tok: str | None = None) -> None:
        """A WebSocket browser on ``channels``; it sends now and then."""
        self.browsers += 1

        def run() -> None:
            with connect(self.chloed.ws_url, open_timeout=10) as ws:
                ws.recv(timeout=10)
                for channel in channels:
                    frame: dict[str, Any] = {"type": "subscribe", "channel": channel}
                    if tok is not None:
                        frame["token"] = tok
                    ws.send(json.dumps(frame))
                    answer = json.loads(ws.recv(timeout=10))
                    assert answer["type"] == "subscribed", answer
                self.ready.release()
                last, n = time.monotonic(), 0
                while not self.stop.is_set():
                    if send_every is not None and time.monotonic() - last >= send_every:
                        last, n = time.monotonic(), n + 1
                        ws.send(json.dumps({"type": "send", "data": {"n": n}, "ref": f"r{n}"}))
                    try:
                        ws.recv(timeout=0.05)
                    except TimeoutError:
                        pass

        self.start(run)

    def sse(self, channel: str) -> None:
        """An EventSource-like browser reading /sse?channel=…."""
        self.browsers += 1

        def run() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", self.chloed.port, timeout=10)
            connection.request("GET", f"/sse?channel={channel}", headers={"Accept": "text/event-stream"})
            response = connection.getresponse()
            assert response.status == 200
            self.streams.append(connection)
            self.ready.release()
            try:
                while not self.stop.is_set():
                    if not response.fp.readline():
                        break
            except OSError:
                pass  # close() shut the socket to end the read
            connection.close()

        self.start(run)

    def publisher(self, channels: list[str], per_second: float) -> None:
        """The app: POST /send to each channel in turn."""

        def run() -> None:
            i = 0
            while not self.stop.wait(1 / per_second):
                self.chloed.send(channel=channels[i % len(channels)], data={"i": i})
                i += 1

        self.start(run)

    def wait_ready(self) -> None:
        for _ in range(self.browsers):
            assert self.ready.acquire(timeout=15), "a traffic browser did not connect"

    def close(self) -> None:
        self.stop.set()
        for connection in self.streams:
            try:
                connection.sock.shutdown(socket.SHUT_RDWR)
            except (OSError, AttributeError):
                pass
        for thread in self.threads:
            thread.join(timeout=10)


@pytest.fixture
def traffic(chloed: Chloed) -> Iterator[Traffic]:
    """Real traffic on ``chloed``: 9 WebSocket and 3 SSE browsers on public,
    private and presence channels, some sending, and an app publishing."""
    t = Traffic(chloed)
    assert chloed.secret
    for _ in range(4):
        t.websocket(["lobby", "news"])
    t.websocket(["news"], send_every=0.5)
    t.websocket(["sport"], send_every=1.0)
    t.websocket(["private-team-7"], tok=token(chloed.secret, ["private-team-7"]))
    for uid in ("ada", "grace"):
        t.websocket(["presence-room-1"], tok=token(chloed.secret, ["presence-room-1"], {"id": uid, "info": {}}))
    for channel in ("lobby", "news", "weather"):
        t.sse(channel)
    t.wait_ready()
    t.publisher(["lobby", "news", "sport", "weather", "private-team-7"], per_second=20)
    yield t
    t.close()


def number(page: Page, selector: str) -> int:
    return int(page.locator(selector).inner_text().replace(",", ""))


def test_status_page_updates_live_from_real_traffic(chloed, traffic, page: Page, tmp_path):
    """The page says Chloe is up with its version, goes live over Chloe
    itself, and its counters rise with the traffic, once a second; private
    and presence channels are counted but not named."""
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(chloed.url + "/")
    expect(page.locator("h1")).to_have_text("Chloe is up")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    page.wait_for_function("document.body.dataset.updates >= 2")
    first = number(page, "#published")
    # The page's own session counts too (12 traffic browsers + the page).
    assert number(page, "#connections") == 13
    page.wait_for_function(
        f"Number(document.getElementById('published').textContent.replace(/,/g, '')) > {first}"
    )
    page.wait_for_function("document.body.dataset.updates >= 4")
    expect(page.locator("#published-rate")).not_to_have_text("0.0/s")
    expect(page.locator("#top-channels")).to_contain_text("lobby")
    expect(page.locator("#hidden-channels")).to_contain_text("2 private or presence channels")
    assert "team-7" not in page.content() and "room-1" not in page.content()
    expect(page.locator("#relay-delivered")).not_to_have_text("0")
    # The relay's lag and its spool's depth (issue 18).
    expect(page.locator("#relay-lag")).not_to_have_text("– / –")
    expect(page.locator("#relay-depth")).to_contain_text("B")
    expect(page.locator("#relay-dead")).to_have_text("0")
    if UPDATE:
        page.wait_for_function("document.body.dataset.updates >= 45", timeout=90000)
    shot = tmp_path / "status-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if UPDATE:
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        DOCS_SCREENSHOT.write_bytes(shot.read_bytes())
