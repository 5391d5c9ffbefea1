"""Laravel Echo (tests/js, from npm) with ``broadcaster: 'pusher'`` in
Chromium against a real chloed serving a Pusher app: Echo hands its options
to the real pusher-js, and the app side is the official ``pusher`` Python
library (``tests/browser/pusher_app.py``), serving Echo's auth endpoint
(``/broadcasting/auth``) and triggering events through chloed's HTTP API.

Echo's event names: ``listen('.shipped')`` is the event ``shipped`` as
triggered; without the leading dot, ``listen('OrderShipped')`` is
``App\\Events\\OrderShipped`` (Echo's default namespace), what Laravel
broadcasts. ``private('x')`` is the channel ``private-x``, ``join('x')``
``presence-x``, and a whisper is the client event ``client-NAME``."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest
from playwright.sync_api import Browser, Page

from tests.browser.pusher_app import PusherApp, chloed_config
from tests.servers import Chloed

PRESENCE_TIMEOUT = 20000  # ms: a closed page's member leaves well within this


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Iterator[PusherApp]:
    """chloed serving the Pusher app, and the app (pages, libraries, auth)."""
    conf = chloed_config(tmp_path_factory.mktemp("echo") / "chloe.toml")
    chloed = Chloed(config=conf)
    app = PusherApp(chloed.port)
    yield app
    app.stop()
    chloed.stop()


@pytest.fixture
def open_page(chromium: Browser, app: PusherApp) -> Iterator[Callable[[str], Page]]:
    """``open_page(user)``: the Echo page as ``user``, in a browser context
    of its own, once Echo's pusher-js is connected."""
    contexts = []

    def open_(user: str = "anonymous") -> Page:
        context = chromium.new_context()
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15000)
        page.goto(app.url("/echo", user=user))
        page.wait_for_function("echo.connectionStatus() === 'connected'")
        return page

    yield open_
    for context in contexts:
        context.close()


def wait_got(page: Page, what: str, count: int = 1, timeout: float | None = None) -> list[Any]:
    """Wait until ``record(what)`` was called ``count`` times; what it got."""
    page.wait_for_function("([w, n]) => got.filter(g => g[0] === w).length >= n", arg=[what, count],
                           timeout=timeout)
    return [data for w, data in page.evaluate("got") if w == what]


def recorded(page: Page) -> list[str]:
    return [w for w, _ in page.evaluate("got")]


def test_a_public_channel_listens_to_events_as_named(open_page, app):
    """``Echo.channel('orders').listen('.shipped')`` gets the event
    ``shipped``; ``listen('OrderShipped')`` gets
    ``App\\Events\\OrderShipped`` and not a bare ``OrderShipped``."""
    page = open_page()
    page.evaluate("""() => { echo.channel('orders')
        .subscribed(record('subscribed'))
        .listen('.shipped', record('shipped'))
        .listen('OrderShipped', record('OrderShipped')); }""")
    wait_got(page, "subscribed")
    app.pusher.trigger("orders", "OrderShipped", {"bare": True})
    app.pusher.trigger("orders", "shipped", {"order": 1})
    app.pusher.trigger("orders", "App\\Events\\OrderShipped", {"order": 2})
    assert wait_got(page, "OrderShipped") == [{"order": 2}]
    assert wait_got(page, "shipped") == [{"order": 1}]
    assert recorded(page) == ["subscribed", "shipped", "OrderShipped"]


