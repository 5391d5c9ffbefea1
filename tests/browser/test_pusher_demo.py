"""The Pusher chat demo (``make pusher-demo``) in real Chromium: chloed with
``examples/pusher_chat.toml``, the app of ``examples/pusher_chat.py``, two
pages on pusher-js in one room. Each sees the other in "Here"; one types
and the other sees it (a ``client-typing`` client event, page to page), then
sends, and the message the app triggered through chloed's HTTP API reaches
both pages, under the name the app knows the sender by."""

from __future__ import annotations

from typing import Callable, Iterator

import pytest
from playwright.sync_api import Browser, Page

from examples import pusher_chat
from tests.servers import Chloed, free_port


@pytest.fixture
def demo():
    port = free_port()
    chloed = Chloed(config=str(pusher_chat.CONFIG), secret=None, port=port)
    app = pusher_chat.serve(0, f"http://127.0.0.1:{port}")
    yield app
    app.shutdown()
    app.server_close()
    chloed.stop()


@pytest.fixture
def join(chromium: Browser, demo) -> Iterator[Callable[[str], Page]]:
    """``join(name)``: a page of its own browser context, joined to the lobby as ``name``."""
    contexts = []

    def join_(name: str) -> Page:
        context = chromium.new_context()
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15000)
        page.goto(f"http://127.0.0.1:{demo.server_port}/")
        page.fill("#name", name)
        page.press("#name", "Enter")
        return page

    yield join_
    for context in contexts:
        context.close()


def test_two_pages_see_each_other_typing_and_talking(join):
    """Alice and Bob are in the room; Alice sees Bob typing, then his message."""
    alice, bob = join("Alice"), join("Bob")
    for page in (alice, bob):
        page.wait_for_function("document.querySelectorAll('#members li').length === 2")
        assert page.locator("#members li").all_inner_texts() == ["Alice", "Bob"]
        assert page.inner_text("#status").startswith("connected, socket ")

    bob.locator("#text").press_sequentially("hi Alice")
    alice.wait_for_selector("#typing:has-text('Bob is typing…')")
    assert bob.inner_text("#typing") == ""  # nobody sees themselves typing

    bob.press("#text", "Enter")
    for page in (alice, bob):
        page.wait_for_selector("#messages li:has-text('hi Alice')")
        assert page.locator("#messages li .name").all_inner_texts()[-1] == "Bob"
    # His message ends his typing on Alice's page.
    assert alice.inner_text("#typing") == ""
    assert alice.inner_text("#errors") == bob.inner_text("#errors") == ""
