"""The seed's demo in real Chromium: the page loads chloe.js from chloed,
says "hi mom", gets it echoed back by the app, and receives a push to the
``pumpkin`` channel."""

from __future__ import annotations

import pytest

from examples import echo_app
from tests.servers import Chloed, free_port


@pytest.fixture
def demo():
    port = free_port()
    app = echo_app.serve(0, f"http://127.0.0.1:{port}", "demo-secret")
    chloed = Chloed("--app-url", f"http://127.0.0.1:{app.server_port}/updates", secret="demo-secret", port=port)
    yield app, chloed
    chloed.stop()
    app.shutdown()
    app.server_close()


def test_hi_mom_is_echoed_and_pumpkin_arrives(demo, page):
    """A person on the demo page sends "hi mom" and sees it echoed, then sees Trotter on pumpkin."""
    app, chloed = demo
    page.goto(f"http://127.0.0.1:{app.server_port}/")
    page.wait_for_function("document.getElementById('status').textContent === 'connected over websocket'")
    page.fill("#text", "hi mom")
    page.press("#text", "Enter")
    # The echo comes after the subscribe on the same connection: from here
    # on the page is subscribed to pumpkin.
    page.wait_for_selector("#log li:has-text('hi mom')")
    status, _, _ = chloed.request(
        "POST", "/send", b"channel=pumpkin&data=Trotter", {"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert status == 202
    page.wait_for_selector("#log li:has-text('pumpkin: Trotter')")
    texts = page.locator("#log li").all_inner_texts()
    assert texts == ["hi mom", "pumpkin: Trotter"]