def test_a_private_channel_is_authorized_by_the_app(open_page, app):
    """``Echo.private('orders.7')`` subscribes ``private-orders.7`` through
    the app's ``/broadcasting/auth``; a channel the app refuses reaches
    Echo's ``error`` with the 403."""
    page = open_page("alice")
    page.evaluate("""() => { echo.private('orders.7')
        .subscribed(record('subscribed'))
        .listen('.status', record('status')); }""")
    wait_got(page, "subscribed")
    socket_id = page.evaluate("echo.socketId()")
    assert {"socket_id": socket_id, "channel_name": "private-orders.7"} in app.auth_requests_for("/broadcasting/auth")
    app.pusher.trigger("private-orders.7", "status", {"status": "paid"})
    assert wait_got(page, "status") == [{"status": "paid"}]

    page.evaluate("() => { echo.private('forbidden.1').subscribed(record('bad ok')).error(record('bad')); }")
    [error] = wait_got(page, "bad")
    assert error["type"] == "AuthError" and error["status"] == 403
    assert "bad ok" not in recorded(page)


def join(page: Page, room: str) -> None:
    page.evaluate("""room => { echo.join(room)
        .here(record('here')).joining(record('joining')).leaving(record('leaving')); }""", room)


def test_join_here_joining_leaving(open_page, app):
    """``Echo.join('room')``: ``here`` lists who is there (the app's
    user_info), the others get ``joining`` with the newcomer, and
    ``leaving`` when the newcomer's page closes."""
    alice = open_page("alice")
    join(alice, "room")
    assert wait_got(alice, "here") == [[{"name": "Alice"}]]
    bob = open_page("bob")
    join(bob, "room")
    [here] = wait_got(bob, "here")
    assert sorted(here, key=lambda member: member["name"]) == [{"name": "Alice"}, {"name": "Bob"}]
    assert wait_got(alice, "joining") == [{"name": "Bob"}]
    bob.close()
    assert wait_got(alice, "leaving", timeout=PRESENCE_TIMEOUT) == [{"name": "Bob"}]
    assert recorded(alice) == ["here", "joining", "leaving"]


def test_whispers_reach_the_others_not_the_whisperer(open_page, app):
    """``whisper('typing', ...)`` on a presence channel reaches the other
    member's ``listenForWhisper('typing')``, not the whisperer's; the same
    on a private channel."""
    alice, bob = open_page("alice"), open_page("bob")
    for how in ("join", "private"):
        for page in (alice, bob):
            page.evaluate("""how => { echo[how]('whispers')
                .subscribed(record('subscribed ' + how))
                .listenForWhisper('typing', record('typing ' + how)); }""", how)
            wait_got(page, "subscribed " + how)
        alice.evaluate("how => { echo[how]('whispers').whisper('typing', {name: 'Alice'}); }", how)
        assert wait_got(bob, "typing " + how) == [{"name": "Alice"}]
        # Bob answers once Alice's reached him: her own, had chloed sent it
        # back to her, would be on her page before his.
        bob.evaluate("how => { echo[how]('whispers').whisper('typing', {name: 'Bob'}); }", how)
        assert wait_got(alice, "typing " + how) == [{"name": "Bob"}]
        assert wait_got(bob, "typing " + how) == [{"name": "Alice"}]


def test_leave_unsubscribes(open_page, app):
    """``Echo.leave('news')``: nothing triggered afterwards reaches it,
    while a channel subscribed after gets what was triggered."""
    page = open_page()
    page.evaluate("""() => { echo.channel('leaving-news')
        .subscribed(record('subscribed')).listen('.ev', record('news')); }""")
    wait_got(page, "subscribed")
    app.pusher.trigger("leaving-news", "ev", {"n": 1})
    wait_got(page, "news")
    page.evaluate("echo.leave('leaving-news')")
    # Subscribed over the same connection after the unsubscribe: once it
    # succeeded, chloed has handled the unsubscribe.
    page.evaluate("""() => { echo.channel('staying')
        .subscribed(record('subscribed')).listen('.ev', record('staying')); }""")
    wait_got(page, "subscribed", 2)
    app.pusher.trigger("leaving-news", "ev", {"n": 2})
    app.pusher.trigger("staying", "ev", {"n": 3})
    assert wait_got(page, "staying") == [{"n": 3}]
    assert wait_got(page, "news") == [{"n": 1}]
